"""Requests that wait for others (`depends_on`) and requests that replace others (`supersedes`).

A request whose dependencies have not all landed is recorded `queued` with `waiting_for` set,
but is not put in the spool, so waiting spends no attempts. When a request reaches a terminal
state, :func:`settle_dependents` queues the dependents it was the last blocker of, or fails
them `dependency_failed` (cascading) when it did not land. :func:`reconcile` repeats that at
start-up for whatever a killed process left half done.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo
from hyperion.records import Record, State
from hyperion.requests import ChangeRequest, Request, parse_request

log = logging.getLogger("hyperion.intake")

DID_NOT_LAND = frozenset({State.FAILED, State.REJECTED, State.CANCELLED, State.ROLLED_BACK,
                          State.VERIFIED})


def blockers(app: App, request_id: str, depends_on: list[str]) -> tuple[list[str], str | None]:
    """(dependencies not landed yet, a dependency that will never land or None)."""
    waiting: list[str] = []
    for dep in depends_on:
        record = app.records.get(dep)
        if record is None or record.state not in (State.LANDED, *DID_NOT_LAND):
            waiting.append(dep)
        elif record.state in DID_NOT_LAND:
            return waiting, dep
    return waiting, None


def creates_cycle(app: App, request_id: str, depends_on: list[str]) -> bool:
    """Whether waiting on ``depends_on`` would wait, through others, on ``request_id`` itself."""
    seen: set[str] = set()
    todo = list(depends_on)
    while todo:
        current = todo.pop()
        if current == request_id:
            return True
        if current in seen:
            continue
        seen.add(current)
        record = app.records.get(current)
        if record is not None and not record.terminal:
            todo.extend(record.waiting_for or record.depends_on)
    return False


def dependency_error(dep: str, state: str) -> ErrorInfo:
    return ErrorInfo(code=Code.DEPENDENCY_FAILED, path="depends_on", message=(
        f"it depends on {dep!r}, which ended {state}; fix that one first, then resubmit "
        "this with a new id"))


def enqueue_request(app: App, request: Request) -> None:
    """Hand an accepted request to the spool (a no-op when it is already there)."""
    not_before = request.not_before.timestamp() if isinstance(request, ChangeRequest) and \
        request.not_before is not None else None
    payload = request.model_dump_json(by_alias=True).encode()
    app.spool.put(request.id, payload, priority=request.priority, not_before=not_before)


def original_request(app: App, record_id: str) -> Request:
    """The request a record was made from, parsed again from its original bytes."""
    data = app.records.original_path(record_id).read_bytes()
    limits = app.config.limits
    return parse_request(data, max_bytes=limits.max_request_bytes, max_depth=limits.max_json_depth)


def fail_for_dependency(app: App, record_id: str, dep_id: str, *, by: str,
                        reason: str) -> Record:
    """``record_id`` fails because ``dep_id`` will never land; its own dependents follow."""
    dep = app.records.get(dep_id)
    failed = app.records.transition(
        record_id, State.FAILED, by=by, reason=reason, waiting_for=[],
        error=dependency_error(dep_id, dep.state.value if dep else "unknown"))
    app.reporter.outcome(failed)
    settle_dependents(app, failed)
    return failed


def _index(app: App) -> Path:
    return app.config.state_dir / "waiting"


def wait_on(app: App, record_id: str, waiting: list[str]) -> None:
    """Index ``record_id`` under each dependency it waits for (waiting/<dep>/<id>), before its
    record says so: settling then lists one folder instead of reading every record. A crash
    in between leaves an index entry without a waiting record, which settling skips."""
    for dep in waiting:
        folder = _index(app) / dep
        folder.mkdir(parents=True, exist_ok=True)
        (folder / record_id).touch()


def settle_dependents(app: App, finished: Record) -> None:
    """After ``finished`` reached a terminal state: release or fail what waited for it."""
    if not finished.terminal:
        return
    folder = _index(app) / finished.id
    try:
        dependents = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for dependent in dependents:
        record = app.records.get(dependent)
        if record is not None and record.state is State.QUEUED and \
                finished.id in record.waiting_for:
            _settle(app, record, finished)
    shutil.rmtree(folder, ignore_errors=True)


def _settle(app: App, record: Record, finished: Record) -> None:
    if finished.state is State.LANDED:
        remaining = [d for d in record.waiting_for if d != finished.id]
        if remaining:
            app.records.update(record.id, waiting_for=remaining)
            return
        enqueue_request(app, original_request(app, record.id))
        app.records.transition(record.id, State.QUEUED, by="dependencies", waiting_for=[],
                               reason=f"{finished.id} landed; no dependency left to wait for")
        return
    log.info("%s failed: its dependency %s ended %s", record.id, finished.id,
             finished.state.value, extra={"request_id": record.id})
    fail_for_dependency(app, record.id, finished.id, by="dependencies",
                        reason=f"dependency {finished.id} ended {finished.state.value}")


def reconcile(app: App, records: list[Record]) -> None:
    """Start-up: finish dependency hand-offs a killed process left half done (this one reads
    every record, once)."""
    for record in records:
        if record.state is not State.QUEUED or app.spool.state_of(record.id) is not None:
            continue
        wait_on(app, record.id, record.waiting_for)
        waiting, failed = blockers(app, record.id, record.waiting_for or record.depends_on)
        if failed is not None:
            dep = app.records.get(failed)
            if dep is not None:
                _settle(app, record, dep)
        elif not waiting:
            enqueue_request(app, original_request(app, record.id))
            app.records.update(record.id, waiting_for=[])
        elif waiting != record.waiting_for:
            app.records.update(record.id, waiting_for=waiting)


def supersede(app: App, new: Record, old_id: str) -> str:
    """Cancel ``old_id`` if it is still queued or held; returns what happened, for history."""
    old = app.records.get(old_id)
    if old is None:
        return f"supersedes {old_id!r}, which hyperion has not received"
    reason = f"superseded by {new.id}"
    waiting = old.state is State.QUEUED and app.spool.state_of(old_id) is None
    cancellable = old.state is State.HELD or waiting or (
        old.state is State.QUEUED and app.spool.cancel(old_id, reason))
    if not cancellable:
        return f"could not cancel {old_id!r}: it is {old.state.value}"
    cancelled = app.records.transition(old_id, State.CANCELLED, by=new.id, reason=reason,
                                       waiting_for=[])
    app.reporter.outcome(cancelled)
    settle_dependents(app, cancelled)
    return f"cancelled {old_id!r}, which it supersedes"
