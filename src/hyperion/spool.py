"""The spool: hyperion's durable lease-file queue, and the only owner of state_dir/spool/.

It is modelled on Postfix's queue manager and on maildir. An item's state is the directory its
file is in, and every change of state is one atomic ``rename``. Nothing that ``put`` accepted is
lost across ``kill -9`` (or, with a journalling filesystem, a power loss), and nothing is deleted
silently: items are only ever moved.

The contract
============

``put(item_id, payload, priority=0, not_before=None) -> bool``
    Stores the item durably in ``queued/`` and returns True; once it returns, the item survives
    a crash. Returns False, changing nothing, when ``item_id`` is already known to the spool in
    any state (queued, running, done, dead, or quarantined in corrupt/): ids are never reused.
    ``item_id`` is 1-128 characters of ``[A-Za-z0-9._-]`` starting with a letter or digit
    (ValueError otherwise); ``priority`` is an int in [-999999, 999999].
``lease(owner, ttl_s=60) -> Lease | None``
    Takes the next ready item: the highest priority first, first in first out within a
    priority; an item whose ``not_before`` is in the future is not ready. None when nothing is.
    At most one holder has an item at a time, across threads and processes. A Spool reuses its
    listing of queued/ between leases: items this process adds are seen at once, items other
    processes add within ``VIEW_MAX_AGE_S`` (1 s), or at once when nothing listed is ready.
``heartbeat(lease, ttl_s=None) -> Lease``
    Extends the lease by ``ttl_s`` from now (default: the ttl it was taken with).
``ack(lease)``
    The item is finished: it moves to ``done/``.
``retry(lease, delay_s, error)``
    Back to ``queued/`` with ``attempts + 1``, ``not_before = now + delay_s`` and ``error`` kept
    as its ``last_error``. It goes to the back of its priority.
``bury(lease, error)``
    The item failed for good: it moves to ``dead/`` with ``error`` kept as ``last_error``.
``sweep() -> int``
    Puts stale leases back in the queue with ``attempts + 1`` and returns how many. A lease is
    stale when it expired, when its holder's process is gone (same host: the pid is dead, a
    zombie, reused, or the host rebooted), or when a leased item has no lease record for
    longer than a short grace (its leaser crashed between taking it and recording the lease).
    heartbeat, ack, retry and bury raise ``LeaseLost`` once a lease was swept; a lease that
    expired but was not swept yet can still be extended or closed.
``counts()``, ``state_of(item_id)``, ``next_ready_at()``
    Read-only views; ``counts`` is a snapshot and may be off by one item in motion.

``Lease.attempts`` counts earlier tries: 0 on the first lease, +1 per ``retry`` and per sweep.

On disk
=======

::

    tmp/                    files being written (never read; sweep removes leftovers > 1 h)
    queued/<name>           waiting or ready
    running/<name>          leased, beside running/<name>.lease
    running/<name>.lease    the lease record: JSON {owner, host, pid, pid_start, boot_id,
                            acquired, expires, ttl_s, token}
    done/<id>.item          acknowledged
    dead/<id>.item          buried
    keys/<id>               dedupe keys: a hard link to the item as first put (link() fails
                            if the key exists, like O_EXCL, and creates no second file); never
                            removed, so an id is known forever
    corrupt/<name>          unreadable items, with <name>.reason beside them
    .lock                   flock serialising every change except the lease rename itself

A queued or running item is named
``<999999 - priority, 7 digits>-<order, 20 digits>-<not_before in ms, 14 digits>-<host>-<pid>-
<random>-<item_id>.item``: a sorted listing is lease order, the name says when the item is ready
without opening it, and no name is ever used twice (a retried item gets a new one).

An item file is one line of JSON, the header ``{"v": 1, "id", "priority", "attempts",
"not_before", "enqueued_at", "last_error"}``, then a newline, then the payload bytes as given.

Durability. Items are written to tmp/, fsynced, renamed into place, and the destination
directory fsynced (on ext4 and xfs a rename is one journal transaction, so the source side
goes with it):

- put: tmp + fsync; under the lock link keys/<id> + fsync(keys/); rename into queued/ +
  fsync(queued/). A crash after the key and before the item leaves a key alone: the next put
  of that id finds no item and puts it.
- lease: one rename queued/ -> running/ (of two leasers the loser gets ENOENT and tries the
  next item), then, under the lock, the lease record. Records are atomic (tmp + rename) but
  not fsynced: a lost record reads as "leaser crashed", which the sweeper handles.
- ack, bury: (bury: rewrite the item with its error over running/<name>) rename into done/ or
  dead/ + fsync, then remove the lease record.
- retry, sweep: rewrite the item (attempts + 1, not_before, last_error) over running/<name>,
  rename it to queued/<new name> + fsync, then remove the lease record.

At every crash point each item exists exactly once and is leasable by at most one holder; the
worst case is a rewritten item left in running/, which the sweeper returns (counting the
attempt again). A lease record without its item is removed by sweep. A file whose header cannot
be read is moved to corrupt/ and logged (logger ``hyperion.spool``), never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hyperion.fsutil import fsync_dir, write_atomic

log = logging.getLogger("hyperion.spool")

STATES = ("queued", "running", "done", "dead")
PRIORITY_MIN = -999_999
PRIORITY_MAX = 999_999
DEFAULT_ORPHAN_GRACE_S = 10.0
TMP_MAX_AGE_S = 3600.0
VIEW_MAX_AGE_S = 1.0
MAX_ERROR_CHARS = 8000
ITEM_SUFFIX = ".item"
LEASE_SUFFIX = ".lease"

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_RE = re.compile(r"(\d{7})-(\d{20})-(\d{14})-[A-Za-z0-9]{1,16}-\d{1,10}-[0-9a-f]{8}-"
                      r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.item")
_MAX_READY_MS = 10**14 - 1
_HOST = socket.gethostname()
_HOST_TOKEN = re.sub(r"[^A-Za-z0-9]", "", _HOST)[:16] or "host"


def _read_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


_BOOT_ID = _read_boot_id()


class LeaseLost(Exception):
    """The lease is no longer held (it was swept back to the queue, or already closed)."""


@dataclass(frozen=True)
class Lease:
    """One held item. ``attempts`` counts earlier tries (0 on the first lease, +1 per retry and
    per sweep); ``expires_at`` is ``time.time()`` based. Pass it back to heartbeat, ack, retry
    or bury; heartbeat returns the updated Lease to use from then on."""

    id: str
    payload: bytes = field(repr=False)
    attempts: int
    owner: str
    expires_at: float
    _name: str = field(default="", repr=False)
    _token: str = field(default="", repr=False)
    _ttl_s: float = field(default=60.0, repr=False)


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class _Header:
    id: str
    priority: int
    attempts: int
    not_before: float | None
    enqueued_at: float
    last_error: str | None

    def encode(self, payload: bytes) -> bytes:
        head = json.dumps({"v": 1, "id": self.id, "priority": self.priority,
                           "attempts": self.attempts, "not_before": self.not_before,
                           "enqueued_at": self.enqueued_at, "last_error": self.last_error},
                          separators=(",", ":"))
        return head.encode("ascii") + b"\n" + payload


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decode(data: bytes, expect_id: str) -> tuple[_Header, bytes]:
    head, newline, payload = data.partition(b"\n")
    if not newline:
        raise _Corrupt("no header line")
    try:
        obj = json.loads(head)
    except ValueError as exc:    # includes UnicodeDecodeError
        raise _Corrupt(f"the header is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Corrupt("the header is not a JSON object")
    not_before = obj.get("not_before")
    last_error = obj.get("last_error")
    if not (isinstance(obj.get("id"), str) and _is_int(obj.get("priority"))
            and _is_int(obj.get("attempts")) and obj["attempts"] >= 0
            and (not_before is None or _is_number(not_before))
            and _is_number(obj.get("enqueued_at"))
            and (last_error is None or isinstance(last_error, str))):
        raise _Corrupt("the header lacks a field or has one of the wrong type")
    if obj["id"] != expect_id:
        raise _Corrupt(f"the header's id {obj['id']!r} is not the id in the file name")
    return _Header(id=obj["id"], priority=obj["priority"], attempts=obj["attempts"],
                   not_before=None if not_before is None else float(not_before),
                   enqueued_at=float(obj["enqueued_at"]), last_error=last_error), payload


@dataclass(frozen=True)
class _Name:
    """What a queued/running file name says."""

    name: str
    id: str
    seq: int
    ready_ms: int

    @property
    def ready_at(self) -> float:
        """When the item may be leased: its not_before, else when it was enqueued."""
        return self.ready_ms / 1000 if self.ready_ms else self.seq / 1e9


def _parse_name(name: str) -> _Name | None:
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    return _Name(name=name, id=match.group(4), seq=int(match.group(2)),
                 ready_ms=int(match.group(3)))


_seq_lock = threading.Lock()
_seq_last = 0


def _next_seq() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (FIFO among threads)."""
    global _seq_last
    with _seq_lock:
        _seq_last = max(time.time_ns(), _seq_last + 1)
        return _seq_last


