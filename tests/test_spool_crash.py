"""The spool under real SIGKILLs: child processes using the Spool are killed at random moments
and at every file operation in turn; afterwards the ledger holds: every accepted item exists
exactly once (or was pruned, leaving its tombstone), no item is in two states, and no item was
acknowledged twice."""

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

    def log(*words):
        out.write(" ".join(str(w) for w in words) + "\\n")
        out.flush()

    if mode == "put":
        for i in range(250):
            item_id = f"{tag}-{i}"
            if spool.put(item_id, payload(item_id), priority=rng.choice([-1, 0, 1])):
                log("put", item_id)
            time.sleep(rng.uniform(0, 0.003))
        time.sleep(600)                 # wait for the kill
    elif mode == "work":
        dead = []
        while True:
            roll = rng.random()
            if roll < 0.05:
                spool.sweep()
            elif roll < 0.07 and dead:
                item_id = dead.pop(rng.randrange(len(dead)))
                log("requeuing", item_id)     # before: a kill may follow the requeue
                if spool.requeue(item_id, reason="soak"):
                    log("requeued", item_id)
            elif roll < 0.08:
                spool.prune(0.2)
            lease = spool.lease(tag, ttl_s=rng.choice([60, 60, 0.05]))
            if lease is None:
                time.sleep(0.001)
                continue
            assert lease.payload == payload(lease.id), lease.id
            log("lease", lease.id, lease.attempts)
            try:
                roll = rng.random()
                if roll < 0.1:
                    lease = spool.heartbeat(lease, 60)
                if roll < 0.45:
                    spool.retry(lease, 0, "again")
                elif roll < 0.85:
                    spool.ack(lease)
                    log("acked", lease.id)
                elif roll < 0.95:
                    spool.bury(lease, "dead")
                    dead.append(lease.id)
                # else: leave it held, for the sweeper
            except LeaseLost:
                pass
    elif mode == "cancel":
        while True:
            for name in os.listdir(root / "queued"):
                item_id = name.rpartition("-")[2][:-len(".item")]
                if rng.random() < 0.2 and spool.cancel(item_id, "superseded"):
                    log("cancelled", item_id)
            time.sleep(0.005)
    elif mode == "steps":
        # Kill ourselves just before the Nth file operation (a rename, link, unlink, symlink,
        # utime, truncate, or open for writing): every crash point in turn.
        target = int(tag)
        seen = 0
        def hook(event, args):
            global seen
            write = event == "open" and isinstance(args[2], int) and args[2] & (
                os.O_WRONLY | os.O_RDWR)
            if write or event in ("os.rename", "os.remove", "os.link", "os.symlink",
                                  "os.utime", "os.truncate"):
                seen += 1
                if seen == target:
                    os.kill(os.getpid(), signal.SIGKILL)
        sys.addaudithook(hook)
        for item_id in ("a", "b", "c"):
            if spool.put(item_id, payload(item_id)):
                log("put", item_id)
        first = spool.lease("steps")                  # a
        first = spool.heartbeat(first, 60)
        spool.retry(first, 0, "retry")
        second = spool.lease("steps")                 # b
        spool.bury(second, "bury")
        third = spool.lease("steps")                  # c
        spool.ack(third)
        log("acked", third.id)
        assert spool.cancel("a", "cancel")            # queued -> dead
        assert spool.requeue("b", reason="requeue")   # dead -> queued
        assert spool.prune(0) == 2                    # a (dead) and c (done)
        fourth = spool.lease("steps", ttl_s=0)        # b, left to the sweeper
        time.sleep(0.01)
        assert spool.sweep() == 1
        fifth = spool.lease("steps")                  # b again
        spool.ack(fifth)
        log("acked", fifth.id)
        log("complete")
    elif mode == "drain":
        while (lease := spool.lease(tag)) is not None:
            out.write(f"took {lease.id}\\n")
            spool.ack(lease)
        out.flush()
    elif mode == "hold":
        lease = spool.lease("holder", ttl_s=600)
        log("leased", lease.id)
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


def pruned(root: Path) -> set[str]:
    return {name for name in os.listdir(root / "keys") if (root / "keys" / name).is_symlink()}


