"""The spool under real SIGKILLs: child processes using the Spool are killed at random moments
and at every file operation in turn; afterwards every accepted item exists exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from hyperion.spool import Spool

STATE_DIRS = ("queued", "running", "done", "dead")

CHILD = textwrap.dedent("""\
    import hashlib, os, random, signal, sys, time
    from pathlib import Path
    from hyperion.spool import LeaseLost, Spool

    def payload(item_id):
        return hashlib.sha256(item_id.encode()).digest() * 4

    root, mode, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    spool = Spool(root)
    rng = random.Random()
    out = sys.stdout

    if mode == "put":
        for i in range(250):
            item_id = f"{tag}-{i}"
            if spool.put(item_id, payload(item_id), priority=rng.choice([-1, 0, 1])):
                out.write(f"put {item_id}\\n")
                out.flush()
            time.sleep(rng.uniform(0, 0.003))
        time.sleep(600)                 # wait for the kill
    elif mode == "work":
        while True:
            if rng.random() < 0.05:
                spool.sweep()
            lease = spool.lease(tag, ttl_s=rng.choice([60, 60, 0.05]))
            if lease is None:
                time.sleep(0.001)
                continue
            assert lease.payload == payload(lease.id), lease.id
            out.write(f"lease {lease.id} {lease.attempts}\\n")
            out.flush()
            try:
                roll = rng.random()
                if roll < 0.1:
                    lease = spool.heartbeat(lease, 60)
                if roll < 0.45:
                    spool.retry(lease, 0, "again")
                elif roll < 0.85:
                    spool.ack(lease)
                elif roll < 0.95:
                    spool.bury(lease, "dead")
                # else: leave it held, for the sweeper
            except LeaseLost:
                pass
    elif mode == "steps":
        # Kill ourselves just before the Nth file operation (a rename, a link, an unlink, an open
        # for writing): every crash point of put/lease/heartbeat/retry/bury/ack in turn.
        target = int(tag)
        seen = 0
        def hook(event, args):
            global seen
            write = event == "open" and isinstance(args[2], int) and args[2] & (
                os.O_WRONLY | os.O_RDWR)
            if event in ("os.rename", "os.remove", "os.link") or write:
                seen += 1
                if seen == target:
                    os.kill(os.getpid(), signal.SIGKILL)
        sys.addaudithook(hook)
        for item_id in ("a", "b"):
            if spool.put(item_id, payload(item_id)):
                out.write(f"put {item_id}\\n")
                out.flush()
        first = spool.lease("steps")
        first = spool.heartbeat(first, 60)
        spool.retry(first, 0, "retry")
        second = spool.lease("steps")
        spool.bury(second, "bury")
        third = spool.lease("steps")
        spool.ack(third)
        spool.sweep()
        out.write("complete\\n")
        out.flush()
    elif mode == "drain":
        while (lease := spool.lease(tag)) is not None:
            out.write(f"took {lease.id}\\n")
            spool.ack(lease)
        out.flush()
    elif mode == "hold":
        lease = spool.lease("holder", ttl_s=600)
        out.write(f"leased {lease.id}\\n")
        out.flush()
        if tag == "exit":
            os._exit(0)
        time.sleep(600)
