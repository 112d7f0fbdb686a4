"""The main job end to end through the real CLI: inbox -> gate -> spool -> worktree -> land ->
apprise, against real git repositories, with notifications caught on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BASE_FILES, Setup, Webhook, git, make_repo, write_config


def test_fix_lands_with_trailer_and_everything_is_reported(setup: Setup,
                                                           webhook: Webhook) -> None:
    before = setup.main_sha()
    setup.drop("fix.json", setup.request("fix-1", {"app.py": "VALUE = 2\n"},
                                          title="Raise the value", body="Because reasons."))
    run = setup.cli("run", "--once")
    assert run.returncode == 0, run.stderr

    record = setup.record("fix-1")
    assert record["state"] == "landed"
    assert record["error"] is None
    landed = record["landed_commit"]
    assert setup.main_sha() == landed
    assert git(setup.repo, "rev-parse", f"{landed}^").strip() == before
    message = git(setup.repo, "log", "-1", "--format=%B", landed)
    assert message.startswith("Raise the value\n\nBecause reasons.\n")
    assert "Hyperion-Request: fix-1" in message
    assert git(setup.repo, "log", "-1", "--format=%an", landed).strip() == "agent-1"
    # The repository's own working tree (main checked out) moved with the branch, cleanly.
    assert (setup.repo / "app.py").read_text() == "VALUE = 2\n"
    assert git(setup.repo, "status", "--porcelain") == ""
    # The inbox file is gone; its original bytes are kept with the record.
    assert list(setup.inbox.iterdir()) == []
    request_artifact = next(a for a in record["artifacts"] if a["name"] == "request")
    assert json.loads(Path(request_artifact["path"]).read_bytes())["id"] == "fix-1"
    assert [(h["from"], h["to"]) for h in record["history"]] == [
        (None, "queued"), ("queued", "running"), ("running", "landed")]
    assert all(Path(a["path"]).is_absolute() for a in record["artifacts"])
    notes = webhook.wait_for(1)
    assert len(notes) == 1
    assert notes[0]["type"] == "success"
    assert "fix-1" in notes[0]["title"] and "landed" in notes[0]["title"]
    assert "Raise the value" in notes[0]["message"]
    audit = [json.loads(line) for line in (setup.state / "audit.jsonl").read_text().splitlines()]
    assert [a["to"] for a in audit if a["id"] == "fix-1"] == ["queued", "running", "landed"]


def test_red_check_fails_and_main_is_untouched(setup: Setup, webhook: Webhook) -> None:
    before = setup.main_sha()
    setup.drop("red.json", setup.request("red-1", {"app.py": "VALUE = 'BROKEN'\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("red-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "check_failed"
    assert "unit" in record["error"]["message"]
    assert setup.main_sha() == before
    assert git(setup.repo, "status", "--porcelain") == ""
    assert record["checks"][0]["exit_code"] == 3
    log = next(a for a in record["artifacts"] if a["name"].startswith("check-unit"))
    assert Path(log["path"]).exists()
    notes = webhook.wait_for(1)
    assert notes[0]["type"] == "failure"
    assert "check_failed" in notes[0]["message"]


def test_unparseable_file_is_rejected_invalid_json(setup: Setup, webhook: Webhook) -> None:
    setup.drop("broken.json", '{"kind": "change", "id": "half')
    assert setup.cli("run", "--once").returncode == 0
    listed = json.loads(setup.cli("list", "--format", "json").stdout)
    assert len(listed) == 1
    assert listed[0]["state"] == "rejected"
    assert listed[0]["error"]["code"] == "invalid_json"
    assert set(listed[0]) == {"id", "kind", "state", "title", "repo", "target", "attempts",
                              "error", "landed_commit", "created_at", "updated_at"}
    assert list(setup.inbox.iterdir()) == []
    notes = webhook.wait_for(1)
    assert notes[0]["type"] == "failure"
    assert "invalid_json" in notes[0]["message"]


def test_gate_refusals_carry_codes_and_paths(setup: Setup) -> None:
    good = setup.request("g-1", {"app.py": "VALUE = 5\n"})
    cases = {
        "traversal": (dict(good, id="t-1", patch=good["patch"].replace("app.py", "../app.py")),
                      "path_traversal"),
        "manifest": (dict(good, id="m-1", changes=[]), "manifest_mismatch"),
        "unknown-check": (dict(good, id="c-1", checks=["deploy"]), "check_not_allowed"),
        "schema": (dict(good, id="s-1", priority="high"), "schema_violation"),
        "scope": (dict(good, id="o-1", file_targets=["docs/**"]), "out_of_scope"),
    }
    files = []
    for name, (req, _) in cases.items():
        path = setup.root / f"{name}.json"
        path.write_text(json.dumps(req))
        files.append(str(path))
    out = setup.cli("validate", "--format", "json", *files)
    assert out.returncode == 1
    results = json.loads(out.stdout)
    for result, (name, (_, code)) in zip(results, cases.items(), strict=True):
        assert set(result) == {"file", "id", "kind", "ok", "errors"}
        assert not result["ok"], name
        assert result["errors"][0]["code"] == code, (name, result)
        assert set(result["errors"][0]) == {"code", "message", "path"}
    assert json.loads(out.stdout)[3]["errors"][0]["path"] == "priority"
    ok = setup.root / "good.json"
    ok.write_text(json.dumps(good))
    out = setup.cli("validate", "--format", "json", str(ok))
    assert out.returncode == 0 and json.loads(out.stdout)[0]["ok"]


def test_submit_then_run(setup: Setup) -> None:
    path = setup.root / "req.json"
    path.write_text(json.dumps(setup.request("sub-1", {"docs/readme.txt": "bye\n"})))
    out = setup.cli("submit", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sub-1", "queued"]
    again = setup.cli("submit", "--format", "json", str(path))
    assert json.loads(again.stdout)[0]["repeated"] is True
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("sub-1")["state"] == "landed"


def test_same_id_different_content_is_duplicate(setup: Setup) -> None:
    first = setup.request("dup-1", {"app.py": "VALUE = 7\n"})
    second = setup.request("dup-1", {"app.py": "VALUE = 8\n"})
    a, b = setup.root / "a.json", setup.root / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    assert setup.cli("submit", str(a)).returncode == 0
    out = setup.cli("submit", "--format", "json", str(b))
    assert out.returncode == 1
    result = json.loads(out.stdout)[0]
    assert result["error"]["code"] == "duplicate"
    assert result["id"] != "dup-1"
    assert setup.record("dup-1")["state"] == "queued"


def test_dirty_checkout_is_left_alone(setup: Setup) -> None:
    (setup.repo / "app.py").write_text("VALUE = 'local edit'\n")
    before = setup.main_sha()
    setup.drop("fix.json", setup.request("dirty-1", {"docs/readme.txt": "x\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("dirty-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "land_conflict"
    assert "uncommitted changes" in record["error"]["message"]
    assert setup.main_sha() == before
    assert (setup.repo / "app.py").read_text() == "VALUE = 'local edit'\n"


def test_bare_repository_and_other_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "bare.git", BASE_FILES, bare=True)
    config = write_config(tmp_path, repo)
    (tmp_path / "inbox").mkdir()
    s = Setup(root=tmp_path, repo=repo, config=config, inbox=tmp_path / "inbox",
              state=tmp_path / "state")
    src = tmp_path / "bare.git-src"
    patch_setup = Setup(root=tmp_path, repo=src, config=config, inbox=s.inbox, state=s.state)
    s.drop("r.json", patch_setup.request("bare-1", {"app.py": "VALUE = 9\n"}))
    assert s.cli("run", "--once").returncode == 0
    record = s.record("bare-1")
    assert record["state"] == "landed", record
    assert git(repo, "show", "main:app.py") == "VALUE = 9\n"


def test_repository_hooks_never_run(setup: Setup) -> None:
    request = setup.request("hooks-1", {"app.py": "VALUE = 3\n"})
    hooks = setup.repo / ".git" / "hooks"
    marker = setup.root / "hook-ran"
    for name in ("reference-transaction", "post-commit", "pre-commit", "post-checkout",
                 "post-index-change"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        hook.chmod(0o755)
    # A repository may also point core.hooksPath at a tracked folder a request could change.
    git(setup.repo, "config", "core.hooksPath", str(hooks))
    setup.drop("fix.json", request)
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("hooks-1")["state"] == "landed"
    assert not marker.exists(), marker.read_text()


def test_bad_config_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "hyperion.yaml"
    config.write_text("state_dir: s\nrepos:\n  demo:\n    path: x\n    targte: main\n")
    s = Setup(root=tmp_path, repo=tmp_path, config=config, inbox=tmp_path, state=tmp_path)
    out = s.cli("config", "--check")
    assert out.returncode == 2
    assert str(config) in out.stderr
    assert "line 5" in out.stderr and "repos.demo.targte" in out.stderr


def test_init_creates_a_working_setup_and_never_overwrites(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", BASE_FILES)
    s = Setup(root=repo, repo=repo, config=repo / "hyperion.yaml", inbox=repo / "inbox",
              state=repo / ".hyperion")
    out = s.cli("init", str(repo))
    assert out.returncode == 0, out.stderr
    assert s.cli("config", "--check").returncode == 0
    (repo / "hyperion.yaml").write_text("# mine\n")
    assert s.cli("init", str(repo)).returncode == 0
    assert (repo / "hyperion.yaml").read_text() == "# mine\n"


def test_schema_command_prints_json_schema(setup: Setup) -> None:
    for name in ("change", "task", "config"):
        out = setup.cli("schema", name)
        assert out.returncode == 0
        assert json.loads(out.stdout)["$schema"].endswith("2020-12/schema")


def test_a_request_file_back_in_the_inbox_is_a_repeat(setup: Setup) -> None:
    """The same bytes dropped again (by an agent that retries, or a removal a crash undid) are
    taken as a repeat: no new record, no second landing, and the file leaves the inbox."""
    good = json.dumps(setup.request("back-1", {"app.py": "VALUE = 21\n"})).encode()
    bad = b'{"kind": "change", "id": '
    setup.drop("good.json", good)
    setup.drop("bad.json", bad)
    assert setup.cli("run", "--once").returncode == 0
    listed = json.loads(setup.cli("list", "--format", "json").stdout)
    assert sorted(r["state"] for r in listed) == ["landed", "rejected"]
    landed = setup.main_sha()
    audit = (setup.state / "audit.jsonl").read_text()
    setup.drop("good.json", good)                    # dropped again
    setup.drop("bad.json", bad)
    assert setup.cli("run", "--once").returncode == 0
    assert json.loads(setup.cli("list", "--format", "json").stdout) == listed
    assert setup.main_sha() == landed
    assert (setup.state / "audit.jsonl").read_text() == audit
    assert list(setup.inbox.iterdir()) == []
