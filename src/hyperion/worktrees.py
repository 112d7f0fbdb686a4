"""One `git worktree add/remove/prune` at a time per repository, and the repair of an add that
a killed process left half done.

git's worktree commands are not safe against each other on one repository: each reads every
entry of <git dir>/worktrees/, and an entry that a concurrent `git worktree add` is still
writing (its commondir empty) makes them fail ("failed to read .../commondir"); a
`git worktree prune` removes an entry whose add has not written its gitdir yet, and that add
then fails. Found by bench/soak_daemon.py with three workers. So every hyperion thread and
process that works on a repository's worktrees holds a thread lock and an flock of
state_dir/locks/worktrees-<repo>.lock.

An add killed at the wrong moment (kill -9, power loss) leaves its entry locked
("initializing"), which `git worktree prune` never removes, with an empty commondir: from then on
every worktree command of that repository fails. Before each add (and at start-up) the entries
of hyperion's own worktrees (named ``<id>~<pid>~<hex>`` under state_dir/worktrees/) whose
process is gone and that git left locked as "initializing" are removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperion.fsutil import exclusive, pid_alive
from hyperion.gitops import GitRepo

log = logging.getLogger("hyperion.worker")

_ADD_IN_PROGRESS = "initializing"     # what git writes to <entry>/locked during an add
# git names an entry after the worktree's folder, '~' made '-', a number added on a clash.
_ENTRY_RE = re.compile(r".+-(\d{1,10})-[0-9a-f]{6}\d*")

@contextmanager
def worktree_lock(locks_dir: Path, repo_name: str) -> Iterator[None]:
    """Hold the worktree lock of ``repo_name`` (threads of this process, then processes)."""
    with exclusive(locks_dir / f"worktrees-{repo_name}.lock"):
        yield


def add_worktree(locks_dir: Path, repo_name: str, repo: GitRepo, path: Path,
                 commit: str) -> None:
    with worktree_lock(locks_dir, repo_name):
        repair_interrupted_adds(repo.git_dir, path.parent)
        repo.worktree_add(path, commit)


def remove_worktree(locks_dir: Path, repo_name: str, repo: GitRepo, path: Path) -> None:
    with worktree_lock(locks_dir, repo_name):
        repo.worktree_remove(path)


def prune(locks_dir: Path, repo_name: str, repo: GitRepo, worktrees_root: Path) -> None:
    with worktree_lock(locks_dir, repo_name):
        repair_interrupted_adds(repo.git_dir, worktrees_root)
        repo.prune_worktrees()


def repair_interrupted_adds(git_dir: Path, worktrees_root: Path) -> int:
    """Remove the entries of hyperion's worktrees (under ``worktrees_root``) whose add was
    interrupted: locked "initializing" by a process that is gone. Returns how many."""
    entries = git_dir / "worktrees"
    try:
        names = os.listdir(entries)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    repaired = 0
    root = os.path.realpath(worktrees_root)
    for name in names:
        entry = entries / name
        try:
            if (entry / "locked").read_text(errors="replace").strip() != _ADD_IN_PROGRESS:
                continue
        except OSError:
            continue
        pid = _owner_pid(entry, name, root)
        if pid is None or pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.warning("removed %s, the worktree entry of an add interrupted when process %d "
                    "died (it kept git from adding worktrees)", entry, pid)
        repaired += 1
    return repaired


def repair_interrupted_slot(git_dir: Path, slot: Path) -> bool:
    """Remove git's entry for the pool slot ``slot`` if an add of it was interrupted (locked
    "initializing"). Call holding the slot and the worktree lock: no add of it can be running,
    so such an entry is stale. True if one was removed."""
    entries = git_dir / "worktrees"
    try:
        names = os.listdir(entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    wanted = os.path.realpath(slot / ".git")
    for name in names:
        entry = entries / name
        try:
            if (entry / "locked").read_text(errors="replace").strip() != _ADD_IN_PROGRESS:
                continue     # not being added (no lock file, or locked by a person)
        except OSError:
            continue
        try:
            gitdir = (entry / "gitdir").read_text(errors="replace").strip()
        except FileNotFoundError:
            gitdir = ""      # killed before git wrote it: only the name can tell
        except OSError:
            continue
        ours = os.path.realpath(gitdir) == wanted if gitdir else \
            re.fullmatch(re.escape(slot.name) + r"\d*", name) is not None
        if ours:
            shutil.rmtree(entry, ignore_errors=True)
            log.warning("removed %s, the worktree entry of an interrupted add of %s", entry,
                        slot)
            return True
    return False


def _owner_pid(entry: Path, name: str, root: str) -> int | None:
    """The pid in the name of the hyperion worktree an entry belongs to; None if the entry is
    not one of hyperion's."""
    try:
        gitdir = (entry / "gitdir").read_text(errors="replace").strip()
    except OSError:
        gitdir = ""
    if gitdir:
        folder = os.path.dirname(os.path.normpath(gitdir))
        if os.path.dirname(folder) != root:
            return None
        parts = os.path.basename(folder).split("~")
        if len(parts) == 3 and parts[1].isdigit():
            return int(parts[1])
        return None
    # Killed before the gitdir was written: only the entry's name says whose it is.
    match = _ENTRY_RE.fullmatch(name)
    return int(match.group(1)) if match else None
