"""Transitions written behind (records.py): the caller goes on at once, the record reads as if
written at once within the process, its history keeps its order, and no check runs before
its request's `running` mark is on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Setup, queued_record, record_lock_held_elsewhere

from hyperion.records import Record, RecordStore, State


def _on_disk(state_dir: Path, record_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (state_dir / "records" / f"{record_id}.json").read_text())
    return data


def test_a_transition_written_behind_returns_before_it_can_be_written(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.create(queued_record("r-1"), b"{}", by="intake", reason="accepted")
    with record_lock_held_elsewhere(tmp_path, "r-1"):
        started = time.monotonic()
        record = store.transition_behind("r-1", State.RUNNING, by="w0", reason="attempt 1",
                                         attempts=1)
        assert time.monotonic() - started < 5
        # What the caller gets is the record as it will be...
        assert record.state is State.RUNNING and record.attempts == 1
        assert [h.to for h in record.history] == [State.QUEUED, State.RUNNING]
        # ...while the file still holds the old one: the other process has the lock.
        time.sleep(0.2)
        assert _on_disk(tmp_path, "r-1")["state"] == "queued"
    store.flush()
    assert _on_disk(tmp_path, "r-1")["state"] == "running"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["id"], a["to"]) for a in audit] == [("r-1", "queued"), ("r-1", "running")]


def test_reads_and_writes_of_the_record_wait_for_what_is_written_behind(
        tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.create(queued_record("r-2"), b"{}", by="intake", reason="accepted")
    seen: list[Record | None] = []
    with record_lock_held_elsewhere(tmp_path, "r-2"):
        store.transition_behind("r-2", State.RUNNING, by="w0", reason="attempt 1")
        reader = threading.Thread(target=lambda: seen.append(store.get("r-2")))
        writer = threading.Thread(target=lambda: store.transition(
            "r-2", State.LANDED, by="land-stage", reason="landed"))
        reader.start()
        writer.start()
        time.sleep(0.3)
        assert reader.is_alive() and writer.is_alive()      # both wait for the lock's holder
    reader.join(30)
    writer.join(30)
    final = store.get("r-2")
    assert final is not None and final.state is State.LANDED
    assert [h.to for h in final.history] == [State.QUEUED, State.RUNNING, State.LANDED]
    # The reader saw the record at least as far as the transition written behind.
    assert seen and seen[0] is not None and seen[0].state in (State.RUNNING, State.LANDED)


def test_a_write_behind_of_a_record_gone_meanwhile_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordStore(tmp_path)
    try:
        store.transition_behind("missing", State.RUNNING, by="w0", reason="attempt 1")
    except KeyError:
        pass                     # a record that does not exist is refused at once
    else:
        raise AssertionError("a missing record was accepted")
    assert store.create(queued_record("r-3"), b"{}", by="intake", reason="accepted")
    with record_lock_held_elsewhere(tmp_path, "r-3"):
        store.transition_behind("r-3", State.RUNNING, by="w0", reason="attempt 1")
        (tmp_path / "records" / "r-3.json").unlink()     # gone before the write is made
    store.flush()
    assert store.get("r-3") is None
    assert any("could not record r-3 as running" in r.getMessage() for r in caplog.records)


def test_no_check_runs_before_its_request_is_marked_running_on_disk(setup: Setup) -> None:
    """The worker writes the `running` mark behind; a check (code hyperion does not trust,
    which may kill it) must still find that mark on disk. The record's lock is held by
    another process meanwhile, so the mark cannot be written until it is let go."""
    seen = setup.root / "seen.json"
    check = setup.root / "look.py"
    record_file = setup.state / "records" / "look-1.json"
    check.write_text(
        "import json, pathlib\n"
        f"record = json.loads(pathlib.Path({str(record_file)!r}).read_text())\n"
        f"pathlib.Path({str(seen)!r}).write_text(json.dumps(record['state']))\n")
    setup.config.write_text(setup.config.read_text().replace('"check.py"',
                                                             json.dumps(str(check))))
    request = setup.root / "look.json"
    request.write_text(json.dumps(setup.request("look-1", {"app.py": "VALUE = 5\n"})))
    out = setup.cli("submit", str(request))
    assert out.returncode == 0, out.stderr
    with record_lock_held_elsewhere(setup.state, "look-1"):
        run = subprocess.Popen([sys.executable, "-m", "hyperion", "--config",
                                str(setup.config), "run", "--once"], cwd=setup.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert not seen.exists()          # the check waits for the mark
        assert run.poll() is None
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert json.loads(seen.read_text()) == "running"
    record = setup.record("look-1")
    assert record["state"] == "landed", record
    assert [h["to"] for h in record["history"]] == ["queued", "running", "landed"]


def test_an_update_written_behind_is_on_disk_once_written_returns(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.create(queued_record("r-4"), b"{}", by="intake", reason="accepted")
    with record_lock_held_elsewhere(tmp_path, "r-4"):
        store.update_behind("r-4", applied_onto="a" * 40)
        time.sleep(0.2)
        assert _on_disk(tmp_path, "r-4")["applied_onto"] is None   # not yet: lock held
        waiter = threading.Thread(target=store.written, args=("r-4",))
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive()                                    # written() waits
    waiter.join(30)
    assert not waiter.is_alive()
    assert _on_disk(tmp_path, "r-4")["applied_onto"] == "a" * 40


def test_an_update_written_behind_that_failed_is_raised_by_written(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.create(queued_record("r-5"), b"{}", by="intake", reason="accepted")
    with record_lock_held_elsewhere(tmp_path, "r-5"):
        store.update_behind("r-5", applied_onto="b" * 40)
        (tmp_path / "records" / "r-5.json").unlink()     # gone before the write is made
    with pytest.raises(KeyError):
        store.written("r-5")
    store.written("r-5")                                  # raised once, then forgotten
