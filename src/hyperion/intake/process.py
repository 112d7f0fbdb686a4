"""The inbox directory's intake as a process of its own, started and watched by `hyperion run`.

Why a process: parsing, judging and recording a request is Python work, and the worker threads
that apply, check and land need the interpreter between their git commands. In one process the
two take turns on its lock, so a burst of files dropped at once slowed every landing beside it.
Here the intake runs beside the workers, at a lower CPU priority (``intake.nice``), and
hands its work over where it always did: the records and the spool, on disk.

The conversation, over two pipes:

* the parent writes the settings once (an 8-byte length, then a pickle of
  :class:`ChildSettings`: the parent's own configuration and policy, so both judge alike), and
  keeps the pipe open. End of file on it tells the child to stop: after the file in hand, the
  child exits. A parent killed with -9 therefore takes its intake with it;
* the child writes JSON lines: ``{"ready": pid}`` once its start-up scan is done, then one
  line per file taken, carrying the metrics counters it moved since the last one. Each line
  also tells the parent's idle workers to look at the queue now (``Spool.others_added``).

A child that dies is started again (after 1 s, doubling up to a minute while it keeps dying);
files wait in the inbox meanwhile, nothing is lost: accept() is idempotent, so a file taken
but not yet removed when the child died is recognised when it is read again. A child that
cannot get ready at start is given up and the intake runs as a thread of the daemon instead,
as it does for `hyperion run --once`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from hyperion.app import App
from hyperion.config import Config
from hyperion.gate.policy import Policy
from hyperion.metrics import METRICS

log = logging.getLogger("hyperion.intake")

#: How long the start-up scan may go without a word from the child (it reports every file).
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
#: A child that ran this long before it died starts again after RESTART_MIN_S.
HEALTHY_S = 60.0
_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True)
class ChildSettings:
    config: Config
    policy: Policy
    log_level: str
    log_format: str
    nice: int


# --------------------------------------------------------------------------- the parent's side

class IntakeProcess:
    """The parent's handle on its intake child: start, watch, restart, stop."""

    def __init__(self, app: App, *, on_exit: Callable[[], None]) -> None:
        self.app = app
        self.on_exit = on_exit             # the daemon's main loop wakes to supervise()
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._heard = 0.0                  # time.monotonic() of the child's last line
        self._stopping = False
        self._started_at = 0.0
        self._delay_s = RESTART_MIN_S
        self._due: float | None = None     # time.monotonic() of the next start

    def start(self) -> None:
        from hyperion.logs import settings

        level, fmt = settings()
        child = ChildSettings(self.app.config, self.app.policy, level, fmt,
                              self.app.config.intake.nice)
        blob = pickle.dumps(child)
        self._ready = ready = threading.Event()
        # Its own process group: a Ctrl-C on the terminal reaches the daemon, which stops it.
        proc = subprocess.Popen([sys.executable, "-m", "hyperion.intake.process"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                close_fds=True, process_group=0)
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._started_at = self._heard = time.monotonic()
        self._due = None
        with contextlib.suppress(BrokenPipeError):  # it died at once: the reader sees it
            proc.stdin.write(_LENGTH.pack(len(blob)) + blob)
            proc.stdin.flush()
        threading.Thread(target=self._read, args=(proc, proc.stdout, ready),
                         name="intake-reader", daemon=True).start()
        log.info("intake process started (pid %d)", proc.pid)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Whether the child finished its start-up scan; False when it died, or went
        ``timeout_s`` (READY_TIMEOUT_S) without a word (a long backlog is fine: it reports
        every file it takes)."""
        proc, ready = self._proc, self._ready
        if timeout_s is None:
            timeout_s = READY_TIMEOUT_S
        while proc is not None and time.monotonic() - self._heard < timeout_s:
            if ready.wait(0.05):
                return True
            if proc.poll() is not None:
                return ready.is_set()
        return ready.is_set()

    def supervise(self) -> float | None:
        """Start the child again when it died; the seconds until that is due, or None."""
        proc = self._proc
        if self._stopping or proc is None:
            return None
        if self._due is None:
            code = proc.poll()
            if code is None:
                return None
            ran = time.monotonic() - self._started_at
            self._delay_s = RESTART_MIN_S if ran >= HEALTHY_S else \
                min(RESTART_MAX_S, self._delay_s * 2) if self.restarts else RESTART_MIN_S
            self._due = time.monotonic() + self._delay_s
            log.error("the intake process (pid %d) exited with %s; starting it again in %g s "
                      "(files wait in the inbox)", proc.pid, _how(code), self._delay_s)
        left = self._due - time.monotonic()
        if left > 0:
            return left
        self.restarts += 1
        self.start()
        return None

    def restart(self) -> None:
        """A fresh child with the parent's current configuration and policy (after reload).
        Not waited for: the main loop goes on pinging the watchdog, and supervise() starts
        the child again if it dies."""
        self.stop()
        self._stopping = False
        self.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End of file on its stdin: it finishes the file in hand and exits; killed after
        ``timeout_s``."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the intake process (pid %d) did not stop within %g s; killing it",
                        proc.pid, timeout_s)
            proc.kill()
            proc.wait()

    def status(self) -> dict[str, Any]:
        proc = self._proc
        alive = proc is not None and proc.poll() is None
        return {"mode": "process", "pid": proc.pid if proc else None, "alive": alive,
                "restarts": self.restarts}

    def _read(self, proc: subprocess.Popen[bytes], out: IO[bytes],
              ready: threading.Event) -> None:
        spool = self.app.spool
        for line in out:
            self._heard = time.monotonic()
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("intake process: unreadable line %r", line[:200])
                continue
            if "ready" in message:
                ready.set()
            for name, labels, value in message.get("counters", ()):
                METRICS.inc(name, value, **labels)
            spool.others_added()
        proc.wait()
        if not self._stopping:
            self.on_exit()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


# --------------------------------------------------------------------------- the child's side

class _Parent:
    """The child's line to the parent: JSON lines on a private copy of fd 1."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)             # anything printed by accident goes to the log, not the pipe
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self._lock:
            self._out.write(data)

    def took(self) -> None:
        self.send({"counters": METRICS.take_counters()})


def _settings_from(stream: IO[bytes]) -> ChildSettings:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise SystemExit("hyperion intake: no settings from the parent")
    (length,) = _LENGTH.unpack(head)
    blob = stream.read(length)
    if len(blob) != length:
        raise SystemExit("hyperion intake: the parent's settings were cut short")
    settings = pickle.loads(blob)          # from the parent that started us, over its pipe
    if not isinstance(settings, ChildSettings):
        raise SystemExit("hyperion intake: unexpected settings from the parent")
    return settings


def _stop_at_eof(stream: IO[bytes], stop: threading.Event) -> None:
    while stream.read(4096):
        pass
    stop.set()


def main() -> int:
    from hyperion.intake.inbox import Inbox, InboxWatcher
    from hyperion.logs import setup_logging

    stdin = sys.stdin.buffer
    settings = _settings_from(stdin)
    setup_logging(settings.log_level, settings.log_format)
    if settings.nice:
        try:
            os.nice(settings.nice)
        except OSError as exc:
            log.warning("intake process: cannot lower its priority: %s", exc)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    parent = _Parent()
    app = App.with_policy(settings.config, settings.policy)
    app.warm_up()
    inbox = Inbox(app)
    watcher = InboxWatcher(inbox, on_taken=parent.took)
    watcher.start()                   # watch first, then scan: no file slips between the two
    try:
        inbox.scan(on_taken=parent.took)
        parent.send({"ready": os.getpid(), "counters": METRICS.take_counters()})
        threading.Thread(target=_stop_at_eof, args=(stdin, stop), name="parent-watch",
                         daemon=True).start()
        watcher.run(stop)
    except BrokenPipeError:
        pass                          # the parent is gone: stop
    finally:
        watcher.stop()
        app.records.flush()
    return 0


if __name__ == "__main__":
    # Through the module's import, not as __main__: the parent pickled the module's classes.
    from hyperion.intake.process import main as _main

    sys.exit(_main())
