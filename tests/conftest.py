"""Shared fixtures: real git repositories, a real hyperion CLI in subprocesses, and a webhook
receiver on 127.0.0.1 that records what apprise delivers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo)}
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr}")
    return proc.stdout


def count_git_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every process hyperion's gitops starts with subprocess.run from now on
    (each still runs)."""
    from hyperion import gitops

    runs: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(args: list[str], **kwargs: object) -> object:
        runs.append(args)
        return real_run(args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(gitops.subprocess, "run", counting_run)
    return runs


def make_repo(path: Path, files: dict[str, str], *, bare: bool = False) -> Path:
    """A git repository with ``files`` committed on main (bare: a clone of it)."""
    work = path if not bare else path.with_name(path.name + "-src")
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    for name, text in files.items():
        p = work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    if bare:
        git(work.parent, "clone", "-q", "--bare", str(work), str(path))
    return path


def diff_for(repo: Path, edits: dict[str, str | None]) -> tuple[str, list[dict[str, Any]]]:
    """A real `git diff` of ``edits`` (None deletes) against HEAD, and its manifest."""
    scratch = repo.parent / f"scratch-{os.getpid()}-{time.monotonic_ns()}"
    git(repo, "worktree", "add", "-q", "--detach", str(scratch), "HEAD")
    changes = []
    for name, text in edits.items():
        p = scratch / name
        existed = p.exists()
        if text is None:
            p.unlink()
            changes.append({"path": name, "operation": "delete"})
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            changes.append({"path": name, "operation": "update" if existed else "add",
                            "sha256": hashlib.sha256(text.encode()).hexdigest()})
    git(scratch, "add", "-A")
    patch = git(scratch, "diff", "--cached")
    git(repo, "worktree", "remove", "--force", str(scratch))
    return patch, changes


CHECK_PY = """\
import pathlib, sys
text = pathlib.Path("app.py").read_text()
sys.exit(0 if "BROKEN" not in text else 3)
"""

BASE_FILES = {"app.py": "VALUE = 1\n", "check.py": CHECK_PY, "docs/readme.txt": "hello\n"}


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            hook.received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"json://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


@dataclass
class Setup:
    root: Path
    repo: Path
    config: Path
    inbox: Path
    state: Path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hyperion", "--config", str(self.config),
                               *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def request(self, id: str, edits: dict[str, str | None], **fields: Any) -> dict[str, Any]:
        patch, changes = diff_for(self.repo, edits)
        req = {"kind": "change", "version": 1, "id": id, "agent": "agent-1", "repo": "demo",
               "title": f"change {id}", "patch": patch, "changes": changes,
               "checks": ["unit"]}
        req.update(fields)
        return req

    def drop(self, name: str, content: dict[str, Any] | bytes | str) -> Path:
        """Put a file in the inbox the safe way (write elsewhere, rename in)."""
        data = content if isinstance(content, bytes) else (
            content.encode() if isinstance(content, str) else json.dumps(content).encode())
        tmp = self.root / f".{name}.part"
        tmp.write_bytes(data)
        dest = self.inbox / name
        os.rename(tmp, dest)
        return dest

    def record(self, id: str) -> dict[str, Any]:
        out = self.cli("inspect", id, "--format", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def main_sha(self) -> str:
        return git(self.repo, "rev-parse", "refs/heads/main").strip()


def write_config(root: Path, repo: Path, *, notify: list[str] | None = None,
                 extra: str = "", check_timeout: float = 60) -> Path:
    config = root / "hyperion.yaml"
    urls = json.dumps(notify or [])
    config.write_text(f"""\
state_dir: state
inbox: inbox
workers: 2
repos:
  demo:
    path: {repo}
    target: main
checks:
  unit:
    run: [{json.dumps(sys.executable)}, "check.py"]
    timeout_s: {check_timeout}
notify:
  urls: {urls}
{extra}""")
    return config


def start_daemon(setup: Setup) -> subprocess.Popen[str]:
    """`hyperion run` on ``setup``'s configuration, as a real child process."""
    return subprocess.Popen([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                             "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=setup.root)


@pytest.fixture
def daemon(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    proc = start_daemon(setup)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def setup(tmp_path: Path, webhook: Webhook) -> Setup:
    repo = make_repo(tmp_path / "demo", BASE_FILES)
    config = write_config(tmp_path, repo, notify=[webhook.url])
    (tmp_path / "inbox").mkdir()
    return Setup(root=tmp_path, repo=repo, config=config, inbox=tmp_path / "inbox",
                 state=tmp_path / "state")


RECORD_LOCK_HOLDER = """\
import sys
from pathlib import Path
from hyperion.records import RecordStore
store = RecordStore(Path(sys.argv[1]))
with store._lock_only(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def queued_record(rid: str) -> Any:
    """A new record ``rid`` as the intake makes it (hyperion.records.Record)."""
    from hyperion.records import Record, Source, State

    at = "2024-05-01T10:00:00.000Z"
    return Record(id=rid, kind="change", state=State.QUEUED, title=rid, repo="demo",
                  target="main", agent="a", source=Source(kind="cli", name=rid),
                  original_sha256="0" * 64, created_at=at, updated_at=at)


@contextmanager
def record_lock_held_elsewhere(state_dir: Path, record_id: str) -> Iterator[None]:
    """The lock of record ``record_id`` held by another process until the block ends, as
    another hyperion writing it would."""
    holder = subprocess.Popen([sys.executable, "-c", RECORD_LOCK_HOLDER, str(state_dir),
                               record_id], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(30) == 0


def leave_leftover(slot: Path, leftover: str, scratch: Path) -> None:
    """What a check may leave in a worktree whose files are a.txt, b.txt and c.txt (``scratch``:
    a folder outside it for the excludes file)."""
    if leftover == "untracked":
        (slot / "new.txt").write_text("x")
    elif leftover == "empty-folder":
        (slot / "out" / "deeper").mkdir(parents=True)
    elif leftover == "ignored":
        (scratch / "ignore").write_text("*.o\n")
        git(slot, "config", "core.excludesFile", str(scratch / "ignore"))
        (slot / "x.o").write_text("object")
    elif leftover == "modified":
        (slot / "c.txt").write_text("GAMMA\n")         # same size, same second as the index
    elif leftover == "deleted":
        (slot / "c.txt").unlink()
    elif leftover == "attributes":
        (slot / ".gitattributes").write_text("* text\n")   # would change what is committed
    elif leftover == "staged":
        (slot / "s.txt").write_text("staged\n")
        git(slot, "add", "s.txt")                     # nothing untracked, modified or deleted
    elif leftover == "touched-index":
        git(slot, "read-tree", "HEAD")           # the same entries, in an index written anew
    else:
        raise AssertionError(f"no such leftover: {leftover}")