def check_ledger(root: Path, accepted: set[str], acked: Counter[str] | None = None) -> Spool:
    """Sweep as a fresh process would, then: nothing lost, nothing in two states, nothing
    corrupt, no double ack."""
    spool = Spool(root, orphan_grace_s=0)          # every writer is dead by now
    spool.sweep()
    ids = inventory(root)
    gone = pruned(root)
    twice = {i: n for i, n in ids.items() if n > 1}
    assert twice == {}, f"items present more than once: {twice}"
    # A prune killed between a tombstone and the removal leaves that item; the next prune
    # removes it. Only a finished item can be pruned.
    for item_id in set(ids) & gone:
        assert (root / "done" / f"{item_id}.item").exists() or (
            root / "dead" / f"{item_id}.item").exists(), item_id
    missing = accepted - set(ids) - gone
    assert not missing, f"accepted items lost: {sorted(missing)[:10]}"
    assert not (root / "corrupt").exists() or os.listdir(root / "corrupt") == []
    assert spool.counts()["running"] == 0
    assert [n for n in os.listdir(root / "running") if not n.startswith(".")] == []
    assert set(ids) <= set(os.listdir(root / "keys"))
    if acked is not None:
        assert [i for i, n in acked.items() if n > 1] == [], "an item was acked twice"
        for item_id in acked:           # an ack that returned is durable: done, or pruned
            assert item_id in gone or spool.state_of(item_id) == "done", item_id
    return spool


def run_round(procs: list[subprocess.Popen[str]], rng: random.Random) -> list[str]:
    kill_at = [time.monotonic() + rng.uniform(0.1, 0.5) for _ in procs]
    for at, proc in sorted(zip(kill_at, procs, strict=True), key=lambda pair: pair[0]):
        time.sleep(max(0.0, at - time.monotonic()))
        proc.send_signal(signal.SIGKILL)
    lines = []
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        lines += out.splitlines()
    return lines


def test_random_sigkill_of_putters_and_workers(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "spool"
    Spool(root)
    rng = random.Random(int.from_bytes(os.urandom(4)))
    accepted: set[str] = set()
    acked: Counter[str] = Counter()
    requeued: set[str] = set()
    leased: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + 6
    rounds = 0
    while time.monotonic() < deadline and rounds < 40:
        rounds += 1
        procs = [child(root, script, "put", f"r{rounds}p{i}") for i in range(2)]
        procs += [child(root, script, "work", f"r{rounds}w{i}") for i in range(2)]
        if rounds % 3 == 0:
            procs.append(child(root, script, "cancel", f"r{rounds}c"))
        for line in run_round(procs, rng):
            word, *rest = line.split()
            if word == "put":
                accepted.add(rest[0])
            elif word == "lease":
                leased[(rest[0], int(rest[1]))] += 1
            elif word == "acked":
                acked[rest[0]] += 1
            elif word == "requeuing":
                requeued.add(rest[0])
    assert accepted, "no put completed"
    check_ledger(root, accepted, acked)
    # Never held twice: each (id, attempts) pair was leased at most once (a requeue starts the
    # count again, so those items are left out).
    assert [pair for pair, n in leased.items() if n > 1 and pair[0] not in requeued] == []
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
        assert step < 300, "the step script never completed"
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
        acked = Counter(line.split()[1] for line in lines if line.startswith("acked "))
        spool = check_ledger(root, accepted, acked)
        # A put interrupted after its key but before its item is completed by a second put;
        # a pruned id is refused.
        for item_id in ("a", "b", "c"):
            if spool.state_of(item_id) is None:
                assert spool.put(item_id, b"again") == (item_id not in pruned(root))
        # And the survivors can be worked to the end.
        while (lease := spool.lease("after")) is not None:
            spool.ack(lease)
        gone = pruned(root)
        left = inventory(root)
        assert set(left.values()) <= {1} and set(left) | gone == {"a", "b", "c"}
        if gone & set(left):                         # a prune was interrupted: finish it
            spool.prune(0)
            assert not gone & set(inventory(root))
        if completed:
            assert gone == {"a", "c"} and spool.state_of("b") == "done"
    assert step > 40        # the hook did see the file operations


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
