"""Rolling back a landed request: a new request that reverts it, through the same pipeline.

``hyperion rollback ID`` builds a change request ``<ID>.rollback`` (``.rollback-2``... after a
failed one) whose patch reverses the landed commit and whose base is that commit, so a target
that moved since is handled by the 3-way fallback like any stale patch. It goes through the gate,
the queue, the checks and the land like every request; its source is ``rollback`` named after
the original. When it lands, the original moves from ``landed`` to ``rolled_back`` (and is
notified). A crash between the two is settled at start by :func:`reconcile_rollbacks`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.gate.patch import Operation, parse_patch
from hyperion.gitops import GitRepo
from hyperion.records import TERMINAL, Record, Source, State
from hyperion.requests import ChangeRequest

log = logging.getLogger("hyperion.rollback")

SOURCE_KIND = "rollback"


class RollbackRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=Code.POLICY_DENIED, message=message)


def rollback_request(app: App, record_id: str, *, by: str, reason: str) -> tuple[str, bytes]:
    """The id and bytes of the request that reverts ``record_id``; raises RollbackRefused."""
    original = app.records.get(record_id)
    if original is None:
        raise RollbackRefused(f"there is no request {record_id!r}")
    if original.state is not State.LANDED or original.landed_commit is None:
        raise RollbackRefused(f"{record_id} is {original.state.value}; only a landed request "
                              "can be rolled back")
    if original.landed_ref is not None:
        raise RollbackRefused(f"{record_id} landed on {original.landed_ref}, not on its "
                              "target; delete that branch instead")
    assert original.repo is not None and original.target is not None
    repo_config = app.config.repos.get(original.repo)
    if repo_config is None:
        raise RollbackRefused(f"the repo {original.repo!r} is no longer configured")
    rollback_id = _free_id(app, record_id)
    repo = GitRepo.at(repo_config.path)
    commit = original.landed_commit
    patch = repo.diff(commit, f"{commit}^").decode("utf-8", errors="surrogateescape")
    if not patch.strip():
        raise RollbackRefused(f"{record_id}'s commit {commit[:12]} changed nothing to revert")
    try:
        files = parse_patch(patch)
    except GateError as exc:
        raise RollbackRefused(f"the revert of {commit[:12]} is not a patch hyperion can "
                              f"carry ({exc.info.message})") from None
    changes: list[dict[str, Any]] = []
    for f in files:
        entry: dict[str, Any] = {"path": f.path, "operation": f.operation.value}
        if f.operation is Operation.RENAME:
            entry["from"] = f.old_path
        changes.append(entry)
    title = f'Revert "{original.title}"'
    body = f"This reverts commit {commit} (request {record_id}).\n\nReason: {reason}"
    request = {
        "kind": "change", "version": 1, "id": rollback_id, "agent": by,
        "repo": original.repo, "target": original.target, "base": commit,
        "title": title[:200], "body": body, "patch": patch, "changes": changes,
        "checks": _original_checks(app, original),
    }
    return rollback_id, json.dumps(request, ensure_ascii=False).encode()


def _free_id(app: App, record_id: str) -> str:
    stem = f"{record_id[:110]}.rollback"
    for n in range(1, 100):
        candidate = stem if n == 1 else f"{stem}-{n}"
        existing = app.records.get(candidate)
        if existing is None:
            return candidate
        if existing.state not in TERMINAL or existing.state is State.LANDED:
            raise RollbackRefused(f"{record_id} already has the rollback {candidate} "
                                  f"({existing.state.value})")
    raise RollbackRefused(f"{record_id} has had too many rollback attempts")


def _original_checks(app: App, original: Record) -> list[str]:
    try:
        request = ChangeRequest.model_validate_json(
            app.records.original_path(original.id).read_bytes())
    except (OSError, ValueError):
        return [check.name for check in original.checks]
    return list(request.checks)


def settle_rollback(app: App, landed: Record) -> None:
    """A rollback request landed: its original becomes rolled_back (once)."""
    if landed.source.kind != SOURCE_KIND or landed.state is not State.LANDED:
        return
    original = app.records.get(landed.source.name)
    if original is None or original.state is not State.LANDED:
        return
    final = app.records.transition(
        original.id, State.ROLLED_BACK, by=landed.id, rolled_back_by=landed.id,
        reason=f"reverted by {landed.id} as {landed.landed_commit}")
    log.info("%s rolled back by %s", original.id, landed.id, extra={"request_id": original.id})
    app.reporter.outcome(final)


def reconcile_rollbacks(app: App, records: list[Record]) -> int:
    """Start-up: settle rollbacks that landed just before a crash. Returns how many."""
    settled = 0
    for record in records:
        if record.source.kind == SOURCE_KIND and record.state is State.LANDED:
            original = app.records.get(record.source.name)
            if original is not None and original.state is State.LANDED:
                settle_rollback(app, record)
                settled += 1
    return settled


def source_for(record_id: str) -> Source:
    return Source(kind=SOURCE_KIND, name=record_id)
