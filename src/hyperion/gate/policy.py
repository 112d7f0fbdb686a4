"""YAML policy: limits, allowed checks, and rules whose most severe matching action wins.

A policy never comes from the change under review: it is loaded from the path the
configuration names. Evaluation is pure and names every rule that fired.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from operator import attrgetter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from hyperion.errors import Code, GateError
from hyperion.gate.globset import GlobSet
from hyperion.gate.patch import FilePatch
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


class Signatures(_Strict):
    allowed_signers: str = Field(min_length=1, max_length=1024, description=(
        "An ssh allowed_signers file (see ssh-keygen(1)): principals are agent names or "
        "globs. Relative to the policy file's folder; for a policy read from the target "
        "branch, a file of the repository at the same commit. Read when the policy loads."))
    require_for: list[str] = Field(default_factory=list, description=(
        "Agent name globs whose requests must carry a valid `signature`; a signature on any "
        "other request is verified too."))


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
    allow_submodules: bool = Field(False, description=(
        "Whether a change may add, update or remove a gitlink (a submodule, mode 160000)."))
    signatures: Signatures | None = Field(None, description=(
        "Verify requests' SSH signatures against an allowed_signers file."))

    _compiled: CompiledRules | None = PrivateAttr(default=None)
    _allowed_signers: str | None = PrivateAttr(default=None)

    def allowed_signers_text(self) -> str:
        """The allowed_signers content read when the policy was loaded (or, for a policy built
        in code, read now from its path)."""
        if self._allowed_signers is not None:
            return self._allowed_signers
        assert self.signatures is not None
        return Path(self.signatures.allowed_signers).read_text(encoding="utf-8")


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
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the policy: {exc}") from None

    def read_signers(name: str) -> str:
        signers = path.parent / Path(name).expanduser()
        try:
            return signers.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: signatures.allowed_signers: cannot read {signers}: "
                             f"{exc}") from None

    return parse_policy(text, str(path), read_signers)


def parse_policy(text: str, origin: str, read_signers: Callable[[str], str]) -> Policy:
    """Validate policy YAML; ``read_signers`` gives the allowed_signers content it names.
    ValueError names ``origin``, the key and the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        policy = Policy.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValueError(f"{origin}: {where}: {first['msg']}") from None
    if policy.signatures is not None:
        policy._allowed_signers = read_signers(policy.signatures.allowed_signers)
    return policy


class CompiledRules:
    """A policy's rules prepared for evaluation: every glob of every rule in one
    :class:`GlobSet`, so a patch of thousands of files costs a few lookups per file rather than
    one glob match per file and rule."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        patterns: dict[str, int] = {}
        for rule in rules:
            for pattern in (*rule.match.paths, *rule.match.paths_not):
                patterns.setdefault(pattern, len(patterns))
        self.globs = GlobSet(list(patterns))
        self.selects: list[tuple[int, ...]] = [() for _ in patterns]   # pattern -> rules
        self.excludes: list[tuple[int, ...]] = [() for _ in patterns]
        for index, rule in enumerate(rules):
            for pattern in set(rule.match.paths):
                self.selects[patterns[pattern]] += (index,)
            for pattern in set(rule.match.paths_not):
                self.excludes[patterns[pattern]] += (index,)
        self.operations = [frozenset(r.match.operations) for r in rules]

    def fired(self, agent: str, files: list[FilePatch]) -> list[Rule]:
        """The rules whose every condition holds for this agent and these files, in order."""
        new_hits = self.globs.match_all(list(map(attrgetter("path"), files)))
        sources = list(map(attrgetter("old_path"), files))
        old_hits: dict[int, list[int]] = {}
        if sources.count(None) != len(sources):
            renamed = [i for i, source in enumerate(sources) if source is not None]
            found = self.globs.match_all([files[i].old_path or "" for i in renamed])
            old_hits = {p: [renamed[j] for j in hits] for p, hits in found.items()}
        excluded: dict[int, set[int]] = {}        # rule -> files its paths_not set aside
        selected: dict[int, set[int]] = {}        # rule -> files its paths select
        for p, hits in new_hits.items():
            for r in self.excludes[p]:
                excluded.setdefault(r, set()).update(hits)
            for r in self.selects[p]:
                selected.setdefault(r, set()).update(hits)
        for p, hits in old_hits.items():
            for r in self.selects[p]:
                selected.setdefault(r, set()).update(hits)
        totals = _Totals(files)
        fired = []
        for r, rule in enumerate(self.rules):
            m = rule.match
            if m.agents and not any(fnmatchcase(agent, pattern) for pattern in m.agents):
                continue
            ops = self.operations[r]
            if not m.paths and r not in excluded:
                # Every file counts: totals computed once (and only if a rule needs them).
                count = totals.files(ops)
                lines = totals.lines(ops) if m.min_lines is not None else 0
            else:
                chosen: Iterable[int] = selected.get(r, ()) if m.paths else range(len(files))
                if r in excluded:
                    chosen = set(chosen) - excluded[r]
                if ops:
                    chosen = [i for i in chosen if files[i].operation in ops]
                chosen = list(chosen)
                count = len(chosen)
                lines = (sum(files[i].added_lines + files[i].removed_lines for i in chosen)
                         if m.min_lines is not None else 0)
            if (m.paths or m.operations) and not count:
                continue
            if m.min_files is not None and count < m.min_files:
                continue
            if m.min_lines is not None and lines < m.min_lines:
                continue
            fired.append(rule)
        return fired


class _Totals:
    """Counts over all files of a patch, per operation, computed on first use."""

    def __init__(self, files: list[FilePatch]) -> None:
        self._files = files
        self._counts: Counter[str] | None = None
        self._lines: dict[frozenset[str], int] = {}

    def files(self, ops: frozenset[str]) -> int:
        if not ops:
            return len(self._files)
        if self._counts is None:
            # Operation is a StrEnum: equal to, and hashed like, its value.
            self._counts = Counter(map(attrgetter("operation"), self._files))
        return sum(self._counts[op] for op in ops)

    def lines(self, ops: frozenset[str]) -> int:
        if ops not in self._lines:
            files = self._files if not ops else [f for f in self._files if f.operation in ops]
            self._lines[ops] = (sum(map(attrgetter("added_lines"), files))
                                + sum(map(attrgetter("removed_lines"), files)))
        return self._lines[ops]


def compiled(policy: Policy) -> CompiledRules:
    """The policy's rules compiled once and kept with it (rebuilt if its rules are replaced)."""
    cached = policy._compiled
    if cached is None or cached.rules is not policy.rules:
        cached = CompiledRules(policy.rules)
        policy._compiled = cached
    return cached


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


def fired_rules(policy: Policy, agent: str, files: list[FilePatch]) -> list[str]:
    """Every rule whose conditions hold, whatever its action (the decision keeps only the most
    severe of them)."""
    return [r.name for r in compiled(policy).fired(agent, files)]


def decide(policy: Policy, agent: str, files: list[FilePatch]) -> Decision:
    fired = compiled(policy).fired(agent, files)
    if not fired:
        return Decision(policy.default, (), f"no rule matched; the default is "
                        f"{policy.default.value}")
    worst = max(SEVERITY[r.action] for r in fired)
    deciding = [r for r in fired if SEVERITY[r.action] == worst]
    reason = "; ".join(f"{r.name}: {r.reason}" if r.reason else r.name for r in deciding)
    return Decision(deciding[0].action, tuple(r.name for r in deciding), reason)
