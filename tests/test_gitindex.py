"""The tree of a worktree's index, written in-process (gitindex + gitinproc.tree_of_index), is
the tree `git write-tree` writes, with every tree object in the repository; for any index it
does not read (another version, a split index, unmerged entries, too many entries, damage)
it answers None and git writes the tree."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import GIT_ENV, count_git_runs, git, make_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion import gitindex
from hyperion.gitindex import read_index
from hyperion.gitops import GitRepo

NAMES = ["a", "b", "a.b", "a-b", "a0", "z"]
path_strategy = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
step = st.one_of(
    st.tuples(st.just("write"), path_strategy, st.text("xyz\n", max_size=6)),
    st.tuples(st.just("remove"), path_strategy),
    st.tuples(st.just("chmod"), path_strategy),
    st.tuples(st.just("symlink"), path_strategy, st.sampled_from(["a", "../b", "nowhere"])),
    st.tuples(st.just("move"), path_strategy, path_strategy),
    st.tuples(st.just("write-tree")),
)


def _git(work: Path, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV, "HOME": str(work), **(env or {})},
                          check=False)


def _index(work: Path) -> bytes:
    return (work / ".git" / "index").read_bytes()


def _git_tree(work: Path) -> str:
    """What git write-tree writes from the index, the index itself left as it is."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "index"
        copy.write_bytes(_index(work))
        proc = _git(work, "write-tree", env={"GIT_INDEX_FILE": str(copy)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _tree_of_index(work: Path) -> str | None:
    return GitRepo.at(work)._inproc.tree_of_index(_index(work))  # type: ignore[union-attr]


def _do(work: Path, action: tuple[str, ...]) -> None:
    """One change staged in the index as git stages it; any the tree refuses is skipped."""
    kind = action[0]
    if kind == "write-tree":
        _git(work, "write-tree")        # the index's cache-tree valid again
        return
    path = work / action[1]
    try:
        if kind == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_file():
                path.unlink()
            path.write_text(action[2])
            _git(work, "add", "--", action[1])
        elif kind == "remove":
            _git(work, "rm", "-r", "-q", "--", action[1])
        elif kind == "chmod":
            _git(work, "update-index", "--chmod=+x", "--", action[1])
        elif kind == "symlink":
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_file():
                path.unlink()
            os.symlink(action[2], path)
            _git(work, "add", "--", action[1])
        elif kind == "move":
            _git(work, "mv", "-k", "--", action[1], action[2])
    except OSError:
        pass        # a file where a folder is wanted, or the other way round


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_the_tree_is_the_one_git_writes(tmp_path_factory: pytest.TempPathFactory,
                                        steps: list[tuple[str, ...]]) -> None:
    work = make_repo(tmp_path_factory.mktemp("idx") / "r",
                     {"a/a": "1\n", "a/b/z": "2\n", "a.b": "3\n", "z": "4\n"})
    git(work, "write-tree")
    for action in steps:
        _do(work, action)
        mine = _tree_of_index(work)
        assert mine is not None, f"a plain index was left to git after {action}"
        # Every tree object is there before git writes any of them.
        assert _git(work, "ls-tree", "-r", "-t", mine).returncode == 0
        assert mine == _git_tree(work), f"after {action}"


def test_a_commit_in_a_worktree_has_the_tree_of_its_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_path = make_repo(tmp_path / "r", {"pkg/a.txt": "a\n", "pkg/deep/b.txt": "b\n",
                                           "top.txt": "t\n"})
    repo = GitRepo.at(repo_path)
    work = tmp_path / "w"
    git(repo_path, "worktree", "add", "-q", "--detach", str(work), "main")
    head = git(work, "rev-parse", "HEAD").strip()
    patch = ("diff --git a/pkg/deep/b.txt b/pkg/deep/b.txt\n--- a/pkg/deep/b.txt\n"
             "+++ b/pkg/deep/b.txt\n@@ -1 +1 @@\n-b\n+B\n"
             "diff --git a/new/c.txt b/new/c.txt\nnew file mode 100755\n--- /dev/null\n"
             "+++ b/new/c.txt\n@@ -0,0 +1 @@\n+c\n")
    assert repo.try_apply(work, patch) is None
    expected = git(work, "write-tree").strip()
    git(work, "reset", "-q", "--hard", head)
    assert repo.try_apply(work, patch) is None
    runs = count_git_runs(monkeypatch)
    commit = repo.commit(work, head, "m\n", ("A", "a@example.invalid"))
    assert git(work, "rev-parse", f"{commit}^{{tree}}").strip() == expected
    assert git(work, "rev-parse", "HEAD").strip() == commit
    assert not any("write-tree" in args for args in runs), "git was asked for the tree"
    assert git(work, "status", "--porcelain").strip() == ""


@pytest.mark.parametrize("setup", [
    pytest.param(["update-index", "--index-version", "4"], id="version-4"),
    pytest.param(["update-index", "--split-index"], id="split-index"),
    # Version 3, which git writes only for such flags.
    pytest.param(["update-index", "--skip-worktree", "a/a"], id="skip-worktree"),
])
def test_an_index_it_does_not_read_is_left_to_git(tmp_path: Path, setup: list[str]) -> None:
    work = make_repo(tmp_path / "r", {"a/a": "1\n", "b": "2\n"})
    (work / "b").write_text("changed\n")
    git(work, "add", "b")
    git(work, *setup)
    assert read_index(_index(work)) is None
    assert _tree_of_index(work) is None
    head = git(work, "rev-parse", "HEAD").strip()
    repo = GitRepo.at(work)
    commit = repo.commit(work, head, "m\n", ("A", "a@example.invalid"))
    assert git(work, "rev-parse", f"{commit}^{{tree}}").strip() == _git_tree(work)


def test_unmerged_entries_are_left_to_git(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "r", {"f": "base\n"})
    git(work, "checkout", "-q", "-b", "side")
    (work / "f").write_text("side\n")
    git(work, "commit", "-q", "-am", "side")
    git(work, "checkout", "-q", "main")
    (work / "f").write_text("main\n")
    git(work, "commit", "-q", "-am", "main")
    assert _git(work, "merge", "-q", "side").returncode != 0     # a conflict, staged
    assert read_index(_index(work)) is None


def test_more_entries_than_it_walks_are_left_to_git(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    work = make_repo(tmp_path / "r", {f"f{i}": f"{i}\n" for i in range(5)})
    assert read_index(_index(work)) is not None
    monkeypatch.setattr(gitindex, "MAX_ENTRIES", 4)
    assert read_index(_index(work)) is None
    assert GitRepo.at(work)._tree_of_index(work / ".git") is None     # from its header


def test_damaged_indexes_are_refused(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "r", {"a/a": "1\n", "b": "2\n"})
    data = _index(work)
    assert read_index(data) is not None
    flipped = bytearray(data)
    flipped[40] ^= 0xFF                     # inside the first entry: the checksum disagrees
    assert read_index(bytes(flipped)) is None
    assert read_index(data[:-1]) is None
    assert read_index(data[:30]) is None
    assert read_index(b"") is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=400))
def test_no_bytes_make_it_raise(data: bytes, cut: int) -> None:
    """Whatever the file holds, the answer is a tree or None: a valid header and checksum
    around random entries and extensions included."""
    import hashlib

    body = b"DIRC" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + data[:cut]
    for candidate in (data, body + hashlib.sha1(body).digest()):
        result = read_index(candidate)
        assert result is None or isinstance(result, gitindex.IndexTree)


def test_folders_whose_trees_are_packed_are_taken_from_the_cache_tree(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "r", {"a/b/x": "1\n", "c/y": "2\n", "z": "3\n"})
    git(work, "gc", "-q")
    assert not [p for p in (work / ".git" / "objects").iterdir() if len(p.name) == 2]
    (work / "z").write_text("4\n")
    git(work, "add", "z")
    index = read_index(_index(work))
    assert index is not None and set(index.cached) == {b"a", b"a/b", b"c"}
    assert _tree_of_index(work) == _git_tree(work)


def test_a_cached_tree_that_is_gone_is_written_again(tmp_path: Path) -> None:
    """git counts a valid cache-tree id only while its tree is there; so does this."""
    work = make_repo(tmp_path / "r", {"a/x": "1\n", "z": "3\n"})
    (work / "z").write_text("4\n")
    git(work, "add", "z")
    folder_tree = git(work, "rev-parse", "HEAD:a").strip()
    loose = work / ".git" / "objects" / folder_tree[:2] / folder_tree[2:]
    loose.unlink()
    mine = _tree_of_index(work)
    assert loose.exists()       # before git writes anything
    assert mine == _git_tree(work)
