"""The worktree pool's hand-over: a slot given back stays locked by this process, as its check
left it, and its next checkout resets it (or hands it out unproven: tests/test_slot_proof.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import git, make_repo

import hyperion.gitops as gitops
import hyperion.pool as pool_module
from hyperion.gitops import GitRepo
from hyperion.pool import WorktreePool

FILES = {"a.txt": "alpha\n", "b.txt": "beta\n"}


def _git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = gitops.git

    def counting(args: list[str], **kwargs: object) -> object:
        calls.append(args[0])
        return real(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", counting)
    return calls


def _setup(tmp_path: Path) -> tuple[GitRepo, str, WorktreePool]:
    repo = GitRepo(make_repo(tmp_path / "r", FILES))
    head = git(repo.git_dir, "rev-parse", "HEAD").strip()
    (tmp_path / "locks").mkdir()
    return repo, head, WorktreePool(tmp_path / "worktrees", tmp_path / "locks")


def _locked_elsewhere(lock: Path) -> bool:
    """Whether another process finds ``lock`` held (flock, as another hyperion would)."""
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 1


def test_a_slot_given_back_stays_locked_as_it_is_and_is_reset_at_its_next_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, head, pool = _setup(tmp_path)
    with pool.checkout("demo", repo, head) as slot:
        (slot / "junk.txt").write_text("left by a check\n")
        (slot / "build").mkdir()
    calls = _git_calls(monkeypatch)
    # Given back, still locked: no other process can take it before its next use here.
    assert _locked_elsewhere(tmp_path / "worktrees" / "demo" / "w0.lock")
    assert (slot / "junk.txt").exists() and calls == []       # nothing runs meanwhile
    with pool.checkout("demo", repo, head) as again:
        assert again == slot
        assert not (slot / "junk.txt").exists() and not (slot / "build").exists()
        assert calls == ["clean", "status"]
        calls.clear()
    with pool.checkout("demo", repo, head):
        pass
    assert calls == ["clean", "status"]


def test_a_slot_given_back_at_another_commit_is_checked_out(tmp_path: Path) -> None:
    repo, first, pool = _setup(tmp_path)
    (repo.git_dir.parent / "a.txt").write_text("alpha 2\n")
    git(repo.git_dir.parent, "commit", "-q", "-am", "second")
    second = git(repo.git_dir.parent, "rev-parse", "HEAD").strip()
    with pool.checkout("demo", repo, first) as slot:
        (slot / "b.txt").write_text("scribbled\n")
    with pool.checkout("demo", repo, second) as again:
        assert again == slot
        assert (slot / "a.txt").read_text() == "alpha 2\n"
        assert (slot / "b.txt").read_text() == "beta\n"
        assert git(slot, "status", "--porcelain", "--ignored") == ""


def test_a_slot_whose_head_a_check_attached_to_a_branch_is_reset_fully(tmp_path: Path) -> None:
    repo, head, pool = _setup(tmp_path)
    with pool.checkout("demo", repo, head) as slot:
        git(slot, "checkout", "-q", "-b", "scratch")
        (slot / "a.txt").write_text("on a branch\n")
    with pool.checkout("demo", repo, head) as again:
        assert again == slot
        assert git(slot, "rev-parse", "HEAD").strip() == head
        assert git(slot, "status", "--porcelain", "--ignored") == ""
        assert (slot / "a.txt").read_text() == "alpha\n"


def test_beyond_the_limit_the_oldest_slot_given_back_is_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "MAX_HELD_SLOTS", 1)
    repo, head, pool = _setup(tmp_path)
    with pool.checkout("one", repo, head):
        pass
    with pool.checkout("two", repo, head):
        pass
    assert not _locked_elsewhere(tmp_path / "worktrees" / "one" / "w0.lock")
    assert _locked_elsewhere(tmp_path / "worktrees" / "two" / "w0.lock")
    with pool.checkout("two", repo, head):
        pass


def test_a_slot_whose_use_failed_is_unlocked_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, head, pool = _setup(tmp_path)
    calls = _git_calls(monkeypatch)
    with pytest.raises(RuntimeError), pool.checkout("demo", repo, head) as slot:
        calls.clear()
        (slot / "junk.txt").write_text("left by a red check\n")
        raise RuntimeError("the check failed")
    assert calls == []
    assert not _locked_elsewhere(tmp_path / "worktrees" / "demo" / "w0.lock")
    with pool.checkout("demo", repo, head) as again:
        assert again == slot and not (slot / "junk.txt").exists()


def _committed_in(slot: Path, repo: GitRepo, parent: str) -> str:
    (slot / "a.txt").write_text("alpha, changed\n")
    git(slot, "add", "a.txt")
    return repo.commit(slot, parent, "a change\n", ("Agent", "agent@example.invalid"))


def test_a_checkout_at_the_commit_of_a_slot_in_use_waits_for_that_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second worker builds on the first's commit while the first runs its check in its
    slot: it gets that slot when given back, unproven (the guard runs beside its commit),
    instead of resetting another slot to that commit."""
    repo, head, pool = _setup(tmp_path)
    directory = tmp_path / "worktrees" / "demo"
    got: dict[str, object] = {}

    def second(commit: str) -> None:
        with pool.checkout_unproven("demo", repo, commit) as slot:
            got.update(path=slot.path, trusted=slot.trusted, at=time.monotonic())

    with pool.checkout_unproven("demo", repo, head) as first:
        commit = _committed_in(first.path, repo, head)
        pool_module._HELD.reset_took(directory, 30.0)
        calls = _git_calls(monkeypatch)
        waiter = threading.Thread(target=second, args=(commit,))
        waiter.start()
        time.sleep(0.3)                       # the first one's check
        assert "path" not in got              # still waiting
        given_back = time.monotonic()
    waiter.join(10)
    assert got["path"] == first.path and got["trusted"] is False
    assert isinstance(got["at"], float) and got["at"] >= given_back
    assert "checkout" not in calls and "clean" not in calls and "worktree" not in calls


def test_a_checkout_waits_for_a_slot_in_use_no_longer_than_a_reset_takes(
        tmp_path: Path) -> None:
    repo, head, pool = _setup(tmp_path)
    directory = tmp_path / "worktrees" / "demo"
    with pool.checkout_unproven("demo", repo, head) as first:
        commit = _committed_in(first.path, repo, head)
        pool_module._HELD.reset_took(directory, 0.2)
        started = time.monotonic()
        with pool.checkout_unproven("demo", repo, commit) as other:
            waited = time.monotonic() - started
            assert other.path != first.path and other.trusted
            assert git(other.path, "rev-parse", "HEAD").strip() == commit
        assert 0.2 <= waited < 0.2 + 10            # the wait, then a slot added afresh
    # Nothing in use: no wait at all for a commit no slot is at.
    pool_module._HELD.reset_took(directory, 30.0)
    started = time.monotonic()
    with pool.checkout_unproven("demo", repo, head):
        pass
    assert time.monotonic() - started < 30
