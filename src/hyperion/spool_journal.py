"""The spool's intent log: what makes a put or an ack durable with one overwrite fsync.

Part of the spool (src/hyperion/spool.py owns state_dir/spool/ and is the only user of this
module; its docstring has the whole durability argument). This module owns spool/journal/.

Why it exists. A process that dies (kill -9, OOM, a crash) loses nothing that it wrote or
renamed: the kernel keeps it. Only a crash of the system itself (power loss, kernel panic, a
VM reset) loses file operations that were not yet synced, and after one the host has a new
boot id (/proc/sys/kernel/random/boot_id). So instead of syncing the directories that a put or
an ack changed (a new file plus its directory fsync cost ~0.3-0.5 ms here, against ~0.1 ms for
an fsync that overwrites blocks already on disk), put and ack append one record to this
process's journal segment, a file whose blocks were written and synced when it was made, and
fdatasync it (a group commit among the threads of the process). The file operations themselves
are done first and left to the kernel to write back.

After a boot-id change, the first Spool opened on the directory replays every segment (under
an exclusive flock of journal/, before anything else touches the spool): a put whose key or
item did not survive is made again, an ack whose move to done/ did not survive is made again.
Then everything is synced (syncfs), ``journal/boot`` records the new boot id, and the segments
are removed. Replay is idempotent: records of items that moved on, were pruned (a tombstone
key) or survived are skipped.

A segment that fills up is retired: the process starts a new one, syncs the filesystem
(syncfs: every operation that the retired segment records is then on disk) and removes it. The
sweeper removes, the same way, the segments of processes of this boot that are gone.

On disk::

    journal/boot                    the boot id the directory was last made whole for
    journal/<boot8>-<pid>-<start>-<token>.log
                                    one process's segment: preallocated with zeros, then
                                    records one after the other; a zero word ends it

A record is ``"HSJ1"``, body length (u32 big endian), crc32 of the body (u32), then the body:
kind (``P`` put or ``A`` ack), time in ns (u64), id length (u8), id, and for a put the queue
name length (u16), the queue name and the item file's bytes. A record that does not check out
(a write torn by the crash: its call never returned) ends the segment's replay.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import re
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hyperion.groupcommit import GroupCommit

log = logging.getLogger("hyperion.spool")

MAGIC = b"HSJ1"
_HEAD = struct.Struct(">4sII")
_TIME = struct.Struct(">Q")
_U16 = struct.Struct(">H")
FIRST_SEGMENT_BYTES = 64 * 1024        # a process that puts little costs little
SEGMENT_BYTES = 4 * 1024 * 1024
_ZEROS = bytes(1 << 16)
_SEGMENT_RE = re.compile(r"([0-9a-f]{1,8})-(\d{1,10})-(\d{1,20})-([0-9a-f]{8})\.log")
BOOT_FILE = "boot"


@dataclass(frozen=True)
class Put:
    time_ns: int
    id: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Ack:
    time_ns: int
    id: str


def encode_put(time_ns: int, item_id: str, name: str, data: bytes) -> bytes:
    ident, queue_name = item_id.encode("ascii"), name.encode("ascii")
    return _frame(b"P" + _TIME.pack(time_ns) + bytes([len(ident)]) + ident
                  + _U16.pack(len(queue_name)) + queue_name + data)


def encode_ack(time_ns: int, item_id: str) -> bytes:
    ident = item_id.encode("ascii")
    return _frame(b"A" + _TIME.pack(time_ns) + bytes([len(ident)]) + ident)


def _frame(body: bytes) -> bytes:
    return _HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def read_segment(data: bytes) -> Iterator[Put | Ack]:
    """The records of one segment, up to the first that does not check out."""
    offset = 0
    while offset + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, offset)
        body = data[offset + _HEAD.size:offset + _HEAD.size + length]
        if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc or length < 10:
            return
        offset += _HEAD.size + length
        kind, (time_ns,), id_len = body[:1], _TIME.unpack_from(body, 1), body[9]
        ident = body[10:10 + id_len]
        if len(ident) != id_len or not ident.isascii():
            return
        if kind == b"A":
            yield Ack(time_ns, ident.decode("ascii"))
        elif kind == b"P":
            at = 10 + id_len
            if at + 2 > len(body):
                return
            (name_len,) = _U16.unpack_from(body, at)
            name = body[at + 2:at + 2 + name_len]
            if len(name) != name_len or not name.isascii():
                return
            yield Put(time_ns, ident.decode("ascii"), name.decode("ascii"),
                      body[at + 2 + name_len:])
        else:
            return


# ---------------------------------------------------------------------- syncing
_libc: ctypes.CDLL | None = None


def syncfs(path: str) -> None:
    """Write back everything of the filesystem that holds ``path`` (syncfs(2); sync() where it
    is missing). OSError when it fails."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call = getattr(_libc, "syncfs", None)
        if call is None:
            os.sync()
            return
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class _Segment:
    """One open, preallocated segment and the group commit (groupcommit.py) of its
    fdatasync."""

    def __init__(self, path: str, fd: int, capacity: int) -> None:
        self.path = path
        self.fd = fd
        self.capacity = capacity
        self.offset = 0
        self._group = GroupCommit(lambda: os.fdatasync(self.fd))
        weakref.finalize(self, _close_quietly, fd)

    @property
    def fdatasyncs(self) -> int:
        return self._group.flushes

    def sync(self) -> None:
        """Return once an fdatasync that began after this call began has completed."""
        self._group.sync()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _preallocate(path: str, size: int) -> int:
    """A new segment file of ``size`` zero bytes, written and synced with its name."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, _ZEROS[:min(left, len(_ZEROS))])
        os.fsync(fd)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


class Journal:
    """This process's journal for one spool: append a record and return once it is durable."""

    def __init__(self, directory: str, owner: Callable[[], str]) -> None:
        self.directory = directory
        self._owner = owner                       # "<boot8>-<pid>-<pid start>" of the caller
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self.owner = self._owner()
        self._lock = threading.Lock()
        self._segment: _Segment | None = None
        self._retired: list[_Segment] = []
        self._tokens = 0
        self.fdatasyncs_retired = 0

    @property
    def fdatasyncs(self) -> int:
        """How many fdatasyncs the journal made (for tests and the benchmark)."""
        current = self._segment.fdatasyncs if self._segment is not None else 0
        return self.fdatasyncs_retired + current

    def append(self, record: bytes) -> None:
        if os.getpid() != self._pid:
            # A forked child: it writes its own segments (the parent's stay the parent's).
            self._start()
        retire: _Segment | None = None
        with self._lock:
            segment = self._segment
            if segment is None or segment.offset + len(record) > segment.capacity:
                retire = segment
                size = SEGMENT_BYTES if segment is not None else FIRST_SEGMENT_BYTES
                segment = self._new_segment(max(size, len(record) + 4))
                self._segment = segment
                if retire is not None:
                    self._retired.append(retire)
                    self.fdatasyncs_retired += retire.fdatasyncs
            at = segment.offset
            segment.offset += len(record)
        view = memoryview(record)
        while view:
            written = os.pwrite(segment.fd, view, at)
            view, at = view[written:], at + written
        segment.sync()
        if retire is not None:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Sync the filesystem, then remove the retired segments (whose operations it made
        durable). A failed sync keeps them, for the next checkpoint or a replay."""
        with self._lock:
            retired, self._retired = self._retired, []
        if not retired:
            return
        try:
            syncfs(self.directory)
        except OSError as exc:
            log.error("spool journal: cannot sync the filesystem (%s); keeping %d retired "
                      "segment(s)", exc, len(retired))
            with self._lock:
                self._retired[:0] = retired
            return
        for segment in retired:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)

    def _new_segment(self, size: int) -> _Segment:
        self._tokens += 1
        token = f"{(os.getpid() * 2654435761 + self._tokens) & 0xFFFFFFFF:08x}"
        while True:
            path = os.path.join(self.directory, f"{self.owner}-{token}.log")
            try:
                return _Segment(path, _preallocate(path, size), size)
            except FileExistsError:
                self._tokens += 1
                token = f"{int(token, 16) + 1 & 0xFFFFFFFF:08x}"


def segment_owner(name: str) -> tuple[str, int, int] | None:
    """(boot8, pid, pid start) of a segment file name; None for other names."""
    match = _SEGMENT_RE.fullmatch(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[None]:
    """Hold an exclusive flock of ``directory`` (serialises replays and cleanups)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_boot(directory: Path) -> str | None:
    try:
        return (directory / BOOT_FILE).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
