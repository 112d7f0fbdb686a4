"""The git-native inbox: requests pushed to a bare repository (files on the inbox branch, notes
on commits), results read back as notes. Real bare repositories, real `git push` over file://,
`hyperion run --once` and a running daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_FILES, GIT_ENV, diff_for, git, make_repo

AGENT_ENV = {"GIT_AUTHOR_NAME": "Alice Agent", "GIT_AUTHOR_EMAIL": "alice@example.invalid",
             "GIT_AUTHOR_DATE": "2020-02-02T02:02:02+0000"}


@dataclass
class GitSetup:
    root: Path
    bare: Path
    agent: Path
    config: Path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hyperion", "--config", str(self.config),
                               *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def run_once(self) -> None:
        out = self.cli("run", "--once")
        assert out.returncode == 0, out.stderr

    def record(self, id: str) -> dict[str, Any]:
        out = self.cli("inspect", id, "--format", "json")
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def records(self) -> list[dict[str, Any]]:
        out = self.cli("list", "--format", "json", "--limit", "1000")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        return data["records"] if isinstance(data, dict) else data  # type: ignore[no-any-return]

    def main_sha(self) -> str:
        return git(self.bare, "rev-parse", "refs/heads/main").strip()

    def request(self, id: str, edits: dict[str, str | None], **fields: Any) -> dict[str, Any]:
        patch, changes = diff_for(self.bare, edits)
        req = {"kind": "change", "version": 1, "id": id, "agent": "agent-1", "repo": "demo",
               "title": f"change {id}", "patch": patch, "changes": changes,
               "checks": ["unit"]}
        req.update(fields)
        return req

    def push_request(self, name: str, content: dict[str, Any] | bytes,
                     *, message: str | None = None) -> str:
        """Commit inbox/<name> on the agent's inbox branch and push it; the commit's sha."""
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        path = self.agent / "inbox" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        git(self.agent, "add", "-A")
        git(self.agent, "commit", "-q", "-m", message or f"request {name}")
        git(self.agent, "push", "-q", "origin", "HEAD:refs/heads/hyperion-inbox")
        return git(self.agent, "rev-parse", "HEAD").strip()

    def notes(self, ref: str, commit: str) -> list[dict[str, Any]]:
        out = subprocess.run(["git", "notes", f"--ref={ref}", "show", commit], cwd=self.bare,
                             capture_output=True, text=True)
        if out.returncode != 0:
            return []
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def config_text(bare: Path, extra_repo: str = "") -> str:
    return f"""\
state_dir: state
inbox: inbox
workers: 2
repos:
  demo:
    path: {bare}
    target: main
    git_inbox:
      branch: hyperion-inbox
      notes_ref: refs/notes/hyperion-inbox
      poll_s: 30
{extra_repo}checks:
  unit:
    run: [{json.dumps(sys.executable)}, "check.py"]
    timeout_s: 60
