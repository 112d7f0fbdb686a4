"""`hyperion run`: workers, the landing stage and the sweeper as threads of one process, and
the inbox's intake in a child process it starts and watches (intake/process.py).

Signals (the handlers only set flags; the main loop acts):
- TERM, INT: drain. No new leases; in-flight requests finish within ``drain_timeout_s``;
  after that their checks are killed and they are requeued. Exit 0.
- HUP: reload configuration and policy atomically; a bad new file is refused, the old one
  kept, the error logged and notified.
- USR1: write a status dump to the log.
Under systemd (Type=notify): READY=1 after the start-up scan, STATUS= with queue counts,
WATCHDOG=1 from the main loop (so a hung loop stops pinging), RELOADING=1, STOPPING=1.
A request interrupted harder (kill -9) is found by the next start: its lease's process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from hyperion import __version__
from hyperion.app import App
from hyperion.config import ConfigError, load_config
from hyperion.instances import Registration
from hyperion.intake.dependencies import reconcile
from hyperion.intake.git_inbox import start_git_intake, take_git_once
from hyperion.intake.git_remote import push_all
from hyperion.intake.inbox import Inbox, InboxThread
from hyperion.intake.process import IntakeProcess
from hyperion.land_stage import LandStage
from hyperion.landing import recover_checkouts
from hyperion.metrics import METRICS, MetricsServer
from hyperion.records import now_iso
from hyperion.report import Reporter
from hyperion.rollback import reconcile_rollbacks
from hyperion.run import abort_all
from hyperion.sdnotify import Notifier
from hyperion.worker import Worker, prune_worktrees

log = logging.getLogger("hyperion.daemon")

IDLE_POLL_S = 0.25
LOOP_S = 5.0
ABORT_GRACE_S = 30.0
PRUNE_EVERY_S = 3600.0


def _worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


def _recover(app: App) -> None:
    """What a killed process left: leases back to the queue, its worktrees removed, and
    notifications of recent outcomes that it recorded but did not get to queue."""
    recover_checkouts(app)
    swept = app.spool.sweep() + app.reporter.outbox.sweep()
    pruned = prune_worktrees(app)
    cutoff = time.time() - app.config.notify.expire_h * 3600
    requeued = 0
    records = app.records.all()
    for record in records:
        if _timestamp(record.updated_at) >= cutoff and app.reporter.outcome(record):
            requeued += 1
    reconcile(app, records)
    reconcile_rollbacks(app, records)
    if swept or pruned or requeued:
        log.warning("recovered after an unclean stop: %d lease(s) requeued, %d worktree(s) "
                    "removed, %d notification(s) queued", swept, pruned, requeued)


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_once(app: App, *, workers: int) -> None:
    """Ingest what waits in the inbox, then work until nothing is ready or running."""
    _recover(app)
    Inbox(app).scan(wait=True)
    syncs = take_git_once(app)
    stage = LandStage()
    pool = [Worker(app, _worker_name(i), stage=stage) for i in range(workers)]
    try:
        while True:
            threads = [threading.Thread(target=_drain, args=(w,), name=w.name) for w in pool]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ready_at = app.spool.next_ready_at()
            if ready_at is None or ready_at > time.time():
                app.reporter.deliver_ready(f"{_worker_name(0)}:notify")
                push_all(syncs)
                return
    finally:
        stage.close()
        app.records.flush()


def _drain(worker: Worker) -> None:
    # What the landing stage finishes can queue more (a lost race, released dependents).
    while worker.run_one() or worker.settle():
        pass


class Daemon:
    """The long-running process. ``run()`` returns when a stop was requested and drained."""

    def __init__(self, app: App, *, workers: int, notifier: Notifier | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.app = app
        self.workers = workers
        self.notifier = notifier or Notifier()
        self.on_ready = on_ready
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._reload = False
        self._dump = False
        self._busy: dict[str, str | None] = {}
        self.reloads = {"ok": 0, "refused": 0}
        self.started = time.time()
        self.stage = LandStage()      # shared by the workers (land_stage.py)
        self.intake: IntakeProcess | InboxThread | None = None

    # -- signals: flags only
    def install_signals(self) -> None:
        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()
            self._wake.set()

        def request_reload(signum: int, frame: FrameType | None) -> None:
            self._reload = True
            self._wake.set()

        def request_dump(signum: int, frame: FrameType | None) -> None:
            self._dump = True
            self._wake.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_reload)
        signal.signal(signal.SIGUSR1, request_dump)

    def run(self) -> None:
        app = self.app
        registration = Registration(app.config.state_dir, {
            "pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
            "started_at": now_iso(), "workers": self.workers,
            "config": str(app.config.source) if app.config.source else None})
        try:
            self._run(registration)
        finally:
            registration.close()

    def _run(self, registration: Registration) -> None:
        app = self.app
        _recover(app)
        intake = self._start_intake()
        app.warm_up()
        git_watcher, git_threads = start_git_intake(app, self.stop)
        notify = threading.Thread(target=self._deliver, name="notify", daemon=True)
        threads = [*git_threads, notify]
        for i in range(self.workers):
            worker = Worker(app, _worker_name(i), stage=self.stage)
            self._busy[worker.name] = None
            threads.append(threading.Thread(target=self._work, args=(worker,), name=worker.name,
                                            daemon=True))
        for t in threads:
            t.start()
        server = self._start_metrics()
        log.info("running: inbox %s, %d workers, state in %s", app.config.inbox,
                 self.workers, app.config.state_dir)
        self.notifier.ready(self._status_line())
        if self.on_ready is not None:
            self.on_ready()
        interval = min(LOOP_S, self.notifier.watchdog_interval_s or LOOP_S)
        next_sweep = time.monotonic() + LOOP_S
        next_prune = time.monotonic()
        while not self.stop.is_set():
            self.notifier.watchdog()
            if self._reload:
                self._reload = False
                self.reload()
            if self._dump:
                self._dump = False
                log.info("status: %s", self.status())
            if time.monotonic() >= next_sweep:
                swept = app.spool.sweep() + app.reporter.outbox.sweep()
                if swept:
                    METRICS.inc("hyperion_lease_sweeps_total", swept)
                    log.warning("swept %d stale lease(s) back to the queue", swept)
                if time.monotonic() >= next_prune:
                    keep_s = app.config.retention_days * 86400
                    app.spool.prune(keep_s)
                    app.reporter.outbox.prune(keep_s)
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                next_sweep = time.monotonic() + LOOP_S
            registration.update(self.status())
            self.notifier.status(self._status_line())
            restart_in = intake.supervise()
            self._wake.wait(interval if restart_in is None else min(interval, restart_in))
            self._wake.clear()
        self._shutdown(intake, threads)
        git_watcher.stop()
        if server is not None:
            server.stop()

    def _start_metrics(self) -> MetricsServer | None:
        if self.app.config.metrics is None:
            return None

        def gauges() -> Iterator[tuple[str, str, tuple[tuple[str, str], ...], float]]:
            for state, count in self.app.spool.counts().items():
                yield ("hyperion_queue_depth", "Spool items by state.", (("state", state),),
                       count)
            yield ("hyperion_workers", "Worker threads.", (), self.workers)
            yield ("hyperion_workers_busy", "Worker threads working on a request.", (),
                   sum(1 for v in self._busy.values() if v))
            yield ("hyperion_uptime_seconds", "Seconds since start.", (),
                   time.time() - self.started)

        METRICS.collector(gauges)
        server = MetricsServer(self.app.config.metrics.listen)
        server.start()
        log.info("metrics on http://%s/metrics", self.app.config.metrics.listen)
        return server

    def _start_intake(self) -> IntakeProcess | InboxThread:
        """The inbox's intake: in a process of its own (intake/process.py) unless configured
        otherwise, or when that process cannot get ready; then in a thread of this one."""
        app = self.app
        if app.config.intake.process:
            child = IntakeProcess(app, on_exit=self._wake.set)
            try:
                child.start()
                ready = child.wait_ready()
            except OSError as exc:
                log.error("cannot start the intake process: %s", exc)
                ready = False
            if ready:
                self.intake = child
                return child
            child.stop(timeout_s=0)
            log.error("the intake process did not get ready; the inbox is taken by a thread "
                      "of the daemon instead")
        thread = InboxThread(app)
        thread.start()
        self.intake = thread
        return thread

    def _shutdown(self, intake: IntakeProcess | InboxThread,
                  threads: list[threading.Thread]) -> None:
        log.info("stopping: draining the requests in hand (up to %g s)",
                 self.app.config.drain_timeout_s)
        self.notifier.stopping()
        intake.stop()
        deadline = time.monotonic() + self.app.config.drain_timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            killed = abort_all()
            log.warning("drain timeout: stopped %d running check(s); their requests are "
                        "requeued", killed)
            deadline = time.monotonic() + ABORT_GRACE_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        self.stage.close()                   # what was checked and handed over still lands
        self.app.records.flush()
        log.info("stopped")

    def _work(self, worker: Worker) -> None:
        while not self.stop.is_set():
            seen = self.app.spool.additions()
            try:
                busy = worker.run_one(on_lease=lambda id: self._busy.__setitem__(worker.name,
                                                                                  id))
            except Exception:  # the worker thread must survive anything a request does
                log.exception("worker %s: unexpected error; continuing", worker.name)
                busy = False
            self._busy[worker.name] = None
            if not busy:
                # Woken at once by an item this process queues (the intake thread, a retry,
                # the landing stage's), within 50 ms by another process's.
                self.app.spool.wait_for_work(seen, IDLE_POLL_S)

    def _deliver(self) -> None:
        """The outbox's delivery thread: landing never waits for a notification."""
        owner = f"{socket.gethostname()}:{os.getpid()}:notify"
        while not self.stop.is_set():
            try:
                self.app.reporter.deliver_ready(owner, stop=self.stop)
            except Exception:
                log.exception("notify: the delivery loop failed; retrying")
            self.stop.wait(0.5)

    # -- reload and status
    def reload(self) -> bool:
        self.notifier.reloading()
        old = self.app.config
        try:
            config = load_config(str(old.source) if old.source else None)
            from hyperion.gate.policy import load_policy

            try:
                policy = load_policy(config.policy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        except ConfigError as exc:
            self.reloads["refused"] += 1
            log.error("reload refused; keeping the running configuration: %s", exc)
            self.app.reporter.system("hyperion: reload refused",
                                     f"The new configuration was refused and the running one "
                                     f"kept:\n{exc}", "failure")
            self.notifier.ready(self._status_line())
            return False
        for key in ("state_dir", "inbox", "workers"):
            if getattr(config, key) != getattr(old, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
                config = config.model_copy(update={key: getattr(old, key)})
        # One assignment each: a worker sees the old pair or the new pair of values.
        self.app.config = config
        self.app.policy = policy
        self.app.reporter = Reporter(config)
        if self.intake is not None:
            self.intake.restart()     # a child process judges with the new pair too
        self.reloads["ok"] += 1
        log.info("reloaded configuration and policy from %s", config.source)
        self.notifier.ready(self._status_line())
        return True

    def status(self) -> dict[str, Any]:
        busy = {name: rid for name, rid in self._busy.items()}
        return {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1),
                "queue": self.app.spool.counts(),
                "workers_busy": sum(1 for v in busy.values() if v), "working_on": busy,
                "reloads": dict(self.reloads),
                "intake": self.intake.status() if self.intake is not None else None,
                "updated_at": now_iso()}

    def _status_line(self) -> str:
        counts = self.app.spool.counts()
        busy = sum(1 for v in self._busy.values() if v)
        return (f"{counts.get('queued', 0)} queued, {counts.get('running', 0)} running, "
                f"{busy}/{self.workers} workers busy")


def run_forever(app: App, *, workers: int) -> None:
    daemon = Daemon(app, workers=workers)
    if threading.current_thread() is threading.main_thread():
        daemon.install_signals()
    daemon.run()
