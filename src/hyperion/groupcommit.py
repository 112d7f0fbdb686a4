"""Group commit: one flush (an fsync) shared by every thread that asked for it meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Callable


class GroupCommit:
    """``sync()`` returns once a ``flush()`` that started after the call began has completed:
    every change the caller made before calling is then covered. While one thread (the
    leader) flushes, the threads that call meanwhile wait, and one of them then flushes once
    for all of them. A flush that raises passes its error to the leader; the next caller
    flushes again."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self.reset()

    def reset(self) -> None:
        """Forget the state (a forked child must not wait on its parent's threads)."""
        self._cond = threading.Condition(threading.Lock())
        self._issued = 0          # tickets handed out, one per sync() call
        self._durable = 0         # every ticket up to this one is covered by a finished flush
        self._busy = False
        self.flushes = 0          # how many flushes it made (for tests and the benchmark)

    def sync(self) -> None:
        cond = self._cond
        with cond:
            self._issued += 1
            ticket = self._issued
            while self._durable < ticket:
                if self._busy:
                    cond.wait()
                    continue
                self._busy = True
                covers = self._issued       # every change made before this point
                done = False
                cond.release()
                try:
                    self._flush()
                    done = True
                finally:
                    cond.acquire()
                    self._busy = False
                    if done:
                        self._durable = max(self._durable, covers)
                        self.flushes += 1
                    cond.notify_all()