"""


@pytest.fixture
def gs(tmp_path: Path) -> GitSetup:
    bare = make_repo(tmp_path / "demo.git", BASE_FILES, bare=True)
    config = tmp_path / "hyperion.yaml"
    config.write_text(config_text(bare))
    (tmp_path / "inbox").mkdir()
    agent = tmp_path / "agent"
    git(tmp_path, "clone", "-q", f"file://{bare}", str(agent))
    git(agent, "checkout", "-q", "--orphan", "hyperion-inbox")
    git(agent, "rm", "-q", "-rf", ".")
    return GitSetup(root=tmp_path, bare=bare, agent=agent, config=config)


def test_a_pushed_request_file_lands_with_notes_on_its_inbox_commit_and_landed_commit(
        gs: GitSetup) -> None:
    inbox_commit = gs.push_request("r1.json", gs.request("r1", {"app.py": "VALUE = 2\n"}))
    gs.run_once()
    record = gs.record("r1")
    assert record["state"] == "landed"
    assert record["source"]["kind"] == "git-inbox"
    assert record["source"]["commit"] == inbox_commit
    assert record["source"]["path"] == "inbox/r1.json"
    landed = record["landed_commit"]
    assert gs.main_sha() == landed
    assert git(gs.bare, "show", "main:app.py") == "VALUE = 2\n"
    for commit in (inbox_commit, landed):
        [line] = gs.notes("refs/notes/hyperion", commit)
        assert line["id"] == "r1" and line["state"] == "landed" and line["landed"] == landed
        assert line["error"] is None and line["applied_onto"]
        assert [c["name"] for c in line["checks"]] == ["unit"] and line["checks"][0]["ok"]
        assert set(line) == {"id", "state", "error", "base", "applied_onto", "landed",
                             "checks", "at"}

    # Pushing again (another request, and the first file untouched) lands only the new one.
    gs.push_request("r2.json", gs.request("r2", {"docs/readme.txt": "bye\n"}))
    gs.run_once()
    gs.run_once()
    assert gs.record("r2")["state"] == "landed"
    log = git(gs.bare, "log", "--format=%(trailers:key=Hyperion-Request,valueonly)", "main")
    assert log.split() == ["r2", "r1"]


def test_an_invalid_request_is_refused_with_a_note_on_its_inbox_commit(gs: GitSetup) -> None:
    before = gs.main_sha()
    bad = gs.request("bad1", {"app.py": "VALUE = 3\n"})
    bad["changes"] = []
    commit = gs.push_request("bad1.json", bad)
    junk = gs.push_request("junk.json", b"{not json")
    gs.run_once()
    assert gs.record("bad1")["state"] == "rejected"
    [line] = gs.notes("refs/notes/hyperion", commit)
    assert line["state"] == "rejected" and line["error"]["code"] == "manifest_mismatch"
    assert line["landed"] is None
    [junk_line] = gs.notes("refs/notes/hyperion", junk)
    assert junk_line["error"]["code"] == "invalid_json"
    assert gs.main_sha() == before
    # The client's view: fetch the notes and read them with git log.
    git(gs.agent, "fetch", "-q", "origin", "refs/notes/*:refs/notes/*")
    shown = git(gs.agent, "log", "--notes=hyperion", "-1", "--format=%N", commit)
    assert '"manifest_mismatch"' in shown


def test_a_commit_requested_by_a_note_lands_keeping_its_author_and_message(
        gs: GitSetup) -> None:
    work = gs.root / "work"
    git(gs.root, "clone", "-q", f"file://{gs.bare}", str(work))
    git(work, "checkout", "-q", "-b", "agent/feature")
    (work / "app.py").write_text("VALUE = 42\n")
    env = {**os.environ, **GIT_ENV, **AGENT_ENV, "HOME": str(work)}
    subprocess.run(["git", "commit", "-q", "-am", "Answer everything\n\nLonger explanation."],
                   cwd=work, env=env, check=True)
    commit = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "n1", "agent": "alice",
            "title": "Answer everything", "checks": ["unit"]}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), commit)
    git(work, "push", "-q", "origin", "agent/feature", "refs/notes/hyperion-inbox")
    gs.run_once()
    record = gs.record("n1")
    assert record["state"] == "landed", record["error"]
    note_blob = git(work, "rev-parse", f"refs/notes/hyperion-inbox:{commit}").strip()
    assert record["source"] == {"kind": "git-note", "name": f"demo:{commit[:12]}:"
                                f"refs/notes/hyperion-inbox@{note_blob[:12]}", "repo": "demo",
                                "commit": commit, "path": "refs/notes/hyperion-inbox"}
    landed = gs.main_sha()
    assert landed == record["landed_commit"] and landed != commit
    author = git(gs.bare, "log", "-1", "--format=%an <%ae> %ad", "--date=iso-strict", landed)
    assert author.strip() == "Alice Agent <alice@example.invalid> 2020-02-02T02:02:02+00:00"
    message = git(gs.bare, "log", "-1", "--format=%B", landed)
    assert message.startswith("Answer everything\n\nLonger explanation.")
    assert "Hyperion-Request: n1" in message
    assert git(gs.bare, "show", "main:app.py") == "VALUE = 42\n"
    assert gs.notes("refs/notes/hyperion", commit)[0]["landed"] == landed
    # Pushing the same note again (and re-running) lands nothing twice.
    git(work, "push", "-q", "--force", "origin", "refs/notes/hyperion-inbox")
    gs.run_once()
    assert gs.main_sha() == landed
    # A changed note with the same id is a different request: refused `duplicate`, not
    # dropped, and answered on the commit.
    changed = {**note, "title": "Answer everything, again"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-f", "-m", json.dumps(changed), commit)
    git(work, "push", "-q", "origin", "refs/notes/hyperion-inbox")
    gs.run_once()
    assert gs.main_sha() == landed
    lines = {n["state"]: n for n in gs.notes("refs/notes/hyperion", commit)}
    assert lines["landed"]["id"] == "n1"
    assert lines["rejected"]["error"]["code"] == "duplicate"
    assert gs.record(lines["rejected"]["id"])["source"]["commit"] == commit


def test_a_note_that_carries_a_patch_is_refused_on_the_annotated_commit(gs: GitSetup) -> None:
    work = gs.root / "work"
    git(gs.root, "clone", "-q", f"file://{gs.bare}", str(work))
    git(work, "checkout", "-q", "-b", "agent/x")
    (work / "app.py").write_text("VALUE = 5\n")
    git(work, "commit", "-q", "-am", "five")
    commit = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "n2", "agent": "alice", "title": "five",
            "patch": "x"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), commit)
    git(work, "push", "-q", "origin", "agent/x", "refs/notes/hyperion-inbox")
    gs.run_once()
    record = gs.record("n2")
    assert record["state"] == "rejected"
    assert record["error"]["code"] == "schema_violation" and record["error"]["path"] == "patch"
    assert gs.notes("refs/notes/hyperion", commit)[0]["state"] == "rejected"


def test_a_force_pushed_rewrite_of_the_inbox_branch_lands_nothing_again(gs: GitSetup) -> None:
    gs.push_request("r1.json", gs.request("r1", {"app.py": "VALUE = 2\n"}))
    gs.run_once()
    landed = gs.main_sha()
    assert gs.record("r1")["state"] == "landed"
    # Rewrite the branch: the same file in a new commit with another message and parent.
    git(gs.agent, "checkout", "-q", "--orphan", "rewritten")
    git(gs.agent, "commit", "-q", "-m", "rewritten history")
    git(gs.agent, "push", "-q", "--force", "origin", "HEAD:refs/heads/hyperion-inbox")
    gs.run_once()
    assert gs.main_sha() == landed
    assert [r["id"] for r in gs.records()] == ["r1"]


def test_concurrent_result_notes_on_one_commit_are_all_kept(gs: GitSetup) -> None:
    from hyperion.gitops import GitRepo

    commit = gs.main_sha()
    lines = [json.dumps({"id": f"x{i}", "state": "landed"}) for i in range(16)]

    def write(line: str) -> None:
        GitRepo(gs.bare).add_note_lines("refs/notes/hyperion", commit, [line], "test")

    threads = [threading.Thread(target=write, args=(line,)) for line in lines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [json.dumps(n) for n in gs.notes("refs/notes/hyperion", commit)]
    assert sorted(kept) == sorted(lines)
    # Writing a line that is there already changes nothing.
    before = git(gs.bare, "rev-parse", "refs/notes/hyperion").strip()
    assert not GitRepo(gs.bare).add_note_lines("refs/notes/hyperion", commit, lines[:1], "t")
    assert git(gs.bare, "rev-parse", "refs/notes/hyperion").strip() == before


@pytest.fixture
def daemon(gs: GitSetup) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "hyperion", "--config", str(gs.config),
                             "run"], cwd=gs.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (gs.root / "state" / "git-inbox" / "demo").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    yield proc
    proc.terminate()
    proc.wait(timeout=60)


def _wait_for(gs: GitSetup, id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = gs.root / "state" / "records" / f"{id}.json"
        if path.exists():
            record: dict[str, Any] = json.loads(path.read_text())
            if record["state"] in states:
                return record
        time.sleep(0.1)
    raise AssertionError(f"{id} did not reach {states}")


def test_the_running_daemon_takes_a_push_and_answers_with_a_note(
        gs: GitSetup, daemon: subprocess.Popen[str]) -> None:
    commit = gs.push_request("d1.json", gs.request("d1", {"app.py": "VALUE = 7\n"}))
    record = _wait_for(gs, "d1", {"landed", "failed", "rejected"})
    assert record["state"] == "landed"
    deadline = time.monotonic() + 30
    while not gs.notes("refs/notes/hyperion", commit) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gs.notes("refs/notes/hyperion", commit)[0]["landed"] == record["landed_commit"]


def _install_hook(gs: GitSetup) -> None:
    hook = gs.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nexec {sys.executable} -m hyperion --config {gs.config} "
                    "hook pre-receive\n")
    hook.chmod(0o755)


def _push(repo: Path, *refspecs: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo)}
    return subprocess.run(["git", "push", "origin", *refspecs], cwd=repo, env=env,
                          capture_output=True, text=True)


def test_the_pre_receive_hook_refuses_a_bad_push_with_the_gates_code(gs: GitSetup) -> None:
    _install_hook(gs)
    good = gs.request("h1", {"app.py": "VALUE = 8\n"})
    bad = gs.request("h2", {"app.py": "VALUE = 9\n"})
    bad["changes"] = []
    (gs.agent / "inbox").mkdir()
    (gs.agent / "inbox" / "h1.json").write_text(json.dumps(good))
    git(gs.agent, "add", "-A")
    git(gs.agent, "commit", "-q", "-m", "good")
    assert _push(gs.agent, "HEAD:refs/heads/hyperion-inbox").returncode == 0
    (gs.agent / "inbox" / "h2.json").write_text(json.dumps(bad))
    git(gs.agent, "add", "-A")
    git(gs.agent, "commit", "-q", "-m", "bad")
    bad_commit = git(gs.agent, "rev-parse", "HEAD").strip()
    before = git(gs.bare, "rev-parse", "refs/heads/hyperion-inbox").strip()
    out = _push(gs.agent, "HEAD:refs/heads/hyperion-inbox")
    assert out.returncode != 0
    assert (f"hyperion refused inbox/h2.json in {bad_commit[:12]}: manifest_mismatch"
            in out.stderr)
    assert git(gs.bare, "rev-parse", "refs/heads/hyperion-inbox").strip() == before
    # The refused objects never reached the repository (they stayed in the quarantine).
    assert subprocess.run(["git", "cat-file", "-e", bad_commit], cwd=gs.bare).returncode != 0

    # A note carrying its own patch is refused; a push to another branch is not judged.
    work = gs.root / "work"
    git(gs.root, "clone", "-q", f"file://{gs.bare}", str(work))
    (work / "app.py").write_text("VALUE = 10\n")
    git(work, "commit", "-q", "-am", "ten")
    commit = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "h3", "agent": "a", "title": "t",
            "patch": "x"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), commit)
    out = _push(work, "HEAD:refs/heads/agent/ten", "refs/notes/hyperion-inbox")
    assert out.returncode != 0
    assert f"the note on {commit[:12]} in refs/notes/hyperion-inbox: schema_violation" \
        in out.stderr
    assert _push(work, "HEAD:refs/heads/agent/ten").returncode == 0
    # A good note on the same commit passes.
    note = {"kind": "change", "version": 1, "id": "h3", "agent": "a", "title": "t"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-f", "-m", json.dumps(note), commit)
    out = _push(work, "refs/notes/hyperion-inbox")
    assert out.returncode == 0, out.stderr
    # A commit and its note pushed together: read from the push's quarantine, and passed.
    (work / "app.py").write_text("VALUE = 11\n")
    git(work, "commit", "-q", "-am", "eleven")
    commit = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "h4", "agent": "a", "title": "eleven"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), commit)
    out = _push(work, "HEAD:refs/heads/agent/eleven", "refs/notes/hyperion-inbox")
    assert out.returncode == 0, out.stderr


def test_a_result_note_lost_in_a_crash_is_written_at_the_next_start(gs: GitSetup) -> None:
    commit = gs.push_request("c1.json", gs.request("c1", {"app.py": "VALUE = 12\n"}))
    gs.run_once()
    assert gs.notes("refs/notes/hyperion", commit)
    # As if the process died after the terminal state, before its note was queued: no note
    # outbox and no note. The catch-up at start writes it from the record.
    import shutil

    shutil.rmtree(gs.root / "state" / "notes")
    git(gs.bare, "update-ref", "-d", "refs/notes/hyperion")
    gs.run_once()
    [line] = gs.notes("refs/notes/hyperion", commit)
    assert line["id"] == "c1" and line["state"] == "landed"


def test_remote_mode_fetches_requests_and_pushes_landed_commits_and_notes_back(
        tmp_path: Path) -> None:
    server = make_repo(tmp_path / "server.git", BASE_FILES, bare=True)
    clone = tmp_path / "gate" / "demo.git"          # created by hyperion
    config = tmp_path / "hyperion.yaml"
    config.write_text(config_text(clone).replace(
        "      poll_s: 30\n", f"      poll_s: 30\n      remote: file://{server}\n"))
    (tmp_path / "inbox").mkdir()
    agent = tmp_path / "agent"
    git(tmp_path, "clone", "-q", f"file://{server}", str(agent))
    git(agent, "checkout", "-q", "--orphan", "hyperion-inbox")
    git(agent, "rm", "-q", "-rf", ".")
    gs = GitSetup(root=tmp_path, bare=server, agent=agent, config=config)
    inbox_commit = gs.push_request("m1.json", gs.request("m1", {"app.py": "VALUE = 30\n"}))
    # A note request on a commit pushed to the server on an agent branch, too.
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", f"file://{server}", str(work))
    git(work, "checkout", "-q", "-b", "agent/docs")
    (work / "docs" / "readme.txt").write_text("remote\n")
    git(work, "commit", "-q", "-am", "Docs from afar")
    annotated = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "m2", "agent": "a", "title": "docs"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), annotated)
    git(work, "push", "-q", "origin", "agent/docs", "refs/notes/hyperion-inbox")

    gs.run_once()
    assert gs.record("m1")["state"] == "landed"
    assert gs.record("m2")["state"] == "landed"
    # Both landed commits and the result notes are on the server.
    log = git(server, "log", "--format=%(trailers:key=Hyperion-Request,valueonly)", "main")
    assert sorted(log.split()) == ["m1", "m2"]
    assert git(server, "show", "main:docs/readme.txt") == "remote\n"
    assert gs.notes("refs/notes/hyperion", inbox_commit)[0]["state"] == "landed"
    assert gs.notes("refs/notes/hyperion", annotated)[0]["id"] == "m2"
    main = gs.main_sha()
    assert gs.notes("refs/notes/hyperion", main)[0]["landed"] == main

    # The server's main moves (a person pushes): the next request lands on top of it.
    (work / "docs" / "readme.txt").write_text("remote\n")
    git(work, "checkout", "-q", "-B", "main", "origin/main")
    git(work, "pull", "-q", "origin", "main")
    (work / "other.txt").write_text("by hand\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "by hand")
    git(work, "push", "-q", "origin", "main")
    gs.push_request("m3.json", gs.request("m3", {"app.py": "VALUE = 31\n"}))
    gs.run_once()
    assert gs.record("m3")["state"] == "landed"
    assert git(server, "show", "main:other.txt") == "by hand\n"
    assert git(server, "show", "main:app.py") == "VALUE = 31\n"
    assert gs.record("m1")["state"] == "landed"


def test_a_symlink_in_the_inbox_is_refused_and_other_files_are_ignored(gs: GitSetup) -> None:
    (gs.agent / "inbox").mkdir()
    os.symlink("/etc/passwd", gs.agent / "inbox" / "link.json")
    (gs.agent / "inbox" / "README.md").write_text("requests go here\n")
    (gs.agent / "inbox" / ".draft.json").write_text("{}")
    git(gs.agent, "add", "-A")
    git(gs.agent, "commit", "-q", "-m", "odd files")
    commit = git(gs.agent, "rev-parse", "HEAD").strip()
    git(gs.agent, "push", "-q", "origin", "HEAD:refs/heads/hyperion-inbox")
    gs.run_once()
    [record] = gs.records()
    assert record["state"] == "rejected" and record["error"]["code"] == "path_traversal"
    [line] = gs.notes("refs/notes/hyperion", commit)
    assert line["error"]["code"] == "path_traversal"


def test_an_oversized_pushed_file_is_refused_too_large_by_the_hook_and_the_intake(
        gs: GitSetup) -> None:
    gs.config.write_text(config_text(gs.bare) + "limits:\n  max_request_bytes: 2000\n")
    big = gs.request("big1", {"app.py": "VALUE = 1\n" + "# padding\n" * 400})
    commit = gs.push_request("big1.json", big)
    gs.run_once()
    [record] = gs.records()
    assert record["error"]["code"] == "too_large" and record["state"] == "rejected"
    assert gs.notes("refs/notes/hyperion", commit)[0]["error"]["code"] == "too_large"
    _install_hook(gs)
    (gs.agent / "inbox" / "big2.json").write_text(json.dumps({**big, "id": "big2"}))
    git(gs.agent, "add", "-A")
    git(gs.agent, "commit", "-q", "-m", "big again")
    out = _push(gs.agent, "HEAD:refs/heads/hyperion-inbox")
    assert out.returncode != 0 and "inbox/big2.json" in out.stderr and "too_large" in out.stderr


def test_any_note_becomes_a_change_request_or_a_refusal(tmp_path: Path) -> None:
    """Hostile note contents never crash the derivation, and what it derives passes the
    gate's parsing (a refusal is an ErrorInfo, never an exception)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hyperion.config import parse_config
    from hyperion.gate.policy import load_policy
    from hyperion.gitops import GitRepo
    from hyperion.intake.git_requests import gate_error, request_from_note

    bare = make_repo(tmp_path / "demo.git", BASE_FILES, bare=True)
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", f"file://{bare}", str(work))
    (work / "app.py").write_text("VALUE = 99\n")
    git(work, "commit", "-q", "-am", "ninety-nine")
    git(work, "push", "-q", "origin", "HEAD:refs/heads/side")
    commit = git(work, "rev-parse", "HEAD").strip()
    path = tmp_path / "hyperion.yaml"
    path.write_text(config_text(bare))
    config = parse_config(path.read_text(), path)
    policy = load_policy(None)
    repo = GitRepo(bare)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30),
                        st.sampled_from(["main", "side", "demo", "change", "x", "-main",
                                         "main~1", "../x", "HEAD"]))
    keys = st.sampled_from(["kind", "version", "id", "agent", "title", "target", "repo",
                            "base", "checks", "patch", "changes", "commit", "body"])
    objects = st.dictionaries(keys, scalars, max_size=8).map(
        lambda d: {"kind": "change", "version": 1, "id": "p1", "agent": "a", "title": "t",
                   **d})
    notes = st.one_of(st.binary(max_size=64), objects.map(lambda d: json.dumps(d).encode()))

    @settings(max_examples=80, deadline=None)
    @given(note=notes, on=st.sampled_from([commit, "0" * 40]))
    def check(note: bytes, on: str) -> None:
        derived = request_from_note(repo, "demo", config, on, note)
        if derived.error is None and derived.data is not note:
            body = json.loads(derived.data)
            assert body["patch"].startswith("diff --git a/app.py b/app.py")
            assert body["changes"] == [{"path": "app.py", "operation": "update"}]
        gate_error(config, policy, derived.data)

    check()


def test_the_running_daemon_takes_a_pushed_request_note(
        gs: GitSetup, daemon: subprocess.Popen[str]) -> None:
    work = gs.root / "work"
    git(gs.root, "clone", "-q", f"file://{gs.bare}", str(work))
    (work / "docs" / "readme.txt").write_text("from a note\n")
    git(work, "commit", "-q", "-am", "Docs by note")
    commit = git(work, "rev-parse", "HEAD").strip()
    note = {"kind": "change", "version": 1, "id": "dn1", "agent": "a", "title": "docs"}
    git(work, "notes", "--ref=hyperion-inbox", "add", "-m", json.dumps(note), commit)
    git(work, "push", "-q", "origin", "HEAD:refs/heads/agent/docs", "refs/notes/hyperion-inbox")
    record = _wait_for(gs, "dn1", {"landed", "failed", "rejected"})
    assert record["state"] == "landed", record["error"]
    assert git(gs.bare, "show", "main:docs/readme.txt") == "from a note\n"
