"""The worktree pool: the one owner of state_dir/worktrees/.

Layout: ``worktrees/<repo>/w<N>`` is a git worktree of ``<repo>``, and ``w<N>.lock`` next to it
says who uses it: whoever holds an flock on it (a thread or a process; the kernel drops the
lock when its process dies, so a killed worker never strands a slot).

Preparing a worktree per request would check out the whole tree each time, a cost that grows
with the repository. A pooled slot is instead reset to the wanted commit: ``git clean -ffdx``
and a status, which is all it takes when the slot is already at that commit (the usual case:
the request before landed it there) and its checks changed no tracked file; otherwise a
checkout (git rewrites only the files that differ) and the same again. It is guarded before
use: it must still be this
repository's worktree and hold nothing but that commit (nothing modified, staged, untracked or
ignored, and no file marked skip-worktree, which checkout and status would both pass over). A
slot that fails the guard is removed and added afresh, so a check that wrecked its worktree
costs one full checkout, not a wrong result.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hyperion import worktrees
from hyperion.gitops import GitError, GitRepo

log = logging.getLogger("hyperion.pool")

#: More slots than this per repository means something leaks them; refuse rather than fill
#: the disk.
MAX_SLOTS = 64
_SLOT = re.compile(r"^w(\d+)$")


class PoolExhausted(RuntimeError):
    pass


class WorktreePool:
    """Slots under ``root``; adding and removing worktrees holds the repository's worktree
    lock in ``locks_dir`` (worktrees.py: git's worktree commands race each other)."""

    def __init__(self, root: Path, locks_dir: Path) -> None:
        self.root = root
        self.locks_dir = locks_dir

    @contextmanager
    def checkout(self, repo_name: str, repo: GitRepo, commit: str) -> Iterator[Path]:
        """A worktree of ``repo`` at ``commit`` (detached), clean, for this caller alone."""
        directory = self.root / repo_name
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_SLOTS):
            fd = _try_lock(directory / f"w{n}.lock")
            if fd is None:
                continue
            try:
                path = directory / f"w{n}"
                self._prepare(repo_name, repo, path, commit)
                yield path
            finally:
                os.close(fd)
            return
        raise PoolExhausted(f"all {MAX_SLOTS} worktree slots of {repo_name} are in use")

    def prune(self, repos: dict[str, GitRepo]) -> int:
        """Start-up: remove slots nobody holds that cannot be trusted any more, and folders
        of repositories no longer configured. Returns how many folders were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.is_symlink():
                continue
            repo = repos.get(entry.name)
            if repo is None:
                if not any(_SLOT.match(p.name) for p in entry.iterdir()):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
                continue
            for slot in sorted(entry.iterdir()):
                if not _SLOT.match(slot.name) or not slot.is_dir():
                    continue
                fd = _try_lock(entry / f"{slot.name}.lock")
                if fd is None:
                    continue
                try:
                    problem = repo.worktree_link_problem(slot)
                    if problem is not None:
                        log.info("removing worktree %s: %s", slot, problem)
                        self._remove(entry.name, repo, slot)
                        removed += 1
                finally:
                    os.close(fd)
        return removed

    def _prepare(self, repo_name: str, repo: GitRepo, path: Path, commit: str) -> None:
        if path.exists() or path.is_symlink():
            problem = repo.worktree_reset(path, commit)
            if problem is None:
                return
            log.warning("worktree %s cannot be reused (%s); adding it afresh", path, problem)
            self._remove(repo_name, repo, path)
        with worktrees.worktree_lock(self.locks_dir, repo_name):
            # An add of this slot killed half-way leaves git's entry locked "initializing",
            # which wedges every worktree command: we hold the slot, so it is stale.
            worktrees.repair_interrupted_slot(repo.git_dir, path)
            worktrees.repair_interrupted_adds(repo.git_dir, self.root)
            repo.worktree_add(path, commit)

    def _remove(self, repo_name: str, repo: GitRepo, path: Path) -> None:
        with worktrees.worktree_lock(self.locks_dir, repo_name):
            with suppress(GitError):
                repo.worktree_remove(path)
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path, ignore_errors=True)
            repo.prune_worktrees()


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
