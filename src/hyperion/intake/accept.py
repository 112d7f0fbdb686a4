"""The single path every source uses: bytes in, a durable record out (queued or rejected).

When accept() returns, the record (and, if accepted, its spool item) is on disk: a source may
then delete what it read. Calling accept() twice with the same bytes is a no-op, which is what
makes a crash between "record written" and "source file removed" harmless.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.gate.policy import Action, check_approver
from hyperion.gate.review import policy_for_record, review
from hyperion.gate.verdict import repo_name
from hyperion.intake.dependencies import (
    blockers,
    creates_cycle,
    dependency_error,
    enqueue_request,
    settle_dependents,
    supersede,
    wait_on,
)
from hyperion.records import Record, Source, State, now_iso
from hyperion.requests import (
    ApprovalRequest,
    ChangeRequest,
    Request,
    claimed_id,
    incoming_from_json,
    load_json,
)

log = logging.getLogger("hyperion.intake")


@dataclass(frozen=True)
class Outcome:
    id: str
    state: State
    error: ErrorInfo | None
    repeated: bool = False      # these exact bytes were accepted before: nothing new happened


def _fallback_id(source: Source, digest: str) -> str:
    stem = source.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:80] or "request"
    if not stem[0].isalnum():
        stem = "r" + stem
    return f"{stem}.rej-{digest[:12]}"


def accept(app: App, data: bytes, source: Source, *, by: str = "intake") -> Outcome:
    digest = hashlib.sha256(data).hexdigest()
    limits = app.config.limits
    obj: Any = None
    try:
        obj = load_json(data, max_bytes=limits.max_request_bytes, max_depth=limits.max_json_depth)
        incoming = incoming_from_json(obj)
    except GateError as exc:
        return reject(app, data, source, claimed_id(obj), obj, exc.info, by)
    if isinstance(incoming, ApprovalRequest):
        return _approval_file(app, data, source, incoming, obj, by)
    request: Request = incoming

    existing = app.records.get(request.id)
    if existing is not None:
        if existing.original_sha256 == digest:
            if existing.state is State.QUEUED and not existing.waiting_for:
                enqueue_request(app, request)   # finishes an intake that crashed before its put
            return Outcome(existing.id, existing.state, existing.error, repeated=True)
        info = ErrorInfo(code=Code.DUPLICATE, path="id", message=(
            f"a different request with id {request.id!r} was already received "
            f"({existing.state.value}); give this one a new id"))
        return reject(app, data, source, None, obj, info, by)

    try:
        verdict = review(app.config, app.policy, request, obj)
        repo = repo_name(request, app.config)
    except GateError as exc:
        return reject(app, data, source, request.id, obj, exc.info, by)
    decision = verdict.decision
    held = decision.action is Action.REQUIRE_APPROVAL
    depends_on = request.depends_on if isinstance(request, ChangeRequest) else []
    if request.id in depends_on or creates_cycle(app, request.id, depends_on):
        info = ErrorInfo(code=Code.DEPENDENCY_FAILED, path="depends_on", message=(
            "depends_on would make this request wait for itself (directly or through "
            "others); remove the cycle"))
        return reject(app, data, source, request.id, obj, info, by)
    waiting, failed_dep = blockers(app, request.id, depends_on)
    if failed_dep is not None:
        dep = app.records.get(failed_dep)
        info = dependency_error(failed_dep, dep.state.value if dep else "unknown")
        return reject(app, data, source, request.id, obj, info, by)

    at = now_iso()
    record = Record(
        id=request.id, state=State.HELD if held else State.QUEUED,
        policy_rules=list(decision.rules), source=source, original_sha256=digest,
        created_at=at, updated_at=at, waiting_for=[] if held else waiting,
        **request_fields(request, repo, app))
    if not held:
        wait_on(app, request.id, waiting)
    reason = f"accepted from {source.kind}; policy {decision.action.value}: {decision.reason}"
    if held:
        reason = f"held for approval from {source.kind}: {decision.reason}"
    elif waiting:
        reason += f"; waiting for {', '.join(waiting)} to land"
    if not app.records.create(record, data, by=by, reason=reason):
        # Lost a race with another intake of the same id: judge again as a repeat.
        return accept(app, data, source, by=by)
    log.info("%s %s from %s", "held" if held else "accepted", request.id, source.name,
             extra={"request_id": request.id})
    stored = app.records.get(request.id)
    assert stored is not None
    if isinstance(request, ChangeRequest) and request.supersedes is not None:
        note = supersede(app, stored, request.supersedes)
        log.info("%s %s", request.id, note, extra={"request_id": request.id})
    if held:
        app.reporter.outcome(stored)
        return Outcome(request.id, State.HELD, None)
    if not waiting:
        enqueue_request(app, request)
    if decision.action is Action.NOTIFY:
        app.reporter.notice(stored, f"policy notice: {decision.reason}")
    return Outcome(request.id, State.QUEUED, None)


def _approval_file(app: App, data: bytes, source: Source, approval: ApprovalRequest, obj: Any,
                   by: str) -> Outcome:
    """An approval file decides a held request, when the policy lets its author decide."""
    from hyperion.intake.approval import approve, deny

    target = app.records.get(approval.request)
    marker = f"approval file {approval.id}"
    if target is not None and any(marker in h.by for h in target.history):
        return Outcome(target.id, target.state, target.error, repeated=True)
    try:
        check_approver(policy_for_record(app.config, app.policy, target) if target is not None
                       else app.policy, approval.by)
        if target is None:
            raise GateError(Code.POLICY_DENIED, f"there is no request {approval.request!r} to "
                            "decide on", path="request")
        if target.state is not State.HELD:
            raise GateError(Code.POLICY_DENIED, f"{approval.request} is "
                            f"{target.state.value}, not held: there is nothing to decide",
                            path="request")
    except GateError as exc:
        return reject(app, data, source, approval.id, obj, exc.info, by)
    directory = app.artifacts_dir(target.id)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"approval-{approval.id}.json").write_bytes(data)
    actor = f"{approval.by} ({marker})"
    if approval.decision == "approve":
        record = approve(app, target.id, by=actor)
    else:
        record = deny(app, target.id, by=actor, reason=approval.reason or "no reason given")
    return Outcome(record.id, record.state, record.error)


def request_fields(request: Request, repo: str, app: App) -> dict[str, Any]:
    """The record fields an accepted request determines."""
    target = request.target or app.config.repos[repo].target
    return {
        "kind": request.kind, "title": request.title, "repo": repo, "target": target,
        "agent": request.agent if isinstance(request, ChangeRequest) else request.requested_by,
        "base": request.base or target,
        "depends_on": request.depends_on if isinstance(request, ChangeRequest) else [],
    }


def reject(app: App, data: bytes, source: Source, wanted_id: str | None, obj: Any,
           info: ErrorInfo, by: str) -> Outcome:
    """Store a rejected record for ``data`` (kept as the original) and report it."""
    digest = hashlib.sha256(data).hexdigest()
    record_id = wanted_id or _fallback_id(source, digest)
    existing = app.records.get(record_id)
    if existing is not None:
        if existing.original_sha256 == digest:
            return Outcome(existing.id, existing.state, existing.error, repeated=True)
        record_id = f"{record_id[:100]}.rej-{digest[:12]}"
        existing = app.records.get(record_id)
        if existing is not None:
            return Outcome(existing.id, existing.state, existing.error, repeated=True)
    fields = obj if isinstance(obj, dict) else {}

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value[:200] if isinstance(value, str) else None

    kind = text("kind")
    at = now_iso()
    record = Record(
        id=record_id, kind=kind if kind in ("change", "task") else "unknown",
        state=State.REJECTED, title=text("title") or "", repo=text("repo"), target=text("target"),
        agent=text("agent") or text("requested_by"), error=info, source=source,
        original_sha256=digest, created_at=at, updated_at=at)
    if not app.records.create(record, data, by=by, reason=info.summary()):
        return reject(app, data, source, wanted_id, obj, info, by)
    log.info("rejected %s from %s: %s", record_id, source.name, info.code.value,
             extra={"request_id": record_id})
    stored = app.records.get(record_id)
    if stored is not None:
        app.reporter.outcome(stored)
        settle_dependents(app, stored)
    return Outcome(record_id, State.REJECTED, info)
