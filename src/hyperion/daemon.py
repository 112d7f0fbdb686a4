"""Wiring of `hyperion run`: intake, workers and the sweeper as threads of one process.

TERM and INT drain: no new leases; each worker finishes the request it holds. A request that
is interrupted anyway (kill -9) is found by the sweeper of the next run and retried.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

from hyperion.app import App
from hyperion.intake.inbox import Inbox, InboxWatcher
from hyperion.worker import Worker, prune_worktrees

log = logging.getLogger("hyperion.daemon")

IDLE_POLL_S = 0.25
SWEEP_EVERY_S = 5.0


def _worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


def run_once(app: App, *, workers: int) -> None:
    """Ingest what waits in the inbox, then work until nothing is ready or running."""
    _recover(app)
    Inbox(app).scan(wait=True)
    pool = [Worker(app, _worker_name(i)) for i in range(workers)]
    while True:
        threads = [threading.Thread(target=_drain, args=(w,), name=w.name) for w in pool]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ready_at = app.spool.next_ready_at()
        if ready_at is None or ready_at > time.time():
            return


def _recover(app: App) -> None:
    """What a killed process left: leases back to the queue, its worktrees removed."""
    swept = app.spool.sweep()
    pruned = prune_worktrees(app)
    if swept or pruned:
        log.warning("recovered after an unclean stop: %d lease(s) requeued, %d worktree(s) "
                    "removed", swept, pruned)


def _drain(worker: Worker) -> None:
    while worker.run_one():
        pass


def run_forever(app: App, *, workers: int, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining (finishing the requests in hand)",
                 signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    _recover(app)
    inbox = Inbox(app)
    watcher = InboxWatcher(inbox)
    watcher.start()          # watch first, then scan: no file slips between the two
    inbox.scan()
    threads = [threading.Thread(target=watcher.run, args=(stop,), name="intake")]
    for i in range(workers):
        worker = Worker(app, _worker_name(i))
        threads.append(threading.Thread(target=_work, args=(worker, stop), name=worker.name))
    for t in threads:
        t.start()
    log.info("running: inbox %s, %d workers, state in %s", inbox.dir, workers,
             app.config.state_dir)
    while not stop.wait(SWEEP_EVERY_S):
        swept = app.spool.sweep()
        if swept:
            log.warning("swept %d stale lease(s) back to the queue", swept)
    watcher.stop()
    for t in threads:
        t.join()
    log.info("stopped")


def _work(worker: Worker, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            busy = worker.run_one()
        except Exception:  # the worker thread must survive anything a request does
            log.exception("worker %s: unexpected error; continuing", worker.name)
            busy = False
        if not busy:
            stop.wait(IDLE_POLL_S)
