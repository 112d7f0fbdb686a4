"""The in-process reader (gitinproc) gives git's answers, or none: refs (loose, packed, symbolic,
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

from hyperion.gitinproc import InProcessGit
from hyperion.gitops import GitRepo

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
    reader = InProcessGit(repo / ".git")
    try:
        # Asked one at a time: given "dir" and "dir/b.txt" together, ls-tree descends into
        # dir and leaves the folder itself out (a folder's mode decides nothing in the gate).
        expected = {k: v for p in paths for k, v in _ls_tree(repo, commit, [p]).items()}
        assert reader.modes(commit, paths) == expected
    finally:
        reader.close()


def test_blobs_and_link_targets_match_git(odd_repo: tuple[Path, str]) -> None:
    repo, commit = odd_repo
    reader = InProcessGit(repo / ".git")
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
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    made = gitrepo.commit_tree(tree, head, "two\n", ("a", "a@example.com"))
    assert len(made) == 64
    inproc = InProcessGit(repo / ".git")   # another object format: all left to git
    assert inproc.modes(head, ["d"]) is None and inproc.commit_of_ref("refs/heads/main") is None
    inproc.close()
    assert git(repo, "cat-file", "-t", made).strip() == "commit"
    assert git(repo, "fsck", "--strict", "--no-dangling") == ""


def test_one_gitrepo_per_path_until_the_repository_is_recreated(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    first = GitRepo.at(repo)
    assert GitRepo.at(repo) is first
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    make_repo(repo, {"f": "1\n"}, bare=True)
    again = GitRepo.at(repo)
    assert again is not first and again.bare


def _commit_fields(repo: Path, sha: str) -> tuple[list[str], str]:
    raw = git(repo, "cat-file", "commit", sha)
    header, _, message = raw.partition("\n\n")
    return header.splitlines(), message


def _without_date(line: str) -> str:
    return line.rsplit(" ", 2)[0]


@pytest.mark.parametrize("author, author_date", [
    (("codex-7", "codex-7@agents.hyperion.invalid"), None),
    (("Ada Lovelace", "ada@example.com"), "1700000000 +0530"),
    (("bot.", "bot@example.com"), None),                 # git strips the dot: git writes it
    ((" lead", "x@example.com"), "1700000000 -0000"),    # ditto, and a -0000 zone
])
def test_commits_written_in_process_are_the_ones_git_writes(
        tmp_path: Path, author: tuple[str, str], author_date: str | None) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    message = "Title\n\n# not a comment\ntrailing space \n\nHyperion-Request: r-1\n"
    ours = GitRepo(repo).commit_tree(tree, head, message, author, author_date)
    env_date = {"GIT_AUTHOR_DATE": author_date} if author_date else {}
    theirs = subprocess.run(
        ["git", "commit-tree", tree, "-p", head, "-F", "-"], cwd=repo, input=message,
        capture_output=True, text=True, check=True,
        env={**os.environ, "GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
             "GIT_COMMITTER_NAME": "hyperion", "GIT_COMMITTER_EMAIL": "hyperion@localhost",
             **env_date}).stdout.strip()
    our_header, our_message = _commit_fields(repo, ours)
    their_header, their_message = _commit_fields(repo, theirs)
    assert our_message == their_message == message
    assert [_without_date(h) for h in our_header] == [_without_date(h) for h in their_header]
    if author_date is not None:
        assert our_header[2] == their_header[2]            # the author line, date included
    # The zone git writes for "now" is the local one; so is ours.
    assert our_header[-1].rsplit(" ", 1)[1] == their_header[-1].rsplit(" ", 1)[1]
    assert git(repo, "fsck", "--strict", "--no-dangling") == ""


def test_a_configured_commit_encoding_is_left_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    gitrepo = GitRepo(repo)
    plain = gitrepo.commit_tree(tree, head, "m\n", ("a", "a@example.com"))
    assert not any(h.startswith("encoding") for h in _commit_fields(repo, plain)[0])
    # Configured while the repository is open: seen at the next commit.
    git(repo, "config", "i18n.commitEncoding", "ISO-8859-1")
    sha = gitrepo.commit_tree(tree, head, "m\n", ("a", "a@example.com"))
    assert "encoding ISO-8859-1" in _commit_fields(repo, sha)[0]


def test_commit_in_a_worktree_moves_its_detached_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    slot = tmp_path / "slot"
    git(repo, "worktree", "add", "-q", "--detach", str(slot), head)
    (slot / "f").write_text("2\n")
    git(slot, "add", "f")
    gitrepo = GitRepo(repo)
    sha = gitrepo.commit(slot, head, "two\n", ("a", "a@example.com"))
    assert git(slot, "rev-parse", "HEAD").strip() == sha
    assert git(slot, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "main").strip() == head     # only the slot moved
    assert git(slot, "show", "-s", "--format=%P", "HEAD").strip() == head
    # A HEAD that is not where the caller says is left to git (update-ref, unconditional).
    (slot / "f").write_text("3\n")
    git(slot, "add", "f")
    third = gitrepo.commit(slot, head, "three\n", ("a", "a@example.com"))
    assert git(slot, "rev-parse", "HEAD").strip() == third


def test_the_checked_out_branch_is_read_as_git_reads_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"f": "1\n"})
    checkout = GitRepo(repo).checkout()
    assert checkout is not None and checkout.branch == "main"
    assert checkout.toplevel == repo.resolve()
    git(repo, "checkout", "-q", "-b", "topic")
    assert GitRepo(repo).checkout().branch == "topic"          # type: ignore[union-attr]
    git(repo, "checkout", "-q", "--detach")
    assert GitRepo(repo).checkout().branch is None             # type: ignore[union-attr]
    assert GitRepo(make_repo(tmp_path / "b", {"f": "1\n"}, bare=True)).checkout() is None


def test_trees_read_once_are_answered_again_without_reading_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_path = make_repo(tmp_path / "r", {"a.txt": "a\n", "pkg/b.txt": "b\n"})
    first = git(repo_path, "rev-parse", "HEAD").strip()
    reader = InProcessGit(repo_path / ".git")
    assert reader.modes(first, ["a.txt", "pkg/b.txt"]) == {"a.txt": "100644",
                                                          "pkg/b.txt": "100644"}
    (repo_path / "pkg" / "c.txt").write_text("c\n")
    git(repo_path, "add", "pkg/c.txt")
    git(repo_path, "commit", "-q", "-m", "second")
    second = git(repo_path, "rev-parse", "HEAD").strip()
    # A new commit's trees are new objects: read, not mistaken for the old ones.
    assert reader.modes(second, ["pkg/c.txt", "a.txt"]) == {"pkg/c.txt": "100644",
                                                           "a.txt": "100644"}
    assert reader.modes(first, ["pkg/c.txt"]) == {}
    store = reader._open().object_store

    def no_reads(*args: object) -> None:
        raise AssertionError("read the repository again")

    monkeypatch.setattr(type(store), "get_raw", no_reads)
    monkeypatch.setattr(type(store), "__getitem__", no_reads)
    assert reader.modes(second, ["pkg/b.txt", "pkg/c.txt"]) == {"pkg/b.txt": "100644",
                                                               "pkg/c.txt": "100644"}


def test_folders_blobs_and_written_trees_are_what_git_reads_and_writes(
        odd_repo: tuple[Path, str], tmp_path: Path) -> None:
    repo, commit = odd_repo
    reader = InProcessGit(repo / ".git")
    paths = ["", "dir", "dir/sub", "a.txt", "link", "vendor/mod", "missing", "x/y/z"]
    found = reader.folders(commit, paths)
    assert found is not None and set(found) == {"", "dir", "dir/sub", "x/y/z"}
    for path, entries in found.items():
        listed = git(repo, "cat-file", "-p", f"{commit}:{path}")
        assert sorted(f"{int(m, 8):06o} {oid} {n.decode()}" for n, (m, oid) in entries.items()) \
            == sorted(" ".join([f"{line.split()[0]}", line.split()[2], line.split("\t")[1]])
                      for line in listed.splitlines())
        # written back in-process: the tree git has (entries in any order, git's order out)
        shuffled = dict(reversed(list(entries.items())))
        assert reader.write_tree(shuffled) == git(repo, "rev-parse", f"{commit}:{path}").strip()
    blob = git(repo, "rev-parse", f"{commit}:a.txt").strip()
    assert reader.blobs([blob]) == {blob: b"a\n"}
    assert reader.blobs([git(repo, "rev-parse", f"{commit}:dir").strip()]) is None  # a tree
    assert reader.blobs(["0" * 40]) is None                                       # missing
    made = reader.write_blob(b"new\r\ncontent\n")
    assert made == subprocess.run(["git", "hash-object", "--no-filters", "--stdin"], cwd=repo,
                                  input=b"new\r\ncontent\n", capture_output=True,
                                  check=True).stdout.decode().strip()
    assert subprocess.run(["git", "cat-file", "blob", made], cwd=repo, capture_output=True,
                          check=True).stdout == b"new\r\ncontent\n"
    assert reader.ref_target("refs/heads/main") == (True, git(repo, "rev-parse", "main").strip())
    assert reader.ref_target("refs/notes/none") == (True, None)
    git(repo, "update-ref", "refs/notes/tree", f"{commit}^{{tree}}")
    assert reader.ref_target("refs/notes/tree") == (False, None)       # not a commit: git
    assert reader.ref_target("refs/heads/a..b") == (False, None)
    git(repo, "symbolic-ref", "refs/notes/dangling", "refs/notes/nowhere")
    assert reader.ref_target("refs/notes/dangling") == (False, None)   # git's to say


def test_objects_written_in_a_shared_repository_get_the_modes_git_gives(tmp_path: Path) -> None:
    repo = tmp_path / "shared"
    subprocess.run(["git", "init", "-q", "--bare", "--shared=group", str(repo)], check=True)
    old = os.umask(0o077)       # what a service's umask would withhold from the group
    try:
        ours = InProcessGit(repo).write_blob(b"written in-process\n")
        theirs = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, check=True,
                                input=b"written by git\n", capture_output=True).stdout.decode()
    finally:
        os.umask(old)
    assert ours is not None
    paths = [repo / "objects" / oid[:2] / oid[2:].strip() for oid in (ours, theirs)]
    modes = [(p.stat().st_mode & 0o7777, p.parent.stat().st_mode & 0o7777) for p in paths]
    assert modes[0] == modes[1], modes
    assert modes[0][0] & 0o040                # the group can read it
