"""`hyperion policy test DIR`: fixture requests against a policy, like `opa test`; the shipped
fixtures under policies/tests pass against the shipped default policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Setup

ROOT = Path(__file__).resolve().parent.parent
POLICY = """\
version: 1
rules:
  - name: no-secrets-dir
    match: {paths: ["secrets/**"]}
    action: deny
    reason: never
  - name: docs-notice
    match: {paths: ["docs/**"]}
    action: notify
"""


def hyperion(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyperion", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def change(id: str, path: str) -> dict[str, object]:
    patch = (f"diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n--- a/{path}\n"
             f"+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n")
    return {"kind": "change", "version": 1, "id": id, "agent": "codex-1", "title": "t",
            "patch": patch, "changes": [{"path": path, "operation": "update"}]}


def fixtures(tmp_path: Path, cases: dict[str, tuple[dict[str, object], str]]) -> Path:
    folder = tmp_path / "fixtures"
    folder.mkdir()
    (tmp_path / "policy.yaml").write_text(POLICY)
    for name, (request, expect) in cases.items():
        (folder / f"{name}.json").write_text(json.dumps(request))
        (folder / f"{name}.expect.yaml").write_text(expect)
    return folder


def test_the_shipped_fixtures_pass_against_the_shipped_policy() -> None:
    out = hyperion("policy", "test", "policies/tests", "--policy", "policies/default.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "10 cases: 10 passed, 0 failed" in out.stdout
    assert "PASS  ci-workflow: require_approval (ci-and-deploy-need-a-human)" in out.stdout
    data = json.loads(hyperion("policy", "test", "policies/tests", "--policy",
                               "policies/default.yaml", "--format", "json").stdout)
    assert data["failed"] == 0 and data["passed"] == len(data["cases"]) == 10
    deny = next(c for c in data["cases"] if c["name"] == "deny-beats-approval")
    assert deny["actual"]["decision"] == "deny"
    assert set(deny["actual"]["rules"]) == {"protect-git-plumbing", "ci-and-deploy-need-a-human"}
    assert deny["actual"]["deciding_rules"] == ["protect-git-plumbing"]


def test_failures_show_the_difference_and_exit_1(tmp_path: Path) -> None:
    folder = fixtures(tmp_path, {
        "ok": (change("ok", "docs/a.md"), "decision: notify\nrules: [docs-notice]\n"),
        "wrong": (change("wrong", "secrets/key.txt"),
                  "decision: allow\ndescription: secrets are fine?\nnot_rules: [no-secrets-dir]\n"),
        "typo": (change("typo", "docs/a.md"), "decision: notify\nrules: [docs-notise]\n"),
        "code": (change("code", "/etc/passwd"), "decision: rejected\nerror: bad_patch\n"),
    })
    out = hyperion("policy", "test", str(folder), "--policy", str(tmp_path / "policy.yaml"))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert "PASS  ok: notify (docs-notice)" in lines
    assert "FAIL  wrong: secrets are fine?" in lines
    assert any("expected decision allow, got deny (policy_denied: the policy denies" in line
               for line in lines)
    assert "      expected rule no-secrets-dir not to fire; fired: no-secrets-dir" in lines
    assert "      the policy has no rule named 'docs-notise'" in lines
    assert "      expected error bad_patch, got path_traversal" in lines
    assert lines[-1].startswith("4 cases: 1 passed, 3 failed")
    data = json.loads(hyperion("policy", "test", str(folder), "--policy",
                               str(tmp_path / "policy.yaml"), "--format", "json").stdout)
    assert [c["name"] for c in data["cases"] if not c["ok"]] == ["code", "typo", "wrong"]


def test_one_expected_yaml_for_the_whole_folder(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "policy.yaml").write_text(POLICY)
    (folder / "sub" / "a.json").write_text(json.dumps(change("a", "secrets/x")))
    (folder / "expected.yaml").write_text("sub/a: {decision: deny, rules: [no-secrets-dir]}\n")
    out = hyperion("policy", "test", str(folder), "--policy", str(tmp_path / "policy.yaml"))
    assert out.returncode == 0 and "PASS  sub/a: deny policy_denied" in out.stdout


def test_unusable_fixtures_or_policy_exit_2(tmp_path: Path) -> None:
    policy = str(tmp_path / "policy.yaml")
    folder = fixtures(tmp_path, {"a": (change("a", "x"), "decision: perhaps\n")})
    out = hyperion("policy", "test", str(folder), "--policy", policy)
    assert out.returncode == 2 and "decision" in out.stderr
    (folder / "a.expect.yaml").unlink()
    out = hyperion("policy", "test", str(folder), "--policy", policy)
    assert out.returncode == 2 and "no expectation" in out.stderr
    assert hyperion("policy", "test", str(tmp_path / "none"), "--policy", policy).returncode == 2
    (tmp_path / "bad.yaml").write_text("version: 2\n")
    out = hyperion("policy", "test", str(folder), "--policy", str(tmp_path / "bad.yaml"))
    assert out.returncode == 2 and "version" in out.stderr


def test_the_configured_policy_is_the_default(setup: Setup) -> None:
    (setup.root / "p.yaml").write_text(POLICY)
    setup.config.write_text(setup.config.read_text() + "policy: p.yaml\n")
    (setup.root / "t").mkdir()
    folder = fixtures(setup.root / "t", {"s": (change("s", "secrets/a"), "decision: deny\n")})
    out = setup.cli("policy", "test", str(folder))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(policy: " in out.stdout and "p.yaml" in out.stdout
