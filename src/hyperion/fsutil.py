"""Durable file primitives: every on-disk structure of hyperion is written through these.

The discipline is Postfix's and maildir's: write a temporary file, fsync it, rename it into
place, fsync the directory. A reader therefore sees either the old file or the new one, and a
file that a rename made visible survives a crash (kill -9 or power loss).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_exclusive_guard = threading.Lock()
_exclusive_locks: dict[str, threading.Lock] = {}


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` alone: first among this process's threads (a mutex per
    path), then among processes (an flock, which the kernel drops if the process dies)."""
    key = str(path)
    with _exclusive_guard:
        lock = _exclusive_locks.setdefault(key, threading.Lock())
    with lock:
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path | None = None,
                 sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` durably.

    ``tmp_dir`` must be on the same filesystem as ``path``; by default the temporary file is a
    dotfile beside the target (dotfiles are ignored by every directory scan in hyperion).
    """
    directory = path.parent
    tmp_parent = tmp_dir if tmp_dir is not None else directory
    tmp = tmp_parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(directory)


def append_line(path: Path, line: bytes) -> None:
    """Append one line durably (O_APPEND keeps concurrent writers' lines whole)."""
    if not line.endswith(b"\n"):
        line += b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
