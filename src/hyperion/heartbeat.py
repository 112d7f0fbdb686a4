"""Keeping the leases in hand alive: one thread per process renews them all.

A worker holds a lease on each request it works on (several while it gathers a batch), for
as long as its checks run. A thread per lease, started and joined for every request, cost
more than the renewals themselves; instead every :class:`Heartbeat` is registered with one
keeper thread, which renews each a third of its time-to-live after the last renewal.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperion.spool import Lease, LeaseLost

if TYPE_CHECKING:
    from hyperion.app import App

log = logging.getLogger("hyperion.worker")

LEASE_TTL_S = 60.0


class Heartbeat:
    """Keeps ``lease`` alive until :meth:`stop`, which returns the latest lease (to close it
    without a race: no renewal happens after it)."""

    def __init__(self, app: App, lease: Lease) -> None:
        self.app = app
        self.lease = lease
        self._lock = threading.Lock()
        self._stopped = False
        self._entry: _Entry | None = None      # its place in the keeper's heap

    def __enter__(self) -> Heartbeat:
        _KEEPER.keep(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Lease:
        with self._lock:
            self._stopped = True
        _KEEPER.forget(self)
        return self.lease

    def _renew(self) -> bool:
        """Renew the lease (the keeper's thread); False once there is nothing more to keep."""
        with self._lock:
            if self._stopped:
                return False
            try:
                self.lease = self.app.spool.heartbeat(self.lease, LEASE_TTL_S)
            except LeaseLost:
                log.error("lease of %s was lost while working on it", self.lease.id,
                          extra={"request_id": self.lease.id})
                self._stopped = True
                return False
            return True


@dataclass(order=True)
class _Entry:
    due: float
    order: int                    # ties: first registered, first renewed
    beat: Heartbeat | None = field(compare=False)


class _Keeper:
    """The one thread that renews every registered heartbeat, each when it is due. A stopped
    heartbeat's entry stays in the heap until then, without it (nor the lease it held)."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[_Entry] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def keep(self, beat: Heartbeat) -> None:
        with self._wake:
            self._push(beat, next(self._order))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="heartbeats",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def forget(self, beat: Heartbeat) -> None:
        with self._wake:
            if beat._entry is not None:
                beat._entry.beat = None
                beat._entry = None

    def _push(self, beat: Heartbeat, order: int) -> None:
        beat._entry = _Entry(time.monotonic() + LEASE_TTL_S / 3, order, beat)
        heapq.heappush(self._due, beat._entry)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0].due > time.monotonic():
                    self._wake.wait(self._due[0].due - time.monotonic() if self._due
                                    else None)
                entry = heapq.heappop(self._due)
            beat = entry.beat
            if beat is None or not beat._renew():
                continue
            with self._wake:
                if not beat._stopped:
                    self._push(beat, entry.order)


_KEEPER = _Keeper()
