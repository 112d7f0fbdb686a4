"""Durable put -> lease -> ack cycles per second: hyperion's Spool beside SQLite-backed peers.

Usage: .venv/bin/python bench/queue.py [--n 2000] [--dir DIR]

Prints one JSON document (see bench/README.md for how to read it). Every queue is durable:
hyperion fsyncs files and directories, and the peers run SQLite with synchronous=FULL. A peer
that is not installed is reported as skipped. The fsync cost of the disk is measured before
and after the queues run, because the disk sometimes enters a slow state that makes every
durable queue several times slower.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: keep its folder off sys.path so the stdlib `queue` (which the
# peers import) is not shadowed by it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from hyperion.spool import Spool  # noqa: E402

PAYLOAD = ("x" * 1000) + "\n" + ("y" * 23)          # 1 KiB, like a small change request


class Adapter:
    """One queue under test: put, take the next item, acknowledge it."""

    name = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def settings(self) -> dict[str, Any]:
        return {}

    def put(self, key: int) -> None:
        raise NotImplementedError

    def take(self) -> Any:
        raise NotImplementedError

    def ack(self, handle: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HyperionSpool(Adapter):
    name = "hyperion.Spool"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.spool = Spool(directory)
        self.payload = PAYLOAD.encode()

    def settings(self) -> dict[str, Any]:
        return {"put": "tmp + fsync, link key + fsync(keys/), rename + fsync(queued/)",
                "lease": "rename; lease record written atomically, not fsynced",
                "ack": "rename + fsync(done/)"}

    def put(self, key: int) -> None:
        if not self.spool.put(f"item-{key}", self.payload):
            raise RuntimeError("duplicate")

    def take(self) -> Any:
        return self.spool.lease("bench")

    def ack(self, handle: Any) -> None:
        self.spool.ack(handle)


class PersistQueue(Adapter):
    name = "persist-queue SQLiteAckQueue"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        from persistqueue import SQLiteAckQueue

        self.queue = SQLiteAckQueue(str(directory), multithreading=True, auto_commit=True)
        # No option for it: set FULL on both of its connections (getter and putter).
        both: list[sqlite3.Connection] = [self.queue._getter, self.queue._putter]  # type: ignore[list-item]
        self.conns = list({id(c): c for c in both}.values())
        for conn in self.conns:
            conn.execute("PRAGMA synchronous=FULL")

    def settings(self) -> dict[str, Any]:
        conn = self.conns[0]
        return {"multithreading": True, "auto_commit": True,
                "synchronous": [c.execute("PRAGMA synchronous").fetchone()[0]
                                for c in self.conns],
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}

    def put(self, key: int) -> None:
        self.queue.put(PAYLOAD)

    def take(self) -> Any:
        from persistqueue import Empty

        try:
            return self.queue.get(block=False, raw=True)
        except Empty:
            return None

    def ack(self, handle: Any) -> None:
        self.queue.ack(id=handle["pqid"])

    def close(self) -> None:
        self.queue.close()


class LiteQueueAdapter(Adapter):
    name = "litequeue"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        litequeue = importlib.import_module("litequeue")   # untyped
        directory.mkdir(parents=True, exist_ok=True)
        self.queue = litequeue.LiteQueue(str(directory / "queue.sqlite3"))
        self.queue.conn.execute("PRAGMA synchronous=FULL")   # it sets NORMAL itself

    def settings(self) -> dict[str, Any]:
        conn = self.queue.conn
        return {"synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}

    def put(self, key: int) -> None:
        self.queue.put(PAYLOAD)

    def take(self) -> Any:
        return self.queue.pop()

    def ack(self, handle: Any) -> None:
        self.queue.done(handle.message_id)

    def close(self) -> None:
        self.queue.close()


ADAPTERS: list[type[Adapter]] = [HyperionSpool, PersistQueue, LiteQueueAdapter]


def interleaved(queue: Adapter, n: int) -> dict[str, Any]:
    start = time.perf_counter()
    for key in range(n):
        queue.put(key)
        handle = queue.take()
        if handle is None:
            raise RuntimeError("an item just put could not be taken")
        queue.ack(handle)
    seconds = time.perf_counter() - start
    return {"cycles_per_s": round(n / seconds, 1), "seconds": round(seconds, 3)}


def batch(queue: Adapter, n: int) -> dict[str, Any]:
    start = time.perf_counter()
    for key in range(n):
        queue.put(key)
    middle = time.perf_counter()
    taken = 0
    while (handle := queue.take()) is not None:
        queue.ack(handle)
        taken += 1
    end = time.perf_counter()
    if taken != n:
        raise RuntimeError(f"put {n} items but took {taken}")
    return {"cycles_per_s": round(n / (end - start), 1), "seconds": round(end - start, 3),
            "puts_per_s": round(n / (middle - start), 1),
            "lease_acks_per_s": round(n / (end - middle), 1)}


def run_peer(cls: type[Adapter], root: Path, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for mode, fn in (("interleaved", interleaved), ("batch", batch)):
        directory = root / f"{cls.name.split()[0]}-{mode}"
        try:
            queue = cls(directory)
        except ImportError as exc:
            return {"skipped": f"not installed ({exc}); pip install persist-queue litequeue"}
        try:
            result["settings"] = queue.settings()
            result[mode] = fn(queue, n)
        except Exception as exc:
            result[mode] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            queue.close()
            shutil.rmtree(directory, ignore_errors=True)
    return result


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"median_us": round(statistics.median(samples) * 1e6, 1),
            "p90_us": round(samples[int(len(samples) * 0.9)] * 1e6, 1)}


def _timed(repeats: int, step: Callable[[int], None]) -> list[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def fsync_cost(directory: Path, repeats: int = 200) -> dict[str, Any]:
    """The two costs a durable queue pays: an fsync'd overwrite, and a new file made durable."""
    probe = directory / "fsync-probe"
    probe.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4096)
    fd = os.open(probe / "overwrite", os.O_WRONLY | os.O_CREAT, 0o644)

    def overwrite(_: int) -> None:
        os.pwrite(fd, block, 0)
        os.fsync(fd)

    def create(i: int) -> None:
        new = os.open(probe / f"new-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(new, block)
        os.fsync(new)
        os.close(new)
        dfd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)

    try:
        result = {"overwrite_4k_fsync": _percentiles(_timed(repeats, overwrite)),
                  "create_4k_fsync_dir_fsync": _percentiles(_timed(repeats, create))}
    finally:
        os.close(fd)
        shutil.rmtree(probe, ignore_errors=True)
    return result


