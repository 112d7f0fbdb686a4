"""A slot handed out unproven (pool.py): the request before left it at the wanted commit, and
whatever its check left there is found by the apply or by the proof that runs beside the
commit's write-tree; then the slot is reset and the patch applied again. Nothing a check
leaves reaches the next commit or the next check."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Setup, git, leave_leftover, make_repo

import hyperion.gitops as gitops
from hyperion.apply import ApplyConflict, apply_patch
from hyperion.gitops import GitRepo
from hyperion.pool import Slot, WorktreePool

FILES = {"a.txt": "alpha\n", "b.txt": "beta\n", "c.txt": "gamma\n"}
AUTHOR = ("Agent", "agent@example.invalid")


def _edit(path: str, old: str, new: str) -> str:
    return (f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n"
            f"-{old}+{new}")


def _repo_and_pool(tmp_path: Path) -> tuple[GitRepo, WorktreePool, str]:
    """A repository of FILES, its HEAD, and an empty pool for it."""
    repo = GitRepo(make_repo(tmp_path / "r", FILES))
    (tmp_path / "locks").mkdir()
    pool = WorktreePool(tmp_path / "worktrees", tmp_path / "locks")
    return repo, pool, git(repo.git_dir, "rev-parse", "HEAD").strip()


def _held_slot(tmp_path: Path) -> tuple[GitRepo, WorktreePool, str, Path]:
    """A pool slot in which a request was applied and committed, given back."""
    repo, pool, head = _repo_and_pool(tmp_path)
    with pool.checkout("demo", repo, head) as path:
        assert GitRepo.try_apply(path, _edit("a.txt", "alpha\n", "ALPHA\n")) is None
        commit = repo.commit(path, head, "first\n", AUTHOR)
    return repo, pool, commit, path


def _git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_git, real_start = gitops.git, gitops._start

    def counting(args: list[str], **kwargs: object) -> object:
        calls.append(args[0])
        return real_git(args, **kwargs)  # type: ignore[arg-type]

    def counting_start(args: list[str], **kwargs: object) -> object:
        calls.append(args[0])
        return real_start(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", counting)
    monkeypatch.setattr(gitops, "_start", counting_start)
    return calls


def test_the_slot_at_its_commit_is_handed_out_unproven_and_proven_beside_the_write_tree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, pool, commit, path = _held_slot(tmp_path)
    calls = _git_calls(monkeypatch)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert slot.path == path and not slot.trusted
        assert calls == []                        # nothing run to hand it out
        assert GitRepo.try_apply(path, _edit("b.txt", "beta\n", "BETA\n")) is None
        second = repo.commit_proving_clean(path, commit, "second\n", AUTHOR)
        assert second is not None
        assert calls == ["apply", "write-tree", "ls-files"]
    assert git(path, "rev-parse", "HEAD").strip() == second
    assert git(repo.git_dir, "show", f"{second}:b.txt") == "BETA\n"
    assert git(path, "status", "--porcelain", "--ignored") == ""


@pytest.mark.parametrize("leftover", ["untracked", "empty-folder", "ignored", "modified",
                                      "deleted", "attributes"])
def test_whatever_a_check_left_stops_the_commit_and_the_slot_is_reset(
        tmp_path: Path, leftover: str) -> None:
    repo, pool, commit, path = _held_slot(tmp_path)
    leave_leftover(path, leftover, tmp_path)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted
        assert GitRepo.try_apply(path, _edit("b.txt", "beta\n", "BETA\n")) is None
        assert repo.commit_proving_clean(path, commit, "second\n", AUTHOR) is None
        assert git(path, "rev-parse", "HEAD").strip() == commit      # nothing committed
        slot.prove()
        assert slot.trusted
        assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
        assert (path / "c.txt").read_text() == "gamma\n" and (path / "b.txt").read_text() == \
            "beta\n"


@pytest.mark.parametrize("leftover", ["staged", "touched-index", "head-moved", "link"])
def test_a_slot_whose_index_or_head_a_check_changed_is_proven_before_it_is_handed_out(
        tmp_path: Path, leftover: str) -> None:
    repo, pool, commit, path = _held_slot(tmp_path)
    if leftover in ("staged", "touched-index"):
        leave_leftover(path, leftover, tmp_path)
    elif leftover == "head-moved":
        git(path, "checkout", "-q", "--detach", "HEAD~1")
        git(path, "checkout", "-q", "--detach", commit)          # back, through git
        (path / "c.txt").write_text("GAMMA\n")
    elif leftover == "link":
        (path / ".git").write_text(f"gitdir: {tmp_path / 'elsewhere'}\n")
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert slot.trusted
        assert git(path, "rev-parse", "HEAD").strip() == commit
        assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


def test_a_folder_a_check_replaced_with_a_symlink_is_seen_before_anything_is_applied(
        tmp_path: Path) -> None:
    repo, pool, commit, path = _held_slot(tmp_path)
    (path / "sub").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (path / "deep").symlink_to(outside)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert slot.folders_are_real(["a.txt", "sub/x/y.txt", "absent/z.txt"])
        assert not slot.folders_are_real(["a.txt", "deep/new.txt"])
        assert not slot.folders_are_real(["a.txt/under-a-file.txt"])


@pytest.mark.parametrize("leftover", ["modified", "added"])
def test_a_leftover_in_a_file_the_patch_touches_makes_the_apply_fail_untouched(
        tmp_path: Path, leftover: str) -> None:
    """git apply --index compares the files it touches with the index: what a check left in
    them is refused, not taken into the commit."""
    repo, pool, commit, path = _held_slot(tmp_path)
    if leftover == "modified":
        (path / "b.txt").write_text("beta, as a check left it\n")
        patch = _edit("b.txt", "beta\n", "BETA\n")
    elif leftover == "added":
        (path / "d.txt").write_text("a check's file\n")
        patch = "diff --git a/d.txt b/d.txt\nnew file mode 100644\n--- /dev/null\n" \
                "+++ b/d.txt\n@@ -0,0 +1 @@\n+delta\n"
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted
        assert GitRepo.try_apply(path, patch) is not None
        slot.prove()
        assert GitRepo.try_apply(path, patch) is None
        assert repo.commit(path, commit, "second\n", AUTHOR)


def test_a_file_a_check_deleted_and_the_patch_deletes_is_committed_deleted(
        tmp_path: Path) -> None:
    """The one leftover git apply takes as it is: the file the patch deletes is already
    gone. The commit is what the patch asks, proven clean."""
    repo, pool, commit, path = _held_slot(tmp_path)
    (path / "b.txt").unlink()
    patch = "diff --git a/b.txt b/b.txt\ndeleted file mode 100644\n--- a/b.txt\n" \
            "+++ /dev/null\n@@ -1 +0,0 @@\n-beta\n"
    with pool.checkout_unproven("demo", repo, commit):
        assert GitRepo.try_apply(path, patch) is None
        second = repo.commit_proving_clean(path, commit, "second\n", AUTHOR)
    assert second is not None
    assert git(repo.git_dir, "ls-tree", "--name-only", second).split() == ["a.txt", "c.txt"]


def test_a_checks_leftovers_never_reach_the_next_commit_or_check(setup: Setup) -> None:
    """End to end: the first request's check leaves an attributes file (which would turn the
    next request's CRLF file into LF in its commit), junk, a changed file and a symlink in
    place of a folder (which git apply would write through); the second request lands
    exactly its patch, nothing is written outside its worktree, and its check finds nothing
    of that."""
    check = setup.root / "messy_check.py"
    marker = setup.root / "first-check-ran"
    outside = setup.root / "outside"
    outside.mkdir()
    check.write_text(
        "import os, pathlib, shutil, subprocess, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('x')\n"
        "    pathlib.Path('.gitattributes').write_text('* text\\n')\n"
        "    pathlib.Path('junk.txt').write_text('junk\\n')\n"
        "    pathlib.Path('build/out').mkdir(parents=True)\n"
        "    pathlib.Path('app.py').write_text('scribbled\\n')\n"
        "    shutil.rmtree('docs')\n"
        f"    os.symlink({str(outside)!r}, 'docs')\n"
        "    sys.exit(0)\n"
        "status = subprocess.run(['git', 'status', '--porcelain', '--ignored',\n"
        "                         '--untracked-files=all'], capture_output=True, text=True)\n"
        "sys.exit(1 if status.stdout.strip() else 0)\n")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(check)))
    setup.config.write_text(text.replace("workers: 2", "workers: 1"))
    first = setup.root / "first.json"
    first.write_text(json.dumps(setup.request("tidy-1", {"app.py": "VALUE = 2\n"})))
    assert setup.cli("submit", str(first)).returncode == 0
    # Written out here: the git helper's text mode would turn the CRLF into LF.
    crlf = b"one\r\ntwo\r\n"
    second = setup.request("tidy-2", {})
    second["patch"] = ("diff --git a/crlf.txt b/crlf.txt\nnew file mode 100644\n"
                       "--- /dev/null\n+++ b/crlf.txt\n@@ -0,0 +1,2 @@\n+one\r\n+two\r\n"
                       "diff --git a/docs/new.txt b/docs/new.txt\nnew file mode 100644\n"
                       "--- /dev/null\n+++ b/docs/new.txt\n@@ -0,0 +1 @@\n+new\n")
    second["changes"] = [{"path": "crlf.txt", "operation": "add",
                          "sha256": hashlib.sha256(crlf).hexdigest()},
                         {"path": "docs/new.txt", "operation": "add",
                          "sha256": hashlib.sha256(b"new\n").hexdigest()}]
    (setup.root / "second.json").write_text(json.dumps(second))
    assert setup.cli("submit", str(setup.root / "second.json")).returncode == 0
    # One process, one worker: the second request gets the slot the first one's check left.
    out = subprocess.run([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                          "run", "--once"], capture_output=True, text=True, cwd=setup.root,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "what a check left there" in out.stderr
    assert setup.record("tidy-1")["state"] == "landed"
    record = setup.record("tidy-2")
    assert record["state"] == "landed", (record["error"], record["history"])
    blob = subprocess.run(["git", "-C", str(setup.repo), "cat-file", "blob",
                           f"{record['landed_commit']}:crlf.txt"], capture_output=True,
                          check=True).stdout
    assert blob == crlf
    tree = git(setup.repo, "ls-tree", "-r", "--name-only", record["landed_commit"]).split()
    assert ".gitattributes" not in tree and "junk.txt" not in tree
    assert git(setup.repo, "show", f"{record['landed_commit']}:docs/readme.txt") == "hello\n"
    assert git(setup.repo, "show", f"{record['landed_commit']}:docs/new.txt") == "new\n"
    assert git(setup.repo, "show", f"{record['landed_commit']}:app.py") == "VALUE = 2\n"
    # The symlink the check left where docs/ was: nothing was written through it.
    assert list(outside.iterdir()) == []


def test_the_three_way_merge_waits_for_a_proven_slot(tmp_path: Path) -> None:
    """The merge writes the files it merged into the worktree, which may be more than the
    patch names (a rename on the target): not into a slot not yet proven clean."""
    lines = [f"line {n}\n" for n in range(1, 11)]
    repo_path = make_repo(tmp_path / "r", {"f.txt": "".join(lines)})
    repo = GitRepo(repo_path)
    base = git(repo_path, "rev-parse", "HEAD").strip()
    # The request's patch, made on the base: line 4 changed.
    (repo_path / "f.txt").write_text("".join([*lines[:3], "line four\n", *lines[4:]]))
    patch = git(repo_path, "diff")
    git(repo_path, "checkout", "-q", "--", "f.txt")
    # Meanwhile the target changed line 1, inside the patch's context.
    (repo_path / "f.txt").write_text("".join(["line one\n", *lines[1:]]))
    git(repo_path, "commit", "-qam", "line 1")
    tip = git(repo_path, "rev-parse", "HEAD").strip()
    worktree = tmp_path / "slot"
    repo.worktree_add(worktree, tip)
    with pytest.raises(ApplyConflict):
        apply_patch(repo, worktree, patch, tip=tip, base_commit=base, merge=False)
    assert git(worktree, "status", "--porcelain") == ""
    applied = apply_patch(repo, worktree, patch, tip=tip, base_commit=base)
    assert applied.method == "3way"
    assert (worktree / "f.txt").read_text().splitlines()[:4] == \
        ["line one", "line 2", "line 3", "line four"]


def _admin(path: Path) -> Path:
    return Path((path / ".git").read_text().removeprefix("gitdir: ").strip())


@pytest.mark.parametrize("case", ["sound", "outside", "admin-link", "dot-dot", "other-folder",
                                  "written-through-a-link"])
def test_the_worktree_link_is_judged_as_resolved_however_it_is_written(
        tmp_path: Path, case: str) -> None:
    """The slot's .git file must name a folder right inside the repository's worktrees
    folder, and that folder's gitdir file the slot; paths written as hyperion wrote them are
    judged without resolving, and every other spelling as resolved."""
    repo, _pool, _commit, path = _held_slot(tmp_path)
    admin = _admin(path)
    worktrees = (repo.git_dir / "worktrees").resolve()
    expected: str | None = None
    if case == "outside":
        outside = tmp_path / "elsewhere" / admin.name
        outside.parent.mkdir()
        admin.rename(outside)
        (path / ".git").write_text(f"gitdir: {outside}\n")
        expected = "points outside"
    elif case == "admin-link":
        # A link inside worktrees/ that leads out: spelt right below the folder, but it is not.
        outside = tmp_path / "elsewhere"
        admin.rename(outside)
        (worktrees / "wlink").symlink_to(outside)
        (path / ".git").write_text(f"gitdir: {worktrees / 'wlink'}\n")
        expected = "points outside"
    elif case == "dot-dot":
        (path / ".git").write_text(f"gitdir: {worktrees}/..\n")
        expected = "points outside"
    elif case == "other-folder":
        (admin / "gitdir").write_text(f"{tmp_path / 'another'}/.git\n")
        expected = "another folder"
    elif case == "written-through-a-link":
        # The same folders named through a link: resolved, they are the slot's.
        link = tmp_path / "via"
        link.symlink_to(worktrees.parent)
        (path / ".git").write_text(f"gitdir: {link / 'worktrees' / admin.name}\n")
        (admin / "gitdir").write_text(f"{tmp_path / 'via-slot'}/.git\n")
        (tmp_path / "via-slot").symlink_to(path)
    problem = repo.worktree_link_problem(path)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_a_write_tree_that_fails_beside_the_proof_is_git_s_error(tmp_path: Path) -> None:
    repo, pool, commit, path = _held_slot(tmp_path)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted
        blob = git(path, "hash-object", "-w", "a.txt").strip()
        unmerged = (f"0 {'0' * 40}\ta.txt\n100644 {blob} 1\ta.txt\n"
                    f"100644 {blob} 2\ta.txt\n")
        subprocess.run(["git", "update-index", "--index-info"], input=unmerged.encode(),
                       cwd=path, check=True)
        with pytest.raises(gitops.GitError, match="write-tree"):
            repo.commit_proving_clean(path, commit, "unmerged\n", AUTHOR)


# ---------------------------------------------------------------- a slot watched through its check
READ_ONLY_CHECK = [sys.executable, "-c", "import pathlib\n"
                   "for p in pathlib.Path('.').rglob('*'):\n"
                   "    p.read_bytes() if p.is_file() else p.stat()\n"]


def _checked_slot(tmp_path: Path, patch: str = _edit("a.txt", "alpha\n", "ALPHA\n"),
                  check: list[str] | None = None, leftover: str | None = None
                  ) -> tuple[GitRepo, WorktreePool, str, Path]:
    """A pool slot in which a request was applied, committed and checked as the worker does
    it (watched from right before its check on), given back; its check read every file
    (or ran ``check``) and then left ``leftover``."""
    repo, pool, head = _repo_and_pool(tmp_path)
    with pool.checkout_unproven("demo", repo, head) as slot:
        assert slot.trusted                           # a new slot is proven
        assert GitRepo.try_apply(slot.path, patch) is None
        commit = repo.commit(slot.path, head, "first\n", AUTHOR)
        slot.watch_from_here()
        subprocess.run(check or READ_ONLY_CHECK, cwd=slot.path, check=True,
                       stdin=subprocess.DEVNULL)
        if leftover is not None:
            leave_leftover(slot.path, leftover, tmp_path)
        path = slot.path
    return repo, pool, commit, path


def test_a_slot_its_check_changed_nothing_in_is_handed_out_proven(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel saw nothing written in the slot from its check's start on: the next
    request at its commit takes it as proven, and commits without the proof (and without a
    write-tree: its tree is written in-process from the index, gitindex.py)."""
    repo, pool, commit, path = _checked_slot(tmp_path)
    calls = _git_calls(monkeypatch)
    # Its HEAD and index were watched too: not even read again.
    monkeypatch.setattr(GitRepo, "index_as_committed",
                        lambda *_: pytest.fail("the slot's link, HEAD and index were read"))
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert slot.path == path and slot.trusted
        assert calls == []
        assert GitRepo.try_apply(path, _edit("b.txt", "beta\n", "BETA\n")) is None
        second = repo.commit(path, commit, "second\n", AUTHOR)
        assert calls == ["apply"]
    assert git(repo.git_dir, "show", f"{second}:b.txt") == "BETA\n"
    assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


