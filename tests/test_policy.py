"""The YAML policy: limits, allowed checks, most severe action wins, held requests and the
approve/deny decisions on them (through the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Setup, Webhook

from hyperion.errors import Code, GateError
from hyperion.gate.patch import FilePatch, Operation
from hyperion.gate.policy import (
    Action,
    Policy,
    check_allowed_checks,
    check_limits,
    decide,
    load_policy,
)

ROOT = Path(__file__).resolve().parent.parent


def fp(path: str, op: Operation = Operation.UPDATE, lines: int = 1) -> FilePatch:
    return FilePatch(path=path, old_path=None, operation=op, old_mode=None, new_mode=None,
                     binary=False, added_lines=lines, removed_lines=0, added_text=())


def policy(rules: list[dict[str, object]], **extra: object) -> Policy:
    return Policy.model_validate({"version": 1, "rules": rules, **extra})


def test_most_severe_action_wins_and_names_its_rules() -> None:
    p = policy([
        {"name": "docs-ok", "match": {"paths": ["docs/**"]}, "action": "allow"},
        {"name": "ci", "match": {"paths": [".github/**"]}, "action": "require_approval",
         "reason": "CI"},
        {"name": "no-bots-in-ci", "match": {"paths": [".github/**"], "agents": ["bot-*"]},
         "action": "deny", "reason": "bots never touch CI"},
    ])
    files = [fp("docs/a.md"), fp(".github/workflows/x.yml")]
    assert decide(p, "codex-1", files).action is Action.REQUIRE_APPROVAL
    assert decide(p, "codex-1", files).rules == ("ci",)
    denied = decide(p, "bot-7", files)
    assert denied.action is Action.DENY and denied.rules == ("no-bots-in-ci",)
    assert "bots never touch CI" in denied.reason
    assert decide(p, "codex-1", [fp("src/x.py")]).action is Action.ALLOW


def test_thresholds_count_only_selected_files() -> None:
    p = policy([{"name": "mass-delete", "match": {"operations": ["delete"], "min_files": 3},
                 "action": "require_approval"}])
    two = [fp(f"f{i}", Operation.DELETE) for i in range(2)] + [fp("g"), fp("h")]
    assert decide(p, "a", two).action is Action.ALLOW
    three = [fp(f"f{i}", Operation.DELETE) for i in range(3)]
    assert decide(p, "a", three).action is Action.REQUIRE_APPROVAL


def test_paths_not_excludes() -> None:
    p = policy([{"name": "src", "match": {"paths": ["src/**"], "paths_not": ["src/gen/**"]},
                 "action": "deny"}])
    assert decide(p, "a", [fp("src/gen/x.py")]).action is Action.ALLOW
    assert decide(p, "a", [fp("src/x.py")]).action is Action.DENY


def test_default_action_applies_when_nothing_fires() -> None:
    p = policy([], default="require_approval")
    assert decide(p, "a", [fp("x")]).action is Action.REQUIRE_APPROVAL


def test_limits_and_allowed_checks() -> None:
    p = policy([], limits={"max_patch_bytes": 100, "max_files": 2, "max_lines": 10},
               checks=["unit"])
    with pytest.raises(GateError) as info:
        check_limits(p, 101, [fp("a")])
    assert info.value.info.code is Code.TOO_LARGE
    with pytest.raises(GateError):
        check_limits(p, 10, [fp("a"), fp("b"), fp("c")])
    with pytest.raises(GateError):
        check_limits(p, 10, [fp("a", lines=11)])
    check_limits(p, 10, [fp("a", lines=10)])
    with pytest.raises(GateError) as info:
        check_allowed_checks(p, ["unit", "deploy"])
    assert info.value.info.code is Code.CHECK_NOT_ALLOWED
    assert info.value.info.path == "checks[1]"


def test_shipped_default_policy_loads_and_init_copy_is_identical() -> None:
    shipped = ROOT / "policies" / "default.yaml"
    assert load_policy(shipped).rules
    packaged = ROOT / "src" / "hyperion" / "default_policy.yaml"
    assert packaged.read_text() == shipped.read_text()


def test_bad_policy_is_a_configuration_error(setup: Setup) -> None:
    bad = setup.root / "policy.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    action: maybe\n")
    setup.config.write_text(setup.config.read_text() + f"policy: {bad}\n")
    out = setup.cli("config", "--check")
    assert out.returncode == 2
    assert "rules.0.action" in out.stderr


def _with_policy(setup: Setup, text: str) -> None:
    path = setup.root / "policy.yaml"
    path.write_text(text)
    setup.config.write_text(setup.config.read_text() + f"policy: {path}\n")


def test_held_request_is_approved_then_lands(setup: Setup, webhook: Webhook) -> None:
    _with_policy(setup, "version: 1\nrules:\n  - name: docs-review\n    match: {paths: "
                 "['docs/**']}\n    action: require_approval\n    reason: docs need a human\n")
    req = setup.root / "r.json"
    req.write_text(json.dumps(setup.request("held-1", {"docs/readme.txt": "new\n"})))
    out = setup.cli("submit", str(req))
    assert out.returncode == 0 and out.stdout.split() == ["held-1", "held"]
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("held-1")["state"] == "held"     # nothing runs without a decision
    notes = webhook.wait_for(1)
    assert notes[0]["type"] == "warning" and "hyperion approve held-1" in notes[0]["message"]
    out = setup.cli("approve", "held-1", "--by", "alice")
    assert out.returncode == 0, out.stderr
    assert setup.cli("run", "--once").returncode == 0
    titles = [n["title"] for n in webhook.wait_for(3)]
    assert titles == ["hyperion: held-1 held", "hyperion: held-1: approved by alice",
                      "hyperion: held-1 landed"]
    record = setup.record("held-1")
    assert record["state"] == "landed"
    assert [(h["to"], h["by"]) for h in record["history"]][:2] == [("held", "cli"),
                                                                  ("queued", "alice")]
    assert setup.cli("approve", "held-1").returncode == 1      # no longer held


def test_denied_request_is_rejected_and_reported(setup: Setup, webhook: Webhook) -> None:
    _with_policy(setup, "version: 1\ndefault: require_approval\n")
    req = setup.root / "r.json"
    req.write_text(json.dumps(setup.request("held-2", {"app.py": "VALUE = 0\n"})))
    setup.cli("submit", str(req))
    out = setup.cli("deny", "held-2", "--by", "bob", "--reason", "not now")
    assert out.returncode == 0, out.stderr
    record = setup.record("held-2")
    assert record["state"] == "rejected"
    assert record["error"]["code"] == "policy_denied"
    assert "bob" in record["error"]["message"] and "not now" in record["error"]["message"]
    assert webhook.received == []            # queued in the outbox: the daemon delivers
    assert setup.cli("run", "--once").returncode == 0
    assert [n["type"] for n in webhook.wait_for(2)] == ["warning", "failure"]


def test_policy_deny_rejects_at_intake(setup: Setup) -> None:
    _with_policy(setup, "version: 1\nrules:\n  - name: no-app\n    match: {paths: [app.py]}\n"
                 "    action: deny\n    reason: app.py is frozen\n")
    req = setup.root / "r.json"
    req.write_text(json.dumps(setup.request("deny-1", {"app.py": "VALUE = 0\n"})))
    out = setup.cli("validate", "--format", "json", str(req))
    assert out.returncode == 1
    error = json.loads(out.stdout)[0]["errors"][0]
    assert error["code"] == "policy_denied" and "app.py is frozen" in error["message"]


def test_a_credential_in_the_patch_is_refused_without_showing_it(setup: Setup,
                                                                  webhook: Webhook) -> None:
    key = "AKIA" + "QWERTYUIOPASDFGH"
    request = setup.request("sec-1", {"app.py": f"AWS_KEY = '{key}'\n"})
    setup.drop("s.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("sec-1")
    assert record["state"] == "rejected"
    error = record["error"]
    assert error["code"] == "secret_detected" and error["path"] == "app.py"
    assert "line 1" in error["message"] and "fingerprint" in error["message"]
    fingerprint = error["detail"]["findings"][0]["fingerprint"]
    everything = json.dumps(record) + json.dumps(webhook.wait_for(1)) + \
        (setup.state / "audit.jsonl").read_text()
    assert key not in everything
    # The policy may allow that exact value (say, a documented test key) by its fingerprint.
    _with_policy(setup, f"version: 1\nsecrets:\n  fingerprints: [{fingerprint}]\n")
    again = dict(request, id="sec-2")
    setup.drop("s2.json", again)
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("sec-2")["state"] == "landed"


def _approval(id: str, request: str, decision: str, by: str, reason: str = "") -> dict[str, str]:
    return {"kind": "approval", "version": 1, "id": id, "request": request,
            "decision": decision, "by": by, "reason": reason}


def test_approval_files_decide_held_requests_when_the_policy_allows_the_actor(
        setup: Setup) -> None:
    _with_policy(setup, "version: 1\ndefault: require_approval\napprovers: ['alice', 'lead-*']\n")
    setup.drop("h1.json", setup.request("ap-1", {"app.py": "V = 1\n"}))
    setup.drop("h2.json", setup.request("ap-2", {"docs/readme.txt": "2\n"}))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("ap-1")["state"] == "held"
    # Someone the policy does not name cannot decide; the request stays held.
    setup.drop("m.json", _approval("apr-m", "ap-1", "approve", "mallory"))
    setup.drop("a.json", _approval("apr-1", "ap-1", "approve", "alice"))
    setup.drop("d.json", _approval("apr-2", "ap-2", "deny", "lead-ops", "not this week"))
    assert setup.cli("run", "--once").returncode == 0
    refused = setup.record("apr-m")
    assert refused["state"] == "rejected" and refused["error"]["code"] == "policy_denied"
    approved = setup.record("ap-1")
    assert approved["state"] == "landed"
    assert any(h["by"] == "alice (approval file apr-1)" for h in approved["history"])
    assert any(a["name"] == "approval-apr-1.json" for a in approved["artifacts"])
    denied = setup.record("ap-2")
    assert denied["state"] == "rejected" and "not this week" in denied["error"]["message"]
    # The same approval file again is a no-op, not a new rejection.
    before = json.loads(setup.cli("list", "--format", "json").stdout)
    setup.drop("a-again.json", _approval("apr-1", "ap-1", "approve", "alice"))
    assert setup.cli("run", "--once").returncode == 0
    assert json.loads(setup.cli("list", "--format", "json").stdout) == before
    assert list(setup.inbox.iterdir()) == []


def test_approval_files_are_refused_without_approvers(setup: Setup) -> None:
    _with_policy(setup, "version: 1\ndefault: require_approval\n")
    setup.drop("h.json", setup.request("ap-3", {"app.py": "V = 3\n"}))
    setup.drop("a.json", _approval("apr-3", "ap-3", "approve", "alice"))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("apr-3")["error"]["code"] == "policy_denied"
    assert setup.record("ap-3")["state"] == "held"
