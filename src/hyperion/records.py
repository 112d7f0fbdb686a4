"""Request records: the one owner of state_dir/records/ and of audit.jsonl.

A record is what a person asks about: a request's state, history, error and outcome. Each is
one JSON file, rewritten atomically on every transition; every transition is also appended to
the audit log. The original bytes a request arrived as are kept beside its record.

A transition may be written behind (``RecordStore.transition_behind``): a thread of the
store writes it while the caller goes on. The worker marks a request ``running`` that way:
nothing depends on that mark surviving a crash (the spool's lease does). It calls ``settle()``
before any check runs, so a check that kills hyperion still finds its request marked running
(and the attempt counts as a crash). In the process every other read or write of that record
waits for it, so the record reads as if written at once and its history keeps its order.

A field update may be written behind too (``RecordStore.update_behind``) when its writer needs
it on disk only later: the worker writes where a change applied and its check results that
way when it hands the change to the landing stage, which waits for it (``written``, which
raises if the write failed) before the ref moves, so the durable write runs while the stage
is still landing the change before.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hyperion.errors import ErrorInfo
from hyperion.fsutil import append_line, exclusive, write_atomic
from hyperion.metrics import METRICS

log = logging.getLogger(__name__)


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    HELD = "held"
    LANDED = "landed"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    VERIFIED = "verified"     # a dry run: applied and checked green, never landed


#: Lock files records are spread over (records/.lock.<n>), by a hash of their id.
LOCK_STRIPES = 16

TERMINAL = frozenset({State.LANDED, State.REJECTED, State.FAILED, State.ROLLED_BACK,
                      State.CANCELLED, State.VERIFIED})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HistoryEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    at: str
    from_: State | None = Field(None, alias="from")
    to: State
    by: str
    reason: str
    timings: dict[str, float] | None = None   # seconds per step of the attempt that ended here


class CheckResult(BaseModel):
    name: str
    ok: bool
    exit_code: int | None
    timed_out: bool
    seconds: float
    artifact: str
    tail: str = ""


class TaskIteration(BaseModel):
    """One run of a task's harness and what became of its changes."""

    number: int
    outcome: str        # green, held, check_failed, timeout, harness_failed, no_changes, or a
    #                     gate code
    seconds: float
    transcript: str     # artifact: the harness's stdout and stderr (redacted)
    harness_exit: int | None = None
    commit: str | None = None          # the worktree's files as a commit on the target's tip
    onto: str | None = None            # the tip that commit was made on
    diff: str | None = None            # artifact: the diff (redacted), when there was one
    files: int = 0
    added: int = 0
    removed: int = 0
    failure: str | None = None         # fingerprint of the normalised failure (stuck detection)
    feedback: str | None = None        # artifact: the feedback file given to the next iteration
    feedback_tail: str = ""            # its end (redacted), for notifications
    approval: str | None = None        # sha256 of the diff held for approval (outcome held)


class Source(BaseModel):
    kind: str          # "inbox" | "cli" | "rollback" | "git-inbox" | "git-note"
    name: str          # the file it came from (git: "<repo>:<commit>:<path>"; rollback: the
                       # request reverted)
    # Git sources: the configured repo, the commit the request came from (the inbox commit
    # that added the file, or the commit a note annotates) and the file's path or note ref.
    repo: str | None = None
    commit: str | None = None
    path: str | None = None


