"""policy_from_target: the policy is read from the tip of the request's target branch, never from
the change under review; a missing or broken file there refuses, and reads are cached per tip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Setup, git

from hyperion.gate.review import tip_policy
from hyperion.gitops import GitRepo

REPO_POLICY = """\
version: 1
rules:
  - name: app-is-frozen
    match: {paths: [app.py]}
    action: deny
    reason: app.py is frozen on this branch
"""


def use_target_policy(setup: Setup, text: str | None) -> None:
    if text is not None:
        (setup.repo / "policies").mkdir(exist_ok=True)
        (setup.repo / "policies" / "hyperion.yaml").write_text(text)
        git(setup.repo, "add", "-A")
        git(setup.repo, "commit", "-q", "-m", "policy")
    # The configured policy allows everything; the repository's own one must win.
    (setup.root / "open.yaml").write_text("version: 1\ndefault: allow\n")
    config = setup.config.read_text().replace(
        "    target: main\n", "    target: main\n    policy_from_target: policies/hyperion.yaml\n")
    setup.config.write_text(config + "policy: open.yaml\n")


def submit(setup: Setup, request: dict[str, object]) -> dict[str, object]:
    path = setup.root / f"{request['id']}.json"
    path.write_text(json.dumps(request))
    setup.cli("submit", str(path))
    return setup.record(str(request["id"]))


def test_the_target_tip_policy_decides(setup: Setup) -> None:
    use_target_policy(setup, REPO_POLICY)
    record = submit(setup, setup.request("tip-1", {"app.py": "VALUE = 2\n"}))
    assert record["state"] == "rejected"
    assert record["error"]["code"] == "policy_denied"
    assert "app.py is frozen" in record["error"]["message"]
    assert submit(setup, setup.request("tip-2", {"docs/readme.txt": "x\n"}))["state"] == "queued"


def test_a_change_cannot_loosen_the_policy_that_judges_it(setup: Setup) -> None:
    use_target_policy(setup, REPO_POLICY)
    request = setup.request("sneaky-1", {"app.py": "VALUE = 2\n",
                                         "policies/hyperion.yaml": "version: 1\n"})
    record = submit(setup, request)
    assert record["state"] == "rejected" and record["error"]["code"] == "policy_denied"


@pytest.mark.parametrize(("text", "why"), [
    (None, "does not exist there"),
    ("rules: [", "not valid YAML"),
    ("version: 1\nrules:\n  - name: x\n    action: maybe\n", "rules.0.action"),
    ("version: 1\nsignatures: {allowed_signers: ../../etc/passwd}\n",
     "must be a file of the repository"),
])
def test_a_missing_or_broken_policy_on_the_tip_refuses(setup: Setup, text: str | None,
                                                        why: str) -> None:
    use_target_policy(setup, text)
    record = submit(setup, setup.request("broken-1", {"docs/readme.txt": "x\n"}))
    assert record["state"] == "rejected"
    error = record["error"]
    assert error["code"] == "policy_denied" and error["path"] == "target"
    assert "policies/hyperion.yaml" in error["message"] and why in error["message"]
    assert "hyperion requeue" in error["message"]


def test_fixing_the_policy_on_the_branch_then_requeue_accepts(setup: Setup) -> None:
    use_target_policy(setup, None)
    assert submit(setup, setup.request("later-1", {"docs/readme.txt": "x\n"}))["state"] == \
        "rejected"
    use_target_policy(setup, REPO_POLICY)
    out = setup.cli("requeue", "later-1", "--reason", "policy committed")
    assert out.returncode == 0, out.stderr
    assert setup.record("later-1")["state"] == "queued"


def test_tip_policies_are_cached_per_commit(setup: Setup, tmp_path: Path) -> None:
    use_target_policy(setup, REPO_POLICY)
    repo = GitRepo(setup.repo)
    first = repo.branch_commit("main")
    assert first is not None
    policy = tip_policy(repo, first, "policies/hyperion.yaml")
    assert tip_policy(repo, first, "policies/hyperion.yaml") is policy
    (setup.repo / "policies" / "hyperion.yaml").write_text("version: 1\n")
    git(setup.repo, "commit", "-q", "-am", "open up")
    second = repo.branch_commit("main")
    assert second is not None and second != first
    assert tip_policy(repo, second, "policies/hyperion.yaml").rules == []
    assert tip_policy(repo, first, "policies/hyperion.yaml") is policy


def test_policy_from_target_must_be_a_relative_path(setup: Setup) -> None:
    config = setup.config.read_text().replace(
        "    target: main\n", "    target: main\n    policy_from_target: ../outside.yaml\n")
    setup.config.write_text(config)
    out = setup.cli("config", "--check")
    assert out.returncode == 2 and "policy_from_target" in out.stderr


def test_doctor_reports_the_target_policy(setup: Setup) -> None:
    use_target_policy(setup, None)
    out = setup.cli("doctor", "--format", "json")
    finding = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "policy of demo")
    assert not finding["ok"] and "does not exist there" in finding["message"]
    use_target_policy(setup, REPO_POLICY)
    out = setup.cli("doctor", "--format", "json")
    finding = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "policy of demo")
    assert finding["ok"] and "(1 rules)" in finding["message"]


def test_approvers_come_from_the_target_policy(setup: Setup) -> None:
    use_target_policy(setup, "version: 1\napprovers: [lead-*]\nrules:\n  - name: docs\n"
                      "    match: {paths: ['docs/**']}\n    action: require_approval\n")
    assert submit(setup, setup.request("held-t", {"docs/readme.txt": "x\n"}))["state"] == "held"
    approval = {"kind": "approval", "version": 1, "request": "held-t", "decision": "approve"}
    setup.drop("a1.json", dict(approval, id="apr-1", by="intern"))
    setup.drop("a2.json", dict(approval, id="apr-2", by="lead-ann"))
    assert setup.cli("run", "--once").returncode == 0
    error = setup.record("apr-1")["error"]
    assert error["code"] == "policy_denied" and "'intern' may not decide" in error["message"]
    assert setup.record("held-t")["state"] == "landed"
