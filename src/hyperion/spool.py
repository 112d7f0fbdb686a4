"""The spool: hyperion's durable lease-file queue, and the only owner of state_dir/spool/.

It is modelled on Postfix's queue manager and on maildir. An item's state is the directory its
file is in, and every change of state is one atomic ``rename``. Nothing that ``put`` accepted is
lost across ``kill -9`` or a power loss (on a journalling filesystem: ext4, xfs), and nothing is
deleted silently: items are only ever moved, except by an explicit ``prune``.

The contract
============

``put(item_id, payload, priority=0, not_before=None) -> bool``
    Stores the item durably in ``queued/`` and returns True; once it returns, the item survives
    a crash. Returns False, changing nothing, when ``item_id`` is already known to the spool in
    any state (queued, running, done, dead, quarantined in corrupt/, or pruned): ids are never
    reused. ``item_id`` is 1-128 characters of ``[A-Za-z0-9._-]`` starting with a letter or
    digit (ValueError otherwise); ``priority`` is an int in [-999999, 999999].
``lease(owner, ttl_s=60) -> Lease | None``
    Takes the next ready item: the highest priority first, first in first out within a
    priority; an item whose ``not_before`` is in the future is not ready. None when nothing is.
    At most one holder has an item at a time, across threads and processes. A lease does not
    scan the queue: the Spools of one process share an ordered view of queued/ (two heaps) that
    their own puts, retries and requeues update; the first lease of a process lists queued/
    once. Items other processes add are seen within ``VIEW_MAX_AGE_S`` (1 s), or at once when
    nothing in the view is ready: the ``.adds`` counter tells a process whether anyone else
    added anything since it last listed queued/, and only then does it list it again (and at
    the latest every ``RESCAN_S``, 30 s).
``heartbeat(lease, ttl_s=None) -> Lease``
    Extends the lease to ``ttl_s`` from now (default: the ttl it was taken with). A heartbeat
    never makes a lease expire earlier than it was first taken for.
``ack(lease)``
    The item is finished: it moves to ``done/``.
``retry(lease, delay_s, error)``
    Back to ``queued/`` with ``attempts + 1``, ``not_before = now + delay_s`` and ``error`` kept
    as its ``last_error``. It goes to the back of its priority.
``bury(lease, error)``
    The item failed for good: it moves to ``dead/`` with ``error`` kept as ``last_error``.
``sweep() -> int``
    Puts stale leases back in the queue with ``attempts + 1`` and returns how many; each goes
    behind what is queued at its priority (the items of one sweep in no promised order among
    themselves). A lease is
    stale when it expired, or when its holder's process is gone (same host: the pid is dead, a
    zombie, reused, or the host rebooted). heartbeat, ack, retry and bury raise ``LeaseLost``
    once a lease was swept; a lease that expired but was not swept yet can still be extended or
    closed. It also removes temporary files older than an hour and, after a syncfs, the journal
    segments of processes that are gone.
``prune(older_than_s) -> int``
    Removes the items of ``done/`` and ``dead/`` that entered them more than ``older_than_s``
    seconds ago (by the inode change time, which the move into done/ or dead/ set) and returns
    how many. Their ids stay known forever: the dedupe key is replaced by a tombstone (a
    symlink to "pruned": an inode, no data block), so a later ``put`` of the same id still
    returns False and an old request that is submitted again cannot land twice. There is no
    call that releases an id; deleting keys/<id> by hand does. Nothing else is ever deleted,
    and ``corrupt/`` is never pruned.
``requeue(item_id, payload=None, *, reason) -> bool``
    Moves a dead item back to ``queued/``: ``attempts`` reset to 0, ready at once, at the back of
    its priority, ``last_error`` = "requeued: <reason> (it had failed: <its last error>)", the
    payload replaced when one is given. False (changing nothing) when the item is not in dead/.
``cancel(item_id, reason) -> bool``
    Moves a queued item (waiting or ready, not leased) to ``dead/`` with
    ``last_error`` = "cancelled: <reason>". False when the item is not queued.
``additions() -> int`` and ``wait_for_work(seen, timeout_s)``
    For an idle consumer: take ``seen = additions()`` before a lease that finds nothing, then
    ``wait_for_work(seen, timeout_s)`` returns as soon as this process added an item since
    (put, retry, requeue, sweep), within ``OTHERS_POLL_S`` (50 ms) of another process's
    addition (at once when that process tells this one, which then calls ``others_added()``),
    or after ``timeout_s``. A hint only: the next lease decides what is ready.
``counts()``, ``state_of(item_id)``, ``next_ready_at()``
    Read-only views; ``counts`` is a snapshot and may be off by one item in motion.
    ``state_of`` is exact (None for an unknown or pruned id).

``Lease.attempts`` counts earlier tries: 0 on the first lease, +1 per ``retry`` and per sweep.

On disk
=======

::

    tmp/                    files being written (never read; sweep removes leftovers > 1 h)
    keys/<id>               the dedupe key, and the item's file as first put: put creates it
                            with O_EXCL (the atomic claim of the id) and writes the item into
                            it; queued/<name> is then a hard link to it. Never removed; prune
                            replaces it by a symlink to "pruned" (a tombstone)
    queued/<name>           waiting or ready
    running/<lease name>    leased: the rename that takes the item also records the lease
    done/<id>.item          acknowledged
    dead/<id>.item          buried or cancelled
    corrupt/<name>          unreadable items, with <name>.reason beside them
    journal/                the intent log of put and ack (spool_journal.py): boot, and one
                            preallocated segment file per process
    .adds                   one byte appended per item added to queued/: a change counter that
                            tells other processes' views to list queued/ again (content
                            meaningless, never fsynced)

A queued item is named
``<999999 - priority, 7 digits>-<order, 20 digits>-<not_before in ms, 14 digits>-<host>-<pid>-
<token, 8 hex>-<item_id>.item``: sorted names are lease order, the name says when the item is ready
without opening it, and no name is ever used twice (a retried item gets a new one).

A running item is named ``<item_id>~<expires in ms, 14 digits>~<host hash, 8 hex>~<pid>~
<pid start time in clock ticks>~<boot id, 8 hex>~<token, 8 hex>.item``: who holds it (enough to
tell at once that the holder died: its pid is gone or reused, or the host rebooted) and until
when. A heartbeat sets the file's mtime to the new expiry (the lease expires at the later of
the two); the token makes each lease's name unique, so a swept lease can never touch the item's
next lease.

An item file is one line of JSON, the header ``{"v": 1, "id", "priority", "attempts",
"not_before", "enqueued_at", "last_error"}``, then a newline, then the payload bytes as given.

Durability. Two kinds of crash differ in what they can lose. A process that dies (kill -9,
the OOM killer, a bug) loses nothing it wrote or renamed: the kernel has it and writes it back
later. A crash of the system (power loss, kernel panic, a VM reset) loses what was not synced,
and the host then boots with a new boot id (/proc/sys/kernel/random/boot_id). put and ack, the
two steps of every item, are therefore made durable by an intent log, the journal
(spool_journal.py): each does its file operations, then appends one record to its process's
journal segment (blocks already written and synced when the segment was made, so the
fdatasync is an overwrite: ~0.1 ms here against ~0.3-0.5 ms for a new file plus a directory
fsync) and returns once it is synced; the threads of a process share those fdatasyncs (group
commit). The first Spool opened after a boot-id change replays the journal before anything else
uses the directory, redoing any put or ack whose file operations the crash lost, then syncs the
filesystem and records the boot id in journal/boot. A full segment is retired once a syncfs
has made what it records durable; the sweeper removes the segments of processes that are gone.
Without a boot id (no /proc) put and ack sync their directories instead, as all the other
operations do: new contents are written and fdatasynced before a name makes them visible, and
every rename or link into a state directory is followed by an fsync of that directory before
the call returns (on ext4 and xfs a rename is one journal transaction, so the source side goes
with it). Directory fsyncs, too, are group commits among the threads of a process (a leader
syncs on behalf of every change made before it started; each caller still returns only after a
sync that began after its own change).

What that guarantees. Nothing put returned True for is lost, and a returned ack is never
undone: after a system crash the replay puts back an item whose key, data or queued/ link was
lost, and moves an acked item back to done/ (removing a stale second name in queued/ or
running/ that a filesystem without a journal may keep; replay is idempotent and skips what was
pruned or moved on). A lease is never synced: a lease lost with the system is an item still
queued, or one in running/ under a holder of the previous boot, which the sweeper returns at
once; either way the item runs again, which is safe because the worker looks for the landed
commit (its trailer) before landing. The rarer operations (retry, bury, cancel, requeue, prune,
sweep) sync their directories themselves and are not journalled.

- put: create keys/<id> (O_EXCL), write the item into it, link it as queued/<name>, append a
  put record (the item's bytes and queue name) + fdatasync of the segment. The key is locked
  (flock) from its creation until the item is durable, so a concurrent put of the same id waits
  and then returns False. A crash before the link leaves a key alone: the next put of that id
  finds no item and puts it (with the synced path: fdatasync, fsync(keys/), link,
  fsync(queued/)). Synced path without a journal: fdatasync of the key; fsync(keys/) unless
  keys/ is on ext4 or xfs, where the fdatasync of a file created since its last sync makes its
  name durable too (ext4 syncs the new inode's parent itself without a journal and commits the
  transaction that created it with one; xfs forces its log past the creation); link,
  fsync(queued/).
- lease: one rename queued/ -> running/<lease name> (of two leasers the loser gets ENOENT and
  takes the next item). Never synced (see above).
- heartbeat: utime on the running file.
- ack: one rename into done/, then an ack record + fdatasync of the segment (without a
  journal: fsync(done/)).
- retry, bury, sweep: under the item's key lock, a rename within running/ claims the item (so
  an ack racing with a sweep is decided by one rename), the rewritten item (attempts,
  not_before, last_error) replaces the claimed file, and one rename moves it to queued/<new
  name> or dead/ + fsync.
- cancel: under the key lock, rename queued/ -> dead/ (a racing lease is decided by that
  rename), then the rewrite with its reason + fsync(dead/).
- requeue: under the key lock, the rewrite replaces dead/<id>.item, one rename moves it to
  queued/ + fsync.
- prune: under each key lock the tombstone replaces the key; fsync(keys/); then the items are
  unlinked + fsync(done/, dead/).

Every operation that moves an item backwards (running or dead -> queued) or renames it within a
directory holds its key lock, so ``state_of`` and the put of a known id, which hold it too and
look in queued/, running/, done/, dead/ in that order, cannot miss an item in motion.

At every crash point each item exists exactly once and is leasable by at most one holder; the
worst case is a rewritten item left in running/ under a dead process's claim, which the sweeper
returns (counting the attempt again). A file whose header cannot be read is moved to corrupt/
and logged (logger ``hyperion.spool``), never deleted.

Older spools: queued/, done/, dead/ and keys/ are unchanged; a running/<queue name> item with
its running/<queue name>.lease record, left by an earlier version, is swept by the earlier
rules (expiry, holder gone, or no record for ``orphan_grace_s``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

from hyperion import spool_journal
from hyperion.fsutil import fsync_dir, write_atomic
from hyperion.groupcommit import GroupCommit

log = logging.getLogger("hyperion.spool")

STATES = ("queued", "running", "done", "dead")
PRIORITY_MIN = -999_999
PRIORITY_MAX = 999_999
DEFAULT_ORPHAN_GRACE_S = 10.0
TMP_MAX_AGE_S = 3600.0
VIEW_MAX_AGE_S = 1.0
RESCAN_S = 30.0
OTHERS_POLL_S = 0.05
CLAIM_TTL_S = 600.0
MAX_ERROR_CHARS = 8000
PRUNE_BATCH = 256
JOURNAL_SEGMENTS_KEPT = 32     # more segments of gone processes are removed by a new Spool
ITEM_SUFFIX = ".item"
LEASE_SUFFIX = ".lease"
TOMBSTONE = "pruned"

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_RE = re.compile(r"(\d{7})-(\d{20})-(\d{14})-[A-Za-z0-9]{1,16}-\d{1,10}-[0-9a-f]{8}-"
                      r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.item")
_RUN_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})~(\d{14})~([0-9a-f]{8})~(\d{1,10})~"
                     r"(\d{1,20})~([0-9a-f]{1,8})~[0-9a-f]{8}\.item")
_MAX_MS = 10**14 - 1
_HOST = socket.gethostname()
_HOST_TOKEN = re.sub(r"[^A-Za-z0-9]", "", _HOST)[:16] or "host"
_HOST_HASH = hashlib.sha256(_HOST.encode("utf-8", "replace")).hexdigest()[:8]


def _read_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


_BOOT_ID = _read_boot_id()
_BOOT8 = (re.sub(r"[^0-9a-f]", "", _BOOT_ID.lower())[:8] or "0") if _BOOT_ID else "0"


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

    @property
    def ready_ms(self) -> int:
        """The not_before field of the queue name: 0 when the item is ready at once."""
        if self.not_before is None:
            return 0
        return min(max(0, math.floor(self.not_before * 1000)), _MAX_MS)


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
    """What a queued file name says."""

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


@dataclass(frozen=True)
class _Run:
    """What a running file name says: the item and its lease."""

    id: str
    expires: float
    host: str
    pid: int
    pid_start: int
    boot: str

    def gone(self) -> str | None:
        """Why this lease's holder is certainly gone; None when it may be alive."""
        if self.host != _HOST_HASH:
            return None                         # another host: only expiry applies
        if "0" not in (self.boot, _BOOT8) and self.boot != _BOOT8:
            return "its host rebooted"
        return _process_gone(self.pid, self.pid_start or None)

    def holder(self) -> str:
        where = "this host" if self.host == _HOST_HASH else f"host {self.host}"
        return f"pid {self.pid} on {where}"