""")


def child(root: Path, script: Path, mode: str, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script), str(root), mode, tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def inventory(root: Path) -> Counter[str]:
    """How many times each item id occurs across the state directories."""
    ids: Counter[str] = Counter()
    for state in STATE_DIRS:
        for name in os.listdir(root / state):
            if name.startswith(".") or name.endswith(".lease") or not name.endswith(".item"):
                continue
            header = json.loads((root / state / name).read_bytes().split(b"\n", 1)[0])
            ids[header["id"]] += 1
    return ids


def check_all_there(root: Path, accepted: set[str]) -> Spool:
    """Sweep as a fresh process would, then: nothing lost, nothing twice, nothing corrupt."""
    spool = Spool(root, orphan_grace_s=0)          # every writer is dead by now
    spool.sweep()
    ids = inventory(root)
    twice = {i: n for i, n in ids.items() if n > 1}
    assert twice == {}, f"items present more than once: {twice}"
    missing = accepted - set(ids)
    assert not missing, f"accepted items lost: {sorted(missing)[:10]}"
    assert not (root / "corrupt").exists() or os.listdir(root / "corrupt") == []
    assert spool.counts()["running"] == 0
    assert [n for n in os.listdir(root / "running") if not n.startswith(".")] == []
    assert set(ids) <= {n for n in os.listdir(root / "keys")}
    return spool


def test_random_sigkill_of_putters_and_workers(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "spool"
    Spool(root)
    rng = random.Random(int.from_bytes(os.urandom(4)))
    accepted: set[str] = set()
    leased: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + 6
    rounds = 0
    while time.monotonic() < deadline and rounds < 40:
        rounds += 1
        procs = [child(root, script, "put", f"r{rounds}p{i}") for i in range(2)]
        procs += [child(root, script, "work", f"r{rounds}w{i}") for i in range(2)]
        kill_at = [time.monotonic() + rng.uniform(0.1, 0.5) for _ in procs]
        for at, proc in sorted(zip(kill_at, procs, strict=True), key=lambda pair: pair[0]):
            time.sleep(max(0.0, at - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            out, err = proc.communicate()
            assert proc.returncode == -signal.SIGKILL, err
            for line in out.splitlines():
                word, *rest = line.split()
                if word == "put":
                    accepted.add(rest[0])
                elif word == "lease":
                    leased[(rest[0], int(rest[1]))] += 1
    assert accepted, "no put completed"
    check_all_there(root, accepted)
    # Never held twice: each (id, attempts) pair was leased at most once.
    assert [pair for pair, n in leased.items() if n > 1] == []
    # Everything left can still be worked to the end.
    spool = Spool(root)
    while (lease := spool.lease("drain")) is not None:
        spool.ack(lease)
    counts = spool.counts()
    assert counts["queued"] == counts["running"] == 0
    assert counts["done"] + counts["dead"] == sum(inventory(root).values())


def test_sigkill_at_every_file_operation(tmp_path: Path, script: Path) -> None:
    completed = False
    step = 0
    while not completed:
        step += 1
        assert step < 200, "the step script never completed"
        root = tmp_path / f"step{step}"
        Spool(root)
        proc = child(root, script, "steps", str(step))
        out, err = proc.communicate(timeout=30)
        lines = out.splitlines()
        completed = "complete" in lines
        if completed:
            assert proc.returncode == 0, err
        else:
            assert proc.returncode == -signal.SIGKILL, err
        accepted = {line.split()[1] for line in lines if line.startswith("put ")}
        spool = check_all_there(root, accepted)
        # A put interrupted after its key but before its item is completed by a second put.
        for item_id in ("a", "b"):
            if spool.state_of(item_id) is None:
                assert spool.put(item_id, b"again")
        # And the survivors can be worked to the end.
        while (lease := spool.lease("after")) is not None:
            spool.ack(lease)
        assert inventory(root) == Counter({"a": 1, "b": 1})
    assert step > 30        # the hook did see the file operations


def test_processes_leasing_together_never_share_an_item(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    ids = {f"item-{i}" for i in range(300)}
    for item_id in sorted(ids):
        spool.put(item_id, b"")
    procs = [child(root, script, "drain", f"d{i}") for i in range(3)]
    taken: Counter[str] = Counter()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        taken.update(line.split()[1] for line in out.splitlines())
    assert set(taken) == ids and set(taken.values()) == {1}
    assert spool.counts() == {"queued": 0, "running": 0, "done": 300, "dead": 0}


def test_lease_of_a_dead_process_is_swept_at_once(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    spool.put("a", b"x")
    proc = child(root, script, "hold", "exit")
    out, err = proc.communicate(timeout=30)
    assert out.strip() == "leased a", err
    assert spool.state_of("a") == "running"
    assert spool.sweep() == 1                        # ttl was 600 s: the pid check found it
    lease = spool.lease("w")
    assert lease is not None and lease.attempts == 1


def test_lease_of_a_live_process_is_kept_until_it_is_killed(tmp_path: Path,
                                                            script: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    spool.put("a", b"x")
    proc = child(root, script, "hold", "stay")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "leased a"
        assert spool.sweep() == 0
        assert spool.lease("w") is None
    finally:
        proc.kill()
        proc.wait()
    assert spool.sweep() == 1
    assert spool.state_of("a") == "queued"


def test_expired_lease_is_swept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put("a", b"x")
    lease = spool.lease("w", ttl_s=0.5)
    assert lease is not None
    assert spool.sweep() == 0                        # our own live process, not expired yet
    time.sleep(0.6)
    assert spool.sweep() == 1
    again = spool.lease("w")
    assert again is not None and again.attempts == 1
