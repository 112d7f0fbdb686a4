"""A harness's budgets across tasks: concurrent tasks (WIP) and task starts per hour.

Both live in state_dir/locks/ so they hold across worker threads and processes:
- a WIP slot is an flock on ``harness-<name>.<i>.lock`` (i < max_concurrent), held while the
  task runs; the kernel drops it when the holder dies, so a crash never leaks a slot;
- starts are timestamps in ``harness-<name>.starts`` (JSON, rewritten atomically under an
  flock), the last hour's only.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperion.fsutil import write_atomic

HOUR_S = 3600.0


class Slot:
    """A held WIP slot; release() (or the process ending) frees it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def take_slot(locks_dir: Path, harness: str, max_concurrent: int) -> Slot | None:
    """One of the harness's ``max_concurrent`` slots, or None when all are taken."""
    for i in range(max_concurrent):
        fd = os.open(locks_dir / f"harness-{harness}.{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(fd)
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def reserve_start(locks_dir: Path, harness: str, per_hour: int | None,
                  now: float | None = None) -> float | None:
    """Count a start of ``harness`` now and return None, or, when ``per_hour`` starts happened
    in the last hour, count nothing and return the seconds until the next start is allowed."""
    if per_hour is None:
        return None
    at = time.time() if now is None else now
    path = locks_dir / f"harness-{harness}.starts"
    with _locked(locks_dir / f"harness-{harness}.starts.lock"):
        try:
            starts = [float(t) for t in json.loads(path.read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            starts = []
        starts = sorted(t for t in starts if at - HOUR_S < t <= at + 60)
        if len(starts) >= per_hour:
            return max(1.0, starts[-per_hour] + HOUR_S - at)
        starts.append(at)
        write_atomic(path, json.dumps(starts).encode())
    return None
