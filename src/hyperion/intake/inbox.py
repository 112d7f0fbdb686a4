"""The inbox directory source: a scan at start, then watchdog events, with a periodic rescan.

Files renamed into the inbox are complete when they appear. Files written in place are read
when the writer closes them; a parse that fails on a file still being written is retried until
the file has been quiet for ``settle_s``. A file leaves the inbox only after accept() made its
record durable. Dotfiles, ``*.part`` and ``*.tmp`` are someone's work in progress: ignored.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.fsutil import fsync_dir
from hyperion.intake.accept import Outcome, accept, reject
from hyperion.records import Source
from hyperion.requests import load_json

log = logging.getLogger("hyperion.intake")

IGNORED_SUFFIXES = (".part", ".tmp", ".swp", "~")
_NOT_YET = object()


def ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


class Inbox:
    def __init__(self, app: App, *, settle_s: float = 2.0) -> None:
        self.app = app
        self.dir = app.config.inbox
        self.settle_s = settle_s
        self.dir.mkdir(parents=True, exist_ok=True)

    def scan(self, *, wait: bool = False,
             on_taken: Callable[[], None] | None = None) -> list[Outcome]:
        """Ingest every file waiting now. Files that may still be being written are left for
        later, or with ``wait``, retried until they are complete or quiet for ``settle_s``.
        ``on_taken`` is called after each file taken."""
        out = []
        names = [n for n in sorted(os.listdir(self.dir)) if not ignored(n)]
        while names:
            later = []
            for name in names:
                result = self.ingest(self.dir / name, final=False)
                if isinstance(result, Outcome):
                    out.append(result)
                    if on_taken is not None:
                        on_taken()
                elif result is _NOT_YET:
                    later.append(name)
            if not wait:
                break
            names = later
            if names:
                time.sleep(0.1)
        return out

    def ingest(self, path: Path, *, final: bool) -> Outcome | object | None:
        """Outcome when the file was taken; _NOT_YET when it may still be being written;
        None when there is nothing to take (gone, a folder, ignored)."""
        if ignored(path.name) or path.parent != self.dir:
            return None
        source = Source(kind="inbox", name=str(path))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._refuse(path, source, "inbox entries must be regular files, not "
                                    "symbolic links; copy the request file in instead")
            log.warning("inbox: cannot open %s: %s", path.name, exc.strerror)
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None
            if not stat.S_ISREG(st.st_mode):
                return self._refuse(path, source, "inbox entries must be regular files")
            limit = self.app.config.limits.max_request_bytes
            data = _read_at_most(fd, limit + 1)
        finally:
            os.close(fd)
        quiet = time.time() - st.st_mtime >= self.settle_s
        outcome = accept(self.app, data, source) if (final or quiet) else \
            self._accept_if_complete(data, source)
        if outcome is _NOT_YET:
            return _NOT_YET
        assert isinstance(outcome, Outcome)
        self._remove(path, st)
        return outcome

    def _accept_if_complete(self, data: bytes, source: Source) -> Outcome | object:
        limits = self.app.config.limits
        if len(data) <= limits.max_request_bytes:
            try:
                load_json(data, max_bytes=limits.max_request_bytes,
                          max_depth=limits.max_json_depth)
            except GateError as exc:
                if exc.info.code is Code.INVALID_JSON:
                    return _NOT_YET   # perhaps half-written: wait for close or quiet
        return accept(self.app, data, source)

    def _refuse(self, path: Path, source: Source, message: str) -> Outcome:
        info = ErrorInfo(code=Code.PATH_TRAVERSAL, message=message, path=path.name)
        # What the entry is, not what it points to: the target is never read.
        marker = f"{path.name} -> (not followed), inode {os.lstat(path).st_ino}\n".encode()
        outcome = reject(self.app, marker, source, None, None, info, "intake")
        path.unlink(missing_ok=True)
        fsync_dir(self.dir)
        return outcome

    def _remove(self, path: Path, read: os.stat_result) -> None:
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return
        if (now.st_ino, now.st_size, now.st_mtime_ns) != (read.st_ino, read.st_size,
                                                           read.st_mtime_ns):
            return   # replaced or rewritten since we read it: the new content is ingested next
        path.unlink(missing_ok=True)
        fsync_dir(self.dir)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class InboxWatcher:
    """Feeds inbox events to :class:`Inbox` from one thread; pending retries are timed."""

    def __init__(self, inbox: Inbox, *, rescan_s: float = 30.0,
                 on_taken: Callable[[], None] | None = None) -> None:
        self.inbox = inbox
        self.rescan_s = rescan_s
        self.on_taken = on_taken       # after each file or scan taken (intake/process.py)
        self.events: queue.Queue[tuple[str, bool]] = queue.Queue()
        self._pending: list[tuple[float, str]] = []
        self._observer: Any = None

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        events = self.events

        class Handler(FileSystemEventHandler):
            def on_created(self, event: Any) -> None:
                if not event.is_directory:
                    events.put((event.src_path, False))

            def on_modified(self, event: Any) -> None:
                if not event.is_directory:
                    events.put((event.src_path, False))

            def on_moved(self, event: Any) -> None:
                if not event.is_directory:
                    events.put((event.dest_path, False))

            def on_closed(self, event: Any) -> None:
                if not event.is_directory:
                    events.put((event.src_path, True))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.inbox.dir), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def run(self, stop: threading.Event) -> None:
        """Process events until ``stop`` is set (the intake thread's body)."""
        next_scan = time.monotonic() + self.rescan_s
        while not stop.is_set():
            timeout = min(0.5, max(0.0, next_scan - time.monotonic()))
            if self._pending:
                timeout = min(timeout, max(0.0, self._pending[0][0] - time.monotonic()))
            try:
                path, final = self.events.get(timeout=timeout)
                self._handle(path, final)
            except queue.Empty:
                pass
            while self._pending and self._pending[0][0] <= time.monotonic():
                _, path = heapq.heappop(self._pending)
                self._handle(path, False)
            if time.monotonic() >= next_scan:
                self._taken(self._safely(self.inbox.scan))
                next_scan = time.monotonic() + self.rescan_s

    def _handle(self, raw: str | bytes, final: bool) -> None:
        path = Path(os.fsdecode(raw))
        result = self._safely(lambda: self.inbox.ingest(path, final=final))
        if result is _NOT_YET:
            heapq.heappush(self._pending, (time.monotonic() + 0.25, str(path)))
        else:
            self._taken(result)

    def _taken(self, result: Any) -> None:
        if result and self.on_taken is not None:
            self.on_taken()

    @staticmethod
    def _safely(fn: Any) -> Any:
        try:
            return fn()
        except Exception:   # a bad file must never stop intake; the next scan retries it
            log.exception("inbox: ingest failed; the file stays in the inbox for the next scan")
            return None


class InboxThread:
    """The inbox's intake as a thread of the calling process (`hyperion run` with
    ``intake.process: false``, or when its intake process cannot start)."""

    def __init__(self, app: App) -> None:
        self.inbox = Inbox(app)
        self.watcher = InboxWatcher(self.inbox)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.watcher.run, args=(self._stop,),
                                        name="intake", daemon=True)

    def start(self) -> None:
        self.watcher.start()         # watch first, then scan: no file slips between the two
        self.inbox.scan()
        self._thread.start()

    def supervise(self) -> float | None:
        return None

    def restart(self) -> None:
        """Nothing to do: the thread reads the App's configuration and policy as it goes."""

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.watcher.stop()
        self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        return {"mode": "thread", "alive": self._thread.is_alive()}
