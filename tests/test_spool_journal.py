"""The spool's journal: put and ack durable with one overwrite fdatasync and no directory fsync,
and after a system crash (a new boot id) the journal makes every accepted put and every
returned ack whole again, whatever part of their file operations the disk had lost."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperion.spool as spool_module
import hyperion.spool_journal as journal_module
from hyperion.spool import Spool

STATES = ("queued", "running", "done", "dead")


def files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def reboot(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new boot looks like to the spool: another boot id than the one the directory
    was made whole for, and a process that has not opened it yet."""
    (root / "journal" / "boot").write_text("an-earlier-boot\n")
    monkeypatch.setattr(spool_module, "_replayed", set())


def where(root: Path, item_id: str) -> list[str]:
    """Every state directory that holds a file of ``item_id``."""
    found = []
    for state in STATES:
        for name in files(root / state):
            if spool_module._name_id(name) == item_id:
                found.append(state)
    return found


def test_put_and_ack_sync_the_journal_not_directories(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "s")
    assert spool.put("warm-up", b"x")           # the segment is made (and synced) once
    calls: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "fdatasync",
                        lambda fd: (calls.append("fdatasync"), real_fdatasync(fd))[1])
    assert spool.put("a", b"payload")
    assert calls == ["fdatasync"]
    lease = spool.lease("w")
    assert lease is not None and lease.id == "warm-up"
    assert calls == ["fdatasync"]               # a lease syncs nothing
    spool.ack(lease)
    assert calls == ["fdatasync", "fdatasync"]
    segments = [n for n in files(tmp_path / "s" / "journal") if n.endswith(".log")]
    assert len(segments) == 1


def test_a_system_crash_that_lost_every_unsynced_operation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    for item_id in ("a", "b", "c", "d"):
        assert spool.put(item_id, f"payload {item_id}".encode(), priority=1)
    first = spool.lease("w")
    assert first is not None and first.id == "a"
    spool.ack(first)
    held = spool.lease("w")
    assert held is not None and held.id == "b"
    # The worst a power loss can do to what put and ack did not sync: every name they made
    # is gone, and the data of a key that survived never reached the disk.
    for state in ("queued", "running", "done"):
        for name in files(root / state):
            os.unlink(root / state / name)
    for item_id in ("a", "b", "c"):
        os.unlink(root / "keys" / item_id)
    (root / "keys" / "d").write_bytes(b"")
    reboot(root, monkeypatch)
    again = Spool(root)
    assert where(root, "a") == ["done"]
    for item_id in ("b", "c", "d"):
        assert where(root, item_id) == ["queued"]
    assert (root / "journal" / "boot").read_text().strip() == spool_module._BOOT_ID
    assert [n for n in files(root / "journal") if n.endswith(".log")] == []
    for item_id in ("a", "b", "c", "d"):
        assert not again.put(item_id, b"other")  # ids stay known
    taken = {}
    while (lease := again.lease("w")) is not None:
        taken[lease.id] = lease.payload
        again.ack(lease)
    assert taken == {i: f"payload {i}".encode() for i in ("b", "c", "d")}


