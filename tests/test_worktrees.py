"""git worktree housekeeping under concurrency and kills: concurrent `git worktree add`s of one
repository must not fail each other, and an add that a killed process left half done (its entry
locked "initializing", its commondir empty) must not wedge the repository."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from conftest import Setup, git


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leave_a_half_done_add(setup: Setup, pid: int) -> Path:
    """What `git worktree add` leaves when it is killed after creating the entry's commondir
    and before writing it."""
    name = f"half-{pid}-abcdef"
    entry = setup.repo / ".git" / "worktrees" / name
    entry.mkdir(parents=True)
    (entry / "locked").write_text("initializing\n")
    worktree = setup.state / "worktrees" / f"half~{pid}~abcdef"
    (entry / "gitdir").write_text(f"{worktree}/.git\n")
    (entry / "commondir").write_text("")
    return entry


def test_an_add_killed_half_way_does_not_wedge_the_repository(setup: Setup) -> None:
    request = setup.request("after-1", {"app.py": "VALUE = 2\n"})
    entry = leave_a_half_done_add(setup, dead_pid())
    # git itself is wedged by it: every worktree command fails.
    assert "failed to read" in subprocess.run(["git", "worktree", "list"], cwd=setup.repo,
                                              capture_output=True, text=True).stderr
    setup.drop("after.json", request)
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    record = setup.record("after-1")
    assert record["state"] == "landed", record
    assert record["attempts"] == 1
    assert not entry.exists()
    listed = git(setup.repo, "worktree", "list", "--porcelain")
    # The repository's own checkout and the pool's slot, nothing half made.
    assert listed.count("worktree ") == 2 and "prunable" not in listed


def test_a_half_done_add_of_a_live_process_is_left_alone(setup: Setup) -> None:
    from hyperion.worktrees import repair_interrupted_adds

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entry = leave_a_half_done_add(setup, live.pid)
        assert repair_interrupted_adds(setup.repo / ".git", setup.state / "worktrees") == 0
        assert entry.exists()
    finally:
        live.kill()
        live.wait()
    assert repair_interrupted_adds(setup.repo / ".git", setup.state / "worktrees") == 1
    assert not entry.exists()


def test_concurrent_worktree_adds_and_removes_do_not_fail_each_other(setup: Setup) -> None:
    from hyperion.gitops import GitRepo
    from hyperion.worktrees import add_worktree, remove_worktree

    repo = GitRepo(setup.repo)
    locks = setup.state / "locks"
    locks.mkdir(parents=True)
    root = setup.state / "worktrees"
    root.mkdir(parents=True)
    tip = setup.main_sha()
    errors: list[BaseException] = []

    def churn(k: int) -> None:
        try:
            for n in range(12):
                path = root / f"t{k}~1~{n:06x}"
                add_worktree(locks, "demo", repo, path, tip)
                remove_worktree(locks, "demo", repo, path)
        except BaseException as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert git(setup.repo, "worktree", "list").count("\n") == 1


def test_a_pool_slot_whose_add_was_killed_half_way_is_added_again(setup: Setup) -> None:
    request = setup.request("slot-1", {"app.py": "VALUE = 3\n"})
    entry = setup.repo / ".git" / "worktrees" / "w0"
    entry.mkdir(parents=True)
    (entry / "locked").write_text("initializing\n")
    (entry / "gitdir").write_text(f"{setup.state / 'worktrees' / 'demo' / 'w0'}/.git\n")
    (entry / "commondir").write_text("")
    setup.drop("slot.json", request)
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    record = setup.record("slot-1")
    assert record["state"] == "landed", record
    assert record["attempts"] == 1
    assert "prunable" not in git(setup.repo, "worktree", "list", "--porcelain")


def test_other_worktrees_named_like_a_slot_are_left_alone(setup: Setup) -> None:
    # A person's own worktree called w0, and another hyperion's slot (its own state_dir):
    # git names their entries w0 and w01, as it would name the entry of this pool's slot.
    mine = setup.root / "elsewhere" / "w0"
    git(setup.repo, "worktree", "add", "-q", "--detach", str(mine), "main")
    other = setup.root / "other-state" / "worktrees" / "demo" / "w0"
    git(setup.repo, "worktree", "add", "-q", "--detach", str(other), "main")
    setup.drop("s.json", setup.request("slot-2", {"app.py": "VALUE = 4\n"}))
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    assert setup.record("slot-2")["state"] == "landed"
    listed = git(setup.repo, "worktree", "list", "--porcelain")
    assert str(mine) in listed and str(other) in listed and "prunable" not in listed
    assert git(mine, "status", "--porcelain") == "" and git(other, "status", "--porcelain") == ""
    assert "interrupted" not in out.stderr