def _parse_run(name: str) -> _Run | None:
    match = _RUN_RE.fullmatch(name)
    if match is None:
        return None
    return _Run(id=match.group(1), expires=int(match.group(2)) / 1000, host=match.group(3),
                pid=int(match.group(4)), pid_start=int(match.group(5)), boot=match.group(6))


def _name_id(name: str) -> str | None:
    """The item id in any item file name (queued, running, done/dead), or None."""
    if name.endswith(ITEM_SUFFIX):
        if (entry := _NAME_RE.fullmatch(name)) is not None:
            return entry.group(4)
        if (run := _RUN_RE.fullmatch(name)) is not None:
            return run.group(1)
        if _ID_RE.fullmatch(bare := name[:-len(ITEM_SUFFIX)]):
            return bare
    return None


_seq_lock = threading.Lock()
_seq_last = 0


def _next_seq() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (FIFO among threads)."""
    global _seq_last
    with _seq_lock:
        _seq_last = max(time.time_ns(), _seq_last + 1)
        return _seq_last


def _check_id(item_id: str) -> None:
    if not isinstance(item_id, str) or _ID_RE.fullmatch(item_id) is None:
        raise ValueError(f"invalid spool item id {item_id!r}: use 1-128 characters of "
                         "[A-Za-z0-9._-] starting with a letter or digit")


def _check_seconds(name: str, value: float, *, allow_negative: bool = False) -> None:
    if not _is_number(value) or not math.isfinite(value) or (value < 0 and not allow_negative):
        raise ValueError(f"{name} must be a finite number{'' if allow_negative else ' >= 0'}, "
                         f"not {value!r}")


def _check_payload(payload: object) -> None:
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")


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
class _Me:
    pid: int
    pid_start: int


def _whoami() -> _Me:
    pid = os.getpid()
    stat = _proc_stat(pid)
    return _Me(pid, stat[1] if stat else 0)


_me = _whoami()                 # this process (renewed in a forked child)
_tokens = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _token() -> str:
    """8 hex digits, never the same twice in this process (the names that use it also carry
    the pid, so they are unique across processes)."""
    return f"{next(_tokens) & 0xFFFFFFFF:08x}"


def _queue_name(header: _Header) -> str:
    return (f"{PRIORITY_MAX - header.priority:07d}-{_next_seq():020d}-{header.ready_ms:014d}-"
            f"{_HOST_TOKEN}-{_me.pid}-{_token()}-{header.id}{ITEM_SUFFIX}")


def _lease_name(item_id: str, expires: float) -> tuple[str, str]:
    """A new running name for ``item_id`` held by this process until ``expires``; and its
    token."""
    token = _token()
    ms = min(max(0, math.ceil(expires * 1000)), _MAX_MS)
    return (f"{item_id}~{ms:014d}~{_HOST_HASH}~{_me.pid}~{_me.pid_start}~{_BOOT8}~{token}"
            f"{ITEM_SUFFIX}", token)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# Filesystems on which fsync or fdatasync of a file created since its last sync also makes its
# name durable: ext4 syncs the parent of a new inode itself without a journal
# (ext4_sync_parent) and commits the journal transaction that created it with one; xfs forces
# the log up to the inode's creation. Elsewhere put fsyncs keys/ explicitly.
_NEW_NAME_SYNCED_BY_FSYNC = frozenset({"ext4", "xfs"})


def _fs_type(path: Path) -> str | None:
    """The filesystem type of ``path`` from /proc/self/mountinfo; None if unknown."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 5 or not right.split():
                    continue
                mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= best[0]):
                    best = (len(mount), right.split()[0])
    except OSError:
        return None
    return best[1] if best else None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