_generations: dict[str, int] = {}
_generations_lock = threading.Lock()


def _generation(key: str, *, bump: bool = False) -> int:
    """A counter per spool root, bumped by this process whenever it adds to queued/."""
    with _generations_lock:
        value = _generations.get(key, 0) + bump
        _generations[key] = value
        return value


def _queue_name(header: _Header) -> str:
    ready_ms = 0
    if header.not_before is not None:
        ready_ms = min(max(0, math.floor(header.not_before * 1000)), _MAX_READY_MS)
    return (f"{PRIORITY_MAX - header.priority:07d}-{_next_seq():020d}-{ready_ms:014d}-"
            f"{_HOST_TOKEN}-{os.getpid()}-{secrets.token_hex(4)}-{header.id}{ITEM_SUFFIX}")


def _check_id(item_id: str) -> None:
    if not isinstance(item_id, str) or _ID_RE.fullmatch(item_id) is None:
        raise ValueError(f"invalid spool item id {item_id!r}: use 1-128 characters of "
                         "[A-Za-z0-9._-] starting with a letter or digit")


def _check_seconds(name: str, value: float, *, allow_negative: bool = False) -> None:
    if not _is_number(value) or not math.isfinite(value) or (value < 0 and not allow_negative):
        raise ValueError(f"{name} must be a finite number{'' if allow_negative else ' >= 0'}, "
                         f"not {value!r}")


