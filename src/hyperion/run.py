"""Running a child process safely: the one place where hyperion starts checks and agent harnesses.

The rules, all enforced here:

* argv only, never a shell; the environment is scrubbed (:func:`scrubbed_env`) unless the
  caller passes a full one; stdin is ``/dev/null``; every other descriptor is closed.
* stdout and stderr share one pipe, so the output file shows them interleaved as the child
  wrote them. The parent copies the pipe to ``output_path`` up to ``max_output_bytes`` and then
  keeps draining (so the child never blocks on a full pipe) but discards, counting every byte.
* The child leads a new session and process group. On timeout the whole group gets SIGTERM,
  then SIGKILL after ``kill_grace_s``. When the child exits by itself, whatever is left of its
  group (a daemon a check put in the background) gets SIGKILL, so nothing outlives the run.
* The parent never hangs on a pipe held open by a process that outlives the child: once the
  child has exited and its group is killed, reading stops after a short drain.

Linux only (it uses ``pidfd_open`` when available, ``waitid`` and process groups). A process
that leaves the group on purpose (``setsid``) escapes the group kill; containing that needs a
cgroup, which belongs with the resource limits (see :func:`_spawn`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["RunResult", "abort_all", "run_command", "scrubbed_env"]

#: Variables of the daemon's environment that a child may see (besides ``LC_*``).
KEPT_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")

_LIMIT_NAMES = frozenset({"cpu", "as", "fsize", "nproc", "nofile"})
_READ_CHUNK = 64 * 1024
#: Longest wait for the pipe to reach end-of-file once the child is gone and its group killed.
_DRAIN_AFTER_EXIT_S = 0.5
#: Polling interval when ``pidfd_open`` is not available (old kernels, strict seccomp).
_POLL_S = 0.05
# Process groups of the commands running now, for abort_all().
_active: set[int] = set()
_aborted: set[int] = set()
_active_lock = threading.Lock()


@dataclass(frozen=True)
class RunResult:
    """What happened to one child process.

    ``exit_code`` is the child's exit status, negative (``-N``) when a signal N it did not get
    from us ended it, and ``None`` when it could not start or was killed for its timeout.
    ``tail`` is the end of everything the child wrote (also past the cap), at most
    ``tail_bytes`` bytes, decoded as UTF-8 with replacement characters.
    """

    argv: tuple[str, ...]
    exit_code: int | None
    timed_out: bool
    start_error: str | None
    duration_s: float
    output_path: Path
    output_bytes: int
    truncated: bool
    tail: str

    aborted: bool = False      # killed by abort_all() (hyperion stopping), not by its own doing

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.start_error is None


def scrubbed_env(extra: Mapping[str, str] | None = None, *,
                 base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the few harmless variables of ``base``, then ``extra``.

    From ``base`` (default: ``os.environ``) only PATH, HOME, LANG, LANGUAGE, TZ, TMPDIR and
    ``LC_*`` are kept; TERM is forced to ``dumb``. Tokens, keys, ``GIT_*``, ``PYTHONPATH``,
    ``VIRTUAL_ENV`` and everything else of the daemon never reach the child unless ``extra``
    (applied last, so it may override anything) names them.
    """
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items()
           if key in KEPT_ENV or key.startswith("LC_")}
    env["TERM"] = "dumb"
    if extra:
        env.update(extra)
    return env


