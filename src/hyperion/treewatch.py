"""Whether anything in a folder tree changed since a mark: inotify watches on every folder.

The worktree pool (pool.py) uses it to skip the proof that a check left its worktree clean
(a ``git ls-files`` over the whole tree) when the kernel saw nothing written there from the
check's start on. inotify reports to a folder's watch every change made through that folder:
a file created, written, closed after writing (which also covers writes through a shared
mapping, whose file must have been opened for writing), deleted, renamed or given new
metadata (mode, times, owner), and a folder made, removed or moved. Reading reports nothing
here (no access or open events are asked for).

Folders outside the tree can be watched beside it, each by itself (``also``): the pool watches
a worktree's folder in the repository, which holds its HEAD and index. For the tree's root and
those folders, a folder now at their path that is not the one watched (a parent renamed and
replaced) counts as a change too.

Events our own git commands cause between two windows (an apply, a reset) are taken in at
the next mark: a folder they made gets its watches, one they removed loses them. A folder
moved, a queue that overflowed, or a root that is no longer the folder it was makes the next
mark watch the tree afresh.

Not seen: a change made through a path outside the tree (a hard link a check made elsewhere
to a file in it), which takes a deliberate act by code that can do worse anyway (checks are
not sandboxed). Anything that cannot be watched (no inotify, a limit of watches or instances
reached) makes :meth:`TreeWatch.open` return None, and the caller proves as before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
from pathlib import Path

log = logging.getLogger("hyperion.treewatch")

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

#: What a folder's watch reports: every way to change what the tree holds.
_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
         | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
         | _IN_ONLYDIR | _IN_DONT_FOLLOW)
#: Events after which the watches no longer match the tree's folders.
_REWATCH = _IN_Q_OVERFLOW | _IN_UNMOUNT | _IN_MOVE_SELF
_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


class _Libc:
    """inotify's three calls, bound on first use."""

    _bound: _Libc | None = None

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int

    @classmethod
    def get(cls) -> _Libc:
        if cls._bound is None:
            cls._bound = cls()
        return cls._bound


class _Unwatchable(Exception):
    pass


class TreeWatch:
    """inotify watches on every folder under ``root`` (symlinks not followed), and on each
    folder of ``also`` by itself (not the folders in it)."""

    _warned = False

    def __init__(self, root: Path, also: tuple[Path, ...] = ()) -> None:
        self.root = root
        self.also = also
        self._fd = -1
        self._paths: dict[int, bytes] = {}       # watch descriptor -> its folder
        self._ids: list[tuple[int, int] | None] = []    # of root and ``also``, when watched
        self._top_wds: set[int] = set()          # their watches
        self._watch_all()

    @classmethod
    def open(cls, root: Path, also: tuple[Path, ...] = ()) -> TreeWatch | None:
        """A watch on the tree at ``root`` (and the folders ``also``), or None when it cannot
        be watched (logged once)."""
        try:
            return cls(root, also)
        except (_Unwatchable, OSError, AttributeError) as exc:
            if not cls._warned:
                cls._warned = True
                log.info("cannot watch the worktree %s for changes (%s); each request proves "
                         "its slot clean with git instead", root, exc)
            return None

    def mark(self) -> bool:
        """Take in what happened since the last mark (folders made or removed by our own
        commands) and start a new window; False when the tree cannot be watched any more."""
        if self._fd < 0:
            return False
        try:
            if self._take_in():
                self._watch_all()
        except (_Unwatchable, OSError) as exc:
            log.info("cannot watch the worktree %s for changes any more (%s)", self.root, exc)
            self.close()
            return False
        return True

    def changed(self) -> bool:
        """Whether anything in the tree changed since the last :meth:`mark` (True when that
        cannot be told)."""
        if self._fd < 0:
            return True
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or self._moved()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._paths.clear()

    # ------------------------------------------------------------------ internals
    def _watch_all(self) -> None:
        """Watch every folder of the tree afresh, on a new inotify instance."""
        self.close()
        libc = _Libc.get()
        fd = libc.init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _Unwatchable(os.strerror(ctypes.get_errno()))
        self._fd = fd
        self._ids = self._identities()
        try:
            top = os.fsencode(self.root)
            self._watch_tree(top)
            self._top_wds = {wd for wd, path in self._paths.items() if path == top}
            for folder in self.also:
                wd = self._watch(os.fsencode(folder))
                if wd < 0:
                    raise _Unwatchable(f"{folder} is not a folder")
                self._top_wds.add(wd)
        except BaseException:
            self.close()
            raise
        if None in self._ids or self._moved():
            self.close()
            raise _Unwatchable("a watched folder was replaced while it was watched")

    def _watch_tree(self, top: bytes) -> None:
        """Watch ``top`` and every folder under it; a folder gone meanwhile is skipped."""
        pending = [top]
        while pending:
            folder = pending.pop()
            if self._watch(folder) < 0:
                continue
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)

    def _watch(self, folder: bytes) -> int:
        """The watch on ``folder``; -1 when it is gone or not a folder."""
        wd = int(_Libc.get().add_watch(self._fd, folder, _MASK))
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return -1
            raise _Unwatchable(os.strerror(code))
        self._paths[wd] = folder
        return wd

    def _take_in(self) -> bool:
        """Read what is queued, keeping the watches in step; True when the tree must be
        watched afresh."""
        rewatch = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _REWATCH or (mask & _IN_MOVED_FROM and mask & _IN_ISDIR):
                    rewatch = True
                elif mask & _IN_IGNORED:
                    self._paths.pop(wd, None)
                    # The root (or a folder of ``also``) removed: a new folder there
                    # (perhaps with the same inode number) is not watched.
                    rewatch = rewatch or wd in self._top_wds
                elif mask & (_IN_CREATE | _IN_MOVED_TO) and mask & _IN_ISDIR:
                    parent = self._paths.get(wd)
                    if parent is not None and not rewatch and not self._flat(parent):
                        self._watch_tree(os.path.join(parent, name))
        return rewatch or self._moved()

    def _flat(self, folder: bytes) -> bool:
        """Whether ``folder`` is one of ``also``, watched without the folders in it."""
        return any(folder == os.fsencode(path) for path in self.also)

    def _identities(self) -> list[tuple[int, int] | None]:
        return [_identity(path) for path in (self.root, *self.also)]

    def _moved(self) -> bool:
        """Whether the root or a folder of ``also`` is no longer the folder watched."""
        return self._ids != self._identities()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
