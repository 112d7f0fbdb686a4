"""The spool's contract on real files: states, order, dedupe, leases, sweeping, corruption,
prune/requeue/cancel, the shared view and group commit, threads, and a stateful comparison with
a simple model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

import hyperion.spool as spool_module
from hyperion.spool import Lease, LeaseLost, Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def header_of(path: Path) -> dict[str, object]:
    head = path.read_bytes().split(b"\n", 1)[0]
    obj = json.loads(head)
    assert isinstance(obj, dict)
    return obj


def files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def test_creates_its_directories(tmp_path: Path) -> None:
    Spool(tmp_path / "s")
    for name in ("tmp", "queued", "running", "done", "dead", "keys"):
        assert (tmp_path / "s" / name).is_dir()


def test_put_lease_ack(spool: Spool) -> None:
    assert spool.put("req-1", b"\x00payload\nwith newline")
    assert spool.counts() == {"queued": 1, "running": 0, "done": 0, "dead": 0}
    assert spool.state_of("req-1") == "queued"
    before = time.time()
    lease = spool.lease("worker-a", ttl_s=30)
    assert lease is not None
    assert (lease.id, lease.payload, lease.attempts, lease.owner) == (
        "req-1", b"\x00payload\nwith newline", 0, "worker-a")
    assert before + 30 <= lease.expires_at <= time.time() + 30
    assert spool.state_of("req-1") == "running"
    assert spool.lease("worker-b") is None
    spool.ack(lease)
    assert spool.state_of("req-1") == "done"
    assert spool.counts() == {"queued": 0, "running": 0, "done": 1, "dead": 0}
    assert files(spool.running) == []            # the lease record went too
    assert (spool.done / "req-1.item").read_bytes().endswith(b"\x00payload\nwith newline")
    with pytest.raises(LeaseLost):
        spool.ack(lease)


def test_dedupe_in_every_state(spool: Spool) -> None:
    assert spool.put("a", b"first")
    assert not spool.put("a", b"second")             # queued
    lease = spool.lease("w")
    assert lease is not None
    assert not spool.put("a", b"third")              # running
    spool.ack(lease)
    assert not spool.put("a", b"fourth")             # done
    assert spool.put("b", b"x")
    lease = spool.lease("w")
    assert lease is not None
    spool.bury(lease, "nope")
    assert not spool.put("b", b"y")                  # dead
    assert spool.counts() == {"queued": 0, "running": 0, "done": 1, "dead": 1}
    assert (spool.done / "a.item").read_bytes().endswith(b"\nfirst")


def test_priority_then_fifo(spool: Spool) -> None:
    order = [("low-1", -5), ("mid-1", 0), ("high-1", 7), ("mid-2", 0), ("low-2", -5),
             ("high-2", 7), ("mid-3", 0)]
    for item_id, priority in order:
        assert spool.put(item_id, item_id.encode(), priority=priority)
    leased = []
    while (lease := spool.lease("w")) is not None:
        leased.append(lease.id)
        spool.ack(lease)
    assert leased == ["high-1", "high-2", "mid-1", "mid-2", "mid-3", "low-1", "low-2"]


def test_priority_bounds(spool: Spool) -> None:
    assert spool.put("top", b"", priority=999_999)
    assert spool.put("bottom", b"", priority=-999_999)
    for bad in (1_000_000, -1_000_000):
        with pytest.raises(ValueError):
            spool.put("x", b"", priority=bad)
    lease = spool.lease("w")
    assert lease is not None and lease.id == "top"


def test_not_before(spool: Spool) -> None:
    now = time.time()
    assert spool.put("later", b"", not_before=now + 3600, priority=5)
    assert spool.next_ready_at() == pytest.approx(now + 3600, abs=0.01)
    assert spool.lease("w") is None                  # the only item is not ready
    assert spool.put("past", b"", not_before=now - 10)
    assert spool.put("plain", b"")
    ready = spool.next_ready_at()
    assert ready is not None and ready <= time.time()
    first, second = spool.lease("w"), spool.lease("w")
    assert first is not None and second is not None
    assert (first.id, second.id) == ("past", "plain")  # a waiting item does not block others
    assert spool.lease("w") is None
    assert spool.state_of("later") == "queued"


def test_next_ready_at_empty(spool: Spool) -> None:
    assert spool.next_ready_at() is None
    spool.put("a", b"")
    lease = spool.lease("w")
    assert lease is not None
    assert spool.next_ready_at() is None             # running items are not waiting


def test_retry(spool: Spool) -> None:
    spool.put("a", b"A")
    spool.put("b", b"B")
    lease = spool.lease("w")
    assert lease is not None and lease.id == "a"
    before = time.time()
    spool.retry(lease, 0, "target moved")
    assert spool.state_of("a") == "queued"
    [name] = [n for n in files(spool.queued) if n.endswith("-a.item")]
    header = header_of(spool.queued / name)
    assert header["attempts"] == 1 and header["last_error"] == "target moved"
    assert isinstance(header["not_before"], float) and header["not_before"] >= before
    # Back of its priority: b first, then a with attempts 1.
    b, a = spool.lease("w"), spool.lease("w")
    assert b is not None and a is not None
    assert (b.id, a.id, a.attempts, a.payload) == ("b", "a", 1, b"A")
    spool.retry(a, 3600, "again")
    assert spool.lease("w") is None
    ready = spool.next_ready_at()
    assert ready is not None and ready > time.time() + 3500
    with pytest.raises(LeaseLost):
        spool.retry(a, 0, "twice")


def test_bury_keeps_error(spool: Spool) -> None:
    spool.put("a", b"payload")
    lease = spool.lease("w")
    assert lease is not None
    spool.bury(lease, "check_failed: exit 3\nsecond line")
    assert spool.state_of("a") == "dead"
    path = spool.dead / "a.item"
    assert header_of(path)["last_error"] == "check_failed: exit 3\nsecond line"
    assert path.read_bytes().endswith(b"\npayload")
    with pytest.raises(LeaseLost):
        spool.bury(lease, "again")


def test_heartbeat_extends(spool: Spool) -> None:
    spool.put("a", b"")
    lease = spool.lease("w", ttl_s=0.2)
    assert lease is not None
    beat = spool.heartbeat(lease, 30)
    assert beat.expires_at >= lease.expires_at + 29
    assert (beat.id, beat.owner, beat.attempts) == (lease.id, lease.owner, lease.attempts)
    time.sleep(0.3)                                  # past the first expiry
    assert spool.sweep() == 0
    again = spool.heartbeat(beat)                    # default: the ttl last given
    assert again.expires_at >= beat.expires_at
    spool.ack(again)
    assert spool.state_of("a") == "done"


def test_expired_lease_is_swept_and_lost(spool: Spool) -> None:
    spool.put("a", b"data")
    lease = spool.lease("w", ttl_s=0)
    assert lease is not None
    time.sleep(0.01)
    assert spool.sweep() == 1
    assert spool.state_of("a") == "queued"
    for close in (lambda: spool.heartbeat(lease), lambda: spool.ack(lease),
                  lambda: spool.retry(lease, 0, "x"), lambda: spool.bury(lease, "x")):
        with pytest.raises(LeaseLost):
            close()
    again = spool.lease("w2")
    assert again is not None and again.attempts == 1 and again.payload == b"data"
    assert spool.sweep() == 0
    spool.ack(again)
    assert spool.counts() == {"queued": 0, "running": 0, "done": 1, "dead": 0}
    [name] = files(spool.done)
    assert "expired" in str(header_of(spool.done / name)["last_error"])


@pytest.mark.parametrize("bad", ["", "-a", ".a", "_a", "a/b", "a b", "a" * 129, "ä", "..",
                                 "a\n", "a\x00b", "a:b"])
def test_invalid_ids_are_refused(spool: Spool, bad: str) -> None:
    with pytest.raises(ValueError):
        spool.put(bad, b"")
    with pytest.raises(ValueError):
        spool.state_of(bad)
    assert files(spool.queued) == [] and files(spool.keys) == []


@pytest.mark.parametrize("good", ["a", "Z", "0", "a.b-c_d", "x" * 128, "1.lease", "a.item"])
def test_valid_ids(spool: Spool, good: str) -> None:
    assert spool.put(good, good.encode())
    lease = spool.lease("w")
    assert lease is not None and lease.id == good and lease.payload == good.encode()
    spool.ack(lease)
    assert spool.state_of(good) == "done"
    assert spool.sweep() == 0


def test_bad_arguments(spool: Spool) -> None:
    with pytest.raises(TypeError):
        spool.put("a", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        spool.put("a", b"", not_before=float("nan"))
    with pytest.raises(ValueError):
        spool.lease("w", ttl_s=-1)
    assert spool.counts()["queued"] == 0


def test_corrupt_item_goes_to_corrupt(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    spool.put("bad", b"x", priority=1)
    spool.put("good", b"y")
    [name] = [n for n in files(spool.queued) if n.endswith("-bad.item")]
    (spool.queued / name).write_bytes(b"{not json\npayload")
    with caplog.at_level(logging.ERROR, logger="hyperion.spool"):
        lease = spool.lease("w")
    assert lease is not None and lease.id == "good"
    assert (spool.corrupt / name).read_bytes() == b"{not json\npayload"  # kept as it was
    assert "not JSON" in (spool.corrupt / (name + ".reason")).read_text()
    assert any("corrupt" in r.getMessage() and r.name == "hyperion.spool"
               for r in caplog.records)
    assert spool.state_of("bad") is None
    assert not spool.put("bad", b"again")            # still known: nothing is re-created
    assert spool.counts() == {"queued": 0, "running": 1, "done": 0, "dead": 0}


def test_corrupt_header_with_wrong_id(spool: Spool) -> None:
    spool.put("a", b"x")
    [name] = files(spool.queued)
    (spool.queued / name).write_bytes(json.dumps({
        "v": 1, "id": "other", "priority": 0, "attempts": 0, "not_before": None,
        "enqueued_at": 1.0, "last_error": None}).encode() + b"\nx")
    assert spool.lease("w") is None
    assert files(spool.corrupt) == sorted([name, name + ".reason"])


def test_unknown_files_and_dotfiles_are_skipped(spool: Spool) -> None:
    for directory in (spool.queued, spool.running, spool.done, spool.dead):
        (directory / ".hidden").write_bytes(b"x")
        (directory / "README").write_bytes(b"x")
    assert spool.counts() == {"queued": 0, "running": 0, "done": 0, "dead": 0}
    assert spool.lease("w") is None
    assert spool.next_ready_at() is None
    assert spool.sweep() == 0
    assert (spool.queued / "README").exists() and (spool.running / ".hidden").exists()


def test_interrupted_put_key_without_item(spool: Spool) -> None:
    (spool.keys / "a").touch()                       # a put that died after claiming the key
    assert spool.put("a", b"payload")
    assert not spool.put("a", b"payload")
    assert spool.state_of("a") == "queued"


def test_earlier_layout_item_without_lease_record_is_swept_after_grace(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.put("a", b"")
    [name] = files(spool.queued)
    # The earlier layout: running/<queue name>, its leaser died before writing <name>.lease.
    os.rename(spool.queued / name, spool.running / name)
    assert spool.counts()["running"] == 1 and spool.state_of("a") == "running"
    assert spool.sweep() == 0                        # within the grace: maybe being leased
    assert Spool(tmp_path / "s", orphan_grace_s=0).sweep() == 1
    lease = spool.lease("w")
    assert lease is not None and lease.attempts == 1


def test_earlier_layout_lease_of_a_dead_process_is_swept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.put("a", b"payload")
    [name] = files(spool.queued)
    os.rename(spool.queued / name, spool.running / name)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record = {"owner": "old", "host": spool_module._HOST, "pid": int(proc.stdout),
              "pid_start": None, "boot_id": spool_module._BOOT_ID, "acquired": 1.0,
              "expires": time.time() + 600, "ttl_s": 600.0, "token": "abc"}
    (spool.running / (name + ".lease")).write_text(json.dumps(record))
    assert spool.sweep() == 1
    assert files(spool.running) == []                # the record went with it
    lease = spool.lease("w")
    assert lease is not None and (lease.attempts, lease.payload) == (1, b"payload")


def test_orphan_lease_record_is_removed(spool: Spool) -> None:
    (spool.running / "0999999-00000000000000000001-00000000000000-h-1-abcdef01-x.item.lease"
     ).write_bytes(b"{}")
    assert spool.sweep() == 0
    assert files(spool.running) == []


def test_concurrent_lease_never_gives_an_item_twice(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ids = [f"item-{i}" for i in range(120)]
    setup = Spool(root)
    for item_id in ids:
        setup.put(item_id, item_id.encode())
    taken: list[str] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        own = Spool(root) if name.endswith("1") else setup   # shared and separate instances
        try:
            while (lease := own.lease(name)) is not None:
                assert lease.payload == lease.id.encode()
                with guard:
                    taken.append(lease.id)
                own.ack(lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(taken) == sorted(ids)
    assert setup.counts() == {"queued": 0, "running": 0, "done": 120, "dead": 0}


def test_concurrent_puts_of_one_id(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Spool(root)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        spool = Spool(root)
        barrier.wait()
        results.append(spool.put("same", b"x"))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert Spool(root).counts()["queued"] == 1


# ---------------------------------------------------------------------- the layout
def test_a_lease_is_recorded_in_the_running_name(spool: Spool) -> None:
    spool.put("a", b"x")
    lease = spool.lease("w", ttl_s=30)
    assert lease is not None
    [name] = files(spool.running)                    # one file: no separate lease record
    assert name.startswith("a~") and name.endswith(".item")
    fields = name[:-len(".item")].split("~")
    assert int(fields[1]) / 1000 == pytest.approx(lease.expires_at, abs=0.002)
    assert int(fields[3]) == os.getpid()
    # The key is the item as first put: the queued file was a hard link to it.
    assert os.stat(spool.running / name).st_ino == os.stat(spool.keys / "a").st_ino


def test_heartbeat_sets_the_expiry_as_mtime(spool: Spool) -> None:
    spool.put("a", b"")
    lease = spool.lease("w", ttl_s=0)
    assert lease is not None
    beat = spool.heartbeat(lease, 100)
    [name] = files(spool.running)
    assert name == lease._name                       # no rename: the name stays
    assert os.stat(spool.running / name).st_mtime == pytest.approx(beat.expires_at, abs=0.01)
    time.sleep(0.01)
    assert spool.sweep() == 0                        # the mtime extends the name's expiry
    # A heartbeat never makes a lease end before the expiry it was taken with.
    assert spool.put("b", b"")
    long = spool.lease("w", ttl_s=100)
    assert long is not None and long.id == "b"
    short = spool.heartbeat(long, 0)
    assert short.expires_at >= long.expires_at - 0.002
    assert spool.sweep() == 0


def test_lease_of_a_swept_and_released_item_is_lost(spool: Spool) -> None:
    spool.put("a", b"")
    first = spool.lease("w", ttl_s=0)
    assert first is not None
    time.sleep(0.01)
    assert spool.sweep() == 1
    second = spool.lease("w", ttl_s=60)              # the same process leases it again
    assert second is not None and second._name != first._name
    with pytest.raises(LeaseLost):
        spool.ack(first)                             # the old lease cannot close the new one
    spool.ack(second)
    assert spool.state_of("a") == "done"


def test_put_after_retry_is_refused(spool: Spool) -> None:
    # After a rewrite the key no longer shares the item's inode: put must still find it.
    spool.put("a", b"x")
    lease = spool.lease("w")
    assert lease is not None
    spool.retry(lease, 0, "again")
    assert os.stat(spool.keys / "a").st_nlink == 1
    assert not spool.put("a", b"y")
    assert spool.counts()["queued"] == 1


def test_interrupted_put_with_a_written_key(spool: Spool) -> None:
    # A put killed after writing and syncing its key but before linking it into queued/.
    (spool.keys / "a").write_bytes(b'{"v":1}\nhalf')
    assert spool.put("a", b"payload")
    lease = spool.lease("w")
    assert lease is not None and lease.payload == b"payload"
    assert not spool.put("a", b"again")


# ---------------------------------------------------------------------- prune
def finish(spool: Spool, item_id: str, *, dead: bool = False) -> None:
    assert spool.put(item_id, item_id.encode())
    lease = spool.lease("w")
    assert lease is not None and lease.id == item_id
    if dead:
        spool.bury(lease, "broken")
    else:
        spool.ack(lease)


def test_prune_removes_old_finished_items_and_keeps_their_ids(spool: Spool) -> None:
    finish(spool, "done-1")
    finish(spool, "dead-1", dead=True)
    spool.put("queued-1", b"")
    spool.put("running-1", b"", priority=5)
    held = spool.lease("w")
    assert held is not None and held.id == "running-1"
    assert spool.prune(3600) == 0                    # nothing is an hour old
    assert spool.counts() == {"queued": 1, "running": 1, "done": 1, "dead": 1}
    assert spool.prune(0) == 2
    assert spool.counts() == {"queued": 1, "running": 1, "done": 0, "dead": 0}
    assert files(spool.done) == [] and files(spool.dead) == []
    for item_id in ("done-1", "dead-1"):
        assert spool.state_of(item_id) is None
        assert os.readlink(spool.keys / item_id) == "pruned"   # a tombstone, no data
        assert not spool.put(item_id, b"again")      # ids are never reused
        assert not spool.requeue(item_id, reason="r")
    assert spool.state_of("queued-1") == "queued" and spool.state_of("running-1") == "running"
    spool.ack(held)
    assert spool.prune(0) == 1
    assert spool.prune(0) == 0


def test_prune_never_touches_corrupt(spool: Spool) -> None:
    spool.put("bad", b"x")
    [name] = files(spool.queued)
    (spool.queued / name).write_bytes(b"garbage")
    assert spool.lease("w") is None
    before = files(spool.corrupt)
    assert spool.prune(0) == 0
    assert files(spool.corrupt) == before and before


def test_prune_by_age(spool: Spool) -> None:
    finish(spool, "old")
    time.sleep(1.1)
    finish(spool, "new")
    assert spool.prune(1.0) == 1
    assert (spool.state_of("old"), spool.state_of("new")) == (None, "done")


def test_prune_completes_a_half_done_prune(spool: Spool) -> None:
    finish(spool, "a")
    # A prune killed after its tombstone and before removing the item.
    spool._tombstone("a")
    assert spool.state_of("a") == "done" and not spool.put("a", b"")
    assert spool.prune(0) == 1
    assert spool.state_of("a") is None


def test_prune_rejects_bad_ages(spool: Spool) -> None:
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            spool.prune(bad)


# ---------------------------------------------------------------------- requeue and cancel
def test_requeue_a_dead_item(spool: Spool) -> None:
    spool.put("a", b"first", priority=3)
    spool.put("b", b"other", priority=3)
    lease = spool.lease("w")
    assert lease is not None and lease.id == "a"
    spool.retry(lease, 0, "flaky")
    again = spool.lease("w")
    assert again is not None and again.id == "b"
    spool.ack(again)
    lease = spool.lease("w")
    assert lease is not None and (lease.id, lease.attempts) == ("a", 1)
    spool.bury(lease, "check_failed: exit 1")
    assert spool.requeue("a", reason="the check was fixed")
    assert spool.state_of("a") == "queued"
    [name] = files(spool.queued)
    header = header_of(spool.queued / name)
    assert header["attempts"] == 0 and header["not_before"] is None
    assert header["last_error"] == ("requeued: the check was fixed (it had failed: "
                                    "check_failed: exit 1)")
    lease = spool.lease("w")
    assert lease is not None and (lease.id, lease.attempts, lease.payload) == ("a", 0, b"first")
    spool.bury(lease, "again")
    assert spool.requeue("a", b"second", reason="new payload")
    lease = spool.lease("w")
    assert lease is not None and lease.payload == b"second"
    spool.ack(lease)
    assert not spool.put("a", b"x")


def test_requeue_goes_to_the_back_of_its_priority(spool: Spool) -> None:
    finish(spool, "a", dead=True)
    spool.put("b", b"")
    assert spool.requeue("a", reason="r")
    spool.put("c", b"")
    order = []
    while (lease := spool.lease("w")) is not None:
        order.append(lease.id)
        spool.ack(lease)
    assert order == ["b", "a", "c"]


def test_requeue_only_dead_items(spool: Spool) -> None:
    assert not spool.requeue("nothing", reason="r")
    spool.put("q", b"")
    assert not spool.requeue("q", reason="r")
    spool.put("r", b"", priority=1)
    held = spool.lease("w")
    assert held is not None and held.id == "r"
    assert not spool.requeue("r", reason="r")
    spool.ack(held)
    assert not spool.requeue("r", reason="r")        # done, not dead
    with pytest.raises(ValueError):
        spool.requeue("../x", reason="r")
    with pytest.raises(TypeError):
        spool.requeue("q", "text", reason="r")  # type: ignore[arg-type]
    assert spool.counts() == {"queued": 1, "running": 0, "done": 1, "dead": 0}


def test_cancel_a_queued_item(spool: Spool) -> None:
    spool.put("ready", b"r")
    spool.put("later", b"l", not_before=time.time() + 3600)
    assert spool.cancel("later", "superseded by x")
    assert spool.cancel("ready", "superseded by y")
    assert spool.lease("w") is None
    assert spool.counts() == {"queued": 0, "running": 0, "done": 0, "dead": 2}
    path = spool.dead / "later.item"
    assert header_of(path)["last_error"] == "cancelled: superseded by x"
    assert path.read_bytes().endswith(b"\nl")
    assert not spool.cancel("later", "twice")
    assert not spool.put("later", b"")               # still known
    assert spool.requeue("later", reason="not superseded after all")
    lease = spool.lease("w")
    assert lease is not None and lease.id == "later"


def test_cancel_only_queued_items(spool: Spool) -> None:
    assert not spool.cancel("nothing", "r")
    spool.put("a", b"")
    lease = spool.lease("w")
    assert lease is not None
    assert not spool.cancel("a", "running")
    spool.ack(lease)
    assert not spool.cancel("a", "done")
    assert spool.state_of("a") == "done"


def test_cancel_races_with_leases(tmp_path: Path) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    ids = [f"i{n}" for n in range(60)]
    for item_id in ids:
        spool.put(item_id, b"")
    leased: list[str] = []
    cancelled: list[str] = []

    def lease_all() -> None:
        own = Spool(root)
        while (lease := own.lease("w")) is not None:
            leased.append(lease.id)
            own.ack(lease)

    def cancel_all() -> None:
        own = Spool(root)
        cancelled.extend(i for i in reversed(ids) if own.cancel(i, "race"))

    threads = [threading.Thread(target=lease_all), threading.Thread(target=cancel_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(leased + cancelled) == sorted(ids)     # each exactly once
    assert spool.counts() == {"queued": 0, "running": 0, "done": len(leased),
                              "dead": len(cancelled)}


# ---------------------------------------------------------------------- the view
def test_lease_does_not_list_the_queue(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(50):
        spool.put(f"i{n}", b"")
    assert spool.lease("w") is not None              # the first lease may list queued/
    listed: list[str] = []
    real = os.listdir

    def counting(path: str | os.PathLike[str] = ".") -> list[str]:
        listed.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    for n in range(30):
        lease = spool.lease("w")
        assert lease is not None
        if n % 2:
            spool.ack(lease)
        else:
            spool.retry(lease, 0, "again")
        spool.put(f"more-{n}", b"")
    assert listed == []


def test_items_added_by_another_process_are_seen(tmp_path: Path) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    spool.put("mine", b"", not_before=time.time() + 3600)
    assert spool.lease("w") is None                  # the view is listed and has nothing ready
    script = textwrap.dedent("""\
        import sys
        from pathlib import Path
        from hyperion.spool import Spool
        assert Spool(Path(sys.argv[1])).put("theirs", b"x")
    """)
    subprocess.run([sys.executable, "-c", script, str(root)], check=True)
    lease = spool.lease("w")                         # nothing ready: the counter says look
    assert lease is not None and lease.id == "theirs"


def test_spools_of_one_process_share_the_view(tmp_path: Path) -> None:
    a, b = Spool(tmp_path / "s"), Spool(tmp_path / "s")
    assert a.lease("w") is None
    b.put("x", b"")
    lease = a.lease("w")
    assert lease is not None and lease.id == "x"


def test_a_spool_made_before_a_fork_works_in_the_child(spool: Spool) -> None:
    for n in range(3):
        spool.put(f"i{n}", b"")
    assert spool.lease("parent") is not None         # the parent's view is listed
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: report, never raise
        code = 1
        try:
            lease = spool.lease("child")
            ok = lease is not None and f"~{os.getpid()}~" in lease._name
            if lease is not None:
                spool.ack(lease)
            ok = ok and spool.put("from-child", b"") and spool.state_of("from-child") == "queued"
            code = 0 if ok else 1
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"\x00"
    os.close(read)
    os.waitpid(pid, 0)
    assert spool.counts() == {"queued": 2, "running": 1, "done": 1, "dead": 0}
    taken = []
    while (lease := spool.lease("parent")) is not None:   # the child's put is seen too
        taken.append(lease.id)
    assert "from-child" in taken


# ---------------------------------------------------------------------- group commit
def test_group_commit_covers_every_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    (tmp_path / "d").mkdir()
    sync = spool_module._DirSync(str(tmp_path / "d"))
    fsyncs: list[tuple[float, float]] = []
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        start = time.monotonic()
        time.sleep(0.02)
        real(fd)
        fsyncs.append((start, time.monotonic()))

    monkeypatch.setattr(os, "fsync", slow_fsync)
    calls: list[tuple[float, float]] = []
    guard = threading.Lock()
    barrier = threading.Barrier(12)

    def caller() -> None:
        barrier.wait()
        for _ in range(3):
            start = time.monotonic()
            sync.sync()
            with guard:
                calls.append((start, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 36
    assert len(fsyncs) < 36 / 3                      # shared: far fewer fsyncs than calls
    for start, end in calls:
        # Some fsync began after the call began and ended before it returned.
        assert any(start <= f_start and f_end <= end for f_start, f_end in fsyncs)


def test_group_commit_passes_errors_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    sync = spool_module._DirSync(str(tmp_path / "d"))
    failures = [OSError(5, "Input/output error")]
    real = os.fsync

    def flaky(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(OSError):
        sync.sync()
    sync.sync()                                      # the next caller syncs again


def test_concurrent_producers_and_workers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Spool(root)
    errors: list[BaseException] = []
    acked: list[str] = []
    guard = threading.Lock()
    produced = threading.Event()

    def produce(k: int) -> None:
        own = Spool(root)
        try:
            for n in range(40):
                assert own.put(f"p{k}-{n}", f"p{k}-{n}".encode(), priority=n % 3)
        except BaseException as exc:
            errors.append(exc)

    def work() -> None:
        own = Spool(root)
        try:
            while True:
                lease = own.lease("w")
                if lease is None:
                    if produced.is_set() and own.lease("w") is None:
                        return
                    time.sleep(0.001)
                    continue
                assert lease.payload == lease.id.encode()
                own.ack(lease)
                with guard:
                    acked.append(lease.id)
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in producers + workers:
        t.start()
    for t in producers:
        t.join()
    produced.set()
    for t in workers:
        t.join()
    assert errors == []
    while (lease := Spool(root).lease("late")) is not None:   # a put seen after the check
        acked.append(lease.id)
        Spool(root).ack(lease)
    assert sorted(acked) == sorted(f"p{k}-{n}" for k in range(4) for n in range(40))
    assert Spool(root).counts() == {"queued": 0, "running": 0, "done": 160, "dead": 0}


# ---------------------------------------------------------------------- stateful model
IDS = [f"i{n}" for n in range(6)]


@dataclass
class Item:
    state: str              # queued, running, done, dead, pruned
    priority: int
    attempts: int
    order: int
    ready: bool
    payload: bytes


@dataclass
class Held:
    lease: Lease
    expired: bool


class SpoolMachine(RuleBasedStateMachine):
    """The spool against a dict: same answers, no item lost or duplicated."""

    held = Bundle("held")
    lost = Bundle("lost")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.spool = Spool(self.dir / "spool")
        self.items: dict[str, Item] = {}
        self.order = 0
        self.open: dict[str, Held] = {}          # id -> the lease the model says is held

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _enqueue(self, item: Item, ready: bool) -> None:
        self.order += 1
        item.state, item.order, item.ready = "queued", self.order, ready

    @rule(item_id=st.sampled_from(IDS), priority=st.sampled_from([-1, 0, 2]),
          when=st.sampled_from(["none", "past", "future"]))
    def put(self, item_id: str, priority: int, when: str) -> None:
        not_before = {"none": None, "past": time.time() - 5, "future": time.time() + 3600}[when]
        accepted = self.spool.put(item_id, item_id.encode() * 3, priority=priority,
                                  not_before=not_before)
        assert accepted == (item_id not in self.items)      # pruned ids stay known
        if accepted:
            item = Item("queued", priority, 0, 0, True, item_id.encode() * 3)
            self._enqueue(item, when != "future")
            self.items[item_id] = item

    @rule(target=held, ttl=st.sampled_from([60.0, 0.0]))
    def lease(self, ttl: float) -> Held | None:
        ready = [(-it.priority, it.order, i) for i, it in self.items.items()
                 if it.state == "queued" and it.ready]
        lease = self.spool.lease("model", ttl_s=ttl)
        if not ready:
            assert lease is None
            return None
        # Items one sweep returned share an order: any of them may come first.
        first = min(ready)[:2]
        candidates = {i for prio, order, i in ready if (prio, order) == first}
        assert lease is not None and lease.id in candidates, (lease, candidates)
        expected = lease.id
        item = self.items[expected]
        assert lease.attempts == item.attempts and lease.payload == item.payload
        item.state = "running"
        self.open[expected] = Held(lease, expired=ttl == 0)
        return self.open[expected]

    def _current(self, held: Held | None) -> Held | None:
        if held is None or self.open.get(held.lease.id) is not held:
            return None
        return held

    @rule(held=consumes(held))
    def ack(self, held: Held | None) -> None:
        if (h := self._current(held)) is not None:
            self.spool.ack(h.lease)
            self.items[h.lease.id].state = "done"
            del self.open[h.lease.id]

    @rule(held=consumes(held))
    def bury(self, held: Held | None) -> None:
        if (h := self._current(held)) is not None:
            self.spool.bury(h.lease, "failed")
            self.items[h.lease.id].state = "dead"
            del self.open[h.lease.id]

    @rule(held=consumes(held), later=st.booleans())
    def retry(self, held: Held | None, later: bool) -> None:
        if (h := self._current(held)) is not None:
            self.spool.retry(h.lease, 3600 if later else 0, "moved")
            item = self.items[h.lease.id]
            item.attempts += 1
            self._enqueue(item, not later)
            del self.open[h.lease.id]

    @rule(held=held)
    def heartbeat(self, held: Held | None) -> None:
        if (h := self._current(held)) is not None:
            h.lease = self.spool.heartbeat(h.lease, 60)
            h.expired = False

    @rule(target=lost)
    def sweep(self) -> list[Lease]:
        stale = sorted((h for h in self.open.values() if h.expired),
                       key=lambda h: (-self.items[h.lease.id].priority,
                                      self.items[h.lease.id].order))
        time.sleep(0.001)
        assert self.spool.sweep() == len(stale)
        # They go back behind what is queued, in no promised order among themselves.
        self.order += 1
        for h in stale:
            item = self.items[h.lease.id]
            item.attempts += 1
            item.state, item.order, item.ready = "queued", self.order, True
            del self.open[h.lease.id]
        return [h.lease for h in stale]

    @rule(leases=lost)
    def use_lost_lease(self, leases: list[Lease]) -> None:
        for lease in leases:
            with pytest.raises(LeaseLost):
                self.spool.ack(lease)

    @rule(everything=st.booleans())
    def prune(self, everything: bool) -> None:
        finished = [i for i, it in self.items.items() if it.state in ("done", "dead")]
        assert self.spool.prune(0 if everything else 3600) == (len(finished) if everything
                                                              else 0)
        if everything:
            for item_id in finished:
                self.items[item_id].state = "pruned"

    @rule(item_id=st.sampled_from(IDS), new_payload=st.booleans())
    def requeue(self, item_id: str, new_payload: bool) -> None:
        payload = item_id.encode() + b"-requeued" if new_payload else None
        item = self.items.get(item_id)
        done = self.spool.requeue(item_id, payload, reason="operator")
        assert done == (item is not None and item.state == "dead")
        if done and item is not None:
            item.attempts = 0
            if payload is not None:
                item.payload = payload
            self._enqueue(item, True)

    @rule(item_id=st.sampled_from(IDS))
    def cancel(self, item_id: str) -> None:
        item = self.items.get(item_id)
        done = self.spool.cancel(item_id, "superseded")
        assert done == (item is not None and item.state == "queued")
        if done and item is not None:
            item.state = "dead"

    @invariant()
    def agrees(self) -> None:
        expected = dict.fromkeys(("queued", "running", "done", "dead"), 0)
        for item_id, item in self.items.items():
            if item.state != "pruned":
                expected[item.state] += 1
            assert self.spool.state_of(item_id) == (None if item.state == "pruned"
                                                    else item.state)
        assert self.spool.counts() == expected
        for item_id in IDS:
            if item_id not in self.items:
                assert self.spool.state_of(item_id) is None


SpoolMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40,
                                          deadline=None)
TestSpoolModel = SpoolMachine.TestCase


# ---------------------------------------------------------------- waking an idle consumer
def _waiter(spool: Spool, seen: int, timeout_s: float) -> tuple[threading.Thread, list[float]]:
    returned: list[float] = []

    def wait() -> None:
        spool.wait_for_work(seen, timeout_s)
        returned.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, returned


def test_a_put_in_this_process_wakes_an_idle_consumer(spool: Spool) -> None:
    assert spool.lease("w") is None
    seen = spool.additions()
    thread, returned = _waiter(spool, seen, timeout_s=120)
    time.sleep(0.1)
    assert not returned                       # nothing happened: still waiting
    spool.put("a", b"x")
    thread.join(60)
    assert returned and not thread.is_alive()  # woken by the put, long before its timeout
    assert spool.lease("w") is not None


def test_an_addition_between_the_empty_lease_and_the_wait_is_not_missed(spool: Spool) -> None:
    seen = spool.additions()
    assert spool.lease("w") is None
    spool.put("a", b"x")                      # lands before the consumer starts waiting
    started = time.monotonic()
    spool.wait_for_work(seen, 120)
    assert time.monotonic() - started < 60


def test_another_process_put_wakes_an_idle_consumer(spool: Spool) -> None:
    assert spool.lease("w") is None           # the view has listed queued/
    thread, returned = _waiter(spool, spool.additions(), timeout_s=120)
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from hyperion.spool import Spool; Spool(Path(sys.argv[1])).put('b', b'y')",
                    str(spool.root)], check=True)
    thread.join(60)
    assert returned and not thread.is_alive()
    lease = spool.lease("w")
    assert lease is not None and lease.id == "b"


def test_waiting_without_additions_lasts_its_timeout(spool: Spool) -> None:
    assert spool.lease("w") is None
    spool.put("later", b"x", not_before=time.time() + 3600)   # not ready: no reason to wake
    assert spool.lease("w") is None
    started = time.monotonic()
    spool.wait_for_work(spool.additions(), 0.3)
    assert time.monotonic() - started >= 0.25
