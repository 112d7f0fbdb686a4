"""The gate's decision on one typed request: accept (returning what the patch touches) or refuse.

Pure: no I/O, no git. Every refusal is a GateError with a code from the error table.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperion.config import Config
from hyperion.errors import Code, GateError
from hyperion.gate.patch import FilePatch, Operation, parse_patch
from hyperion.gate.paths import check_path, in_scope
from hyperion.gate.policy import (
    Action,
    Decision,
    Policy,
    check_allowed_checks,
    check_limits,
    decide,
)
from hyperion.gate.secrets import scan_patch
from hyperion.requests import ChangeRequest, Request, TaskRequest


@dataclass(frozen=True)
class Verdict:
    """An accepted request: what its patch touches and what the policy decided."""

    files: list[FilePatch]
    decision: Decision


def repo_name(request: Request, config: Config) -> str:
    if request.repo is not None:
        if request.repo not in config.repos:
            known = ", ".join(sorted(config.repos)) or "none"
            raise GateError(Code.SCHEMA_VIOLATION, f"unknown repo {request.repo!r}; configured "
                            f"repos: {known}", path="repo")
        return request.repo
    if len(config.repos) == 1:
        return next(iter(config.repos))
    raise GateError(Code.SCHEMA_VIOLATION, "name the repo: this gate has "
                    f"{len(config.repos)} configured repos", path="repo")


def judge(request: Request, config: Config, policy: Policy) -> Verdict:
    """Accept (a Verdict, whose decision may still hold it for approval) or raise GateError."""
    repo_name(request, config)
    _check_names(request.checks, config)
    check_allowed_checks(policy, request.checks)
    if isinstance(request, TaskRequest):
        return _judge_task(request, config, policy)
    files = _judge_change(request)
    assert request.patch is not None
    check_limits(policy, len(request.patch.encode()), files)
    findings = scan_patch(files, title=request.title, body=request.body, allow=policy.secrets)
    if findings:
        first = findings[0]
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise GateError(Code.SECRET_DETECTED, f"a credential would land: {first.describe()}"
                        f"{more}; remove it and rotate it, or allowlist its fingerprint in the "
                        "policy if it is not secret", path=first.path,
                        detail={"findings": [{"rule": f.rule_id, "path": f.path,
                                              "line": f.line, "fingerprint": f.fingerprint}
                                             for f in findings[:20]]})
    decision = decide(policy, request.agent, files)
    if decision.action is Action.DENY:
        raise GateError(Code.POLICY_DENIED, f"the policy denies this change ({decision.reason})",
                        detail={"rules": list(decision.rules)})
    return Verdict(files, decision)


def _check_names(checks: list[str], config: Config) -> None:
    for i, name in enumerate(checks):
        if name not in config.checks:
            known = ", ".join(sorted(config.checks)) or "none"
            raise GateError(Code.CHECK_NOT_ALLOWED, f"the check {name!r} is not defined in "
                            f"the configuration (defined: {known})", path=f"checks[{i}]")


def _judge_task(task: TaskRequest, config: Config, policy: Policy) -> Verdict:
    """A task has no patch yet: its harness must be configured, its scope usable, and the
    policy must let its requester ask (agent rules; path rules apply to what the harness
    makes, which the task loop judges as a change)."""
    if task.harness not in config.harnesses:
        known = ", ".join(sorted(config.harnesses)) or "none"
        raise GateError(Code.POLICY_DENIED, f"no harness named {task.harness!r} is configured "
                        f"(configured: {known}); name one of them or add it under `harnesses`",
                        path="harness")
    _check_scope(task.file_targets)
    decision = decide(policy, task.requested_by, [])
    if decision.action is Action.DENY:
        raise GateError(Code.POLICY_DENIED, f"the policy denies this task ({decision.reason})",
                        detail={"rules": list(decision.rules)})
    return Verdict([], decision)


def _check_scope(file_targets: list[str]) -> None:
    for i, pattern in enumerate(file_targets):
        if any(ord(c) < 32 or ord(c) == 127 for c in pattern) or pattern.startswith("/"):
            raise GateError(Code.PATH_TRAVERSAL, "file_targets must be relative globs without "
                            "control characters", path=f"file_targets[{i}]")


def _judge_change(change: ChangeRequest) -> list[FilePatch]:
    if change.patch is None:
        if change.commit is not None:
            raise GateError(Code.SCHEMA_VIOLATION, "`commit` change requests are accepted "
                            "only from the git inbox; send a `patch` instead", path="commit")
        raise GateError(Code.SCHEMA_VIOLATION, "a change needs a `patch` (a unified diff)",
                        path="patch")
    if change.commit is not None:
        raise GateError(Code.SCHEMA_VIOLATION, "give either `patch` or `commit`, not both",
                        path="commit")
    _check_scope(change.file_targets)
    files = parse_patch(change.patch)
    _check_manifest(change, files)
    for f in files:
        for path in (f.path, f.old_path):
            if path is not None and not in_scope(path, change.file_targets):
                raise GateError(Code.OUT_OF_SCOPE, f"{path!r} is outside file_targets "
                                f"{change.file_targets}; widen the scope or drop the file",
                                path=path)
    return files


def _manifest_operation(f: FilePatch) -> str:
    if f.operation is Operation.ADD:
        return "add"
    return f.operation.value


def _check_manifest(change: ChangeRequest, files: list[FilePatch]) -> None:
    listed: dict[str, int] = {}
    for i, entry in enumerate(change.changes):
        check_path(entry.path, f"changes[{i}].path")
        if entry.from_ is not None:
            check_path(entry.from_, f"changes[{i}].from")
        if (entry.operation == "rename") != (entry.from_ is not None):
            raise GateError(Code.MANIFEST_MISMATCH, "`from` is required for a rename and only "
                            "for a rename", path=f"changes[{i}]")
        if entry.path in listed:
            raise GateError(Code.MANIFEST_MISMATCH, f"{entry.path!r} is listed twice in changes; "
                            "list every path once", path=f"changes[{i}].path")
        listed[entry.path] = i
    touched = {f.path: f for f in files}
    for f in files:
        found = listed.get(f.path)
        if found is None:
            raise GateError(Code.MANIFEST_MISMATCH, f"the patch touches {f.path!r} but "
                            "`changes` does not list it", path=f.path)
        i = found
        entry = change.changes[i]
        op = _manifest_operation(f)
        if entry.operation != op:
            raise GateError(Code.MANIFEST_MISMATCH, f"changes[{i}] says {entry.operation!r} "
                            f"but the patch does {op!r} on {f.path!r}", path=f"changes[{i}]")
        if op == "rename" and entry.from_ != f.old_path:
            raise GateError(Code.MANIFEST_MISMATCH, f"changes[{i}] renames from {entry.from_!r} "
                            f"but the patch renames from {f.old_path!r}",
                            path=f"changes[{i}].from")
        if entry.sha256 is not None and op == "delete":
            raise GateError(Code.MANIFEST_MISMATCH, f"changes[{i}] deletes {f.path!r} and so "
                            "cannot have a sha256", path=f"changes[{i}].sha256")
    for path, i in listed.items():
        if path not in touched:
            raise GateError(Code.MANIFEST_MISMATCH, f"`changes` lists {path!r} but the patch "
                            "does not touch it", path=f"changes[{i}].path")
