"""Moving a ref in-process (refswap through GitRepo.set_ref) does what `git update-ref` does,
on real repositories: the same answers and values, the same lock, the reflog where git keeps
one; and it leaves to git every case it is not certain of."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import count_git_runs, git, make_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion import gitops, refswap
from hyperion.gitops import COMMITTER, GitRepo
from hyperion.refswap import Reflog


def _commits(repo: Path, n: int) -> list[str]:
    """``n`` new commits on no branch (objects only), as hyperion's own commits are made."""
    tree = git(repo, "rev-parse", "main^{tree}").strip()
    out, parent = [], git(repo, "rev-parse", "main").strip()
    for i in range(n):
        parent = git(repo, "commit-tree", tree, "-p", parent, "-m", f"c{i}").strip()
        out.append(parent)
    return out


def _refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def _reflog(repo: Path, ref: str) -> list[str]:
    return git(repo, "log", "-g", "--format=%gs|%gn|%ge", ref, "--").splitlines()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo.git", {"a.txt": "a\n"}, bare=True)


def test_a_land_moves_the_ref_in_process_with_no_git_process(
        bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    [new] = _commits(bare, 1)
    runs = count_git_runs(monkeypatch)
    assert repo.set_ref("refs/heads/main", new, old, "hyperion: land r1")
    assert runs == []
    assert git(bare, "rev-parse", "main").strip() == new
    assert not (bare / "refs/heads/main.lock").exists()
    assert git(bare, "fsck", "--no-dangling").strip() == ""


def test_a_stale_expected_value_is_refused_and_nothing_changes(bare: Path) -> None:
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    a, b = _commits(bare, 2)
    assert repo.set_ref("refs/heads/main", a, old, "first")
    assert not repo.set_ref("refs/heads/main", b, old, "from a tip that moved")
    assert git(bare, "rev-parse", "main").strip() == a
    assert not repo.set_ref("refs/heads/main", b, None, "must not exist yet")
    assert repo.set_ref("refs/heads/other", b, None, "a new branch")
    assert git(bare, "rev-parse", "other").strip() == b
    assert not list(bare.rglob("*.lock"))


def test_a_packed_ref_is_compared_and_moved_as_git_does(bare: Path) -> None:
    git(bare, "pack-refs", "--all")
    assert not (bare / "refs/heads/main").exists()
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    a, b = _commits(bare, 2)
    assert not repo.set_ref("refs/heads/main", a, b, "wrong old value")
    assert refswap.swap(bare, "refs/heads/main", a, old, Reflog(False, COMMITTER, "m"),
                        lambda _: False) is True
    assert (bare / "refs/heads/main").read_text() == f"{a}\n"
    assert git(bare, "rev-parse", "main").strip() == a
    git(bare, "pack-refs", "--all")
    assert git(bare, "rev-parse", "main").strip() == a


def test_a_clash_with_a_packed_folder_or_a_symbolic_ref_is_left_to_git(bare: Path) -> None:
    a, b = _commits(bare, 2)
    git(bare, "update-ref", "refs/heads/team", a)
    git(bare, "pack-refs", "--all")
    never = Reflog(False, COMMITTER, "m")
    # refs/heads/team is a packed ref: refs/heads/team/x cannot exist beside it.
    assert refswap.swap(bare, "refs/heads/team/x", b, None, never, lambda _: False) is None
    assert not GitRepo(bare).set_ref("refs/heads/team/x", b, None, "clash")
    git(bare, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    main = git(bare, "rev-parse", "main").strip()
    assert refswap.swap(bare, "refs/heads/alias", b, main, never, lambda _: False) is None
    assert GitRepo(bare).set_ref("refs/heads/alias", b, main, "through the symbolic ref")
    assert git(bare, "rev-parse", "main").strip() == b      # git followed it, as before


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/.hidden", "refs/heads/x.lock",
                                  "refs/heads/a..b", "refs/heads/sp ace", "refs//heads/x",
                                  "refs/heads/x/", "refs/heads/caf\u00e9", "../outside"])
def test_names_outside_the_plain_set_are_left_to_git(bare: Path, name: str) -> None:
    [a] = _commits(bare, 1)
    assert refswap.swap(bare, name, a, None, Reflog(False, COMMITTER, "m"),
                        lambda _: False) is None
    assert not (bare.parent / "outside.lock").exists()


