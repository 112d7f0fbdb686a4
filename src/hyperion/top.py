"""`hyperion top`: a live, read-only terminal view of the queue and recent events (textual).

The screen has four parts: a status line (the running daemons from ``instances.live``, the
spool's counts and the records' counts by state), the table of records newest first, a detail
pane for the selected record, and the last lines of ``audit.jsonl``. Everything is re-read from
the state directory every ``refresh_s`` seconds.

It never writes to the state directory: the records are read only when records/ exists (a
``RecordStore`` creates it otherwise), the spool is counted through ``Spool`` only when all of
its folders exist (a ``Spool`` creates the missing ones), and the audit log is read from its
end. The one exception is ``instances.live``, which removes the status files of daemons that
are gone, as ``hyperion status`` does.

Only ``hyperion top`` imports this module; nothing else in hyperion depends on textual.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Static

from hyperion.config import Config
from hyperion.instances import live
from hyperion.records import Record, RecordStore, State
from hyperion.spool import ITEM_SUFFIX, STATES, Spool

FILTERS: tuple[str | None, ...] = (None, *(s.value for s in State))
"""What `f` cycles through: every record, then one state at a time."""

EVENT_LINES = 20
COLUMNS = ("ID", "STATE", "REPO/TARGET", "TRIES", "UPDATED", "ERROR / TITLE")
_SPOOL_DIRS = ("tmp", *STATES, "keys")
_STATE_STYLE = {
    State.QUEUED: "", State.RUNNING: "bold cyan", State.HELD: "bold yellow",
    State.LANDED: "green", State.REJECTED: "red", State.FAILED: "bold red",
    State.ROLLED_BACK: "magenta", State.CANCELLED: "dim",
    State.VERIFIED: "cyan",
}


# ---------------------------------------------------------------- reading the state dir

@dataclass(frozen=True)
class Snapshot:
    """What the state directory held at ``taken_at``. ``events`` are newest first."""

    state_dir: Path
    exists: bool
    daemons: list[dict[str, Any]] = field(default_factory=list)
    queue: dict[str, int] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def by_state(self) -> dict[str, int]:
        counts = Counter(r.state.value for r in self.records)
        return {s.value: counts[s.value] for s in State if counts[s.value]}


class StateReader:
    """Reads a state directory without writing to it; keeps its RecordStore and Spool."""

    def __init__(self, state_dir: Path, *, event_lines: int = EVENT_LINES) -> None:
        self.state_dir = state_dir
        self.event_lines = event_lines
        self._store: RecordStore | None = None
        self._spool: Spool | None = None

    def read(self) -> Snapshot:
        state = self.state_dir
        if not state.is_dir():
            return Snapshot(state_dir=state, exists=False)
        return Snapshot(state_dir=state, exists=True, daemons=live(state),
                        queue=self._queue(), records=self._records(),
                        events=read_events(state / "audit.jsonl", self.event_lines))

    def _records(self) -> list[Record]:
        if self._store is None:
            if not (self.state_dir / "records").is_dir():
                return []
            self._store = RecordStore(self.state_dir)
        try:
            return self._store.all()
        except FileNotFoundError:          # records/ removed under us
            self._store = None
            return []

    def _queue(self) -> dict[str, int]:
        root = self.state_dir / "spool"
        if not root.is_dir():
            return {}
        if self._spool is None and all((root / d).is_dir() for d in _SPOOL_DIRS):
            self._spool = Spool(root)
        if self._spool is not None:
            return self._spool.counts()
        # A partial spool (never a daemon's): count item files without creating folders.
        counts = {}
        for state in STATES:
            try:
                names = os.listdir(root / state)
            except FileNotFoundError:
                names = []
            counts[state] = sum(1 for n in names
                                if n.endswith(ITEM_SUFFIX) and not n.startswith("."))
        return counts


def tail_lines(path: Path, count: int, *, block: int = 8192) -> list[bytes]:
    """The last ``count`` complete lines of ``path`` (oldest first), reading from its end."""
    if count <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        end = os.fstat(fd).st_size
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(block, pos)
            pos -= step
            data = os.pread(fd, step, pos) + data
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines.pop()                        # a line still being written
    else:
        lines.pop()                        # the empty string after the last newline
    if pos > 0 and lines:
        lines.pop(0)                       # the first line may be cut
    return [line for line in lines if line.strip()][-count:]


def read_events(path: Path, count: int = EVENT_LINES) -> list[dict[str, Any]]:
    """The last ``count`` audit events, newest first; unreadable lines are skipped."""
    events = []
    for line in tail_lines(path, count):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    events.reverse()
    return events


# ---------------------------------------------------------------- formatting

def clean(value: object, limit: int | None = None, *, newlines: bool = False) -> str:
    """``value`` as text safe for a terminal: control, format and separator characters are
    shown escaped (so a title cannot move the cursor or reorder text), cut to ``limit``."""
    text = "" if value is None else str(value)
    out = []
    for ch in text:
        if newlines and ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[: max(limit - 1, 0)] + "…"
    return result


def short_time(stamp: str | None) -> str:
    """``2024-05-01T12:03:04.567Z`` -> ``05-01 12:03:04`` (UTC, as stored)."""
    if not stamp:
        return "-"
    if len(stamp) >= 19 and stamp[10] == "T":
        return f"{stamp[5:10]} {stamp[11:19]}"
    return clean(stamp, 19)


def duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _uptime(daemon: dict[str, Any], now: datetime) -> float:
    started = daemon.get("started_at")
    if isinstance(started, str):
        try:
            return (now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
        except ValueError:
            pass
    uptime = daemon.get("uptime_s")
    return float(uptime) if isinstance(uptime, int | float) else 0.0


def daemon_line(daemon: dict[str, Any], now: datetime) -> str:
    busy_ids = [clean(v, 40) for v in (daemon.get("working_on") or {}).values() if v]
    line = (f"daemon pid {clean(daemon.get('pid'))} on {clean(daemon.get('host'), 40)}, "
            f"up {duration(_uptime(daemon, now))}, "
            f"{clean(daemon.get('workers_busy', 0))}/{clean(daemon.get('workers', '?'))} "
            "workers busy")
    if busy_ids:
        line += ": " + ", ".join(busy_ids)
    return line


def record_cells(record: Record) -> tuple[str, ...]:
    """One table row, as plain strings (the order of COLUMNS)."""
    if record.error is not None:
        detail = f"{record.error.code.value}: {record.error.message}"
    else:
        detail = record.title
    return (clean(record.id, 48), record.state.value,
            f"{clean(record.repo or '-', 24)}/{clean(record.target or '-', 24)}",
            str(record.attempts), short_time(record.updated_at), clean(detail, 120))


def render_status(snapshot: Snapshot, state_filter: str | None, shown: int,
                  error: str | None = None) -> Text:
    text = Text()
    text.append("hyperion top", style="bold")
    text.append(f"  {clean(snapshot.state_dir)}", style="dim")
    text.append(f"  {snapshot.taken_at.strftime('%H:%M:%S')} UTC\n", style="dim")
    if error:
        text.append(f"cannot read the state dir: {clean(error, 200)}\n", style="bold red")
    if not snapshot.exists:
        text.append("no state dir yet (no daemon has run here)\n", style="yellow")
    elif not snapshot.daemons:
        text.append("daemon: not running\n", style="yellow")
    for daemon in snapshot.daemons:
        text.append(daemon_line(daemon, snapshot.taken_at) + "\n", style="green")
    queue = ", ".join(f"{k} {v}" for k, v in snapshot.queue.items()) or "empty"
    by_state = snapshot.by_state()
    records = ", ".join(f"{k} {v}" for k, v in by_state.items()) or "none"
    text.append(f"spool: {queue}  |  records: {records}  |  ")
    text.append(f"filter: {state_filter or 'all'}", style="bold")
    text.append(f" ({shown} of {len(snapshot.records)})")
    return text


def render_detail(record: Record | None, state_filter: str | None = None) -> Text:
    text = Text()
    if record is None:
        text.append("no records" + (f" in state {state_filter}" if state_filter else ""),
                    style="dim")
        return text

    def row(label: str, value: str, style: str = "") -> None:
        text.append(f"{label:<8} ", style="bold")
        text.append(value + "\n", style=style)

    text.append(clean(record.id) + "  ", style="bold")
    text.append(record.state.value, style=_STATE_STYLE.get(record.state, ""))
    text.append(f"  ({clean(record.kind)})\n")
    row("title", clean(record.title) or "-")
    row("repo", f"{clean(record.repo or '-')} -> {clean(record.target or '-')}"
        + (f" (base {clean(record.base)})" if record.base else ""))
    row("agent", clean(record.agent or "-"))
    row("source", f"{clean(record.source.kind)}: {clean(record.source.name)}")
    row("attempts", str(record.attempts))
    row("created", clean(record.created_at))
    row("updated", clean(record.updated_at))
    if record.applied_onto:
        row("applied", clean(record.applied_onto))
    if record.landed_commit:
        row("landed", clean(record.landed_commit), "green")
    if record.policy_rules:
        row("policy", ", ".join(clean(r) for r in record.policy_rules))
    if record.error is not None:
        row("error", record.error.code.value, "bold red")
        row("  message", clean(record.error.message), "red")
        if record.error.path:
            row("  path", clean(record.error.path))
    if record.checks:
        text.append("checks\n", style="bold")
        for check in record.checks:
            if check.ok:
                status, style = "ok", "green"
            elif check.timed_out:
                status, style = "timeout", "red"
            else:
                status, style = f"exit {check.exit_code}", "red"
            text.append(f"  {clean(check.name)}: ")
            text.append(status, style=style)
            text.append(f" in {check.seconds:.2f} s  {clean(check.artifact)}\n")
            if not check.ok and check.tail.strip():
                for line in check.tail.rstrip().splitlines()[-5:]:
                    text.append(f"    | {clean(line, 200)}\n", style="dim")
    text.append("history\n", style="bold")
    for entry in record.history:
        before = entry.from_.value if entry.from_ else "-"
        text.append(f"  {short_time(entry.at)}  {before} -> {entry.to.value} "
                    f"by {clean(entry.by, 40)}: {clean(entry.reason, 300)}\n")
    text.rstrip()
    return text


def render_events(events: list[dict[str, Any]]) -> Text:
    text = Text()
    text.append("recent events\n", style="bold")
    if not events:
        text.append("none yet", style="dim")
    ids = [clean(event.get("id"), 48) for event in events]
    width = max((len(i) for i in ids), default=0)
    for event, rid in zip(events, ids, strict=True):
        to = clean(event.get("to"), 12)
        style = next((s for st, s in _STATE_STYLE.items() if st.value == to), "")
        text.append(f"{short_time(event.get('at'))}  {rid:<{width}}  "
                    f"{clean(event.get('from') or '-', 12):>8} -> ")
        text.append(f"{to:<8}", style=style)
        text.append(f"  {clean(event.get('reason', ''), 100)}\n")
    text.rstrip()
    return text


# ---------------------------------------------------------------- the app

class TopApp(App[int]):
    """The `hyperion top` screen. ``state_filter`` is a State value or None (all)."""

    TITLE = "hyperion top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: auto; padding: 0 1; background: $boost; }
    #main { height: 1fr; }
    #records { width: 3fr; height: 1fr; }
    #detail-pane { width: 2fr; height: 1fr; border-left: solid $primary; padding: 0 1; }
    #events-pane { height: 12; border-top: solid $primary; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "cycle_filter", "filter"),
        Binding("r", "reload", "refresh"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, config: Config, state_filter: str | None = None,
                 refresh_s: float = 1.0) -> None:
        if state_filter not in FILTERS:
            raise ValueError(f"--state {state_filter!r}: one of "
                             f"{', '.join(s.value for s in State)}")
        if not refresh_s > 0:
            raise ValueError(f"refresh_s must be positive, not {refresh_s!r}")
        super().__init__()
        self.config = config
        self.state_filter = state_filter
        self.refresh_s = refresh_s
        self.reader = StateReader(config.state_dir)
        self.snapshot = Snapshot(state_dir=config.state_dir, exists=False)
        self.read_error: str | None = None
        self._rows: list[tuple[str, ...]] | None = None
        self._row_ids: list[str] = []
        self._by_id: dict[str, Record] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="main"):
            yield DataTable(id="records", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="detail-pane"):
                yield Static(id="detail")
        with VerticalScroll(id="events-pane"):
            yield Static(id="events")
        yield Footer()

    def on_mount(self) -> None:
        table = self.table
        for label in COLUMNS:
            table.add_column(label, key=label.lower())
        self.reload()
        self.set_interval(self.refresh_s, self.reload)
        table.focus()

    # ------------------------------------------------------------ views
    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#records", DataTable)

    @property
    def shown_records(self) -> list[Record]:
        """The records the table shows, newest first."""
        wanted = self.state_filter
        return [r for r in self.snapshot.records if wanted is None or r.state.value == wanted]

    @property
    def selected_record(self) -> Record | None:
        """The record of the table's cursor row."""
        index = self.table.cursor_row
        if not 0 <= index < len(self._row_ids):
            return None
        return self._by_id.get(self._row_ids[index])

    # ------------------------------------------------------------ actions
    def action_reload(self) -> None:
        self.reload()

    def action_cycle_filter(self) -> None:
        self.state_filter = FILTERS[(FILTERS.index(self.state_filter) + 1) % len(FILTERS)]
        self._show()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    # ------------------------------------------------------------ refresh
    def reload(self) -> None:
        """Re-read the state directory and redraw."""
        try:
            self.snapshot = self.reader.read()
            self.read_error = None
        except OSError as exc:             # e.g. permissions; keep showing the last view
            self.read_error = str(exc)
        self._by_id = {r.id: r for r in self.snapshot.records}
        self._show()

    def _show(self) -> None:
        try:
            visible = self.shown_records
            self._fill_table(visible)
            self.query_one("#status", Static).update(
                render_status(self.snapshot, self.state_filter, len(visible), self.read_error))
            self.query_one("#events", Static).update(render_events(self.snapshot.events))
            self._show_detail()
        except NoMatches:
            # The refresh timer fired while the app is shutting down: nothing left to draw.
            return

    def _fill_table(self, records: list[Record]) -> None:
        rows = [record_cells(r) for r in records]
        if rows == self._rows and [r.id for r in records] == self._row_ids:
            return
        table = self.table
        index = table.cursor_row
        chosen = self._row_ids[index] if 0 <= index < len(self._row_ids) else None
        table.clear()
        for record, cells in zip(records, rows, strict=True):
            styled = [Text(cell) for cell in cells]
            styled[1].stylize(_STATE_STYLE.get(record.state, ""))
            table.add_row(*styled, key=record.id)
        self._rows = rows
        self._row_ids = [r.id for r in records]
        if not records:
            return
        if chosen in self._row_ids:
            index = self._row_ids.index(chosen)
        table.move_cursor(row=min(max(index, 0), len(records) - 1), scroll=True)

    def _show_detail(self) -> None:
        try:
            detail = render_detail(self.selected_record, self.state_filter)
            self.query_one("#detail", Static).update(detail)
        except NoMatches:
            # A cursor move's event can arrive while the app is shutting down.
            return


def run_top(config: Config, *, state_filter: str | None = None) -> int:
    """Run `hyperion top` until the user quits; 2 for an unknown state filter."""
    try:
        app = TopApp(config, state_filter=state_filter)
    except ValueError as exc:
        print(f"hyperion: {exc}", file=sys.stderr)
        return 2
    app.run()
    return app.return_code or 0
