"""The worker's outcomes beyond the happy path: a target that moves during checks, patches that
no longer apply, manifests whose hashes lie, hostile inbox entries, check timeouts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import Setup, Webhook, git

MOVER = """\
import os, pathlib, subprocess, sys
marker = pathlib.Path({marker!r})
if not marker.exists():
    marker.write_text("moved")
    repo = {repo!r}
    pathlib.Path(repo, "other.txt").write_text("someone else's commit\\n")
    ident = ["-c", "user.name=Someone", "-c", "user.email=someone@example.invalid"]
    subprocess.run(["git", "-C", repo, "add", "other.txt"], check=True)
    subprocess.run(["git", *ident, "-C", repo, "commit", "-q", "-m", "meanwhile"], check=True)
"""


def use_check(setup: Setup, script: str, timeout_s: float | None = None) -> None:
    path = setup.root / "the_check.py"
    path.write_text(script)
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(path)))
    if timeout_s is not None:
        text = text.replace("timeout_s: 60", f"timeout_s: {timeout_s}")
    setup.config.write_text(text)


def test_target_moved_during_checks_is_reapplied_and_lands(setup: Setup) -> None:
    use_check(setup, MOVER.format(marker=str(setup.root / "moved"), repo=str(setup.repo)))
    setup.drop("c.json", setup.request("moved-1", {"app.py": "VALUE = 21\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("moved-1")
    assert record["state"] == "landed", record
    assert record["attempts"] == 2
    parent = git(setup.repo, "rev-parse", f"{record['landed_commit']}^").strip()
    assert git(setup.repo, "log", "-1", "--format=%s", parent).strip() == "meanwhile"
    assert (setup.repo / "other.txt").exists() and (setup.repo / "app.py").read_text() == \
        "VALUE = 21\n"
    assert git(setup.repo, "status", "--porcelain") == ""
    reasons = [h["reason"] for h in record["history"]]
    assert any("land_conflict" in r and "retrying" in r for r in reasons)


def test_patch_that_no_longer_applies_fails_apply_conflict(setup: Setup) -> None:
    request = setup.request("stale-1", {"app.py": "VALUE = 100\n"})
    (setup.repo / "app.py").write_text("VALUE = 'changed meanwhile'\n")
    git(setup.repo, "commit", "-qam", "meanwhile")
    before = setup.main_sha()
    setup.drop("c.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("stale-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "apply_conflict"
    assert before[:12] in record["error"]["message"]
    report = next(a for a in record["artifacts"] if a["name"] == "conflict-report.json")
    saved = json.loads(Path(report["path"]).read_text())
    assert saved["target_sha"] == before and "app.py" in saved["apply_check"]
    assert setup.main_sha() == before


def test_manifest_hash_that_lies_fails_hash_mismatch(setup: Setup) -> None:
    request = setup.request("hash-1", {"app.py": "VALUE = 5\n"})
    request["changes"][0]["sha256"] = "0" * 64
    before = setup.main_sha()
    setup.drop("c.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("hash-1")
    assert record["error"]["code"] == "hash_mismatch"
    assert record["error"]["path"] == "changes[0].sha256"
    assert setup.main_sha() == before


def test_check_timeout_fails_timeout_and_kills_the_check(setup: Setup) -> None:
    pidfile = setup.root / "check.pid"
    use_check(setup, f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
              "time.sleep(60)\n", timeout_s=1)
    setup.drop("c.json", setup.request("slow-1", {"app.py": "VALUE = 6\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("slow-1")
    assert record["state"] == "failed" and record["error"]["code"] == "timeout"
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive


def test_secrets_in_the_daemon_environment_never_reach_a_check(setup: Setup) -> None:
    out = setup.root / "env.json"
    use_check(setup, f"import json, os\njson.dump(dict(os.environ), open({str(out)!r}, 'w'))\n")
    setup.drop("c.json", setup.request("env-1", {"app.py": "VALUE = 8\n"}))
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "do-not-leak", "GIT_DIR": "/nope"}
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                           "run", "--once"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert setup.record("env-1")["state"] == "landed"
    seen = json.loads(out.read_text())
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "GIT_DIR" not in seen
    assert "PATH" in seen


def test_symlink_in_the_inbox_is_refused_without_reading_its_target(setup: Setup,
                                                                     webhook: Webhook) -> None:
    secret = setup.root / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    os.symlink(secret, setup.inbox / "link.json")
    assert setup.cli("run", "--once").returncode == 0
    records = json.loads(setup.cli("list", "--format", "json").stdout)
    assert len(records) == 1 and records[0]["error"]["code"] == "path_traversal"
    assert not (setup.inbox / "link.json").exists() and secret.exists()
    stored = setup.record(records[0]["id"])
    original = next(a for a in stored["artifacts"] if a["name"] == "request")
    assert "TOP-SECRET-VALUE" not in Path(original["path"]).read_text()
    assert "TOP-SECRET-VALUE" not in json.dumps(webhook.wait_for(1))


def test_oversized_file_is_rejected_too_large(setup: Setup) -> None:
    setup.config.write_text(setup.config.read_text() + "limits:\n  max_request_bytes: 1000\n")
    setup.drop("big.json", b"{" + b" " * 5000 + b"}")
    assert setup.cli("run", "--once").returncode == 0
    records = json.loads(setup.cli("list", "--format", "json").stdout)
    assert records[0]["state"] == "rejected" and records[0]["error"]["code"] == "too_large"


def test_unreachable_notification_target_never_fails_a_request(setup: Setup) -> None:
    text = setup.config.read_text()
    setup.config.write_text(text.replace("urls: [", 'urls: ["json://127.0.0.1:9/dead", '))
    setup.drop("c.json", setup.request("quiet-1", {"app.py": "VALUE = 10\n"}))
    out = setup.cli("run", "--once")
    assert out.returncode == 0
    assert setup.record("quiet-1")["state"] == "landed"
    assert "notify" in out.stderr


def test_a_check_program_a_request_adds_never_runs_whatever_path_says(setup: Setup) -> None:
    """The check names a program without a folder that no absolute folder of PATH has; a
    request adds an executable of that name, and PATH starts with ".": the check cannot
    start, and the request's file never runs."""
    ran = setup.root / "the-requests-program-ran"
    text = setup.config.read_text().replace(
        f'run: [{json.dumps(sys.executable)}, "check.py"]', 'run: ["lint-hyperion-e2e"]')
    setup.config.write_text(text)
    req = setup.request("shadow-1", {"lint-hyperion-e2e": f"#!/bin/sh\ntouch {ran}\n"})
    req["patch"] = req["patch"].replace("new file mode 100644", "new file mode 100755")
    setup.drop("s.json", req)
    import subprocess

    env = {**os.environ, "PATH": f".{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                           "run", "--once"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = setup.record("shadow-1")
    assert record["state"] == "failed" and record["error"]["code"] == "check_failed", record
    assert "executable not found: lint-hyperion-e2e" in record["error"]["message"]
    assert not ran.exists()
