"""The in-process reader (gitread) gives git's answers, or none: refs (loose, packed, symbolic,
moved by git after the reader cached them), tree modes and blobs at any path, objects in packs,
and repositories it cannot read (then GitRepo asks git)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import git, make_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion.gitops import GitRepo
from hyperion.gitread import TreeReader

FILES = {"a.txt": "a\n", "dir/b.txt": "b\n", "dir/sub/c.txt": "c\n", "x/y/z/d.txt": "d\n",
         "tool.sh": "#!/bin/sh\n"}


def _ls_tree(repo: Path, commit: str, paths: list[str]) -> dict[str, str]:
    out = subprocess.run(["git", "ls-tree", "-z", "--full-tree", commit, "--", *paths],
                         cwd=repo, capture_output=True, check=True,
                         env={**os.environ, "GIT_LITERAL_PATHSPECS": "1"}).stdout
    found = {}
    for entry in out.split(b"\0"):
        meta, tab, name = entry.partition(b"\t")
        if tab and name.decode() in paths:
            found[name.decode()] = meta.split(b" ", 1)[0].decode()
    return found


@pytest.fixture(scope="module")
def odd_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Files, folders, an executable, symlinks (one to a folder), and a gitlink."""
    repo = make_repo(tmp_path_factory.mktemp("odd") / "r", FILES)
    os.chmod(repo / "tool.sh", 0o755)
    os.symlink("dir", repo / "link")
    os.symlink("/etc/passwd", repo / "abs")
    git(repo, "add", "-A")
    sub = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sub},vendor/mod")
    git(repo, "commit", "-q", "-m", "odd entries")
    return repo, git(repo, "rev-parse", "HEAD").strip()


CANDIDATES = ["a.txt", "dir", "dir/b.txt", "dir/sub", "dir/sub/c.txt", "x", "x/y/z",
              "x/y/z/d.txt", "tool.sh", "link", "link/b.txt", "abs", "vendor", "vendor/mod",
              "vendor/mod/inside", "a.txt/below", "missing", "dir/missing", "DIR/b.txt"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(CANDIDATES), min_size=1, max_size=8, unique=True))
def test_tree_modes_are_what_git_ls_tree_lists(odd_repo: tuple[Path, str],
                                               paths: list[str]) -> None:
    repo, commit = odd_repo
    reader = TreeReader(repo / ".git")
    try:
        # Asked one at a time: given "dir" and "dir/b.txt" together, ls-tree descends into
        # dir and leaves the folder itself out (a folder's mode decides nothing in the gate).
        expected = {k: v for p in paths for k, v in _ls_tree(repo, commit, [p]).items()}
        assert reader.modes(commit, paths) == expected
    finally:
        reader.close()


def test_blobs_and_link_targets_match_git(odd_repo: tuple[Path, str]) -> None:
    repo, commit = odd_repo
    reader = TreeReader(repo / ".git")
    try:
        assert reader.blob(commit, "dir/sub/c.txt", 100) == (True, b"c\n")
        assert reader.blob(commit, "link", 100) == (True, b"dir")
        assert reader.blob(commit, "dir", 100) == (True, None)          # a folder
        assert reader.blob(commit, "vendor/mod", 100) == (True, None)   # a gitlink
        assert reader.blob(commit, "missing", 100) == (True, None)
        with pytest.raises(ValueError):
            reader.blob(commit, "tool.sh", 3)
    finally:
        reader.close()


def test_refs_loose_packed_symbolic_and_moved_by_git_meanwhile(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    first = git(repo, "rev-parse", "HEAD").strip()
    gitrepo = GitRepo(repo)
    assert gitrepo.branch_commit("main") == first
    git(repo, "pack-refs", "--all")                  # now only in packed-refs
    assert not (repo / ".git/refs/heads/main").exists()
    assert gitrepo.branch_commit("main") == first
    (repo / "f").write_text("2\n")
    git(repo, "commit", "-q", "-am", "two")          # loose again, newer than packed
    second = git(repo, "rev-parse", "HEAD").strip()
    assert gitrepo.branch_commit("main") == second
    git(repo, "pack-refs", "--all")                  # packed-refs rewritten under the cache
    git(repo, "branch", "other", first)
    git(repo, "pack-refs", "--all")
    assert gitrepo.branch_commit("main") == second
    assert gitrepo.branch_commit("other") == first
    git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/other")
    assert gitrepo.branch_commit("alias") == first
    assert gitrepo.branch_commit("nope") is None
    assert gitrepo.branch_commit("../../config") is None
    # An annotated tag under refs/heads/ (git refuses to write one; another tool need not)
    # is peeled by git: the reader declines it.
    git(repo, "tag", "-a", "-m", "t", "v1", first)
    tag = git(repo, "rev-parse", "v1").strip()
    (repo / ".git/refs/heads/tagged").write_text(tag + "\n")
    assert gitrepo.branch_commit("tagged") == first


def test_objects_in_packs_and_new_packs_after_a_gc(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a/b": "1\n"})
    gitrepo = GitRepo(repo)
    one = git(repo, "rev-parse", "HEAD").strip()
    assert gitrepo.tree_entries(one, ["a", "a/b"]) == {"a": "040000", "a/b": "100644"}
    git(repo, "gc", "-q", "--prune=now")
    (repo / "a/c").write_text("2\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    git(repo, "gc", "-q", "--prune=now")             # every object in a new pack
    two = git(repo, "rev-parse", "HEAD").strip()
    assert gitrepo.branch_commit("main") == two
    assert gitrepo.tree_entries(two, ["a/b", "a/c"]) == {"a/b": "100644", "a/c": "100644"}
    assert gitrepo.read_blob(two, "a/c", 10) == b"2\n"


def test_a_repository_the_reader_cannot_open_is_answered_by_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    # Format version 1 with an extension git knows and dulwich does not.
    git(repo, "config", "core.repositoryformatversion", "1")
    git(repo, "config", "extensions.worktreeConfig", "true")
    git(repo, "config", "extensions.preciousObjects", "true")
    gitrepo = GitRepo(repo)
    assert gitrepo.branch_commit("main") == head
    assert gitrepo.tree_entries(head, ["f"]) == {"f": "100644"}
    assert gitrepo.read_blob(head, "f", 10) == b"1\n"


def test_a_sha256_repository(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", "--object-format=sha256", "-b", "main", str(repo))
    (repo / "d").mkdir()
    (repo / "d/f").write_text("1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    head = git(repo, "rev-parse", "HEAD").strip()
    gitrepo = GitRepo(repo)
    assert gitrepo.branch_commit("main") == head
    assert gitrepo.tree_entries(head, ["d/f", "x"]) == {"d/f": "100644"}
    assert gitrepo.tree_entries(head, ["d"]) == {"d": "040000"}
    assert gitrepo.read_blob(head, "d/f", 10) == b"1\n"


def test_one_gitrepo_per_path_until_the_repository_is_recreated(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    first = GitRepo.at(repo)
    assert GitRepo.at(repo) is first
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    make_repo(repo, {"f": "1\n"}, bare=True)
    again = GitRepo.at(repo)
    assert again is not first and again.bare
