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

A slot given back stays locked by this process (no other hyperion can touch it before its next
use here) and is left as its check left it. The next checkout of that repository takes it.
When it is at the wanted commit, this process's last commit there (the usual case: the
request before landed it there), and the kernel saw nothing written in its files, nor in its
folder in the repository (its HEAD and index), from right before that request's check on
(:meth:`Slot.watch_from_here`, treewatch.py), the slot is handed out proven without reading
anything: nothing can be there but the commit. Otherwise it is handed out
*unproven*
(:meth:`WorktreePool.checkout_unproven`): the caller applies its patch, and the guard runs
beside the ``write-tree`` of its commit (gitops.GitRepo.commit_proving_clean), so the check
it ran before costs no wait. Whatever that check left makes the apply fail or the guard find
it; either way the slot is reset as above and the patch applied again (:meth:`Slot.prove`),
so nothing a check leaves reaches the next commit or the next check. One thing must be ruled
out before the apply: git apply writes and deletes through a symlink that stands where a
folder was, outside the worktree, so a folder the patch writes in that is not a real folder
(:meth:`Slot.folders_are_real`) has the slot reset first. Any other checkout is
reset first, as above. A slot whose use failed is unlocked as it is.

With two workers or more, the next request is built on the commit of the one before while
that one's check still runs in its slot, which it then gives back at that very commit. A
checkout at a commit no slot given back is at, while this process uses a slot of that
repository, waits for one to come back there, but no longer than the last reset of a slot
there took (then it resets another): waiting is cheaper when checks are quick, and bounded
by what not waiting costs when they are slow.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from hyperion import worktrees
from hyperion.gitops import GitError, GitRepo, detached_head
from hyperion.treewatch import TreeWatch

log = logging.getLogger("hyperion.pool")

#: More slots than this per repository means something leaks them; refuse rather than fill
#: the disk.
MAX_SLOTS = 64
_SLOT = re.compile(r"^w(\d+)$")
#: Slots given back that this process keeps locked, over all repositories; beyond that the
#: oldest is unlocked (it costs its next user one reset, nothing else).
MAX_HELD_SLOTS = 16
#: How long a checkout waits for a slot in use here to come back at its commit, before any
#: reset of that repository's slots was timed.
DEFAULT_RESET_S = 0.05


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
        with self.checkout_unproven(repo_name, repo, commit) as slot:
            if not slot.trusted:
                slot.prove()
            yield slot.path

    @contextmanager
    def checkout_unproven(self, repo_name: str, repo: GitRepo, commit: str) -> Iterator[Slot]:
        """A worktree of ``repo`` at ``commit`` for this caller alone: proven clean
        (``trusted``), or the slot the request before used there, left as its check left it
        (see the module's docstring)."""
        directory = self.root / repo_name
        directory.mkdir(parents=True, exist_ok=True)
        held = _HELD.take_at(directory, commit)
        fd, path = (held.fd, held.path) if held is not None else _free_slot(directory)
        slot = Slot(path, commit, trusted=False, _pool=self, _repo_name=repo_name, _repo=repo,
                    _watch=held.watch if held is not None else None)
        _HELD.checked_out(directory)
        try:
            try:
                if held is not None and held.commit == commit and held.watched and \
                        held.watch is not None and repo.made_here(path, commit) and \
                        not held.watch.changed():
                    # Nothing touched its files, nor its HEAD and index in the repository,
                    # since its checks started, and they were this process's commit then.
                    slot.trusted = True
                elif held is None or held.commit != commit or \
                        not repo.index_as_committed(path, commit):
                    slot.prove()
                yield slot
            except BaseException:
                _let_go(fd, slot._watch)
                raise
            _HELD.give_back(fd, path, slot._watch, watched=slot._watched)
        finally:
            _HELD.returned(directory)

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
class Slot:
    """A checked-out slot. ``trusted``: proven to hold ``commit`` and nothing else; if not,
    it holds ``commit`` with this process's own index, and whatever the check before left
    in its files."""

    path: Path
    commit: str
    trusted: bool
    _pool: WorktreePool = field(repr=False)
    _repo_name: str = field(repr=False)
    _repo: GitRepo = field(repr=False)
    _watch: TreeWatch | None = field(default=None, repr=False)
    _watched: bool = field(default=False, repr=False)

    def watch_from_here(self) -> None:
        """Call right before the slot's checks run (it is trusted then): from here on, what is
        done to its files, and to its folder in the repository (HEAD, index), is seen, and the
        next checkout at this commit takes the slot as proven when nothing was (treewatch.py),
        without reading them or proving them clean."""
        if self._watch is None:
            admin = self._repo.admin_folder(self.path)
            self._watch = TreeWatch.open(self.path, (admin,)) if admin is not None else None
        self._watched = self.trusted and self._watch is not None and self._watch.mark()

    def folders_are_real(self, paths: list[str]) -> bool:
        """Whether every folder above ``paths`` is, in this worktree, a real folder or not
        there: git apply writes and deletes through a symlink a check left in place of a
        folder, outside the worktree, so an unproven slot must not be applied to then."""
        seen: set[str] = set()
        for path in paths:
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder in seen:
                    continue
                seen.add(folder)
                try:
                    mode = os.lstat(self.path / folder).st_mode
                except FileNotFoundError:
                    break
                except OSError:
                    return False
                if not stat.S_ISDIR(mode):
                    return False
        return True

    def prove(self) -> None:
        """Reset the slot to ``commit`` and prove it clean, whatever was done in it since
        (an apply, a commit: they are undone); re-added when it cannot be trusted."""
        started = time.monotonic()
        self._pool._prepare(self._repo_name, self._repo, self.path, self.commit)
        self.trusted = True
        _HELD.reset_took(self.path.parent, time.monotonic() - started)


