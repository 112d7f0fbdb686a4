"""`hyperion policy test DIR`: fixture requests run through the gate and compared with what
their authors expect, like ``opa test`` for a policy.

A fixture folder holds requests and their expectations:

* ``NAME.json``: a request (change or task) or an approval file, exactly as it would be
  dropped in the inbox; folders below DIR are searched too, and NAME includes them;
* ``NAME.expect.yaml`` beside it, or an entry ``NAME:`` in ``DIR/expected.yaml``, a mapping:

  - ``decision``: ``allow`` | ``notify`` | ``require_approval`` | ``deny`` | ``rejected``
    (``deny``: a rule denied it; ``rejected``: refused for anything else, e.g. too_large);
  - ``error``: the error code that must be given (``rejected``; with ``deny`` it is
    ``policy_denied``);
  - ``rules``: rules that must fire; ``not_rules``: rules that must not fire;
  - ``description``: shown when the case fails.

Each request goes through the pure gate (JSON, schema, patch, manifest, paths, scope, limits,
secrets, policy decision) and the signature check, under the policy given. Things that depend
on hyperion.yaml or a repository are not part of a policy test: every repo and check a
fixture names counts as configured, and the target's tree is not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hyperion.config import CheckConfig, Config, RepoConfig
from hyperion.errors import Code, GateError
from hyperion.gate.patch import parse_patch
from hyperion.gate.policy import Policy, check_approver, fired_rules
from hyperion.gate.signatures import check_signature
from hyperion.gate.verdict import judge
from hyperion.requests import ApprovalRequest, ChangeRequest, incoming_from_json, load_json

Decision = Literal["allow", "notify", "require_approval", "deny", "rejected"]
EXPECTED_FILE = "expected.yaml"
EXPECT_SUFFIX = ".expect.yaml"


class FixtureError(Exception):
    """The fixture folder cannot be used (usage error, exit 2)."""


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: Decision
    error: Code | None = None
    rules: list[str] = Field(default_factory=list)
    not_rules: list[str] = Field(default_factory=list)
    description: str = ""


@dataclass
class Outcome:
    decision: Decision
    error: Code | None = None
    message: str = ""
    fired: list[str] = field(default_factory=list)      # every rule that fired
    deciding: list[str] = field(default_factory=list)   # the rules of the decision


@dataclass
class CaseResult:
    name: str
    expected: Expectation
    actual: Outcome
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "problems": self.problems,
                "expected": self.expected.model_dump(mode="json", exclude_defaults=True),
                "actual": {"decision": self.actual.decision,
                           "error": self.actual.error.value if self.actual.error else None,
                           "message": self.actual.message, "rules": self.actual.fired,
                           "deciding_rules": self.actual.deciding}}


def _expectation(data: Any, where: str) -> Expectation:
    try:
        return Expectation.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise FixtureError(f"{where}: {key}: {first['msg']}") from None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FixtureError(f"{path}: cannot read: {exc}") from None


def discover(folder: Path) -> list[tuple[str, Path, Expectation]]:
    """Every case of a fixture folder: (name, request file, expectation)."""
    if not folder.is_dir():
        raise FixtureError(f"{folder}: not a folder of fixtures")
    shared: dict[str, Any] = {}
    expected_file = folder / EXPECTED_FILE
    if expected_file.exists():
        data = _load_yaml(expected_file)
        if not isinstance(data, dict):
            raise FixtureError(f"{expected_file}: must map case names to expectations")
        shared = {str(k): v for k, v in data.items()}
    cases = []
    for request in sorted(folder.rglob("*.json")):
        name = request.relative_to(folder).with_suffix("").as_posix()
        own = request.with_name(request.stem + EXPECT_SUFFIX)
        if own.exists() and name in shared:
            raise FixtureError(f"{name}: expected both in {own.name} and in {EXPECTED_FILE}; "
                               "keep one")
        if own.exists():
            expectation = _expectation(_load_yaml(own), str(own))
        elif name in shared:
            expectation = _expectation(shared.pop(name), f"{expected_file}: {name}")
        else:
            raise FixtureError(f"{request}: no expectation; write {own.name} beside it or an "
                               f"entry {name!r} in {EXPECTED_FILE}")
        cases.append((name, request, expectation))
    if shared:
        raise FixtureError(f"{expected_file}: no request file for "
                           f"{', '.join(sorted(shared))} (expected NAME.json)")
    if not cases:
        raise FixtureError(f"{folder}: no fixture requests (*.json)")
    return cases


def _config_for(request: Any, limits: Config) -> Config:
    """A configuration in which every repo and check the request names exists."""
    repo = getattr(request, "repo", None) or "default"
    checks = {name: CheckConfig(run=["true"]) for name in getattr(request, "checks", [])}
    return limits.model_copy(update={"repos": {repo: RepoConfig(path=Path("/nonexistent"))},
                                     "checks": checks})


def evaluate(data: bytes, policy: Policy, limits: Config) -> Outcome:
    """What the gate does with one request under ``policy``."""
    try:
        obj = load_json(data, max_bytes=limits.limits.max_request_bytes,
                        max_depth=limits.limits.max_json_depth)
        incoming = incoming_from_json(obj)
        if isinstance(incoming, ApprovalRequest):
            check_approver(policy, incoming.by)
            return Outcome("allow")
        agent = incoming.agent if isinstance(incoming, ChangeRequest) \
            else incoming.requested_by
        files = []
        try:
            verdict = judge(incoming, _config_for(incoming, limits), policy)
        except GateError as exc:
            rules = (exc.info.detail or {}).get("rules")
            if exc.info.code is not Code.POLICY_DENIED or not isinstance(rules, list):
                raise
            assert isinstance(incoming, ChangeRequest) and incoming.patch is not None
            files = parse_patch(incoming.patch)
            return Outcome("deny", exc.info.code, exc.info.message,
                           fired_rules(policy, agent, files), [str(r) for r in rules])
        check_signature(obj, agent, policy)
    except GateError as exc:
        return Outcome("rejected", exc.info.code, exc.info.message)
    decision = verdict.decision
    return Outcome(decision.action.value, None, decision.reason,
                   fired_rules(policy, agent, verdict.files), list(decision.rules))


def compare(expected: Expectation, actual: Outcome, policy: Policy) -> list[str]:
    problems = []
    got = actual.decision + (f" ({actual.error.value}: {actual.message})" if actual.error
                             else "")
    if actual.decision != expected.decision:
        problems.append(f"expected decision {expected.decision}, got {got}")
    if expected.error is not None and actual.error is not expected.error:
        problems.append(f"expected error {expected.error.value}, got "
                        f"{actual.error.value if actual.error else 'none'}")
    known = {r.name for r in policy.rules}
    for name in expected.rules + expected.not_rules:
        if name not in known:
            problems.append(f"the policy has no rule named {name!r}")
    fired = ", ".join(actual.fired) or "none"
    for name in expected.rules:
        if name in known and name not in actual.fired:
            problems.append(f"expected rule {name} to fire; fired: {fired}")
    for name in expected.not_rules:
        if name in actual.fired:
            problems.append(f"expected rule {name} not to fire; fired: {fired}")
    return problems


def run_fixtures(folder: Path, policy: Policy, limits: Config) -> list[CaseResult]:
    results = []
    for name, path, expectation in discover(folder):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FixtureError(f"{path}: cannot read: {exc.strerror}") from None
        actual = evaluate(data, policy, limits)
        results.append(CaseResult(name, expectation, actual,
                                  compare(expectation, actual, policy)))
    return results


def render_text(results: list[CaseResult], policy_name: str) -> str:
    lines = []
    for r in results:
        if r.ok:
            rules = f" ({', '.join(r.actual.deciding)})" if r.actual.deciding else ""
            error = f" {r.actual.error.value}" if r.actual.error else ""
            lines.append(f"PASS  {r.name}: {r.actual.decision}{error}{rules}")
            continue
        lines.append(f"FAIL  {r.name}" + (f": {r.expected.description}"
                                          if r.expected.description else ""))
        lines += [f"      {problem}" for problem in r.problems]
    failed = sum(1 for r in results if not r.ok)
    lines.append(f"{len(results)} cases: {len(results) - failed} passed, {failed} failed "
                 f"(policy: {policy_name})")
    return "\n".join(lines)