# ---------------------------------------------------------------------- shared per process
def _close_fd(box: list[int]) -> None:
    if box[0] >= 0:
        with contextlib.suppress(OSError):
            os.close(box[0])
        box[0] = -1


class _DirSync:
    """Group commit (groupcommit.py) of one directory's fsync among the threads of this
    process: ``sync()`` returns once every rename or link the caller made in the directory
    before calling is durable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = [-1]           # the directory, opened once (a forked child inherits it)
        self._group = GroupCommit(self._fsync)
        weakref.finalize(self, _close_fd, self._fd)

    def reset(self) -> None:
        self._group.reset()

    @property
    def fsyncs(self) -> int:
        """How many fsyncs it made (for tests and the benchmark)."""
        return self._group.flushes

    def sync(self) -> None:
        self._group.sync()

    def _fsync(self) -> None:
        if self._fd[0] < 0:
            self._fd[0] = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.fsync(self._fd[0])


class _View:
    """This process's ordered view of one spool's queued/ directory, shared by its Spools.

    Two heaps (ready items by queue name, which is lease order; waiting items by ready time)
    and the set of names believed to be in queued/. Own additions are pushed directly; the
    directory is listed again only when another process added items (``.adds`` grew by more
    than this process appended), and then at most every VIEW_MAX_AGE_S unless nothing in the
    view is ready, plus every RESCAN_S as a backstop. Names that other processes took stay until
    they reach the top, where the lease's rename fails with ENOENT and drops them.
    """

    def __init__(self, queued: str, adds: str) -> None:
        self.queued = queued
        self.adds = adds
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.additions = 0                                  # by this process, ever
        self.listing = threading.Lock()
        self.ready: list[str] = []                          # queue names
        self.waiting: list[tuple[int, str]] = []            # (ready ms, queue name)
        self.alive: set[str] = set()
        self.listed_at: float | None = None                 # time.monotonic()
        self.adds_fd = -1
        self.adds_base = 0
        self.own_adds = 0

    # -- changes made by this process
    def added(self, name: str, ready_ms: int) -> None:
        with self.lock:
            try:
                if self.adds_fd < 0:
                    self.adds_fd = os.open(self.adds, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                           | os.O_CLOEXEC, 0o644)
                os.write(self.adds_fd, b".")
                self.own_adds += 1
            except OSError as exc:                 # only a hint for other processes
                log.warning("cannot count an addition in %s: %s", self.adds, exc)
            self._push(name, ready_ms)
            self.additions += 1
            self.changed.notify_all()

    def wait(self, seen: int, timeout_s: float) -> None:
        """Until this process's additions differ from ``seen``, another process added an
        item (the counter file grew; checked every OTHERS_POLL_S), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.additions == seen:
                if self.listed_at is not None and \
                        self._adds_size() != self.adds_base + self.own_adds:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(min(left, OTHERS_POLL_S))

    def poke(self) -> None:
        """Another process says it added items: waiters look at the counter now."""
        with self.lock:
            self.changed.notify_all()

    def forget(self, name: str) -> None:
        with self.lock:
            self.alive.discard(name)

    def _push(self, name: str, ready_ms: int) -> None:
        if name in self.alive:
            return
        self.alive.add(name)
        if ready_ms:
            heapq.heappush(self.waiting, (ready_ms, name))
        else:
            heapq.heappush(self.ready, name)

    def pop(self, now_ms: float) -> str | None:
        """The first ready queue name, removed from the view; None if nothing is ready."""
        with self.lock:
            waiting, ready, alive = self.waiting, self.ready, self.alive
            while waiting and waiting[0][0] <= now_ms:
                _, name = heapq.heappop(waiting)
                if name in alive:
                    heapq.heappush(ready, name)
            while ready:
                name = heapq.heappop(ready)
                if name in alive:
                    alive.discard(name)
                    return name
            if len(waiting) > 2 * len(alive) + 1024:   # drop forgotten entries
                self.waiting = [entry for entry in waiting if entry[1] in alive]
                heapq.heapify(self.waiting)
            return None

    # -- other processes' changes
    def _adds_size(self) -> int:
        try:
            return os.stat(self.adds).st_size
        except FileNotFoundError:
            return 0

    def _others_added(self) -> bool:
        with self.lock:
            return self._adds_size() != self.adds_base + self.own_adds

    def stale(self, *, empty: bool) -> bool:
        """Whether to list queued/ again before (``empty``: after finding nothing ready)."""
        if self.listed_at is None:
            return True
        age = time.monotonic() - self.listed_at
        if age > RESCAN_S:
            return True
        return (empty or age > VIEW_MAX_AGE_S) and self._others_added()

    def refresh(self) -> None:
        before = self.listed_at
        with self.listing:
            if self.listed_at != before:
                return                          # another thread listed it meanwhile
            with self.lock:
                # Before listing: an addition counted after this is either in the listing or
                # shows up as a difference in the counter later.
                self.adds_base = self._adds_size()
                self.own_adds = 0
            try:
                names = os.listdir(self.queued)
            except FileNotFoundError:
                names = []
            with self.lock:
                alive = self.alive
                ready: list[str] = []
                waiting: list[tuple[int, str]] = []
                for raw in names:
                    # Only the fixed-width ready field is read here; the lease parses the
                    # whole name of the item it takes.
                    if raw not in alive and len(raw) > 50 and raw.endswith(ITEM_SUFFIX) \
                            and raw[28] == "-" and (field := raw[29:43]).isdigit() \
                            and field.isascii():
                        alive.add(raw)
                        if ready_ms := int(field):
                            waiting.append((ready_ms, raw))
                        else:
                            ready.append(raw)
                _merge_heap(self.ready, ready)
                _merge_heap(self.waiting, waiting)
                self.listed_at = time.monotonic()


