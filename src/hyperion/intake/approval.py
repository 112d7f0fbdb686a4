"""Decisions on held requests: `hyperion approve` sends one on to the queue, `deny` rejects it.

The actor and the decision go into the record's history and the audit log, and a denial is
reported like any other terminal state.
"""

from __future__ import annotations

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo
from hyperion.intake.dependencies import (
    blockers,
    enqueue_request,
    fail_for_dependency,
    original_request,
    settle_dependents,
    wait_on,
)
from hyperion.records import Record, State
from hyperion.requests import ChangeRequest


class NotHeld(Exception):
    pass


def _held(app: App, record_id: str) -> Record:
    record = app.records.get(record_id)
    if record is None:
        raise NotHeld(f"no record with id {record_id!r}")
    if record.state is not State.HELD:
        raise NotHeld(f"{record_id} is {record.state.value}, not held; only held requests can "
                      "be approved or denied")
    return record


def approve(app: App, record_id: str, *, by: str) -> Record:
    _held(app, record_id)
    request = original_request(app, record_id)
    depends_on = request.depends_on if isinstance(request, ChangeRequest) else []
    waiting, failed_dep = blockers(app, record_id, depends_on)
    if failed_dep is not None:
        return fail_for_dependency(app, record_id, failed_dep, by=by, reason=(
            f"approved by {by}, but dependency {failed_dep} did not land"))
    if waiting:
        wait_on(app, record_id, waiting)
        record = app.records.transition(record_id, State.QUEUED, by=by, waiting_for=waiting,
                                        reason=f"approved by {by}; waiting for "
                                        f"{', '.join(waiting)} to land")
    else:
        # Spool first: a crash before the transition leaves an approved item that a worker
        # runs, never an approval that is recorded but lost.
        # A task held half-way has its spool item in dead/: requeue that one.
        if not app.spool.requeue(record_id, reason=f"approved by {by}"):
            enqueue_request(app, request)
        record = app.records.transition(record_id, State.QUEUED, by=by,
                                        reason=f"approved by {by}")
    app.reporter.notice(record, f"approved by {by}")
    return record


def deny(app: App, record_id: str, *, by: str, reason: str) -> Record:
    _held(app, record_id)
    error = ErrorInfo(code=Code.POLICY_DENIED, message=f"denied by {by}: {reason}")
    record = app.records.transition(record_id, State.REJECTED, by=by,
                                    reason=f"denied by {by}: {reason}", error=error)
    app.reporter.outcome(record)
    settle_dependents(app, record)
    return record
