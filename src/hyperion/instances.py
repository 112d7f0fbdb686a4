"""Running hyperion processes on one state_dir: the one owner of state_dir/daemons/.

Each `hyperion run` holds an flock on daemons/<host>-<pid>.lock for its whole life and rewrites
daemons/<host>-<pid>.json with its status. A lock that can be taken belongs to a dead process,
so liveness never depends on pid reuse or on clean exits. Also the flock pidfile of
`hyperion start`: one detached instance per state_dir (lockfile's pidfile fails silently when a
second instance starts or a stale pidfile exists; an flock cannot go stale).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from hyperion.fsutil import write_atomic


class Registration:
    def __init__(self, state_dir: Path, info: dict[str, Any]) -> None:
        self.dir = state_dir / "daemons"
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}"
        self.lock_path = self.dir / f"{name}.lock"
        self.status_path = self.dir / f"{name}.json"
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.info = dict(info)
        self.update({})

    def update(self, status: dict[str, Any]) -> None:
        self.info.update(status)
        write_atomic(self.status_path, json.dumps(self.info, indent=2).encode(),
                     sync_dir=False)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        os.close(self._fd)


def live(state_dir: Path) -> list[dict[str, Any]]:
    """Status of every live hyperion process on this state_dir; stale entries are removed."""
    directory = state_dir / "daemons"
    if not directory.is_dir():
        return []
    out = []
    for lock in sorted(directory.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                status = lock.with_suffix(".json")
                with contextlib.suppress(FileNotFoundError, ValueError):
                    out.append(json.loads(status.read_text()))
                continue
            # Nobody holds it: its process is gone.
            lock.with_suffix(".json").unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return out


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"another hyperion is running on this state_dir (pid {pid})")
        self.pid = pid


class PidFile:
    """An flock-held pidfile: taken by the detached daemon for its whole life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def held_pid(path: Path) -> int | None:
    """The pid in a pidfile whose lock is held (a live daemon), else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path)
    finally:
        os.close(fd)
    return None
