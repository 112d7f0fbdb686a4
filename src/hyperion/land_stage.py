"""The landing stage: checked commits land in order, in a thread of their own, while the
workers go on to the next requests.

A worker claims the next place on a request's target before it applies the request, records
the commit it made there, and hands it over when the checks pass (or abandons it when they do
not). The next request for the same target, in this worker or another, is applied on top of
the last commit here that can still land, and its checks run while the one below is still
being checked or landed: the speculation of a merge queue (Zuul, bors), with the same
safety. Each land is a compare-and-swap from the commit the request was applied onto, so a
request only ever lands on exactly the tree its checks ran on; when the commit it was applied
onto does not land (its checks failed, a person pushed to the target meanwhile), its own land
loses the race and it is applied and checked again on the real tip, as any lost race is.
Commits land in the order their places were claimed, per target.

Only single requests of ``land: ref`` repositories come here (a push lands on a remote the
next request would fetch from; a batch or a task first waits until nothing is claimed here
on its target).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("hyperion.land_stage")

#: Commits checked and waiting to land, at most: a worker handing over one more waits, so a
#: slow land (a large checked-out tree) does not let the workers speculate ever further ahead.
MAX_AHEAD = 4


@dataclass(eq=False)
class Place:
    """A place on ``target`` of ``repo``: once made, ``commit``, applied onto ``base``
    (``parent``'s commit when the worker speculated on one here, else the target's tip as
    read then). ``land`` is set when its checks passed and it was handed over."""

    repo: str
    target: str
    commit: str = ""
    base: str = ""
    parent: Place | None = None
    land: Callable[[], bool] | None = None
    failed: bool = False
    done: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.repo, self.target


def _root(place: Place) -> Place | None:
    """The bottom of the chain ``place`` was applied onto among the commits not landed yet
    (itself when it was made on the target's tip, or on a commit that has landed since);
    None when it, or any commit below it, failed."""
    root = place
    while not root.failed:
        parent = root.parent
        if parent is None or (parent.done and not parent.failed):
            return root
        root = parent
    return None


class LandStage:
    """The landing thread, shared by a process's workers (started when there is work)."""

    def __init__(self, name: str = "land") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._pending: list[Place] = []     # claimed, not landed or failed; in order
        self._landed: dict[tuple[str, str], str] = {}   # per target, the last commit landed
        self._thread: threading.Thread | None = None
        self._closed = False

    def claim(self, repo: str, target: str) -> Place:
        """The next place on ``target``, for a request about to be applied. Its ``parent`` is
        the commit here to apply it onto (None: the target's real tip): the last one that
        can still land and leads back to the real tip. Waits while the place before it is
        claimed but its commit not made yet (a few milliseconds: its apply), so that two
        workers never build on the same commit."""
        key = (repo, target)
        with self._cond:
            while (last := self._last(key)) is not None and not last.commit:
                self._cond.wait()
            place = Place(repo, target, parent=self._tip(key))
            self._pending.append(place)
            return place

    def made(self, place: Place, commit: str, base: str) -> None:
        """The commit made in ``place``, applied onto ``base``; its checks run now."""
        with self._cond:
            place.commit, place.base = commit, base
            self._cond.notify_all()

    def _last(self, key: tuple[str, str]) -> Place | None:
        return next((h for h in reversed(self._pending) if h.key == key), None)

    def _tip(self, key: tuple[str, str]) -> Place | None:
        # A chain's bottom commit was made on the target's tip as read then: it can land
        # only if this stage landed nothing there since. Of the chains that can, the first
        # one's end is offered (the others expect the target not to move before them).
        live = [(h, root) for h in self._pending
                if h.key == key and h.commit and (root := _root(h)) is not None
                and self._landed.get(key, root.base) == root.base]
        if not live:
            return None
        first = live[0][1]
        return next(h for h, root in reversed(live) if root is first)

    def hand(self, place: Place, land: Callable[[], bool]) -> None:
        """Its checks passed: ``land`` (True when it landed) runs in the thread, in turn.
        Waits while MAX_AHEAD others are checked and waiting to land."""
        with self._cond:
            assert place in self._pending, "hand() of a place that was not claimed"
            place.land = land
            self._closed = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.name}-stage",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            while sum(1 for h in self._pending if h.land is not None) > MAX_AHEAD:
                self._cond.wait()

    def abandon(self, place: Place) -> None:
        """It will not be handed over (its checks failed, or its attempt ended otherwise):
        what was applied onto it cannot land either."""
        with self._cond:
            self._finished(place, landed=False)

    def outcome(self, place: Place) -> bool:
        """Whether ``place`` landed, once it has landed or failed (waits until then)."""
        with self._cond:
            while not place.done:
                self._cond.wait()
            return not place.failed

    def wait_empty(self, repo: str | None = None, target: str | None = None) -> bool:
        """Until every place claimed (on ``target`` of ``repo`` when given) has landed or
        failed; True if anything had to."""
        def busy() -> bool:
            return any(repo is None or h.key == (repo, target) for h in self._pending)

        with self._cond:
            waited = busy()
            while busy():
                self._cond.wait()
            return waited

    def close(self) -> None:
        """Land what was handed over, then end the thread (a later ``hand`` starts a new
        one). Places still being applied or checked stay claimed for their workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _next(self) -> Place | None:
        """The first commit handed over that no place claimed before it on its target
        waits for (called with the lock held)."""
        waiting: set[tuple[str, str]] = set()
        for place in self._pending:
            if place.key in waiting:
                continue
            if place.land is not None:
                return place
            waiting.add(place.key)
        return None

    def _finished(self, place: Place, *, landed: bool) -> None:
        place.failed = not landed
        place.done = True
        if landed:
            self._landed[place.key] = place.commit
        # Only a pending ancestor's failure matters to those built on this one; dropping
        # the link keeps a steady stream from chaining every commit.
        place.parent = None
        if place in self._pending:
            self._pending.remove(place)
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                place = self._next()
                while place is None:
                    if self._closed:
                        # Decided under the lock, so a hand() after this starts a new thread.
                        self._thread = None
                        return
                    self._cond.wait()
                    place = self._next()
            landed = False
            try:
                assert place.land is not None
                landed = place.land()
            except BaseException:
                log.exception("landing stage: the land of %s failed unexpectedly",
                              place.commit)
            finally:
                with self._cond:
                    self._finished(place, landed=landed)
