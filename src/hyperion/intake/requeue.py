"""`hyperion requeue ID --reason TEXT`: a failed or rejected record goes back through the gate.

The original bytes are judged again under the current configuration and policy (a request
refused before may pass now, e.g. after a check was defined). The actor and the reason are in
the record's history and the audit log.
"""

from __future__ import annotations

from typing import Any

from hyperion.app import App
from hyperion.errors import GateError
from hyperion.gate.policy import Action
from hyperion.gate.review import review
from hyperion.gate.verdict import repo_name
from hyperion.intake.accept import request_fields
from hyperion.intake.dependencies import (
    blockers,
    fail_for_dependency,
    original_request,
    wait_on,
)
from hyperion.records import Record, State
from hyperion.requests import ChangeRequest, load_json

REQUEUEABLE = (State.FAILED, State.REJECTED)


class CannotRequeue(Exception):
    pass


def _original_object(app: App, record_id: str) -> dict[str, Any]:
    """The JSON object of the record's original request (what its signature covers)."""
    data = app.records.original_path(record_id).read_bytes()
    limits = app.config.limits
    obj = load_json(data, max_bytes=limits.max_request_bytes, max_depth=limits.max_json_depth)
    return obj if isinstance(obj, dict) else {}


def requeue(app: App, record_id: str, *, by: str, reason: str) -> Record:
    record = app.records.get(record_id)
    if record is None:
        raise CannotRequeue(f"no record with id {record_id!r}")
    if record.state not in REQUEUEABLE:
        raise CannotRequeue(f"{record_id} is {record.state.value}; only failed or rejected "
                            "records can be requeued")
    why = f"requeued by {by}: {reason}"
    try:
        request = original_request(app, record_id)
        if request.id != record_id:
            raise CannotRequeue(f"{record_id} holds a request with id {request.id!r}, which "
                                "belongs to another record; resubmit it with a new id")
        verdict = review(app.config, app.policy, request, _original_object(app, record_id))
        fields = request_fields(request, repo_name(request, app.config), app)
    except GateError as exc:
        refused = app.records.transition(record_id, State.REJECTED, by=by, error=exc.info,
                                         reason=f"{why}; the gate refused it again: "
                                         f"{exc.info.summary()}")
        app.reporter.outcome(refused)
        return refused
    app.records.update(record_id, policy_rules=list(verdict.decision.rules), **fields)
    if verdict.decision.action is Action.REQUIRE_APPROVAL:
        held = app.records.transition(record_id, State.HELD, by=by, error=None,
                                      reason=f"{why}; held for approval: "
                                      f"{verdict.decision.reason}")
        app.reporter.outcome(held)
        return held
    depends_on = request.depends_on if isinstance(request, ChangeRequest) else []
    waiting, failed_dep = blockers(app, record_id, depends_on)
    if failed_dep is not None:
        return fail_for_dependency(app, record_id, failed_dep, by=by,
                                   reason=f"{why}; dependency {failed_dep} did not land")
    wait_on(app, record_id, waiting)
    if not waiting:
        payload = request.model_dump_json(by_alias=True).encode()
        if not app.spool.requeue(record_id, payload, reason=why):
            app.spool.put(record_id, payload, priority=request.priority)
    return app.records.transition(record_id, State.QUEUED, by=by, reason=why, error=None,
                                  attempts=0, crashes=0, races=0, waits=0,
                                  iterations=[], waiting_for=waiting)