def test_replay_removes_a_stale_name_of_an_acked_item(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a filesystem journal a crash can keep the new name (done/) and the old one
    (queued/) of a rename: the acked item must not run again."""
    root = tmp_path / "s"
    spool = Spool(root)
    assert spool.put("a", b"x")
    queue_name = files(root / "queued")[0]
    lease = spool.lease("w")
    assert lease is not None
    spool.ack(lease)
    os.link(root / "done" / "a.item", root / "queued" / queue_name)
    reboot(root, monkeypatch)
    again = Spool(root)
    assert where(root, "a") == ["done"]
    assert again.lease("w") is None


def test_replay_skips_what_moved_on_or_was_pruned(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    for item_id in ("buried", "pruned", "retried"):
        assert spool.put(item_id, b"x")
    leases = {lease.id: lease for lease in iter(lambda: spool.lease("w"), None)}
    spool.bury(leases["buried"], "no")
    spool.ack(leases["pruned"])
    spool.retry(leases["retried"], 3600, "later")
    assert spool.prune(0) == 2                    # buried and pruned
    reboot(root, monkeypatch)
    again = Spool(root)
    assert where(root, "buried") == []
    assert where(root, "pruned") == []
    assert where(root, "retried") == ["queued"]
    assert not again.put("pruned", b"x") and not again.put("buried", b"x")


def test_a_torn_record_ends_the_replay_of_its_segment(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    assert spool.put("kept", b"x")
    assert spool.put("torn", b"y")
    segment = next(p for p in (root / "journal").iterdir() if p.suffix == ".log")
    data = bytearray(segment.read_bytes())
    second = data.index(journal_module.MAGIC, 4)
    data[second + 20] ^= 0xFF                     # the put of "torn" never completed
    segment.write_bytes(bytes(data))
    for state in ("queued",):
        for name in files(root / state):
            os.unlink(root / state / name)
    for item_id in ("kept", "torn"):
        os.unlink(root / "keys" / item_id)
    reboot(root, monkeypatch)
    Spool(root)
    assert where(root, "kept") == ["queued"]
    assert where(root, "torn") == []


def test_a_full_segment_is_retired_after_a_sync(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "FIRST_SEGMENT_BYTES", 4096)
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 4096)
    syncs: list[str] = []
    real = journal_module.syncfs
    monkeypatch.setattr(journal_module, "syncfs", lambda path: (syncs.append(path), real(path)))
    spool = Spool(tmp_path / "s")
    for i in range(40):
        assert spool.put(f"i{i}", b"p" * 500)
    assert syncs                                  # segments were retired ...
    segments = [n for n in files(tmp_path / "s" / "journal") if n.endswith(".log")]
    assert len(segments) == 1                     # ... and removed once synced
    records = list(journal_module.read_segment(
        (tmp_path / "s" / "journal" / segments[0]).read_bytes()))
    assert records and all(isinstance(r, journal_module.Put) for r in records)


def test_the_sweeper_removes_segments_of_gone_processes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Spool(root)
    code = ("import sys; from pathlib import Path; from hyperion.spool import Spool; "
            "Spool(Path(sys.argv[1])).put('from-child', b'x')")
    subprocess.run([os.sys.executable, "-c", code, str(root)], check=True)
    assert len([n for n in files(root / "journal") if n.endswith(".log")]) == 1
    spool = Spool(root)
    spool.sweep()
    assert [n for n in files(root / "journal") if n.endswith(".log")] == []
    assert spool.state_of("from-child") == "queued"


def test_without_a_boot_id_put_and_ack_sync_directories(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "_BOOT_ID", None)
    spool = Spool(tmp_path / "s")
    assert spool.put("a", b"x")
    lease = spool.lease("w")
    assert lease is not None
    spool.ack(lease)
    assert not (tmp_path / "s" / "journal").exists()
    assert spool._sync[spool.queued].fsyncs == 1 and spool._sync[spool.done].fsyncs == 1


def test_threads_share_the_journal_fdatasync(tmp_path: Path) -> None:
    root = tmp_path / "s"
    keep = Spool(root)                            # keeps the process's journal of root alive
    keep.put("warm-up", b"x")
    barrier = threading.Barrier(8)

    def produce(k: int) -> None:
        own = Spool(root)
        barrier.wait()
        for n in range(25):
            assert own.put(f"t{k}-{n}", b"x")

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spool = Spool(root)
    journal = spool._journal
    assert journal is not None
    assert spool.counts()["queued"] == 201
    assert journal.fdatasyncs <= 201


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.sampled_from(["put", "put", "lease", "ack", "ack"]), min_size=1,
                    max_size=40),
       snapshot_at=st.integers(min_value=0, max_value=40), seed=st.integers(0, 2**16))
def test_replay_after_any_crash_keeps_every_put_and_every_ack(
        tmp_path_factory: pytest.TempPathFactory, ops: list[str], snapshot_at: int,
        seed: int) -> None:
    """The disk at the crash holds an older state of the directories (what the kernel had
    written back, taken at ``snapshot_at``) and the journal as synced at the end; some names
    made since may have reached the disk too. Replay: every put exists exactly once, every
    returned ack is in done/, ids stay known."""
    base = tmp_path_factory.mktemp("crash")
    root = base / "s"
    spool = Spool(root)
    rng = random.Random(seed)
    put: list[str] = []
    acked: list[str] = []
    held = []
    snapshot = base / "snapshot"
    for i, op in enumerate(ops):
        if i == snapshot_at:
            subprocess.run(["cp", "-a", str(root), str(snapshot)], check=True)
        if op == "put":
            item_id = f"i{i}"
            assert spool.put(item_id, item_id.encode())
            put.append(item_id)
        elif op == "lease":
            if (lease := spool.lease("w")) is not None:
                held.append(lease)
        elif held:
            lease = held.pop(rng.randrange(len(held)))
            spool.ack(lease)
            acked.append(lease.id)
    if not snapshot.exists():
        subprocess.run(["cp", "-a", str(root), str(snapshot)], check=True)
    crashed = base / "crashed"
    subprocess.run(["cp", "-a", str(snapshot), str(crashed)], check=True)
    for name in files(crashed / "journal"):
        (crashed / "journal" / name).unlink()
    for name in files(root / "journal"):
        subprocess.run(["cp", "-a", str(root / "journal" / name), str(crashed / "journal")],
                       check=True)
    # Some later names reached the disk as well (written back before the crash).
    for item_id in put:
        if rng.random() < 0.3 and not (crashed / "keys" / item_id).exists():
            os.link(root / "keys" / item_id, crashed / "keys" / item_id)
    (crashed / "journal" / "boot").write_text("an-earlier-boot\n")
    saved = spool_module._replayed
    spool_module._replayed = set()
    try:
        again = Spool(crashed)
    finally:
        spool_module._replayed = saved
    for item_id in put:
        states = where(crashed, item_id)
        assert len(states) == 1, (item_id, states)
        if item_id in acked:
            assert states == ["done"], item_id
        assert not again.put(item_id, b"again")
    left = set()
    again.sweep()
    while (lease := again.lease("w2")) is not None:
        assert lease.payload == lease.id.encode()
        left.add(lease.id)
        again.ack(lease)
    assert left <= set(put) - set(acked)


def test_a_forked_child_writes_its_own_segment(tmp_path: Path) -> None:
    root = tmp_path / "s"
    spool = Spool(root)
    assert spool.put("parent-1", b"x")
    pid = os.fork()
    if pid == 0:                                  # the child: the Spool made before the fork
        code = 0 if spool.put("child-1", b"y") else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spool.put("parent-2", b"z")
    segments = sorted(p for p in (root / "journal").iterdir() if p.suffix == ".log")
    assert len(segments) == 2
    ids = sorted(record.id for segment in segments
                 for record in journal_module.read_segment(segment.read_bytes()))
    assert ids == ["child-1", "parent-1", "parent-2"]


def test_an_unused_journal_closes_its_segment(tmp_path: Path) -> None:
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    spool = Spool(tmp_path / "s")
    assert spool.put("a", b"x")
    before = open_fds()
    del spool
    gc.collect()
    assert open_fds() < before
