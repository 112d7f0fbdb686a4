"""`hyperion top`, headless through textual's Pilot, against a real state dir.

The records are made with RecordStore.create/transition, so audit.jsonl holds the lines those
calls write. Each test drives the app with keys and reads what its widgets show.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static
from textual.widgets.data_table import RowKey

from hyperion.config import Config
from hyperion.errors import Code, ErrorInfo
from hyperion.instances import Registration
from hyperion.records import CheckResult, Record, RecordStore, Source, State
from hyperion.spool import Spool
from hyperion.top import FILTERS, TopApp, read_events, run_top, tail_lines

SIZE = (160, 50)


def record(rid: str, state: State, created_at: str, **fields: Any) -> Record:
    return Record(id=rid, kind="change", state=state, title=f"title of {rid}", repo="demo",
                  target="main", agent="codex-7", source=Source(kind="inbox", name=f"{rid}.json"),
                  original_sha256="0" * 64, created_at=created_at, updated_at=created_at,
                  **fields)


def populate(state_dir: Path) -> RecordStore:
    """Five records, created a-queued first and e-held last."""
    store = RecordStore(state_dir)
    store.create(record("a-queued", State.QUEUED, "2024-05-01T10:00:01.000Z"), b"{}",
                 by="inbox", reason="accepted")
    store.create(record("b-landed", State.QUEUED, "2024-05-01T10:00:02.000Z"), b"{}",
                 by="inbox", reason="accepted")
    store.transition("b-landed", State.RUNNING, by="worker-0", reason="leased")
    store.transition("b-landed", State.LANDED, by="worker-0", reason="checks passed",
                     landed_commit="0123456789abcdef0123456789abcdef01234567")
    store.create(record("c-failed", State.QUEUED, "2024-05-01T10:00:03.000Z"), b"{}",
                 by="inbox", reason="accepted")
    store.transition("c-failed", State.RUNNING, by="worker-1", reason="leased")
    store.transition(
        "c-failed", State.FAILED, by="worker-1", reason="check unit failed",
        error=ErrorInfo(code=Code.CHECK_FAILED, path="checks[0]",
                        message="The check unit exited with status 1; see its output."),
        checks=[CheckResult(name="unit", ok=False, exit_code=1, timed_out=False, seconds=0.5,
                            artifact="artifacts/c-failed/unit.log",
                            tail="collected 3 items\nFAILED test_rounds.py::test_limit\n")])
    store.create(record("d-rejected", State.REJECTED, "2024-05-01T10:00:04.000Z",
                        error=ErrorInfo(code=Code.INVALID_JSON, path="d-rejected.json",
                                        message="The file is not valid JSON.")),
                 b"{", by="inbox", reason="invalid_json")
    store.create(record("e-held", State.HELD, "2024-05-01T10:00:05.000Z",
                        policy_rules=["ci-needs-a-human"]),
                 b"{}", by="inbox", reason="policy: require_approval")
    return store


def drive(app: TopApp, steps: Callable[[Pilot[int], TopApp], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await steps(pilot, app)
    asyncio.run(main())


def shown(app: TopApp) -> list[str]:
    table = app.table
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def text_of(app: TopApp, widget_id: str) -> str:
    return str(app.query_one(widget_id, Static).content)


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    populate(state)
    return state


def test_table_newest_first_with_header_and_events(state_dir: Path) -> None:
    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        assert shown(app) == ["e-held", "d-rejected", "c-failed", "b-landed", "a-queued"]
        row = [str(cell) for cell in app.table.get_row_at(2)]
        assert row == ["c-failed", "failed", "demo/main", "0", row[4],
                       "check_failed: The check unit exited with status 1; see its output."]
        assert str(app.table.get_row_at(0)[5]) == "title of e-held"
        status = text_of(app, "#status")
        assert "daemon: not running" in status
        assert "records: queued 1, held 1, landed 1, rejected 1, failed 1" in status
        assert "filter: all (5 of 5)" in status
        events = text_of(app, "#events").splitlines()
        assert events[0] == "recent events"
        assert "e-held" in events[1] and "- -> held" in events[1]
        assert any("c-failed" in e and "running -> failed" in e and "check unit failed" in e
                   for e in events)
        assert len(events) == 1 + 9           # every audit line written so far

    drive(TopApp(Config(state_dir=state_dir)), steps)


def test_f_cycles_the_state_filter(state_dir: Path) -> None:
    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        for _ in range(FILTERS.index("failed")):
            await pilot.press("f")
        assert app.state_filter == "failed"
        assert shown(app) == ["c-failed"]
        assert "filter: failed (1 of 5)" in text_of(app, "#status")
        assert "The check unit exited" in text_of(app, "#detail")
        await pilot.press("f")                                    # rolled_back: none
        assert app.state_filter == "rolled_back" and shown(app) == []
        assert text_of(app, "#detail") == "no records in state rolled_back"
        for _ in range(len(FILTERS) - FILTERS.index("rolled_back")):
            await pilot.press("f")
        assert app.state_filter is None and len(shown(app)) == 5

    drive(TopApp(Config(state_dir=state_dir)), steps)


def test_initial_filter_and_unknown_state(state_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        assert shown(app) == ["e-held"]
        assert "ci-needs-a-human" in text_of(app, "#detail")

    drive(TopApp(Config(state_dir=state_dir), state_filter="held"), steps)
    with pytest.raises(ValueError, match="one of queued"):
        TopApp(Config(state_dir=state_dir), state_filter="bogus")
    assert run_top(Config(state_dir=state_dir), state_filter="bogus") == 2
    assert "--state 'bogus'" in capsys.readouterr().err


def test_selecting_a_row_shows_its_detail(state_dir: Path) -> None:
    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        assert "e-held" in text_of(app, "#detail").splitlines()[0]
        await pilot.press("down", "down")
        assert app.selected_record is not None and app.selected_record.id == "c-failed"
        detail = text_of(app, "#detail")
        assert "title    title of c-failed" in detail
        assert "agent    codex-7" in detail
        assert "source   inbox: c-failed.json" in detail
        assert "error    check_failed" in detail
        assert "message The check unit exited with status 1; see its output." in detail
        assert "  path   checks[0]" in detail
        assert "unit: exit 1 in 0.50 s  artifacts/c-failed/unit.log" in detail
        assert "| FAILED test_rounds.py::test_limit" in detail
        history = [line for line in detail.splitlines() if " -> " in line and " by " in line]
        assert len(history) == 3
        assert history[0].endswith("- -> queued by inbox: accepted")
        assert history[1].endswith("queued -> running by worker-1: leased")
        assert history[2].endswith("running -> failed by worker-1: check unit failed")
        await pilot.press("down")
        detail = text_of(app, "#detail")
        assert "landed   0123456789abcdef0123456789abcdef01234567" in detail
        assert "error" not in detail
        await pilot.press("up")
        assert app.selected_record is not None and app.selected_record.id == "c-failed"

    drive(TopApp(Config(state_dir=state_dir)), steps)


def test_new_records_appear_after_r_and_after_the_interval(state_dir: Path) -> None:
    store = RecordStore(state_dir)

    async def by_key(pilot: Pilot[int], app: TopApp) -> None:
        await pilot.press("down")                                 # select d-rejected
        store.create(record("f-new", State.QUEUED, "2024-05-01T10:00:06.000Z"), b"{}",
                     by="cli", reason="accepted")
        assert "f-new" not in shown(app)                          # refresh_s is 60 s
        await pilot.press("r")
        assert shown(app)[0] == "f-new"
        assert app.selected_record is not None and app.selected_record.id == "d-rejected"
        assert "queued 2" in text_of(app, "#status")
        assert "f-new" in text_of(app, "#events").splitlines()[1]

    drive(TopApp(Config(state_dir=state_dir), refresh_s=60), by_key)

    async def by_timer(pilot: Pilot[int], app: TopApp) -> None:
        store.create(record("g-new", State.QUEUED, "2024-05-01T10:00:07.000Z"), b"{}",
                     by="cli", reason="accepted")
        store.transition("a-queued", State.RUNNING, by="worker-0", reason="leased")
        for _ in range(40):
            await pilot.pause(0.05)
            if shown(app)[:1] == ["g-new"]:
                break
        assert shown(app)[0] == "g-new"
        assert str(app.table.get_row_at(len(shown(app)) - 1)[1]) == "running"

    drive(TopApp(Config(state_dir=state_dir), refresh_s=0.1), by_timer)


def test_header_shows_live_daemons_and_spool_counts(state_dir: Path) -> None:
    spool = Spool(state_dir / "spool")
    spool.put("a-queued", b"{}")
    lease = spool.lease("worker-0")
    assert lease is not None
    spool.put("f-next", b"{}")
    registration = Registration(state_dir, {"pid": os.getpid(), "host": "testhost",
                                            "workers": 2, "started_at": "2024-05-01T10:00:00Z"})
    registration.update({"workers_busy": 1, "working_on": {"worker-0": "a-queued",
                                                           "worker-1": None}})
    try:
        async def steps(pilot: Pilot[int], app: TopApp) -> None:
            status = text_of(app, "#status")
            assert f"daemon pid {os.getpid()} on testhost, up " in status
            assert "1/2 workers busy: a-queued" in status
            assert "spool: queued 1, running 1, done 0, dead 0" in status

        drive(TopApp(Config(state_dir=state_dir)), steps)
    finally:
        registration.close()


def test_never_writes_to_the_state_dir(tmp_path: Path) -> None:
    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        await pilot.press("down", "f", "f", "r", "up", "f")
        await pilot.pause(0.15)

    # A populated state dir, one with no records/ or spool/ yet, and one that does not exist.
    full = tmp_path / "full"
    populate(full)
    (full / "spool" / "queued").mkdir(parents=True)             # a partial spool
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "audit.jsonl").write_bytes(b'{"id": "x", "to": "queued"}\n')
    missing = tmp_path / "missing"
    for state in (full, bare, missing):
        before = files_under(tmp_path)
        drive(TopApp(Config(state_dir=state), refresh_s=0.05), steps)
        assert files_under(tmp_path) == before, state
    assert not missing.exists()


def test_titles_are_shown_literally(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.create(record("x", State.QUEUED, "2024-05-01T10:00:01.000Z").model_copy(
        update={"title": "[bold red]not markup[/] \x1b[2J\u202egnirts"}), b"{}",
        by="inbox", reason="accepted")

    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        expected = "[bold red]not markup[/] \\x1b[2J\\u202egnirts"
        assert str(app.table.get_row_at(0)[5]) == expected
        assert f"title    {expected}" in text_of(app, "#detail")

    drive(TopApp(Config(state_dir=tmp_path)), steps)


def test_audit_tail_reads_only_complete_lines(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines = [f'{{"id": "r{i:05d}", "to": "queued", "reason": "{"x" * 50}"}}' for i in range(3000)]
    audit.write_text("\n".join(lines) + "\n" + '{"id": "partial", "to"')
    tail = tail_lines(audit, 20)
    assert [line.decode() for line in tail] == lines[-20:]
    events = read_events(audit, 20)
    assert [e["id"] for e in events] == [f"r{i:05d}" for i in range(2999, 2979, -1)]
    assert tail_lines(tmp_path / "none.jsonl", 20) == []
    short = tmp_path / "short.jsonl"
    short.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    assert [e["id"] for e in read_events(short, 20)] == ["b", "a"]


def test_a_row_highlight_arriving_during_shutdown_is_ignored(state_dir: Path) -> None:
    # CI once failed here: a cursor move's RowHighlighted event was handled after the table
    # had been removed on exit, and query_one raised NoMatches out of the handler.
    populate(state_dir)

    async def steps(pilot: Pilot[int], app: TopApp) -> None:
        table = app.table
        late = DataTable.RowHighlighted(table, 0, RowKey("a-queued"))
        await table.remove()
        app.on_data_table_row_highlighted(late)

    drive(TopApp(Config(state_dir=state_dir), refresh_s=60), steps)
