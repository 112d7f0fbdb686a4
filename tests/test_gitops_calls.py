"""The git calls that replaced several with one: apply without a separate --check, the
checked-out target's state from one status, and the pool's reset guard from one status."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import git, leave_leftover, make_repo

from hyperion.gitops import GitRepo

FILES = {"a.txt": "alpha\n", "b.txt": "beta\n", "c.txt": "gamma\n"}


def _patch(a_old: str, a_new: str, b_old: str, b_new: str) -> str:
    return (f"diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n"
            f"-{a_old}+{a_new}"
            f"diff --git a/b.txt b/b.txt\n--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n"
            f"-{b_old}+{b_new}")


def test_a_patch_that_fails_on_its_second_file_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    reason = GitRepo.try_apply(repo, _patch("alpha\n", "ALPHA\n", "not beta\n", "BETA\n"))
    assert reason is not None and "b.txt" in reason
    assert (repo / "a.txt").read_text() == "alpha\n"
    assert git(repo, "status", "--porcelain") == ""
    assert GitRepo.try_apply(repo, _patch("alpha\n", "ALPHA\n", "beta\n", "BETA\n")) is None
    assert git(repo, "diff", "--cached", "--name-only").split() == ["a.txt", "b.txt"]


def test_checkout_status_tells_head_and_what_is_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "untracked.txt").write_text("not ours\n")
    assert GitRepo.checkout_status(repo) == (head, None)      # untracked files do not count
    (repo / "a.txt").write_text("edited\n")
    assert GitRepo.checkout_status(repo) == (head, "it has uncommitted changes")
    git(repo, "add", "a.txt")
    assert GitRepo.checkout_status(repo) == (head, "it has staged changes")
    git(repo, "reset", "-q", "--hard")
    git(repo, "mv", "b.txt", "1 .M renamed.txt")          # a rename's second path is skipped
    assert GitRepo.checkout_status(repo) == (head, "it has staged changes")


def test_a_touched_but_unchanged_file_does_not_stop_the_checkout_moving(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    old = git(repo, "rev-parse", "HEAD").strip()
    (repo / "c.txt").write_text("gamma 2\n")
    git(repo, "commit", "-q", "-am", "second")
    new = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "--detach", old)
    # Same content, newer stat data: read-tree -m refuses ("not uptodate") unless the index
    # was refreshed first.
    later = (repo / "c.txt").stat().st_mtime + 100
    os.utime(repo / "c.txt", (later, later))
    assert GitRepo.checkout_status(repo) == (old, None)
    assert GitRepo.move_checkout(repo, old, new) is None
    assert (repo / "c.txt").read_text() == "gamma 2\n"


def test_worktree_reset_checks_head_and_leftovers(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path / "r", FILES)
    first = git(repo_path, "rev-parse", "HEAD").strip()
    (repo_path / "a.txt").write_text("alpha 2\n")
    git(repo_path, "commit", "-q", "-am", "second")
    second = git(repo_path, "rev-parse", "HEAD").strip()
    repo = GitRepo(repo_path)
    slot = tmp_path / "slot"
    repo.worktree_add(slot, first)
    (slot / "b.txt").write_text("left by a check\n")
    (slot / "junk").mkdir()
    (slot / "junk" / "x.pyc").write_text("")
    assert repo.worktree_reset(slot, second) is None
    assert (slot / "a.txt").read_text() == "alpha 2\n"
    assert (slot / "b.txt").read_text() == "beta\n"
    assert not (slot / "junk").exists()
    assert git(slot, "rev-parse", "HEAD").strip() == second


def _slot_hiding_a_change(tmp_path: Path, repo: GitRepo, commit: str) -> Path:
    """A slot at ``commit`` in which a check changed a.txt behind a skip-worktree bit."""
    slot = tmp_path / "slot"
    repo.worktree_add(slot, commit)
    git(slot, "update-index", "--skip-worktree", "a.txt")
    (slot / "a.txt").write_text("written by a check\n")
    return slot


def test_worktree_reset_refuses_a_slot_whose_index_hides_a_changed_file(tmp_path: Path) -> None:
    # skip-worktree survives `git checkout --force` and git status does not show the file, so
    # without this guard the next request's checks would see the check's version of a.txt
    # while its commit has another.
    repo_path = make_repo(tmp_path / "r", FILES)
    first = git(repo_path, "rev-parse", "HEAD").strip()
    (repo_path / "b.txt").write_text("beta 2\n")
    git(repo_path, "commit", "-q", "-am", "second")
    second = git(repo_path, "rev-parse", "HEAD").strip()
    repo = GitRepo(repo_path)
    slot = _slot_hiding_a_change(tmp_path, repo, first)
    problem = repo.worktree_reset(slot, second)
    assert problem is not None and "skip-worktree" in problem
    # assume-unchanged does not survive: git checkout --force looks past it and puts the
    # file back (the bit may stay; it hides nothing once the file matches the index).
    git(slot, "update-index", "--no-skip-worktree", "a.txt")
    git(slot, "checkout", "-q", "--force", "--detach", first)
    git(slot, "update-index", "--assume-unchanged", "a.txt")
    (slot / "a.txt").write_text("written by a check\n")
    repo.worktree_reset(slot, second)
    assert (slot / "a.txt").read_text() == "alpha\n"


def _git_calls(monkeypatch: object) -> list[str]:
    import hyperion.gitops as gitops

    calls: list[str] = []
    real = gitops.git

    def counting(args: list[str], **kwargs: object) -> object:
        calls.append(args[0])
        return real(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", counting)  # type: ignore[attr-defined]
    return calls


def test_a_slot_reset_takes_the_checkout_only_when_it_needs_it(tmp_path: Path,
                                                               monkeypatch: object) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    one = git(repo, "rev-parse", "HEAD").strip()
    (repo / "c.txt").write_text("gamma 2\n")
    git(repo, "commit", "-q", "-am", "second")
    two = git(repo, "rev-parse", "HEAD").strip()
    slot = tmp_path / "slot"
    git(repo, "worktree", "add", "-q", "--detach", str(slot), one)
    gitrepo = GitRepo(repo)
    calls = _git_calls(monkeypatch)
    # At the commit, with junk a check left (a file, an empty folder): clean + status.
    (slot / "junk.txt").write_text("x")
    (slot / "empty").mkdir()
    assert gitrepo.worktree_reset(slot, one) is None
    assert calls == ["clean", "status"]
    assert not (slot / "junk.txt").exists() and not (slot / "empty").exists()
    # At the commit, a tracked file changed: the checkout puts it back.
    calls.clear()
    (slot / "a.txt").write_text("scribbled\n")
    assert gitrepo.worktree_reset(slot, one) is None
    assert calls == ["clean", "status", "checkout", "clean", "status"]
    assert (slot / "a.txt").read_text() == "alpha\n"
    # At another commit: straight to the checkout.
    calls.clear()
    assert gitrepo.worktree_reset(slot, two) is None
    assert calls == ["checkout", "clean", "status"]
    assert (slot / "c.txt").read_text() == "gamma 2\n"
    assert git(slot, "status", "--porcelain", "--ignored") == ""


def test_a_slot_at_its_commit_with_a_hidden_change_is_not_trusted(tmp_path: Path) -> None:
    # The clean + status path (no checkout) must not miss what status cannot see either.
    repo_path = make_repo(tmp_path / "r", FILES)
    head = git(repo_path, "rev-parse", "HEAD").strip()
    repo = GitRepo(repo_path)
    slot = _slot_hiding_a_change(tmp_path, repo, head)
    problem = repo.worktree_reset(slot, head)
    assert problem is not None and "skip-worktree" in problem


def _slot_with_a_commit(tmp_path: Path) -> tuple[GitRepo, Path, str]:
    """A pool-like slot in which hyperion applied a patch and committed it, as a worker does."""
    repo_path = make_repo(tmp_path / "r", FILES)
    head = git(repo_path, "rev-parse", "HEAD").strip()
    repo = GitRepo(repo_path)
    slot = tmp_path / "slot"
    repo.worktree_add(slot, head)
    assert GitRepo.try_apply(slot, _patch("alpha\n", "ALPHA\n", "beta\n", "BETA\n")) is None
    commit = repo.commit(slot, head, "change\n", ("Agent", "agent@example.invalid"))
    return repo, slot, commit


def test_a_slot_its_check_left_untouched_is_proven_clean_by_one_ls_files(
        tmp_path: Path, monkeypatch: object) -> None:
    repo, slot, commit = _slot_with_a_commit(tmp_path)
    calls = _git_calls(monkeypatch)
    assert repo.worktree_reset(slot, commit) is None
    assert calls == ["ls-files"]


@pytest.mark.parametrize("leftover", ["untracked", "empty-folder", "ignored", "modified",
                                      "deleted", "staged", "touched-index"])
def test_whatever_a_check_left_after_a_commit_takes_the_full_reset(
        tmp_path: Path, monkeypatch: object, leftover: str) -> None:
    repo, slot, commit = _slot_with_a_commit(tmp_path)
    leave_leftover(slot, leftover, tmp_path)
    calls = _git_calls(monkeypatch)
    assert repo.worktree_reset(slot, commit) is None
    assert "clean" in calls and "status" in calls
    assert git(slot, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert not (slot / "out").exists()
    assert (slot / "c.txt").read_text() == "gamma\n"
    assert git(slot, "ls-files", "s.txt") == ""


def test_git_is_the_one_on_path_as_path_is_now(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """git's path is looked up once per value of PATH (a child started by name would search
    PATH on each start), so a changed PATH is still obeyed."""
    from hyperion import gitops

    repo = make_repo(tmp_path / "r", FILES)
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "shim.log"
    real = shutil.which("git")
    (shim / "git").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {real} \"$@\"\n")
    (shim / "git").chmod(0o755)
    head = git(repo, "rev-parse", "HEAD").strip()
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    assert gitops.git(["rev-parse", "HEAD"], cwd=repo).stdout.decode().strip() == head
    assert log.read_text().count("rev-parse HEAD") == 1
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    gitops.git(["rev-parse", "HEAD"], cwd=repo)
    assert log.read_text().count("rev-parse HEAD") == 1


def test_a_git_in_the_worktree_never_runs_whatever_path_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request can add an executable named git; with "." or an empty entry in PATH, a git
    started by name from the worktree would be that one."""
    from hyperion import gitops

    repo = make_repo(tmp_path / "r", FILES)
    ran = tmp_path / "ran"
    (repo / "git").write_text(f"#!/bin/sh\ntouch {ran}\n")
    (repo / "git").chmod(0o755)
    real_git = shutil.which("git")
    assert real_git is not None
    real = os.path.dirname(real_git)
    for path in (f".{os.pathsep}{real}", f"{os.pathsep}{real}", f"{real}{os.pathsep}."):
        monkeypatch.setenv("PATH", path)
        assert GitRepo.try_apply(repo, _patch("alpha\n", "ALPHA\n", "beta\n", "BETA\n")) is None
        subprocess.run([real_git, "reset", "-q", "--hard"], cwd=repo, check=True)
    assert not ran.exists()
    monkeypatch.setenv("PATH", ".")
    with pytest.raises(FileNotFoundError, match="absolute folder"):
        gitops.git(["--version"], cwd=repo)