@pytest.mark.parametrize("leftover", ["untracked", "empty-folder", "ignored", "modified",
                                      "deleted", "attributes"])
def test_a_slot_its_check_changed_anything_in_is_handed_out_unproven(
        tmp_path: Path, leftover: str) -> None:
    repo, pool, commit, path = _checked_slot(tmp_path, leftover=leftover)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted
        assert GitRepo.try_apply(path, _edit("b.txt", "beta\n", "BETA\n")) is None
        assert repo.commit_proving_clean(path, commit, "second\n", AUTHOR) is None
        slot.prove()
        assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


@pytest.mark.parametrize("how", ["touch", "rewrite-same", "background"])
def test_a_change_that_leaves_the_content_as_it_was_still_takes_the_proof(
        tmp_path: Path, how: str) -> None:
    """The watch tells that something was done, not what: a file touched or written back
    as it was, or written by a process the check left running after it ended, costs the
    proof, never a wrong trust."""
    if how == "touch":
        check = ["touch", "b.txt"]
    elif how == "rewrite-same":
        check = [sys.executable, "-c", "import pathlib; p = pathlib.Path('b.txt'); "
                 "p.write_bytes(p.read_bytes())"]
    else:
        check = ["sh", "-c", "(sleep 0.3; echo late > late.txt) > /dev/null 2>&1 &"]
    repo, pool, commit, path = _checked_slot(tmp_path, check=check)
    if how == "background":
        for _ in range(100):
            if (path / "late.txt").exists():
                break
            time.sleep(0.02)
        assert (path / "late.txt").exists()
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted


@pytest.mark.parametrize("change", [
    'cp "$d/HEAD" "$d/HEAD.new" && mv "$d/HEAD.new" "$d/HEAD"',
    'touch "$d/index"',
    'cp "$d/index" "$d/index.new" && mv "$d/index.new" "$d/index"',
    'cp -a "$d" "$d.copy" && mv "$d" "$d.old" && mv "$d.copy" "$d"',
    'w=$(dirname "$d") && cp -a "$w" "$w.copy" && mv "$w" "$w.old" && mv "$w.copy" "$w"',
], ids=["head-rewritten", "index-touched", "index-rewritten", "folder-replaced",
        "worktrees-replaced"])
def test_a_check_that_touches_the_slot_s_folder_in_the_repository_costs_the_proof(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The slot's HEAD and index live in the repository (``worktrees/<slot>``), outside the
    tree: that folder is watched too, and looked up again, so a check that rewrote them, or
    replaced the folder, leaves the slot to be read and proven as before."""
    check = ["sh", "-c", f'd=$(git rev-parse --absolute-git-dir) && {change}']
    repo, pool, commit, _path = _checked_slot(tmp_path, check=check)
    proofs: list[Path] = []
    real_prove = Slot.prove
    monkeypatch.setattr(Slot, "prove", lambda slot: (proofs.append(slot.path),
                                                     real_prove(slot))[1])
    read: list[str] = []
    real_read = GitRepo.index_as_committed
    monkeypatch.setattr(GitRepo, "index_as_committed",
                        lambda self, path, c: (read.append(c), real_read(self, path, c))[1])
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert read == [commit]
        assert proofs or not slot.trusted


def test_folders_the_patch_made_are_watched_through_the_check(tmp_path: Path) -> None:
    patch = ("diff --git a/new/deeper/file.txt b/new/deeper/file.txt\nnew file mode 100644\n"
             "--- /dev/null\n+++ b/new/deeper/file.txt\n@@ -0,0 +1 @@\n+new\n")
    check = ["sh", "-c", "echo junk > new/deeper/junk.txt"]
    repo, pool, commit, _path = _checked_slot(tmp_path, patch=patch, check=check)
    with pool.checkout_unproven("demo", repo, commit) as slot:
        assert not slot.trusted


def test_watched_slots_hold_no_descriptor_once_let_go(tmp_path: Path) -> None:
    """Every slot given back keeps its lock and its watch open until its next use; one whose
    use failed, or that is no longer kept, closes both."""
    repo, pool, commit, path = _checked_slot(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        try:
            with pool.checkout_unproven("demo", repo, commit) as slot:
                assert slot.trusted
                slot.watch_from_here()
                if n % 2:
                    raise RuntimeError("a failed use")
        except RuntimeError:
            with pool.checkout_unproven("demo", repo, commit) as slot:
                assert slot.trusted and slot.path == path     # proven again (reset)
                slot.watch_from_here()
    assert len(os.listdir("/proc/self/fd")) <= before
