"""Record writers: one at a time per record across processes, and writers of different
records do not wait for each other (the worker and its landing stage write at once)."""

from __future__ import annotations

import subprocess
import sys
import threading
import zlib
from pathlib import Path

from conftest import queued_record, record_lock_held_elsewhere

from hyperion.records import LOCK_STRIPES, RecordStore, State

WRITER = """\
import sys
from pathlib import Path
from hyperion.records import RecordStore, State
store = RecordStore(Path(sys.argv[1]))
for n in range(int(sys.argv[3])):
    store.transition(sys.argv[2], State.QUEUED, by=f"writer-{sys.argv[4]}", reason=str(n))
"""

def _stripe(rid: str) -> int:
    return zlib.crc32(rid.encode()) % LOCK_STRIPES


def test_concurrent_writers_of_one_record_lose_no_transition(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.create(queued_record("shared-1"), b"{}", by="cli", reason="accepted")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "shared-1",
                                 "40", str(n)]) for n in range(3)]
    for writer in writers:
        assert writer.wait(120) == 0
    record = store.get("shared-1")
    assert record is not None and len(record.history) == 1 + 3 * 40
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3 * 40


def test_a_record_is_written_while_another_records_writer_holds_its_lock(
        tmp_path: Path) -> None:
    held_id = "held-1"
    other = next(f"other-{n}" for n in range(100) if _stripe(f"other-{n}") != _stripe(held_id))
    same = next(f"same-{n}" for n in range(1000) if _stripe(f"same-{n}") == _stripe(held_id))
    store = RecordStore(tmp_path)
    for rid in (held_id, other, same):
        assert store.create(queued_record(rid), b"{}", by="cli", reason="accepted")
    with record_lock_held_elsewhere(tmp_path, held_id):
        done = {rid: threading.Event() for rid in (other, same)}

        def write(rid: str) -> None:
            store.transition(rid, State.RUNNING, by="worker", reason="leased")
            done[rid].set()

        for rid in done:
            threading.Thread(target=write, args=(rid,), daemon=True).start()
        assert done[other].wait(30)               # another stripe: not held up
        assert not done[same].is_set()            # the held record's stripe: waits its turn
    assert done[same].wait(30)
    written = store.get(same)
    assert written is not None and written.state is State.RUNNING