def _merge_heap(heap: list[Any], new: list[Any]) -> None:
    if len(new) > 64:
        heap.extend(new)
        heapq.heapify(heap)
    else:
        for entry in new:
            heapq.heappush(heap, entry)


_registry_lock = threading.Lock()
_syncs: weakref.WeakValueDictionary[tuple[str, int, int], _DirSync] = (
    weakref.WeakValueDictionary())
_views: weakref.WeakValueDictionary[tuple[str, int, int], _View] = (
    weakref.WeakValueDictionary())


def _identity(path: Path) -> tuple[str, tuple[str, int, int]]:
    """A directory's real path, and the key of its per-process helpers: a directory made
    again at the same path gets new ones."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, (real, st.st_dev, st.st_ino)


def _dir_sync(path: Path) -> _DirSync:
    real, key = _identity(path)
    with _registry_lock:
        sync = _syncs.get(key)
        if sync is None:
            sync = _syncs[key] = _DirSync(real)
        return sync


def _view_of(root: Path) -> _View:
    real, key = _identity(root)
    with _registry_lock:
        view = _views.get(key)
        if view is None:
            view = _views[key] = _View(os.path.join(real, "queued"), os.path.join(real, ".adds"))
        return view


_journals: weakref.WeakValueDictionary[tuple[str, int, int], spool_journal.Journal] = (
    weakref.WeakValueDictionary())                # a Journal closes its segment when unused
_replayed: set[tuple[str, int, int]] = set()      # roots made whole for this boot


def _journal_of(root: Path) -> spool_journal.Journal:
    real, key = _identity(root)
    with _registry_lock:
        journal = _journals.get(key)
        if journal is None:
            journal = _journals[key] = spool_journal.Journal(
                os.path.join(real, "journal"), lambda: f"{_BOOT8}-{_me.pid}-{_me.pid_start}")
        return journal


def _after_fork_in_child() -> None:
    global _registry_lock, _seq_lock, _me
    _registry_lock = threading.Lock()
    _seq_lock = threading.Lock()
    _me = _whoami()
    for sync in list(_syncs.values()):
        sync.reset()
    for view in list(_views.values()):
        view.reset()                          # the child lists queued/ itself


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------- earlier layout
@dataclass(frozen=True)
class _LeaseRecord:
    """running/<queue name>.lease, the lease record of the earlier layout."""

    owner: str
    host: str
    pid: int
    pid_start: int | None
    boot_id: str | None
    expires: float

    def gone(self) -> str | None:
        if self.host != _HOST:
            return None
        if self.boot_id is not None and _BOOT_ID is not None and self.boot_id != _BOOT_ID:
            return "its host rebooted"
        return _process_gone(self.pid, self.pid_start)


def _read_lease_record(path: Path) -> _LeaseRecord | None:
    try:
        obj: Any = json.loads(path.read_bytes())
        return _LeaseRecord(
            owner=str(obj["owner"]), host=str(obj["host"]), pid=int(obj["pid"]),
            pid_start=obj.get("pid_start") if _is_int(obj.get("pid_start")) else None,
            boot_id=obj.get("boot_id") if isinstance(obj.get("boot_id"), str) else None,
            expires=float(obj["expires"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("unreadable lease record %s (%s); treating it as absent", path, exc)
        return None


# ---------------------------------------------------------------------- the spool
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
        for directory in (self.tmp, self.queued, self.running, self.done, self.dead, self.keys):
            directory.mkdir(parents=True, exist_ok=True)
        self._q = str(self.queued)
        self._r = str(self.running)
        self._k = str(self.keys)
        self._view = _view_of(self.root)
        # Whether put must fsync keys/ after fdatasyncing the key it created (see above).
        self._sync_new_keys = _fs_type(self.keys) not in _NEW_NAME_SYNCED_BY_FSYNC
        self._sync = {directory: _dir_sync(directory)
                      for directory in (self.queued, self.done, self.dead, self.keys)}
        # Puts and acks are made durable by the journal where a system crash can be told
        # apart (a new boot id); without a boot id they sync their directories themselves.
        self.journal_dir = self.root / "journal"
        self._journal: spool_journal.Journal | None = None
        if _BOOT_ID is not None:
            self.journal_dir.mkdir(exist_ok=True)
            self._make_whole()
            self._journal = _journal_of(self.root)
            if len(self._names(self.journal_dir)) > JOURNAL_SEGMENTS_KEPT:
                self._clean_journal()         # short-lived processes (CLI calls) left them

    # ------------------------------------------------------------------ the contract
    def put(self, item_id: str, payload: bytes, *, priority: int = 0,
            not_before: float | None = None) -> bool:
        _check_id(item_id)
        _check_payload(payload)
        if not _is_int(priority) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be an int in [{PRIORITY_MIN}, {PRIORITY_MAX}], "
                             f"not {priority!r}")
        if not_before is not None:
            _check_seconds("not_before", not_before, allow_negative=True)
        header = _Header(id=item_id, priority=priority, attempts=0,
                         not_before=None if not_before is None else float(not_before),
                         enqueued_at=time.time(), last_error=None)
        data = header.encode(payload)
        key = f"{self._k}/{item_id}"
        while True:
            try:
                fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                known = self._open_known_key(key, item_id)
                if known is None:
                    return False
                if known < 0:
                    continue                    # the key went away meanwhile: claim it anew
                return self._put_into_key(known, key, header, data, created=False)
            try:
                # Locked at once: a put of the same id that finds the key waits for this one.
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                os.unlink(key)
                raise
            return self._put_into_key(fd, key, header, data, created=True)

    def lease(self, owner: str, ttl_s: float = 60) -> Lease | None:
        _check_seconds("ttl_s", ttl_s)
        view = self._view
        fresh = view.stale(empty=False)
        if fresh:
            view.refresh()
        while True:
            now = time.time()
            name = view.pop(now * 1000)
            if name is None:
                if fresh or not view.stale(empty=True):
                    return None
                view.refresh()
                fresh = True
                continue
            entry = _parse_name(name)
            if entry is None:
                continue                        # not an item's name: leave it alone
            item_id = entry.id
            running_name, token = _lease_name(item_id, now + ttl_s)
            path = f"{self._r}/{running_name}"
            try:
                os.rename(f"{self._q}/{name}", path)
            except FileNotFoundError:
                continue                        # another leaser won this one
            except BaseException:
                with view.lock:
                    view._push(name, 0)
                raise
            try:
                data = _read_file(path)
            except FileNotFoundError:
                continue                        # swept at once (ttl 0): it is queued again
            try:
                header, payload = _decode(data, item_id)
            except _Corrupt as exc:
                self._quarantine(Path(path), str(exc), as_name=name)
                continue
            return Lease(id=item_id, payload=payload, attempts=header.attempts, owner=owner,
                         expires_at=now + ttl_s, _name=running_name, _token=token,
                         _ttl_s=ttl_s)

    def heartbeat(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        ttl = lease._ttl_s if ttl_s is None else ttl_s
        _check_seconds("ttl_s", ttl)
        run = self._run_of(lease)
        expires = time.time() + ttl
        expires_ns = min(math.ceil(expires * 1e9), _MAX_MS * 1_000_000)
        try:
            os.utime(f"{self._r}/{lease._name}", ns=(time.time_ns(), expires_ns))
        except FileNotFoundError:
            raise self._lost(lease) from None
        return replace(lease, expires_at=max(expires, run.expires), _ttl_s=ttl)

    def ack(self, lease: Lease) -> None:
        self._run_of(lease)
        try:
            self._finish(f"{self._r}/{lease._name}", lease.id, self.done,
                         journal=self._journal)
        except FileNotFoundError:
            raise self._lost(lease) from None

    def retry(self, lease: Lease, delay_s: float, error: str) -> None:
        _check_seconds("delay_s", delay_s, allow_negative=True)
        self._run_of(lease)
        with self._key_lock(lease.id):
            claim = self._claim(lease)
            header, payload = self._read_claimed(claim, lease)
            self._requeue_claimed(claim, replace(
                header, attempts=header.attempts + 1,
                not_before=time.time() + max(0.0, delay_s), last_error=_clip(error)), payload)

    def bury(self, lease: Lease, error: str) -> None:
        self._run_of(lease)
        with self._key_lock(lease.id):
            claim = self._claim(lease)
            header, payload = self._read_claimed(claim, lease)
            self._rewrite(claim, replace(header, last_error=_clip(error)).encode(payload))
            self._finish(claim, lease.id, self.dead)

    def sweep(self) -> int:
        swept = 0
        now = time.time()
        names = self._names(self.running)
        present = set(names)
        for raw in names:
            item_id = self._running_id(raw)
            if item_id is None or self._stale(raw, now) is None:
                continue
            if self._return(raw, item_id):
                swept += 1
        for raw in names:
            if raw.endswith(LEASE_SUFFIX) and raw[:-len(LEASE_SUFFIX)] not in present:
                # An earlier layout's record whose item was closed (or returned above).
                (self.running / raw).unlink(missing_ok=True)
        self._clean_tmp(now)
        self._clean_journal()
        return swept

    def prune(self, older_than_s: float) -> int:
        """Remove done/ and dead/ items older than ``older_than_s``; their ids stay known."""
        _check_seconds("older_than_s", older_than_s)
        cutoff = time.time() - older_than_s
        old: list[tuple[Path, str]] = []
        for directory in (self.done, self.dead):
            for raw in self._names(directory):
                item_id = _name_id(raw)
                if item_id is not None and self._older(directory / raw, cutoff):
                    old.append((directory / raw, item_id))
        pruned = 0
        for start in range(0, len(old), PRUNE_BATCH):
            marked = []
            for path, item_id in old[start:start + PRUNE_BATCH]:
                with self._key_lock(item_id) as key:
                    # Under the lock nothing else moves a finished item: check it again.
                    if not self._older(path, cutoff):
                        continue
                    if key != "pruned":
                        self._tombstone(item_id)
                    marked.append(path)
            if not marked:
                continue
            # The tombstones are durable before any item goes: a crash in between leaves
            # pruned ids with their items, never an item-less key that looks like a lost put.
            self._sync[self.keys].sync()
            for path in marked:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    pruned += 1
            self._sync[self.done].sync()
            self._sync[self.dead].sync()
        if pruned:
            log.info("pruned %d finished item(s) older than %.0f s from %s", pruned,
                     older_than_s, self.root)
        return pruned

    def requeue(self, item_id: str, payload: bytes | None = None, *, reason: str) -> bool:
        """dead/ -> queued/ with attempts 0 and ``reason`` in last_error; False if not dead."""
        _check_id(item_id)
        if payload is not None:
            _check_payload(payload)
        with self._key_lock(item_id) as key:
            if key == "pruned":
                return False
            path = self.dead / f"{item_id}{ITEM_SUFFIX}"
            try:
                header, old_payload = _decode(path.read_bytes(), item_id)
            except FileNotFoundError:
                return False
            except _Corrupt as exc:
                self._quarantine(path, str(exc))
                return False
            context = f"requeued: {reason}"
            if header.last_error:
                context += f" (it had failed: {header.last_error})"
            header = replace(header, attempts=0, not_before=None, last_error=_clip(context))
            # Rewritten in place first (under the key lock nothing else touches a dead item),
            # then one rename makes it leasable with its new header.
            self._rewrite(str(path), header.encode(old_payload if payload is None else payload))
            name = _queue_name(header)
            os.rename(path, self.queued / name)
            self._view.added(name, header.ready_ms)
            self._sync[self.queued].sync()
        log.info("requeued %s: %s", item_id, reason, extra={"request_id": item_id})
        return True

    def cancel(self, item_id: str, reason: str) -> bool:
        """queued/ -> dead/ with ``reason`` in last_error; False if the item is not queued."""
        _check_id(item_id)
        with self._key_lock(item_id) as key:
            if key == "pruned":
                return False
            for _ in range(3):
                name = self._find_queued(item_id)
                if name is None:
                    return False
                source = self.queued / name
                try:
                    header, payload = _decode(source.read_bytes(), item_id)
                except FileNotFoundError:
                    continue                    # leased meanwhile: is it queued again?
                except _Corrupt as exc:
                    self._quarantine(source, str(exc))
                    return False
                rewritten = replace(header, last_error=_clip(f"cancelled: {reason}"))
                tmp = self._write_tmp(rewritten.encode(payload))
                dest = self.dead / f"{item_id}{ITEM_SUFFIX}"
                try:
                    # This rename decides the race with a leaser; then the new header.
                    os.rename(source, dest)
                except FileNotFoundError:
                    tmp.unlink(missing_ok=True)
                    continue
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                self._view.forget(name)
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                self._sync[self.dead].sync()
                log.info("cancelled %s: %s", item_id, reason, extra={"request_id": item_id})
                return True
            return False

    def counts(self) -> dict[str, int]:
        result = {}
        for state in STATES:
            names = self._names(self._dir(state))
            if state == "queued":
                result[state] = sum(1 for raw in names if _NAME_RE.fullmatch(raw))
            elif state == "running":
                result[state] = sum(1 for raw in names if self._running_id(raw) is not None)
            else:
                result[state] = sum(1 for raw in names if _name_id(raw) is not None)
        return result

    def state_of(self, item_id: str) -> str | None:
        _check_id(item_id)
        with self._key_lock(item_id):
            return self._locate(item_id)

    def additions(self) -> int:
        """How many items this process added to queued/ so far (see wait_for_work)."""
        return self._view.additions

    def wait_for_work(self, seen: int, timeout_s: float) -> None:
        """Block until an item may have become ready since ``seen = additions()`` was taken,
        or ``timeout_s`` passed."""
        self._view.wait(seen, timeout_s)

    def others_added(self) -> None:
        """Another process told this one that it added items: waiters stop waiting now
        instead of at their next look at the ``.adds`` counter."""
        self._view.poke()

    def next_ready_at(self) -> float | None:
        ready = [entry.ready_at for raw in self._names(self.queued)
                 if (entry := _parse_name(raw)) is not None]
        return min(ready) if ready else None

    # ------------------------------------------------------------------ the journal
    def _make_whole(self) -> None:
        """After a system crash (the boot id changed since the directory was last made whole),
        replay the journal before anything else uses the spool; see spool_journal."""
        assert _BOOT_ID is not None
        real = os.path.realpath(self.root)
        st = os.stat(real)
        key = (real, st.st_dev, st.st_ino)
        if key in _replayed:
            return
        directory = str(self.journal_dir)
        if spool_journal.read_boot(self.journal_dir) != _BOOT_ID:
            with spool_journal.exclusive(directory):
                if spool_journal.read_boot(self.journal_dir) != _BOOT_ID:
                    self._replay()
        with _registry_lock:
            _replayed.add(key)

    def _replay(self) -> None:
        segments = sorted(raw for raw in self._names(self.journal_dir)
                          if spool_journal.segment_owner(raw) is not None)
        puts: list[spool_journal.Put] = []
        acks: list[spool_journal.Ack] = []
        for raw in segments:
            try:
                data = (self.journal_dir / raw).read_bytes()
            except FileNotFoundError:
                continue
            for record in spool_journal.read_segment(data):
                if isinstance(record, spool_journal.Put):
                    puts.append(record)
                else:
                    acks.append(record)
        if puts or acks:
            log.warning("the spool %s was not shut down with its host (a new boot id): "
                        "replaying %d put(s) and %d ack(s) from its journal", self.root,
                        len(puts), len(acks))
        index = self._index()
        redone = 0
        for put in sorted(puts, key=lambda record: record.time_ns):
            if _ID_RE.fullmatch(put.id) and self._replay_put(put, index):
                redone += 1
        for ack in sorted(acks, key=lambda record: record.time_ns):
            if _ID_RE.fullmatch(ack.id) and self._replay_ack(ack.id, index):
                redone += 1
        if segments:
            spool_journal.syncfs(str(self.root))  # what was redone, before the records go
        assert _BOOT_ID is not None
        write_atomic(self.journal_dir / spool_journal.BOOT_FILE, (_BOOT_ID + "\n").encode(),
                     tmp_dir=self.tmp)
        for raw in segments:
            (self.journal_dir / raw).unlink(missing_ok=True)
        if redone:
            log.warning("the journal of %s redid %d operation(s) lost with the host",
                        self.root, redone)

    def _index(self) -> dict[str, list[tuple[str, str]]]:
        """Every item file by id: (state, name), corrupt/ included."""
        index: dict[str, list[tuple[str, str]]] = {}
        for raw in self._names(self.queued):
            if (entry := _parse_name(raw)) is not None:
                index.setdefault(entry.id, []).append(("queued", raw))
        for state, directory in (("running", self.running), ("done", self.done),
                                 ("dead", self.dead), ("corrupt", self.corrupt)):
            for raw in self._names(directory):
                if (item_id := _name_id(raw)) is not None:
                    index.setdefault(item_id, []).append((state, raw))
        return index

    def _replay_put(self, put: spool_journal.Put, index: dict[str, list[tuple[str, str]]]
                    ) -> bool:
        """Make a journalled put whole again: its key (with its data) and, if the id has no
        item in any state, its queued/ link. True if anything was redone."""
        try:
            header = _decode(put.data, put.id)[0]
        except _Corrupt as exc:                 # cannot be written by put; never trusted
            log.error("spool journal: skipping a put of %s: %s", put.id, exc)
            return False
        key = self.keys / put.id
        redone = False
        try:
            st = os.lstat(key)
        except FileNotFoundError:
            st = None
        if st is not None and not S_ISREG(st.st_mode):
            return False                        # a tombstone: pruned since
        if st is None:
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, put.data)
            finally:
                os.close(fd)
            redone = True
        else:
            try:
                current: bytes | None = _read_file(str(key))
            except OSError:
                current = None
            if current != put.data:
                try:
                    valid = current is not None and _decode(current, put.id) is not None
                except _Corrupt:
                    valid = False
                if not valid:
                    # Its data did not reach the disk: the inode the links share gets it.
                    fd = os.open(key, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
                    try:
                        _write_all(fd, put.data)
                    finally:
                        os.close(fd)
                    redone = True
        if put.id not in index:
            parsed = _parse_name(put.name)
            name = put.name if parsed is not None and parsed.id == put.id else \
                _queue_name(header)
            if os.path.lexists(self.queued / name):
                name = _queue_name(header)
            os.link(key, self.queued / name)
            self._view.added(name, header.ready_ms)
            index[put.id] = [("queued", name)]
            redone = True
        return redone

    def _replay_ack(self, item_id: str, index: dict[str, list[tuple[str, str]]]) -> bool:
        """Make a journalled ack whole again: the item in done/, and no other link of that
        file left in queued/ or running/. True if anything was redone."""
        if os.path.islink(self.keys / item_id):
            return False                        # pruned since
        entries = index.get(item_id, [])
        done = [name for state, name in entries if state == "done"]
        if any(state in ("dead", "corrupt") for state, _ in entries):
            return False
        movable = [(state, name) for state, name in entries if state in ("queued", "running")]
        if not movable:
            return False
        redone = False
        if not done:
            state, name = movable.pop(0)
            dest = f"{item_id}{ITEM_SUFFIX}"
            os.rename(self._dir(state) / name, self.done / dest)
            entries.remove((state, name))
            entries.append(("done", dest))
            done = [dest]
            redone = True
        try:
            finished = os.stat(self.done / done[0])
        except FileNotFoundError:
            return redone
        for state, name in movable:
            path = self._dir(state) / name
            with contextlib.suppress(FileNotFoundError):
                if _same_file(finished, os.stat(path)):
                    os.unlink(path)             # a stale second name of the acked file
                    entries.remove((state, name))
                    redone = True
        return redone

    def _clean_journal(self) -> None:
        """Remove the journal segments of this boot's processes that are gone, once the
        filesystem is synced (their operations are then on disk)."""
        if self._journal is None:
            return
        gone = []
        for raw in self._names(self.journal_dir):
            owner = spool_journal.segment_owner(raw)
            if owner is None:
                continue
            boot, pid, start = owner
            if boot != _BOOT8 or (pid != _me.pid and _process_gone(pid, start) is not None):
                gone.append(raw)
        if not gone:
            return
        try:
            spool_journal.syncfs(str(self.root))
        except OSError as exc:
            log.error("spool journal: cannot sync the filesystem (%s); keeping %d segment(s) "
                      "of gone processes", exc, len(gone))
            return
        for raw in gone:
            (self.journal_dir / raw).unlink(missing_ok=True)

    # ------------------------------------------------------------------ keys
    def _open_known_key(self, key: str, item_id: str) -> int | None:
        """For a put of an id whose key exists: the key, opened and locked, when the id has no
        item (a put was interrupted after creating it); None when the id is known; -1 when
        the key went away meanwhile."""
        try:
            fd = os.open(key, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return -1
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None                     # a tombstone: the id was pruned
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)      # waits for a put of the same id in progress
            st = os.fstat(fd)
            try:
                current = os.lstat(key)
            except FileNotFoundError:
                current = None
            if current is None or not _same_file(st, current):
                os.close(fd)
                return -1
            # Linked elsewhere: the item as first put is in some state. Otherwise the item was
            # rewritten (retry, bury, sweep...) or never linked: look for it. Under the key
            # lock it cannot be moving backwards, so the look cannot miss it.
            if st.st_nlink >= 2 or self._locate(item_id) is not None \
                    or self._in_corrupt(item_id):
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        log.warning("spool key %s had no item (a put was interrupted); putting it now",
                    item_id, extra={"request_id": item_id})
        return fd

    def _put_into_key(self, fd: int, key: str, header: _Header, data: bytes, *,
                      created: bool) -> bool:
        """Write the item into the locked key ``fd`` and link it into queued/. Closes fd."""
        linked = False
        try:
            st = os.fstat(fd)
            if st.st_nlink != 1:
                return False          # completed by a put that found it before we locked it
            if st.st_size:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, data)
            journal = self._journal if created else None
            if journal is None:
                os.fdatasync(fd)
                if self._sync_new_keys or not created:
                    self._sync[self.keys].sync()
            name = _queue_name(header)
            os.link(key, f"{self._q}/{name}")
            linked = True
            self._view.added(name, header.ready_ms)
            if journal is not None:
                # The key, its data and the link are written back by the kernel; until then
                # the record stands for them (a system crash replays it).
                journal.append(spool_journal.encode_put(time.time_ns(), header.id, name,
                                                        data))
            else:
                self._sync[self.queued].sync()
            return True
        except BaseException:
            if created and not linked:
                # Leave no key for an item that was never visible.
                with contextlib.suppress(OSError):
                    if _same_file(os.fstat(fd), os.lstat(key)):
                        os.unlink(key)
            raise
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _key_lock(self, item_id: str) -> Iterator[str]:
        """Hold the flock of keys/<id>. Yields "held", or "pruned" (a tombstone) or "missing"
        (no key) without a lock."""
        path = f"{self._k}/{item_id}"
        while True:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                yield "missing"
                return
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                yield "pruned"
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = _same_file(os.fstat(fd), os.lstat(path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield "held"
                    return
            finally:
                os.close(fd)

    def _tombstone(self, item_id: str) -> None:
        """Replace keys/<id> by a symlink to "pruned" (no data block; the id stays known)."""
        tmp = self.tmp / f".{os.getpid()}.{secrets.token_hex(6)}.tomb"
        os.symlink(TOMBSTONE, tmp)
        try:
            os.replace(tmp, self.keys / item_id)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ leases
    def _run_of(self, lease: Lease) -> _Run:
        run = _parse_run(lease._name)
        if run is None or run.id != lease.id:
            raise self._lost(lease)
        return run

    @staticmethod
    def _lost(lease: Lease) -> LeaseLost:
        return LeaseLost(f"the lease of {lease.id} by {lease.owner} is no longer held "
                         "(it was swept back to the queue, or already closed)")

    def _claim(self, lease: Lease) -> str:
        """Rename the leased item to a private running name (LeaseLost if it is gone)."""
        claim, _ = _lease_name(lease.id, time.time() + CLAIM_TTL_S)
        path = f"{self._r}/{claim}"
        try:
            os.rename(f"{self._r}/{lease._name}", path)
        except FileNotFoundError:
            raise self._lost(lease) from None
        return path

    def _read_claimed(self, claim: str, lease: Lease) -> tuple[_Header, bytes]:
        try:
            return _decode(_read_file(claim), lease.id)
        except _Corrupt as exc:
            self._quarantine(Path(claim), str(exc))
            raise LeaseLost(f"the item {lease.id} became unreadable and was moved to "
                            f"{self.corrupt}") from None

    def _running_id(self, name: str) -> str | None:
        if (run := _RUN_RE.fullmatch(name)) is not None:
            return run.group(1)
        if (entry := _NAME_RE.fullmatch(name)) is not None:
            return entry.group(4)               # the earlier layout
        return None

    def _stale(self, name: str, now: float) -> str | None:
        """Why the running item ``name`` is stale, or None if its lease holds."""
        path = self.running / name
        run = _parse_run(name)
        if run is not None:
            try:
                expires = max(run.expires, os.stat(path).st_mtime)
            except FileNotFoundError:
                return None
            if expires < now:
                return f"the lease of {run.holder()} expired {now - expires:.1f} s ago"
            gone = run.gone()
            return None if gone is None else f"the lease holder {run.holder()}: {gone}"
        # The earlier layout: running/<queue name> with running/<queue name>.lease.
        record = _read_lease_record(self.running / (name + LEASE_SUFFIX))
        if record is None:
            try:
                age = now - os.stat(path).st_ctime
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

    def _return(self, name: str, item_id: str) -> bool:
        """Return the stale running item ``name`` to the queue; False if it was not."""
        with self._key_lock(item_id):
            now = time.time()
            reason = self._stale(name, now)     # again, under the lock
            if reason is None:
                return False
            claim_name, _ = _lease_name(item_id, now + CLAIM_TTL_S)
            claim = f"{self._r}/{claim_name}"
            try:
                os.rename(self.running / name, claim)   # decides the race with an ack
            except FileNotFoundError:
                return False
            (self.running / (name + LEASE_SUFFIX)).unlink(missing_ok=True)
            if self._also_finished(claim, item_id):
                return False
            try:
                header, payload = _decode(_read_file(claim), item_id)
            except _Corrupt as exc:
                self._quarantine(Path(claim), str(exc), as_name=name)
                return False
            log.warning("returning %s to the queue (attempt %d): %s", item_id,
                        header.attempts + 1, reason, extra={"request_id": item_id})
            self._requeue_claimed(claim, replace(
                header, attempts=header.attempts + 1,
                last_error=_clip(f"lease lost: {reason}")), payload)
            return True

    def _also_finished(self, claim: str, item_id: str) -> bool:
        """True (and the running link removed) if the claimed file is also in done/ or dead/:
        an ack or bury whose removal from running/ did not survive a crash."""
        try:
            st = os.stat(claim)
        except FileNotFoundError:
            return True
        for directory in (self.done, self.dead):
            with contextlib.suppress(FileNotFoundError):
                if _same_file(st, os.stat(directory / f"{item_id}{ITEM_SUFFIX}")):
                    log.warning("%s is in %s and still in running/; removing the latter",
                                item_id, directory.name, extra={"request_id": item_id})
                    os.unlink(claim)
                    return True
        return False

    # ------------------------------------------------------------------ moves
    def _write_tmp(self, data: bytes) -> Path:
        """A new file in tmp/ holding ``data``, fdatasynced."""
        path = self.tmp / f".{os.getpid()}.{secrets.token_hex(6)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    def _rewrite(self, path: str, data: bytes) -> None:
        """Replace the file at ``path`` (a name only the caller may touch) with ``data``."""
        tmp = self._write_tmp(data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _requeue_claimed(self, claim: str, header: _Header, payload: bytes) -> None:
        """A claimed running file, rewritten with ``header``, -> queued/<new name>.

        A crash between the rewrite and the rename leaves the rewritten item in running/ under
        this process's claim, for the sweeper.
        """
        self._rewrite(claim, header.encode(payload))
        name = _queue_name(header)
        os.rename(claim, f"{self._q}/{name}")
        self._view.added(name, header.ready_ms)
        self._sync[self.queued].sync()

    def _finish(self, source: str, item_id: str, directory: Path, *,
                journal: spool_journal.Journal | None = None) -> None:
        """running/<name> -> done/ or dead/, made durable by an fsync of the directory or by
        a ``journal`` record. FileNotFoundError if it is gone."""
        dest = directory / f"{item_id}{ITEM_SUFFIX}"
        if os.path.lexists(dest):
            # Cannot happen while keys/ is intact; never overwrite, keep a unique name.
            log.error("%s already exists; keeping %s under its running name", dest, item_id,
                      extra={"request_id": item_id})
            dest = directory / os.path.basename(source)
        os.rename(source, dest)
        if journal is not None:
            journal.append(spool_journal.encode_ack(time.time_ns(), item_id))
        else:
            self._sync[directory].sync()

    def _quarantine(self, path: Path, reason: str, *, as_name: str | None = None) -> None:
        """Move an unreadable item to corrupt/, with its reason beside it. Never deletes."""
        self.corrupt.mkdir(exist_ok=True)
        name = as_name or path.name
        dest = self.corrupt / name
        if os.path.lexists(dest):
            name = path.name
            dest = self.corrupt / name
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return
        if path.parent == self.queued:
            self._view.forget(path.name)
        write_atomic(self.corrupt / (name + ".reason"), (reason + "\n").encode(),
                     tmp_dir=self.tmp)
        fsync_dir(self.corrupt)
        log.error("corrupt spool item %s moved to %s: %s", path, dest, reason)

    def _clean_tmp(self, now: float) -> None:
        for raw in self._names(self.tmp, hidden=True):
            path = self.tmp / raw
            try:
                if now - path.lstat().st_mtime > TMP_MAX_AGE_S:
                    path.unlink()
                    log.info("removed %s, a temporary file left by an interrupted write", path)
            except FileNotFoundError:
                continue

    # ------------------------------------------------------------------ scans
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
    def _older(path: Path, cutoff: float) -> bool:
        try:
            return os.lstat(path).st_ctime <= cutoff
        except FileNotFoundError:
            return False

    def _find_queued(self, item_id: str) -> str | None:
        suffix = f"-{item_id}{ITEM_SUFFIX}"
        for raw in self._names(self.queued):
            if raw.endswith(suffix) and (entry := _parse_name(raw)) is not None \
                    and entry.id == item_id:
                return raw
        return None

    def _locate(self, item_id: str) -> str | None:
        # In the order items move forwards (lease, ack, bury): an item moving while we look
        # is found further on. Backward moves and renames within running/ hold the key lock.
        if self._find_queued(item_id) is not None:
            return "queued"
        if any(self._running_id(raw) == item_id for raw in self._names(self.running)):
            return "running"
        for state, directory in (("done", self.done), ("dead", self.dead)):
            if os.path.lexists(directory / f"{item_id}{ITEM_SUFFIX}"):
                return state
        return None

    def _in_corrupt(self, item_id: str) -> bool:
        return any(_name_id(raw) == item_id for raw in self._names(self.corrupt))


Parsed = TypeVar("Parsed")


def lease_parsed(spool: Spool, owner: str, limit: int, parse: Callable[[bytes], Parsed],
                 unreadable: Callable[[Lease], None], *, ttl_s: float = 120,
                 ) -> list[tuple[Lease, Parsed]]:
    """Up to ``limit`` ready items leased at once, each with its payload parsed (an outbox's
    delivery pass); an item whose payload ``parse`` refuses (ValueError) goes to
    ``unreadable`` instead."""
    batch: list[tuple[Lease, Parsed]] = []
    while len(batch) < limit:
        lease = spool.lease(owner, ttl_s=ttl_s)
        if lease is None:
            break
        try:
            batch.append((lease, parse(lease.payload)))
        except ValueError:
            unreadable(lease)
    return batch