def test_a_lock_held_by_someone_else_is_left_alone(bare: Path) -> None:
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    [a] = _commits(bare, 1)
    lock = bare / "refs/heads/main.lock"
    lock.write_text(f"{a}\n")       # a live writer's, or an old one that is not hyperion's
    assert not repo.set_ref("refs/heads/main", a, old, "blocked")
    assert lock.exists() and git(bare, "rev-parse", "main").strip() == old
    past = refswap._STARTED - 3600
    os.utime(lock, (past, past))
    assert not repo.set_ref("refs/heads/main", a, old, "not hyperion's commit")
    assert lock.exists()


def test_a_lock_left_by_a_dead_hyperion_is_removed_once_it_is_old(
        bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hyperion process killed between taking the lock and renaming it leaves the lock,
    which would block every land on that ref until a person removed it."""
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    tree = git(bare, "rev-parse", "main^{tree}").strip()
    ours = repo.commit_tree(tree, old, "hyperion's commit\n", ("agent", "agent@x.invalid"))
    [later] = _commits(bare, 1)
    lock = bare / "refs/heads/main.lock"
    lock.write_text(f"{ours}\n")
    # Made while this process runs: a live writer's, whatever it holds.
    assert not repo.set_ref("refs/heads/main", later, old, "a live lock")
    # Made before this process started and old enough: the dead process's.
    past = refswap._STARTED - refswap.STALE_LOCK_S - 1
    os.utime(lock, (past, past))
    assert repo.set_ref("refs/heads/main", later, old, "after the stale lock")
    assert git(bare, "rev-parse", "main").strip() == later
    # Killed between creating and writing it; made just before this process started: the
    # swap waits until the lock is STALE_LOCK_S old, then takes over.
    monkeypatch.setattr(refswap, "STALE_LOCK_S", 0.5)
    monkeypatch.setattr(refswap, "_STARTED", time.time() + 1)
    lock.write_bytes(b"")
    started = time.monotonic()
    assert repo.set_ref("refs/heads/main", ours, later, "after the empty lock")
    assert time.monotonic() - started >= 0.4
    assert not lock.exists() and git(bare, "rev-parse", "main").strip() == ours


def test_the_reflog_is_kept_where_git_keeps_one(tmp_path: Path, bare: Path) -> None:
    # A repository with a working tree logs its branches; a bare one does not, unless the
    # branch has a reflog already or core.logAllRefUpdates says so.
    work = make_repo(tmp_path / "work", {"a.txt": "a\n"})
    for repo_path, logged in ((work, True), (bare, False)):
        repo = GitRepo(repo_path)
        old = repo.branch_commit("main")
        [a] = _commits(repo_path, 1)
        before = _reflog(repo_path, "main") if logged else []
        assert repo.set_ref("refs/heads/main", a, old, "hyperion: land r1\nsecond line")
        if logged:
            assert _reflog(repo_path, "main") == \
                ["hyperion: land r1 second line|hyperion|hyperion@localhost", *before]
            line = (repo_path / ".git/logs/refs/heads/main").read_text().splitlines()[-1]
            assert line.startswith(f"{old} {a} hyperion <hyperion@localhost> ")
        else:
            assert not (repo_path / "logs/refs/heads/main").exists()
    repo = GitRepo(bare)
    git(bare, "config", "core.logAllRefUpdates", "always")
    old = repo.branch_commit("main")
    a, b = _commits(bare, 2)
    assert repo.set_ref("refs/heads/main", a, old, "now logged")
    assert repo.set_ref("refs/hyperion-test", b, None, "always: any ref")
    assert _reflog(bare, "main")[0].startswith("now logged|")
    assert (bare / "logs/refs/hyperion-test").exists()
    git(bare, "config", "core.logAllRefUpdates", "false")
    [c] = _commits(bare, 1)
    assert repo.set_ref("refs/heads/main", c, a, "a reflog that exists is appended to")
    assert _reflog(bare, "main")[0].startswith("a reflog that exists")


def test_a_shared_repository_is_left_to_git_for_its_permissions(bare: Path) -> None:
    git(bare, "config", "core.sharedRepository", "group")
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    [a] = _commits(bare, 1)
    inproc = repo._inproc
    assert inproc is not None
    assert inproc.swap_ref("refs/heads/main", a, old, "m", COMMITTER) is None
    assert repo.set_ref("refs/heads/main", a, old, "by git")
    assert (bare / "refs/heads/main").stat().st_mode & 0o060 == 0o060
    git(bare, "config", "core.sharedRepository", "false")
    [b] = _commits(bare, 1)
    assert inproc.swap_ref("refs/heads/main", b, a, "m", COMMITTER) is True


_OPS = st.lists(st.tuples(st.sampled_from(["refs/heads/main", "refs/heads/x/y",
                                           "refs/notes/n", "refs/heads/x"]),
                          st.integers(0, 3), st.integers(-1, 3), st.booleans()),
                min_size=1, max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_answers_and_values_match_git_update_ref(tmp_path_factory: pytest.TempPathFactory,
                                                 ops: list[tuple[str, int, int, bool]]) -> None:
    """The same compare-and-swaps (right, stale and "must not exist" expected values; refs
    packed between them) on twin repositories: through set_ref and through git update-ref."""
    root = tmp_path_factory.mktemp("twins")
    ours = make_repo(root / "ours.git", {"a.txt": "a\n"}, bare=True)
    theirs = root / "theirs.git"
    git(root, "clone", "-q", "--bare", str(ours), str(theirs))
    commits = _commits(ours, 4)
    git(theirs, "fetch", "-q", str(ours), f"{commits[-1]}:refs/tmp")
    git(theirs, "update-ref", "-d", "refs/tmp")
    repo = GitRepo(ours)
    for ref, new, old, pack in ops:
        if pack:
            git(ours, "pack-refs", "--all")
            git(theirs, "pack-refs", "--all")
        now = git(ours, "rev-parse", "--verify", "--quiet", ref, check=False).strip()
        expected = now if old == -1 and now else (commits[old] if old >= 0 else None)
        mine = repo.set_ref(ref, commits[new], expected, "m")
        proc = subprocess.run(["git", "update-ref", "-m", "m", ref, commits[new],
                               expected or "0" * 40], cwd=theirs, capture_output=True,
                              check=False)
        assert mine == (proc.returncode == 0), (ref, new, old, proc.stderr)
        assert _refs(ours) == _refs(theirs)
    assert not list(ours.rglob("*.lock"))


_HOLD_THE_LOCK = """
import os, sys, time
from pathlib import Path
from hyperion import refswap
from hyperion.gitops import GitRepo
repo = GitRepo(Path(sys.argv[1]))
def stuck(fd):                  # killed between writing the lock and renaming it
    Path(sys.argv[2]).write_text("holding")
    time.sleep(60)
refswap.os.fsync = stuck
repo.set_ref("refs/heads/main", sys.argv[3], sys.argv[4], "killed while landing")
"""

_LAND_AFTER_RESTART = """
import sys
from pathlib import Path
from hyperion import refswap
from hyperion.gitops import GitRepo
refswap.STALE_LOCK_S = 1.0
print(GitRepo(Path(sys.argv[1])).set_ref("refs/heads/main", sys.argv[2], sys.argv[3], "r"))
"""


def test_a_hyperion_killed_holding_the_lock_does_not_wedge_the_ref(
        bare: Path, tmp_path: Path) -> None:
    """kill -9 of a real process between taking the ref's lock and renaming it; the next
    process lands once the lock is old enough to be its predecessor's."""
    repo = GitRepo(bare)
    old = repo.branch_commit("main")
    assert old is not None
    tree = git(bare, "rev-parse", "main^{tree}").strip()
    first = repo.commit_tree(tree, old, "first\n", ("agent", "agent@x.invalid"))
    second = repo.commit_tree(tree, old, "second\n", ("agent", "agent@x.invalid"))
    marker = tmp_path / "holding"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(gitops.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_LOCK, str(bare), str(marker),
                               first, old], env=env)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert holder.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    holder.kill()
    holder.wait()
    assert (bare / "refs/heads/main.lock").read_text() == f"{first}\n"
    # git itself refuses while the lock is there, as it would for any lock left behind.
    assert subprocess.run(["git", "update-ref", "refs/heads/main", second, old], cwd=bare,
                          capture_output=True).returncode != 0
    restarted = subprocess.run([sys.executable, "-c", _LAND_AFTER_RESTART, str(bare), second,
                                old], env=env, capture_output=True, text=True, timeout=60)
    assert restarted.stdout.strip() == "True", restarted.stderr
    assert "a lock left by a hyperion process that died" in restarted.stderr
    assert git(bare, "rev-parse", "main").strip() == second
    assert not (bare / "refs/heads/main.lock").exists()
