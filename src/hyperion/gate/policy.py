"""YAML policy: limits, allowed checks, and rules whose most severe matching action wins.

A policy never comes from the change under review: it is loaded from the path the
configuration names. Evaluation is pure and names every rule that fired.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hyperion.errors import Code, GateError
from hyperion.gate.patch import FilePatch
from hyperion.gate.paths import in_scope
from hyperion.gate.secrets import Allowlist


class Action(StrEnum):
    ALLOW = "allow"
    NOTIFY = "notify"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


SEVERITY = {Action.ALLOW: 0, Action.NOTIFY: 1, Action.REQUIRE_APPROVAL: 2, Action.DENY: 3}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    max_patch_bytes: int = Field(1024 * 1024, gt=0)
    max_files: int = Field(500, gt=0)
    max_lines: int = Field(20000, gt=0, description="Added plus removed lines.")


class Match(_Strict):
    paths: list[str] = Field(default_factory=list,
                             description="Fires when any touched path matches one of these.")
    paths_not: list[str] = Field(default_factory=list,
                                 description="Touched paths matching these are not considered.")
    agents: list[str] = Field(default_factory=list, description="Agent name globs.")
    operations: list[Literal["add", "update", "delete", "rename"]] = Field(default_factory=list)
    min_files: int | None = Field(None, ge=0)
    min_lines: int | None = Field(None, ge=0)


class Rule(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    match: Match = Field(default_factory=Match)
    action: Action
    reason: str = ""


class Policy(_Strict):
    version: Literal[1] = 1
    default: Action = Action.ALLOW
    limits: Limits = Field(default_factory=Limits)
    checks: list[str] | None = Field(None, description="Allowed check names; omit for all.")
    rules: list[Rule] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list, description=(
        "Who may decide held requests with an approval file (name globs); none by default."))
    secrets: Allowlist = Field(default_factory=Allowlist, description=(
        "Findings of the secret scanner to let through: by fingerprint, path glob or regex."))


@dataclass(frozen=True)
class Decision:
    action: Action
    rules: tuple[str, ...]      # the rules that decided (all rules of the winning severity)
    reason: str


def load_policy(path: Path | None) -> Policy:
    """Read and validate a policy file (None: the permissive built-in default).

    ValueError names the file, the key and the problem."""
    if path is None:
        return Policy()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the policy: {exc}") from None
    try:
        return Policy.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


def _selects(m: Match, f: FilePatch) -> bool:
    """Whether one touched file counts for a rule (per-file conditions)."""
    if m.paths_not and in_scope(f.path, m.paths_not):
        return False
    if m.paths and not (in_scope(f.path, m.paths) or
                        (f.old_path is not None and in_scope(f.old_path, m.paths))):
        return False
    return not m.operations or f.operation.value in m.operations


def _rule_fires(rule: Rule, agent: str, files: list[FilePatch]) -> bool:
    m = rule.match
    if m.agents and not any(fnmatchcase(agent, pattern) for pattern in m.agents):
        return False
    selected = [f for f in files if _selects(m, f)]
    if (m.paths or m.operations) and not selected:
        return False
    if m.min_files is not None and len(selected) < m.min_files:
        return False
    lines = sum(f.added_lines + f.removed_lines for f in selected)
    return m.min_lines is None or lines >= m.min_lines


def check_limits(policy: Policy, patch_bytes: int, files: list[FilePatch]) -> None:
    limits = policy.limits
    if patch_bytes > limits.max_patch_bytes:
        raise GateError(Code.TOO_LARGE, f"the patch is {patch_bytes} bytes, over the policy "
                        f"limit of {limits.max_patch_bytes}; split the change", path="patch")
    if len(files) > limits.max_files:
        raise GateError(Code.TOO_LARGE, f"the patch touches {len(files)} files, over the "
                        f"policy limit of {limits.max_files}; split the change", path="changes")
    lines = sum(f.added_lines + f.removed_lines for f in files)
    if lines > limits.max_lines:
        raise GateError(Code.TOO_LARGE, f"the patch changes {lines} lines, over the policy "
                        f"limit of {limits.max_lines}; split the change", path="patch")


def check_allowed_checks(policy: Policy, checks: list[str]) -> None:
    if policy.checks is None:
        return
    for i, name in enumerate(checks):
        if name not in policy.checks:
            raise GateError(Code.CHECK_NOT_ALLOWED, f"the policy does not allow the check "
                            f"{name!r} (allowed: {', '.join(policy.checks) or 'none'})",
                            path=f"checks[{i}]")


def check_approver(policy: Policy, actor: str) -> None:
    if not any(fnmatchcase(actor, pattern) for pattern in policy.approvers):
        raise GateError(Code.POLICY_DENIED, f"{actor!r} may not decide requests with an "
                        "approval file; list it under `approvers` in the policy, or use "
                        "`hyperion approve`", path="by")


def decide(policy: Policy, agent: str, files: list[FilePatch]) -> Decision:
    fired = [r for r in policy.rules if _rule_fires(r, agent, files)]
    if not fired:
        return Decision(policy.default, (), f"no rule matched; the default is "
                        f"{policy.default.value}")
    worst = max(SEVERITY[r.action] for r in fired)
    deciding = [r for r in fired if SEVERITY[r.action] == worst]
    reason = "; ".join(f"{r.name}: {r.reason}" if r.reason else r.name for r in deciding)
    return Decision(deciding[0].action, tuple(r.name for r in deciding), reason)
