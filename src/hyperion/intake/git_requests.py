"""Requests that arrive by git: a note on a commit made into a change request, and the gate's
verdict on pushed bytes without storing anything (for the pre-receive hook).

A request note carries the usual change fields minus ``patch`` and ``changes``: the change is
the annotated commit, as its diff from the merge base with the target, and the manifest is
read off that diff. What goes through accept() is the note's JSON with both added, so the
gate judges exactly what will be applied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hyperion.config import Config
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.gate.patch import Operation, parse_patch
from hyperion.gate.policy import Policy, check_approver
from hyperion.gate.verdict import judge, repo_name
from hyperion.gitops import GitError, GitRepo, author_identity, commit_message
from hyperion.records import Record
from hyperion.requests import (
    REF_PATTERN,
    ApprovalRequest,
    ChangeRequest,
    incoming_from_json,
    load_json,
)

DERIVED_FIELDS = ("patch", "changes", "commit")


@dataclass(frozen=True)
class NoteRequest:
    """What a request note becomes: the bytes to accept (the note's JSON plus the derived
    patch and manifest, or the note itself when it is not a JSON object), the parsed note,
    and an error when the note cannot become a change request."""

    data: bytes
    obj: Any
    error: ErrorInfo | None


def _refuse(data: bytes, obj: Any, code: Code, message: str,
            path: str | None = None) -> NoteRequest:
    return NoteRequest(data, obj, ErrorInfo(code=code, message=message, path=path))


def request_from_note(git: GitRepo, repo: str, config: Config, commit: str,
                      note: bytes) -> NoteRequest:
    limits = config.limits
    try:
        obj = load_json(note, max_bytes=limits.max_request_bytes,
                        max_depth=limits.max_json_depth)
    except GateError:
        return NoteRequest(note, None, None)   # accept() refuses it in the usual words
    if not isinstance(obj, dict):
        return NoteRequest(note, obj, None)
    for key in DERIVED_FIELDS:
        if key in obj:
            return _refuse(note, obj, Code.SCHEMA_VIOLATION, f"a request note carries no "
                           f"`{key}`: hyperion takes the change from the commit the note is "
                           "on; remove it", key)
    if obj.get("kind") != "change":
        return _refuse(note, obj, Code.SCHEMA_VIOLATION, "a request note must be a change "
                       "(\"kind\": \"change\"); push tasks as files to the inbox branch", "kind")
    if obj.get("repo", repo) != repo:
        return _refuse(note, obj, Code.SCHEMA_VIOLATION, f"a request note lands in the "
                       f"repository it was pushed to ({repo}); drop `repo` or name {repo!r}",
                       "repo")
    target = obj.get("target", config.repos[repo].target)
    if not isinstance(target, str) or not re.match(REF_PATTERN, target):
        return NoteRequest(note, obj, None)    # the schema check names the field
    try:
        if not git.has_commit(commit):
            return _refuse(note, obj, Code.BAD_PATCH, f"the annotated commit {commit[:12]} is "
                           "not in the repository; push it too (on any branch)")
        tip = git.resolve(f"refs/heads/{target}")
        if tip is None:
            return _refuse(note, obj, Code.SCHEMA_VIOLATION, f"the target branch {target!r} "
                           "does not exist", "target")
        base = git.merge_base(tip, commit)
        if base is None:
            return _refuse(note, obj, Code.BAD_PATCH, f"the commit {commit[:12]} shares no "
                           f"history with {target}; make it on top of {target}")
        raw = git.diff(base, commit)
    except GitError as exc:
        return _refuse(note, obj, Code.BAD_PATCH, f"cannot read the change of {commit[:12]} "
                       f"({exc.stderr[:200]})")
    if not raw.strip():
        return _refuse(note, obj, Code.BAD_PATCH, f"the commit {commit[:12]} changes nothing "
                       f"that {target} does not already have")
    try:
        patch = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(note, obj, Code.BAD_PATCH, f"the change of {commit[:12]} has text that "
                       "is not UTF-8; a request can carry only UTF-8 text (or binary files)")
    try:
        files = parse_patch(patch)
    except GateError as exc:
        return NoteRequest(note, obj, exc.info)
    changes: list[dict[str, str]] = []
    for f in files:
        entry = {"path": f.path, "operation": f.operation.value}
        if f.operation is Operation.RENAME and f.old_path is not None:
            entry["from"] = f.old_path
        changes.append(entry)
    derived = {**obj, "patch": patch, "changes": changes}
    derived.setdefault("base", base)
    return NoteRequest(json.dumps(derived, ensure_ascii=False).encode(), obj, None)


def oversized(git: GitRepo, blob: str, config: Config) -> ErrorInfo | None:
    """too_large for a pushed blob over the request limit, found without reading it (a push
    can carry a blob of any size)."""
    size = git.object_size(blob)
    limit = config.limits.max_request_bytes
    if size is None or size <= limit:
        return None
    return ErrorInfo(code=Code.TOO_LARGE, message=f"the request is {size} bytes, over the "
                     f"limit of {limit}; split the change")


def gate_error(config: Config, policy: Policy, data: bytes) -> ErrorInfo | None:
    """The gate's refusal of these bytes (parse, schema, policy, secrets, patch), or None.
    Stores nothing: what a pre-receive hook runs, with the same codes and messages."""
    limits = config.limits
    try:
        obj = load_json(data, max_bytes=limits.max_request_bytes,
                        max_depth=limits.max_json_depth)
        incoming = incoming_from_json(obj)
        if isinstance(incoming, ApprovalRequest):
            check_approver(policy, incoming.by)
            return None
        judge(incoming, config, policy)
        repo_name(incoming, config)
    except GateError as exc:
        return exc.info
    return None


def landing_identity(repo: GitRepo, record: Record,
                     request: ChangeRequest) -> tuple[str, tuple[str, str], str | None]:
    """Message, author and author date of the commit that lands ``request``. A request note's
    commit keeps its author and message, plus the Hyperion-Request trailer."""
    source = record.source
    if source.kind == "git-note" and source.commit is not None:
        origin = repo.commit_origin(source.commit)
        if origin is not None:
            subject, _, body = origin.message.strip().partition("\n")
            message = commit_message(subject.strip() or request.title, body, request.id)
            return message, (origin.author_name, origin.author_email), origin.author_date
    return (commit_message(request.title, request.body, request.id),
            author_identity(request.agent), None)