class Record(BaseModel):
    id: str
    kind: str          # "change" | "task" | "unknown" (unparseable)
    state: State
    title: str = ""
    repo: str | None = None
    target: str | None = None
    agent: str | None = None
    attempts: int = 0
    crashes: int = 0          # attempts that ended with the worker's process dying
    races: int = 0            # attempts that lost the race to land (the target moved)
    waits: int = 0            # leases a task gave back to wait for its harness's limits
    error: ErrorInfo | None = None
    base: str | None = None
    base_commit: str | None = None
    applied_onto: str | None = None
    landed_commit: str | None = None
    landed_ref: str | None = None      # where it landed, when not the target branch itself
    result_commit: str | None = None   # a dry run's commit, checked but never landed
    apply_method: str | None = None    # "clean" or "3way"
    timings: dict[str, float] = Field(default_factory=dict)   # the last attempt's steps
    rolled_back_by: str | None = None  # the request that reverted this one
    checks: list[CheckResult] = Field(default_factory=list)
    iterations: list[TaskIteration] = Field(default_factory=list)   # tasks only
    policy_rules: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    waiting_for: list[str] = Field(default_factory=list)   # dependencies not landed yet
    source: Source
    original_sha256: str
    created_at: str
    updated_at: str
    history: list[HistoryEntry] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class RecordStore:
    """records/<id>.json (the record), records/<id>.request (original bytes), audit.jsonl."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "records"
        self.audit_path = state_dir / "audit.jsonl"
        self.root.mkdir(parents=True, exist_ok=True)
        # Transitions written behind: one thread, so they are made in the order asked; per
        # record the last one asked (the earlier ones are done before it).
        self._behind: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[None]] = {}
        self._failed: dict[str, BaseException] = {}    # updates written behind that failed
        self._pending_guard = threading.Lock()

    @contextmanager
    def _locked(self, record_id: str) -> Iterator[None]:
        self.settle(record_id)
        with self._lock_only(record_id):
            yield

    @contextmanager
    def _lock_only(self, record_id: str) -> Iterator[None]:
        # One writer of a record at a time, across threads and processes. The records are
        # spread over LOCK_STRIPES lock files, so that writers of different records (the
        # worker marking the next request running while its landing stage records the last
        # one landed) seldom wait for each other's fsyncs.
        stripe = zlib.crc32(record_id.encode()) % LOCK_STRIPES
        with exclusive(self.root / f".lock.{stripe}"):
            yield

    def settle(self, record_id: str) -> None:
        """Wait for what this process is writing behind for ``record_id``."""
        with self._pending_guard:
            future = self._pending.get(record_id)
        if future is not None:
            wait([future])

    def flush(self) -> None:
        """Wait until every transition written behind so far is on disk (or has failed, which
        was logged)."""
        with self._pending_guard:
            futures = list(self._pending.values())
        wait(futures)

    def _path(self, record_id: str) -> Path:
        return self.root / f"{record_id}.json"

    def original_path(self, record_id: str) -> Path:
        return self.root / f"{record_id}.request"

    def get(self, record_id: str) -> Record | None:
        self.settle(record_id)
        return self._read(record_id)

    def _read(self, record_id: str) -> Record | None:
        try:
            raw = self._path(record_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Record.model_validate_json(raw)
        except ValidationError:
            return None

    def create(self, record: Record, original: bytes, *, by: str, reason: str) -> bool:
        """Store a new record and its original bytes durably; False if the id is taken."""
        entry = HistoryEntry(at=record.created_at, from_=None, to=record.state, by=by,
                             reason=reason)
        record = record.model_copy(update={"history": [entry]})
        with self._locked(record.id):
            path = self._path(record.id)
            if path.exists():
                return False
            write_atomic(self.original_path(record.id), original, sync_dir=False)
            write_atomic(path, _dump(record))
            self._audit(record.id, entry)
        return True

    def transition(self, record_id: str, to: State, *, by: str, reason: str,
                   timings: dict[str, float] | None = None, **updates: Any) -> Record:
        """Move the record to ``to``, with a history entry; the record as it now is."""
        with self._locked(record_id):
            return self._transition(record_id, to, by, reason, now_iso(), timings, updates)

    def transition_behind(self, record_id: str, to: State, *, by: str, reason: str,
                          **updates: Any) -> Record:
        """:meth:`transition`, written behind (see the module's docstring): it returns at
        once the record expected, made from the record as read now."""
        at = now_iso()
        current = self.get(record_id)
        if current is None:
            raise KeyError(record_id)
        self._submit(record_id, self._write_behind, record_id, to, by, reason, at, updates)
        return _moved(current, to, by, reason, at, None, updates)[0]

    def update_behind(self, record_id: str, **updates: Any) -> None:
        """:meth:`update`, written behind (see the module's docstring); :meth:`written` waits
        for it and raises what it failed with."""
        def write() -> None:
            try:
                with self._lock_only(record_id):
                    self._update(record_id, updates)
            except BaseException as exc:
                with self._pending_guard:
                    self._failed[record_id] = exc
                raise

        self._submit(record_id, write)

    def written(self, record_id: str) -> None:
        """Wait until what this process writes behind for ``record_id`` is on disk; raise
        the error of an update written behind that failed."""
        self.settle(record_id)
        with self._pending_guard:
            failed = self._failed.pop(record_id, None)
        if failed is not None:
            raise failed

    def _submit(self, record_id: str, fn: Callable[..., None], *args: Any) -> None:
        with self._pending_guard:
            if self._behind is None:
                self._behind = ThreadPoolExecutor(1, thread_name_prefix="records-behind")
            self._pending[record_id] = future = self._behind.submit(fn, *args)
        future.add_done_callback(lambda done: self._forget(record_id, done))

    def _transition(self, record_id: str, to: State, by: str, reason: str, at: str,
                    timings: dict[str, float] | None, updates: dict[str, Any]) -> Record:
        """The transition itself, with the record's lock held."""
        current = self._read(record_id)
        if current is None:
            raise KeyError(record_id)
        record, entry = _moved(current, to, by, reason, at, timings, updates)
        write_atomic(self._path(record_id), _dump(record))
        self._audit(record_id, entry)
        return record

    def _write_behind(self, record_id: str, to: State, by: str, reason: str, at: str,
                      updates: dict[str, Any]) -> None:
        try:
            with self._lock_only(record_id):
                self._transition(record_id, to, by, reason, at, None, updates)
        except Exception:
            log.exception("could not record %s as %s", record_id, to.value,
                          extra={"request_id": record_id})

    def _forget(self, record_id: str, done: Future[None]) -> None:
        with self._pending_guard:
            if self._pending.get(record_id) is done:
                del self._pending[record_id]

    def update(self, record_id: str, **updates: Any) -> Record:
        """Change fields without a state transition (e.g. check results while running)."""
        with self._locked(record_id):
            return self._update(record_id, updates)

    def _update(self, record_id: str, updates: dict[str, Any]) -> Record:
        """The update itself, with the record's lock held."""
        record = self._read(record_id)
        if record is None:
            raise KeyError(record_id)
        record = record.model_copy(update={**updates, "updated_at": now_iso()})
        write_atomic(self._path(record_id), _dump(record))
        return record

    def all(self) -> list[Record]:
        out = []
        for name in os.listdir(self.root):
            if name.endswith(".json") and not name.startswith("."):
                record = self.get(name[:-5])
                if record is not None:
                    out.append(record)
        out.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return out

    def _audit(self, record_id: str, entry: HistoryEntry) -> None:
        METRICS.inc("hyperion_requests_total", state=entry.to.value)
        line = {"id": record_id, **entry.model_dump(mode="json", by_alias=True)}
        append_line(self.audit_path, json.dumps(line, sort_keys=True).encode())


def _moved(record: Record, to: State, by: str, reason: str, at: str,
           timings: dict[str, float] | None, updates: dict[str, Any]
           ) -> tuple[Record, HistoryEntry]:
    """``record`` after a transition to ``to``, and the history entry that says so."""
    entry = HistoryEntry(at=at, from_=record.state, to=to, by=by, reason=reason,
                         timings=timings or None)
    if timings:
        updates = {**updates, "timings": timings}
    return record.model_copy(update={**updates, "state": to, "updated_at": at,
                                     "history": [*record.history, entry]}), entry


def _dump(record: Record) -> bytes:
    return record.model_dump_json(by_alias=True, indent=2).encode() + b"\n"
