"""The worktree pool: the one owner of state_dir/worktrees/.

Layout: ``worktrees/<repo>/w<N>`` is a git worktree of ``<repo>``, and ``w<N>.lock`` next to it
says who uses it: whoever holds an flock on it (a thread or a process; the kernel drops the
lock when its process dies, so a killed worker never strands a slot).

Preparing a worktree per request would check out the whole tree each time, a cost that grows
with the repository. A pooled slot is instead reset to the wanted commit: when the slot is
already at that commit (the usual case: the request before landed it there), one read-only
``git ls-files`` proves that its check left nothing, or ``git clean -ffdx`` and a status
remove what it left; otherwise a checkout (git rewrites only the files that differ) and the
same again. It is guarded before use: it must still be this repository's worktree and hold
nothing but that commit (nothing modified, staged, untracked or ignored, and no file marked
skip-worktree, which checkout and status would both pass over). A slot that fails the guard
is removed and added afresh, so a check that wrecked its worktree costs one full checkout, not
a wrong result.

The reset runs when a slot is given back, not when it is next taken: the process keeps the
slot's lock and resets it to its own HEAD (the commit just made) in a background thread while
the worker lands, records and leases the next request. The next checkout of the repository
takes that slot, waits for its reset, and uses it as is when the reset found it clean at the
wanted commit less than ``FRESH_S`` ago; otherwise it resets it again, as above. The lock is
held from the reset to the next use, so no other hyperion touched the slot in between. A slot
whose use failed is unlocked as it is: the next request wants another commit, and resets it
when it takes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from hyperion import worktrees
from hyperion.gitops import GitError, GitRepo, detached_head

log = logging.getLogger("hyperion.pool")

#: More slots than this per repository means something leaks them; refuse rather than fill
#: the disk.
MAX_SLOTS = 64
_SLOT = re.compile(r"^w(\d+)$")
#: A background reset older than this is done again at checkout: the guard should speak of
#: the slot as the next check finds it, and a person or a stray process may have been in it.
FRESH_S = 2.0
#: Slots this process keeps locked after their reset, over all repositories; beyond that the
#: oldest is unlocked (it costs its next user one reset, nothing else).
MAX_RESET_SLOTS = 16


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
        held = _RESETS.take(directory)
        fd, path = (held.fd, held.path) if held is not None else _free_slot(directory)
        try:
            if held is None or not held.clean_at(commit):
                self._prepare(repo_name, repo, path, commit)
        except BaseException:
            os.close(fd)
            raise
        with _giving_back(fd, repo, path):
            yield path

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


@dataclass
class _HeldSlot:
    """A slot this process gave back and keeps locked while it is reset in the background."""

    fd: int
    path: Path
    commit: str
    given_at: float
    #: The reset's outcome: why the slot cannot be trusted (None: clean) and when it ended.
    reset: Future[tuple[str | None, float]]

    def clean_at(self, commit: str) -> bool:
        """Whether the reset left it clean at ``commit`` recently enough to use as is."""
        try:
            problem, finished_at = self.reset.result()
        except Exception:                   # any failure: reset it again
            return False
        return (problem is None and self.commit == commit
                and time.monotonic() - finished_at <= FRESH_S)


class _ResetSlots:
    """The slots this process gave back, reset or being reset, still locked: a list per
    repository's folder (``worktrees/<repo>``), oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Path, list[_HeldSlot]] = {}
        self._executor: ThreadPoolExecutor | None = None

    def give_back(self, fd: int, repo: GitRepo, path: Path) -> None:
        """Reset the slot in the background, keeping its lock; closes ``fd`` in the end."""
        commit = detached_head(path)
        if commit is None:
            # A check moved HEAD where only git can tell: the next checkout resets it fully.
            os.close(fd)
            return

        def reset() -> tuple[str | None, float]:
            return repo.worktree_reset(path, commit), time.monotonic()

        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2,
                                                    thread_name_prefix="pool-reset")
            try:
                future = self._executor.submit(reset)
            except RuntimeError:             # the interpreter is shutting down
                os.close(fd)
                return
            self._held.setdefault(path.parent, []).append(
                _HeldSlot(fd, path, commit, time.monotonic(), future))
            evicted = self._over_limit()
        for old in evicted:
            old.reset.add_done_callback(_closer(old.fd))

    def take(self, directory: Path) -> _HeldSlot | None:
        """The newest slot given back in ``directory`` (the likeliest to be at the wanted
        commit), now the caller's to close; None when there is none."""
        with self._lock:
            waiting = self._held.get(directory)
            if not waiting:
                return None
            held = waiting.pop()
            if not waiting:
                del self._held[directory]
            return held

    def settle(self) -> None:
        """Wait until every reset running now has finished."""
        with self._lock:
            running = [held.reset for waiting in self._held.values() for held in waiting]
        for future in running:
            future.exception()

    def _over_limit(self) -> list[_HeldSlot]:
        evicted: list[_HeldSlot] = []
        while sum(len(v) for v in self._held.values()) > MAX_RESET_SLOTS:
            oldest = min(self._held, key=lambda key: self._held[key][0].given_at)
            evicted.append(self._held[oldest].pop(0))
            if not self._held[oldest]:
                del self._held[oldest]
        return evicted


def _closer(fd: int) -> Callable[[object], None]:
    return lambda _: os.close(fd)


_RESETS = _ResetSlots()


def settle_resets() -> None:
    """Wait for this process's background resets of given-back slots (benchmarks, tests)."""
    _RESETS.settle()


@contextmanager
def _giving_back(fd: int, repo: GitRepo, path: Path) -> Iterator[None]:
    """The caller's use of a locked slot; afterwards it is reset in the background. Not
    when the use failed (an apply conflict, a red check): the next request then wants
    another commit than the slot's, so that reset would be thrown away; it is unlocked."""
    try:
        yield
    except BaseException:
        os.close(fd)
        raise
    _RESETS.give_back(fd, repo, path)


def _free_slot(directory: Path) -> tuple[int, Path]:
    """The first slot of ``directory`` nobody holds, locked: its lock's fd and its path."""
    for n in range(MAX_SLOTS):
        fd = _try_lock(directory / f"w{n}.lock")
        if fd is not None:
            return fd, directory / f"w{n}"
    raise PoolExhausted(f"all {MAX_SLOTS} worktree slots of {directory.name} are in use")


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