def run_command(argv: Sequence[str], *, cwd: Path, timeout_s: float, output_path: Path,
                env: Mapping[str, str] | None = None,
                max_output_bytes: int = 8 * 1024 * 1024, tail_bytes: int = 4096,
                kill_grace_s: float = 3.0,
                limits: Mapping[str, int] | None = None) -> RunResult:
    """Run ``argv`` in ``cwd`` to completion or until ``timeout_s``; never raises for a child
    that cannot start (see :attr:`RunResult.start_error`).

    ``env`` is the child's full environment (default :func:`scrubbed_env`). ``limits`` are
    resource limits the child and everything it starts inherit, by name: ``cpu`` (seconds),
    ``as`` (bytes of address space), ``fsize`` (bytes), ``nproc``, ``nofile``. Raises
    :class:`ValueError` for an empty argv, a non-str item, or a nonsensical limit.
    """
    args = _check_argv(argv)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
    if max_output_bytes < 0 or tail_bytes < 0 or kill_grace_s < 0:
        raise ValueError("max_output_bytes, tail_bytes and kill_grace_s must not be negative")
    child_env = dict(scrubbed_env() if env is None else env)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    capture = _Capture(max_output_bytes, tail_bytes)
    started = time.monotonic()
    with open(output_path, "wb") as out:
        try:
            proc = _spawn(_with_limits(_located(args, child_env), limits, cwd), cwd,
                          child_env)
        except OSError as exc:
            message = _start_error(exc, args, cwd)
            out.write(f"[hyperion: could not start: {message}]\n".encode())
            return RunResult(argv=args, exit_code=None, timed_out=False, start_error=message,
                             duration_s=time.monotonic() - started, output_path=output_path,
                             output_bytes=0, truncated=False, tail="")
        with _active_lock:
            _active.add(proc.pid)
        try:
            timed_out = _supervise(proc, out, capture, started + timeout_s, kill_grace_s)
        finally:
            with _active_lock:
                _active.discard(proc.pid)
                aborted = proc.pid in _aborted
                _aborted.discard(proc.pid)
            if proc.returncode is None:
                # Only reached on an error in the parent (or KeyboardInterrupt): the group
                # must not outlive us. The unreaped child keeps its pgid reserved.
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        duration = time.monotonic() - started
        if timed_out:
            out.write(_note_line(capture, f"[hyperion: timed out after {timeout_s:g} s; "
                                          "process group killed]"))
        if capture.truncated:
            out.write(_note_line(capture, "[hyperion: output truncated after "
                                          f"{max_output_bytes} bytes]"))
    return RunResult(argv=args, exit_code=None if timed_out else proc.returncode,
                     timed_out=timed_out, start_error=None, duration_s=duration,
                     output_path=output_path, output_bytes=capture.total,
                     truncated=capture.truncated,
                     tail=bytes(capture.tail).decode("utf-8", errors="replace"),
                     aborted=aborted)


def abort_all() -> int:
    """Kill the process group of every command running now (a daemon past its drain timeout).
    Their results come back with ``aborted=True``. Returns how many were killed."""
    with _active_lock:
        groups = list(_active)
        _aborted.update(groups)
    for pgid in groups:
        _kill_group(pgid, signal.SIGKILL)
    return len(groups)


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise ValueError("argv must be a list of strings, not a single string (no shell)")
    args = tuple(argv)
    if not args:
        raise ValueError("argv must not be empty")
    for i, item in enumerate(args):
        if not isinstance(item, str):
            raise ValueError(f"argv[{i}] is {type(item).__name__}, not str")
        if "\0" in item:
            raise ValueError(f"argv[{i}] contains a NUL character")
    return args


def find_program(name: str, path: str | None = None) -> str | None:
    """What a child started as ``name`` runs: ``name`` itself when it has a folder in it
    (``./scripts/test.sh``, the configuration's own choice of a file), else the program of
    that name in the absolute folders of ``path`` (default: this process's PATH); None when
    there is none. Relative folders ("." or an empty entry) are left out: children start in
    a worktree, where they would find a file of that name that a request put there."""
    if "/" in name:
        return name
    path = os.environ.get("PATH", os.defpath) if path is None else path
    folders = os.pathsep.join(p for p in path.split(os.pathsep) if os.path.isabs(p))
    return shutil.which(name, path=folders)