def _filesystem(path: Path) -> str | None:
    best: tuple[int, str] | None = None
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if (str(path) + "/").startswith(mount.rstrip("/") + "/") and (
                        best is None or len(mount) > best[0]):
                    best = (len(mount), fstype)
    except OSError:
        return None
    return best[1] if best else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="items per mode (default 2000)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the queues live (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    made = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="hyperion-bench-")) if made else args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        before = fsync_cost(root)
        results = {cls.name: run_peer(cls, root, args.n) for cls in ADAPTERS}
        after = fsync_cost(root)
    finally:
        if made:
            shutil.rmtree(root, ignore_errors=True)
    drift = {f"{key}_after_over_before": round(after[key]["median_us"]
                                               / max(before[key]["median_us"], 0.001), 2)
             for key in before}
    drift["unstable"] = any(not 1 / 3 <= ratio <= 3 for ratio in drift.values())
    document = {
        "benchmark": "durable put -> lease -> ack cycles per second, one process, one thread",
        "n": args.n,
        "payload_bytes": len(PAYLOAD),
        "dir": str(root),
        "filesystem": _filesystem(root),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "modes": {"interleaved": "put one, lease it, ack it; n times",
                  "batch": "put n, then lease and ack until empty"},
        "fsync_before": before,
        "results": results,
        "fsync_after": after,
        "fsync_drift": drift,
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