@dataclass
class _HeldSlot:
    """A slot this process gave back and keeps locked until its next use."""

    fd: int
    path: Path
    commit: str
    given_at: float
    watch: TreeWatch | None = None
    watched: bool = False       # the watch was marked when the slot was trusted

    def release(self) -> None:
        _let_go(self.fd, self.watch)


class _HeldSlots:
    """The slots this process gave back, still locked: a list per repository's folder
    (``worktrees/<repo>``), oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._held: dict[Path, list[_HeldSlot]] = {}
        self._in_use: dict[Path, int] = {}          # per folder, slots checked out here now
        self._reset_s: dict[Path, float] = {}       # per folder, what the last reset took

    def checked_out(self, directory: Path) -> None:
        with self._lock:
            self._in_use[directory] = self._in_use.get(directory, 0) + 1

    def returned(self, directory: Path) -> None:
        """A slot checked out of ``directory`` is no longer in use (given back or not)."""
        with self._lock:
            self._in_use[directory] -= 1
            self._lock.notify_all()

    def reset_took(self, directory: Path, seconds: float) -> None:
        with self._lock:
            self._reset_s[directory] = seconds

    def take_at(self, directory: Path, commit: str) -> _HeldSlot | None:
        """A slot given back at ``commit``, else the newest one (as :meth:`take`). While
        this process uses a slot of ``directory`` (the request below, at its check, will give
        it back at its own commit: this caller's ``commit``), waits for it at most as long
        as the last reset of a slot there took: waiting longer costs more than resetting
        another slot, and never waiting resets a slot for every request a second worker
        builds on the first's commit."""
        with self._lock:
            deadline = time.monotonic() + self._reset_s.get(directory, DEFAULT_RESET_S)
            while True:
                waiting = self._held.get(directory, [])
                at = next((h for h in reversed(waiting) if h.commit == commit), None)
                if at is not None:
                    waiting.remove(at)
                    if not waiting:
                        del self._held[directory]
                    return at
                left = deadline - time.monotonic()
                if left <= 0 or not self._in_use.get(directory):
                    return self.take(directory)
                self._lock.wait(left)

    def give_back(self, fd: int, path: Path, watch: TreeWatch | None = None, *,
                  watched: bool = False) -> None:
        """Keep the slot locked for the next checkout (and its watch open); closes ``fd``
        in the end."""
        held = _HeldSlot(fd, path, detached_head(path) or "", time.monotonic(), watch, watched)
        if not held.commit:
            # A check moved HEAD where only git can tell: the next checkout resets it fully.
            held.release()
            return
        with self._lock:
            self._held.setdefault(path.parent, []).append(held)
            evicted = self._over_limit()
            self._lock.notify_all()
        for old in evicted:
            old.release()

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

    def _over_limit(self) -> list[_HeldSlot]:
        evicted: list[_HeldSlot] = []
        while sum(len(v) for v in self._held.values()) > MAX_HELD_SLOTS:
            oldest = min(self._held, key=lambda key: self._held[key][0].given_at)
            evicted.append(self._held[oldest].pop(0))
            if not self._held[oldest]:
                del self._held[oldest]
        return evicted


_HELD = _HeldSlots()


def _let_go(fd: int, watch: TreeWatch | None) -> None:
    """Unlock a slot (its lock's ``fd``) and stop watching it."""
    os.close(fd)
    if watch is not None:
        watch.close()


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