def _located(args: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """``args`` with its program as :func:`find_program` finds it in the child's PATH."""
    found = find_program(args[0], env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found", args[0])
    return (found, *args[1:])


def _with_limits(args: tuple[str, ...], limits: Mapping[str, int] | None,
                 cwd: Path) -> tuple[str, ...]:
    """The argv that starts ``args`` (its program a path, see :func:`_located`) under
    ``limits``: through rlimit_exec.py, which sets them and then execs the command (so the
    limits bind the check and all it starts). A program that is missing or not runnable is
    refused here, as starting it directly would be, not by the launcher's exit."""
    if not limits:
        return args
    program = os.path.join(cwd, args[0])     # relative to the child's folder, as it runs
    if not os.path.isfile(program):
        raise FileNotFoundError(errno.ENOENT, "not found", args[0])
    if not os.access(program, os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", args[0])
    spec = [f"{name}={int(value)}" for name, value in sorted(limits.items())]
    for item in spec:
        if item.split("=", 1)[0] not in _LIMIT_NAMES:
            raise ValueError(f"unknown resource limit {item.split('=', 1)[0]!r}")
    launcher = str(Path(__file__).with_name("rlimit_exec.py"))
    return (sys.executable, "-I", "-S", launcher, *spec, "--", *args)


def _spawn(args: tuple[str, ...], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the child in a new session (its own process group). Resource limits are set by
    the launcher of :func:`_with_limits`; a cgroup would also contain processes that leave
    the group, which this does not."""
    return subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
                            close_fds=True, start_new_session=True)


def _start_error(exc: OSError, args: tuple[str, ...], cwd: Path) -> str:
    """One line for a child that could not start (no traceback)."""
    if exc.filename is not None and os.fsdecode(exc.filename) == os.fsdecode(cwd):
        return f"working directory not usable: {cwd} ({exc.strerror})"
    if isinstance(exc, FileNotFoundError):
        return f"executable not found: {args[0]}"
    if isinstance(exc, PermissionError):
        return f"executable not runnable (permission denied): {args[0]}"
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
    return f"could not start {args[0]}: {reason}"


class _Capture:
    """Copies output to the file up to the cap, counts everything, keeps a rolling tail."""

    def __init__(self, limit: int, tail_bytes: int) -> None:
        self.limit = limit
        self.tail_bytes = tail_bytes
        self.total = 0
        self.written = 0
        self.tail = bytearray()
        self.last_written = b""  # the last byte put in the file, for the notes appended later

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def add(self, chunk: bytes, out: BinaryIO) -> None:
        self.total += len(chunk)
        room = self.limit - self.written
        if room > 0:
            kept = chunk[:room]
            out.write(kept)
            self.written += len(kept)
            if kept:
                self.last_written = kept[-1:]
        if self.tail_bytes:
            self.tail += chunk
            excess = len(self.tail) - self.tail_bytes
            if excess > 0:
                del self.tail[:excess]


def _note_line(capture: _Capture, text: str) -> bytes:
    """``text`` as a line of its own after whatever the output file holds so far."""
    prefix = "\n" if capture.written and capture.last_written != b"\n" else ""
    capture.last_written = b"\n"
    return f"{prefix}{text}\n".encode()


def _supervise(proc: subprocess.Popen[bytes], out: BinaryIO, capture: _Capture,
               deadline: float, kill_grace_s: float) -> bool:
    """Copy output until the child exits (or is killed), then kill its group, drain the pipe
    and reap. Returns whether the child was killed for its timeout."""
    assert proc.stdout is not None
    pipe_fd = proc.stdout.fileno()
    pgid = proc.pid  # start_new_session: the child leads its own group
    pidfd = _pidfd_open(proc.pid)
    timed_out = False
    kill_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(pipe_fd, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        pipe_open = True
        try:
            while not _has_exited(proc.pid):
                now = time.monotonic()
                if kill_at is None and now >= deadline:
                    timed_out = True
                    _kill_group(pgid, signal.SIGTERM)
                    kill_at = now + kill_grace_s
                if kill_at is not None and now >= kill_at:
                    _kill_group(pgid, signal.SIGKILL)
                    kill_at = float("inf")  # wait for the exit without a further deadline
                wake = deadline if kill_at is None else kill_at
                # With a pidfd the child's exit wakes the select; the cap is only a safety net.
                wait = min(max(0.0, wake - now), 1.0 if pidfd is not None else _POLL_S)
                for key, _ in sel.select(wait):
                    if key.fd == pipe_fd and pipe_open and not _read(pipe_fd, out, capture):
                        sel.unregister(pipe_fd)
                        pipe_open = False
            # The child is a zombie now, so its pid (the pgid) cannot be reused: anything
            # left in its group is killed before the child is reaped.
            _kill_group(pgid, signal.SIGKILL)
            if pidfd is not None:
                sel.unregister(pidfd)  # stays readable from now on; only the pipe matters
            if pipe_open:
                _drain(sel, pipe_fd, out, capture)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    proc.wait()
    return timed_out


def _drain(sel: selectors.BaseSelector, pipe_fd: int, out: BinaryIO, capture: _Capture) -> None:
    """Read what is left in the pipe until end-of-file, but never for long: a process that
    escaped the group kill may hold the pipe open forever."""
    until = time.monotonic() + _DRAIN_AFTER_EXIT_S
    while (left := until - time.monotonic()) > 0:
        if not sel.select(left) or not _read(pipe_fd, out, capture):
            return


def _read(fd: int, out: BinaryIO, capture: _Capture) -> bool:
    """One read from the pipe; False at end-of-file."""
    try:
        chunk = os.read(fd, _READ_CHUNK)
    except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
        return True
    if not chunk:
        return False
    capture.add(chunk, out)
    return True


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _has_exited(pid: int) -> bool:
    """Whether the child has terminated, without reaping it (it stays a zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped elsewhere; nothing left to wait for
        return True


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    if pgid <= 1 or pgid == os.getpgrp():
        return  # never signal ourselves or everything
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
