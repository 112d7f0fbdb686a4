"""A worker's landing stage: checked commits land in order, in a thread of their own, while
the worker goes on to the next request.

The worker applies the next request for the same target on top of the last commit it handed
over here, before that commit has landed: the speculation of a merge queue (Zuul, bors),
with the same safety. Each land is a compare-and-swap from the commit the request was applied
onto, so a request can only land on exactly the tree its checks ran on; when the commit it was
applied onto does not land (a person pushed to the target meanwhile, the checked-out target
was dirty), its own land loses the race and it is applied and checked again on the real tip,
as any lost race is. Lands happen in the order the worker handed them over.

Only single requests of ``land: ref`` repositories are handed over (a push lands on a remote
the next request would fetch from, a batch or a task waits for the stage to empty first).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("hyperion.land_stage")

#: Commits handed over and not yet landed, at most: the worker waits beyond that, so a slow
#: land (a large checked-out tree) does not let it speculate ever further ahead.
MAX_AHEAD = 4


@dataclass
class Handed:
    """One checked commit waiting to land on ``target`` of ``repo``, applied onto ``parent``
    (another handed commit when the worker speculated)."""

    repo: str
    target: str
    commit: str
    parent: Handed | None = None
    failed: bool = False
    done: bool = False

    def doomed(self) -> bool:
        """Whether it cannot land: it, or a handed commit it was applied onto, did not."""
        handed: Handed | None = self
        while handed is not None:
            if handed.failed:
                return True
            handed = handed.parent
        return False


class LandStage:
    """The landing thread of one worker (started at the first hand-over)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[tuple[Handed, Callable[[], bool]]] = deque()
        self._busy = False
        self._last: dict[tuple[str, str], Handed] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def tip(self, repo: str, target: str) -> Handed | None:
        """The handed commit the next request for ``target`` can be applied onto: the last
        one not landed yet, unless it is doomed (then the real tip is the one to use)."""
        with self._cond:
            handed = self._last.get((repo, target))
            if handed is None or handed.done or handed.doomed():
                return None
            return handed

    def hand(self, handed: Handed, land: Callable[[], bool]) -> None:
        """Queue ``land`` (True when it landed) for the thread, starting it if it is not
        running (again, after ``close``); waits while MAX_AHEAD are queued."""
        with self._cond:
            while len(self._queue) + self._busy >= MAX_AHEAD:
                self._cond.wait()
            self._queue.append((handed, land))
            self._last[(handed.repo, handed.target)] = handed
            self._closed = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.name}-land",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_empty(self) -> bool:
        """Until everything handed over has landed or failed; True if anything had to."""
        with self._cond:
            waited = bool(self._queue or self._busy)
            while self._queue or self._busy:
                self._cond.wait()
            return waited

    def close(self) -> None:
        """Land what was handed over, then end the thread (a later ``hand`` starts a new
        one: ``run --once`` drains again when retries come due)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    # Decided under the lock, so a hand() after this starts a new thread.
                    self._thread = None
                    return
                handed, land = self._queue.popleft()
                self._busy = True
            landed = False
            try:
                landed = land()
            except BaseException:
                log.exception("landing stage %s: the land of %s failed unexpectedly",
                              self.name, handed.commit)
            finally:
                with self._cond:
                    handed.failed = not landed
                    handed.done = True
                    # Only a pending ancestor's failure matters to those built on this one;
                    # dropping the link keeps a steady stream from chaining every commit.
                    handed.parent = None
                    if self._last.get((handed.repo, handed.target)) is handed:
                        del self._last[(handed.repo, handed.target)]
                    self._busy = False
                    self._cond.notify_all()