def _clip(error: str) -> str:
    error = str(error)
    return error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "..."


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, from /proc; None if unknown."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_gone(pid: int, pid_start: object) -> str | None:
    """Why the process ``pid`` (started at ``pid_start``) no longer runs on this host, if so."""
    if pid <= 0:
        return "its pid is invalid"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its process {pid} is gone"
    except PermissionError:
        pass                                    # alive, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return None
    state, started = stat
    if state in ("Z", "X"):
        return f"its process {pid} has exited"
    if _is_int(pid_start) and started != pid_start:
        return f"its process {pid} is gone (the pid was reused)"
    return None


@dataclass(frozen=True)
class _LeaseRecord:
    owner: str
    host: str
    pid: int
    pid_start: int | None
    boot_id: str | None
    acquired: float
    expires: float
    ttl_s: float
    token: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def gone(self) -> str | None:
        """Why this lease's holder is certainly gone; None when it may be alive."""
        if self.host != _HOST:
            return None                         # cannot tell: only expiry applies
        if self.boot_id is not None and _BOOT_ID is not None and self.boot_id != _BOOT_ID:
            return "its host rebooted"
        return _process_gone(self.pid, self.pid_start)


def _read_lease_record(path: Path) -> _LeaseRecord | None:
    """The lease record at ``path``; None if it is missing or unreadable."""
    try:
        obj: Any = json.loads(path.read_bytes())
        return _LeaseRecord(
            owner=str(obj["owner"]), host=str(obj["host"]), pid=int(obj["pid"]),
            pid_start=obj.get("pid_start") if _is_int(obj.get("pid_start")) else None,
            boot_id=obj.get("boot_id") if isinstance(obj.get("boot_id"), str) else None,
            acquired=float(obj["acquired"]), expires=float(obj["expires"]),
            ttl_s=float(obj["ttl_s"]), token=str(obj["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("unreadable lease record %s (%s); treating it as absent", path, exc)
        return None


class Spool:
    """A durable queue in ``root``; see the module docstring for the contract."""

    def __init__(self, root: Path, *, orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S) -> None:
        _check_seconds("orphan_grace_s", orphan_grace_s)
        self.root = Path(root)
        self.orphan_grace_s = orphan_grace_s
        self.tmp = self.root / "tmp"
        self.queued = self.root / "queued"
        self.running = self.root / "running"
        self.done = self.root / "done"
        self.dead = self.root / "dead"
        self.keys = self.root / "keys"
        self.corrupt = self.root / "corrupt"
        self._lock_path = self.root / ".lock"
        self._key = os.path.realpath(self.root)
        self._view_lock = threading.Lock()
        self._view: list[_Name] = []
        self._view_generation = -1
        self._view_at = 0.0
        for directory in (self.tmp, self.queued, self.running, self.done, self.dead, self.keys):
            directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ the contract
    def put(self, item_id: str, payload: bytes, *, priority: int = 0,
            not_before: float | None = None) -> bool:
        _check_id(item_id)
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if not _is_int(priority) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be an int in [{PRIORITY_MIN}, {PRIORITY_MAX}], "
                             f"not {priority!r}")
        if not_before is not None:
            _check_seconds("not_before", not_before, allow_negative=True)
        header = _Header(id=item_id, priority=priority, attempts=0,
                         not_before=None if not_before is None else float(not_before),
                         enqueued_at=time.time(), last_error=None)
        tmp = self._write_tmp(header.encode(payload), sync=True)
        moved = False
        try:
            with self._locked():
                # The key (a hard link to the new item: no second file to create) is durable
                # before the item is: a crash between the two leaves a key without an item,
                # which the next put of the same id notices and completes.
                if not self._claim_key(item_id, tmp):
                    return False
                os.rename(tmp, self.queued / _queue_name(header))
                moved = True
                fsync_dir(self.queued)
        finally:
            if not moved:
                tmp.unlink(missing_ok=True)
        _generation(self._key, bump=True)
        return True

    def lease(self, owner: str, ttl_s: float = 60) -> Lease | None:
        _check_seconds("ttl_s", ttl_s)
        view, fresh = self._queue_view(refresh=False)
        while True:
            now_ms = time.time() * 1000
            for entry in view:
                if entry.ready_ms > now_ms:
                    continue
                self._forget(entry)             # whoever wins, it leaves queued/
                try:
                    os.rename(self.queued / entry.name, self.running / entry.name)
                except FileNotFoundError:
                    continue                    # another leaser won this one
                lease = self._record_lease(entry, owner, ttl_s)
                if lease is not None:
                    return lease
            if fresh:
                return None
            view, fresh = self._queue_view(refresh=True)

    def heartbeat(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        ttl = lease._ttl_s if ttl_s is None else ttl_s
        _check_seconds("ttl_s", ttl)
        with self._locked():
            record = self._held(lease)
            expires = time.time() + ttl
            self._write_lease_record(lease._name, replace(record, expires=expires, ttl_s=ttl))
        return replace(lease, expires_at=expires, _ttl_s=ttl)

    def ack(self, lease: Lease) -> None:
        with self._locked():
            self._held(lease)
            self._finish(lease, self.done, None)

    def retry(self, lease: Lease, delay_s: float, error: str) -> None:
        _check_seconds("delay_s", delay_s, allow_negative=True)
        with self._locked():
            self._held(lease)
            header, payload = self._read_running(lease)
            self._requeue(lease._name, replace(
                header, attempts=header.attempts + 1,
                not_before=time.time() + max(0.0, delay_s), last_error=_clip(error)), payload)

    def bury(self, lease: Lease, error: str) -> None:
        with self._locked():
            self._held(lease)
            self._finish(lease, self.dead, _clip(error))

    def sweep(self) -> int:
        swept = 0
        with self._locked():
            now = time.time()
            names = self._names(self.running)
            items = {raw: entry for raw in names if (entry := _parse_name(raw)) is not None}
            for raw, entry in items.items():
                reason = self._stale(raw, now)
                if reason is None:
                    continue
                path = self.running / raw
                try:
                    header, payload = _decode(path.read_bytes(), entry.id)
                except FileNotFoundError:
                    continue
                except _Corrupt as exc:
                    self._quarantine(path, str(exc))
                    self._drop_lease_record(raw)
                    continue
                log.warning("returning %s to the queue (attempt %d): %s", entry.id,
                            header.attempts + 1, reason, extra={"request_id": entry.id})
                self._requeue(raw, replace(header, attempts=header.attempts + 1,
                                           last_error=_clip(f"lease lost: {reason}")), payload)
                swept += 1
            for raw in names:
                if raw.endswith(LEASE_SUFFIX) and raw[:-len(LEASE_SUFFIX)] not in items:
                    # The item was closed by a holder that crashed before removing its record.
                    (self.running / raw).unlink(missing_ok=True)
            self._clean_tmp(now)
        return swept

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for raw in self._names(self._dir(state))
                           if self._is_item(state, raw))
                for state in STATES}

    def state_of(self, item_id: str) -> str | None:
        _check_id(item_id)
        with self._locked():
            return self._locate(item_id)

    def next_ready_at(self) -> float | None:
        ready = [entry.ready_at for raw in self._names(self.queued)
                 if (entry := _parse_name(raw)) is not None]
        return min(ready) if ready else None

    # ------------------------------------------------------------------ locking and keys
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A fresh open file description per use: flock then excludes other threads of this
        # process as well as other processes, and dies with a killed holder.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _claim_key(self, item_id: str, item: Path) -> bool:
        """Link keys/<id> to ``item`` durably; False if the id is known. Under the lock."""
        try:
            os.link(item, self.keys / item_id)
        except FileExistsError:
            if self._locate(item_id) is not None or self._in_corrupt(item_id):
                return False
            log.warning("spool key %s had no item (a put was interrupted); putting it now",
                        item_id, extra={"request_id": item_id})
            return True
        fsync_dir(self.keys)
        return True

    def _write_tmp(self, data: bytes, *, sync: bool) -> Path:
        """A new file in tmp/ holding ``data`` (fsynced if ``sync``)."""
        path = self.tmp / f".{os.getpid()}.{secrets.token_hex(6)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    # ------------------------------------------------------------------ leases
    def _record_lease(self, entry: _Name, owner: str, ttl_s: float) -> Lease | None:
        path = self.running / entry.name
        with self._locked():
            try:
                # Gone if a sweeper found it without a lease record past the grace.
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            try:
                header, payload = _decode(data, entry.id)
            except _Corrupt as exc:
                self._quarantine(path, str(exc))
                return None
            now = time.time()
            pid = os.getpid()
            stat = _proc_stat(pid)
            record = _LeaseRecord(owner=owner, host=_HOST, pid=pid,
                                  pid_start=stat[1] if stat else None, boot_id=_BOOT_ID,
                                  acquired=now, expires=now + ttl_s, ttl_s=ttl_s,
                                  token=secrets.token_hex(8))
            self._write_lease_record(entry.name, record)
        return Lease(id=entry.id, payload=payload, attempts=header.attempts, owner=owner,
                     expires_at=record.expires, _name=entry.name, _token=record.token,
                     _ttl_s=ttl_s)

    def _write_lease_record(self, name: str, record: _LeaseRecord) -> None:
        # Atomic but not fsynced: after a power loss a lost or empty record reads as "no
        # record", the state of a leaser that crashed, and the sweeper returns the item.
        tmp = self._write_tmp(record.encode(), sync=False)
        try:
            os.replace(tmp, self.running / (name + LEASE_SUFFIX))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _drop_lease_record(self, name: str) -> None:
        (self.running / (name + LEASE_SUFFIX)).unlink(missing_ok=True)

    def _held(self, lease: Lease) -> _LeaseRecord:
        """The lease's record, if the lease is still held. Called under the lock."""
        record = _read_lease_record(self.running / (lease._name + LEASE_SUFFIX))
        if (record is None or record.token != lease._token
                or not (self.running / lease._name).exists()):
            raise LeaseLost(f"the lease of {lease.id} by {lease.owner} is no longer held "
                            "(it was swept back to the queue, or already closed)")
        return record

    def _stale(self, name: str, now: float) -> str | None:
        """Why the running item ``name`` is stale, or None if its lease holds."""
        record = _read_lease_record(self.running / (name + LEASE_SUFFIX))
        if record is None:
            try:
                age = now - os.stat(self.running / name).st_ctime
            except FileNotFoundError:
                return None
            if age < self.orphan_grace_s:
                return None
            return f"no lease record {age:.1f} s after it was leased (its leaser crashed)"
        holder = f"{record.owner} (pid {record.pid} on {record.host})"
        if record.expires < now:
            return f"the lease of {holder} expired {now - record.expires:.1f} s ago"
        gone = record.gone()
        return None if gone is None else f"the lease holder {holder}: {gone}"

    # ------------------------------------------------------------------ moves
    def _read_running(self, lease: Lease) -> tuple[_Header, bytes]:
        path = self.running / lease._name
        try:
            return _decode(path.read_bytes(), lease.id)
        except _Corrupt as exc:
            self._quarantine(path, str(exc))
            self._drop_lease_record(lease._name)
            raise LeaseLost(f"the item {lease.id} became unreadable and was moved to "
                            f"{self.corrupt}") from None

    def _requeue(self, name: str, header: _Header, payload: bytes) -> None:
        """running/<name> -> queued/<new name> with ``header``. Called under the lock.

        First the rewrite replaces running/<name> (one rename), then one rename moves it: a
        crash between the two leaves the rewritten item in running/ for the sweeper.
        """
        path = self.running / name
        write_atomic(path, header.encode(payload), tmp_dir=self.tmp, sync_dir=False)
        os.rename(path, self.queued / _queue_name(header))
        fsync_dir(self.queued)
        _generation(self._key, bump=True)
        self._drop_lease_record(name)

    def _finish(self, lease: Lease, directory: Path, error: str | None) -> None:
        """running/<name> -> done/ or dead/ (with ``error`` kept). Called under the lock."""
        path = self.running / lease._name
        if error is not None:
            header, payload = self._read_running(lease)
            write_atomic(path, replace(header, last_error=error).encode(payload),
                         tmp_dir=self.tmp, sync_dir=False)
        dest = directory / f"{lease.id}{ITEM_SUFFIX}"
        if os.path.lexists(dest):
            # Cannot happen while keys/ is intact; never overwrite, keep the unique name.
            log.error("%s already exists; keeping %s under its queue name", dest, lease.id,
                      extra={"request_id": lease.id})
            dest = directory / lease._name
        os.rename(path, dest)
        fsync_dir(directory)
        self._drop_lease_record(lease._name)

    def _quarantine(self, path: Path, reason: str) -> None:
        """Move an unreadable item to corrupt/, with its reason beside it. Never deletes."""
        self.corrupt.mkdir(exist_ok=True)
        dest = self.corrupt / path.name
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return
        write_atomic(self.corrupt / (path.name + ".reason"), (reason + "\n").encode(),
                     tmp_dir=self.tmp)
        log.error("corrupt spool item %s moved to %s: %s", path, dest, reason)

    def _clean_tmp(self, now: float) -> None:
        for raw in self._names(self.tmp, hidden=True):
            path = self.tmp / raw
            try:
                if now - path.stat().st_mtime > TMP_MAX_AGE_S:
                    path.unlink()
                    log.info("removed %s, a temporary file left by an interrupted write", path)
            except FileNotFoundError:
                continue

    # ------------------------------------------------------------------ scans
    def _queue_view(self, *, refresh: bool) -> tuple[list[_Name], bool]:
        """queued/ in lease order, and whether that listing was just made.

        A listing is reused (minus what this instance took) until this process adds to
        queued/, or for VIEW_MAX_AGE_S: another process's new items are seen within that
        time, and at once when nothing in the reused listing is ready.
        """
        with self._view_lock:
            generation = _generation(self._key)
            if (refresh or not self._view or generation != self._view_generation
                    or time.monotonic() - self._view_at > VIEW_MAX_AGE_S):
                self._view = [entry for raw in self._names(self.queued)
                              if (entry := _parse_name(raw)) is not None]
                self._view_generation = generation
                self._view_at = time.monotonic()
                return list(self._view), True
            return list(self._view), False

    def _forget(self, entry: _Name) -> None:
        with self._view_lock, contextlib.suppress(ValueError):
            self._view.remove(entry)            # usually at the front: cheap

    def _dir(self, state: str) -> Path:
        return {"queued": self.queued, "running": self.running, "done": self.done,
                "dead": self.dead}[state]

    @staticmethod
    def _names(directory: Path, *, hidden: bool = False) -> list[str]:
        """Sorted names in ``directory``, without dotfiles unless ``hidden``."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if hidden or not n.startswith("."))

    @staticmethod
    def _is_item(state: str, name: str) -> bool:
        if _NAME_RE.fullmatch(name):
            return True
        return (state in ("done", "dead") and name.endswith(ITEM_SUFFIX)
                and _ID_RE.fullmatch(name[:-len(ITEM_SUFFIX)]) is not None)

    def _find(self, directory: Path, item_id: str) -> bool:
        suffix = f"-{item_id}{ITEM_SUFFIX}"
        return any(raw.endswith(suffix) and (entry := _parse_name(raw)) is not None
                   and entry.id == item_id for raw in self._names(directory))

    def _locate(self, item_id: str) -> str | None:
        # Under the lock only the lease rename queued -> running can happen, so looking in
        # queued/ before running/ cannot miss an item in motion.
        if self._find(self.queued, item_id):
            return "queued"
        if self._find(self.running, item_id):
            return "running"
        for state, directory in (("done", self.done), ("dead", self.dead)):
            if (directory / f"{item_id}{ITEM_SUFFIX}").exists():
                return state
        return None

    def _in_corrupt(self, item_id: str) -> bool:
        return self._find(self.corrupt, item_id)
