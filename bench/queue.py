"""Durable put -> lease -> ack cycles per second: hyperion's Spool beside SQLite-backed peers.

Usage: .venv/bin/python bench/queue.py [--n 2000] [--rounds 3] [--dir DIR]
                                       [--producers 4] [--workers 4] [--depths 200,10000]

Prints one JSON document (see bench/README.md for how to read it). Every queue is durable:
hyperion fsyncs files and directories, and the peers run SQLite with synchronous=FULL. A peer
that is not installed is reported as skipped. Measured side by side in one run:

- single thread, interleaved (put one, lease it, ack it) and batch (put n, then drain);
- concurrent: producer threads putting and worker threads leasing and acking at once;
- the cost of one lease with 200 and with 10,000 items queued.

The queues take turns (``--rounds``) so that a disk that changes speed during the run (this
machine's does) slows them all alike; nothing is deleted until the end, because on ext4 without
a journal every file created within minutes of a mass deletion is slow (see bench/README.md).
The fsync cost of the disk is measured before and after the queues run.
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
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from hyperion import spool as spool_module  # noqa: E402
from hyperion.spool import Spool  # noqa: E402

PAYLOAD = ("x" * 1000) + "\n" + ("y" * 23)          # 1 KiB, like a small change request
LEASES_PER_DEPTH = 200


class Adapter:
    """One queue under test: put, take the next item, acknowledge it.

    ``handle()`` returns an object with the same three methods for use by one thread of the
    concurrent mode (its own connection where the queue needs one per thread).
    """

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

    def handle(self) -> Adapter:
        return self

    def fast_fill(self, keys: range) -> None:
        """Put many items quickly (to build a deep queue; not measured)."""
        for key in keys:
            self.put(key)

    def close(self) -> None:
        pass


class HyperionSpool(Adapter):
    name = "hyperion.Spool"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.spool = Spool(directory)
        self.payload = PAYLOAD.encode()

    def settings(self) -> dict[str, Any]:
        if self.spool._journal is not None:
            return {"put": "create keys/<id> (O_EXCL) + write; link queued/<name>; append a "
                           "record to the process's journal segment + fdatasync (an overwrite "
                           "of preallocated blocks)",
                    "lease": "one rename queued/ -> running/<lease name>, not synced",
                    "ack": "rename into done/; append a record to the journal + fdatasync",
                    "syncs": "group commit of the journal's fdatasync among the threads of a "
                             "process; a full segment is retired after one syncfs"}
        keys_fsync = self.spool._sync_new_keys
        return {"put": "create keys/<id> (O_EXCL) + write + fdatasync"
                       + (" + fsync(keys/)" if keys_fsync else
                          " (which also makes the new name durable on this filesystem)")
                       + "; link queued/<name> + fsync(queued/)",
                "lease": "one rename queued/ -> running/<lease name>, not fsynced",
                "ack": "rename into done/ + fsync(done/)",
                "directory_fsyncs": "group commit among the threads of a process"}

    def put(self, key: int) -> None:
        if not self.spool.put(f"item-{key}", self.payload):
            raise RuntimeError("duplicate")

    def take(self) -> Any:
        return self.spool.lease("bench")

    def ack(self, handle: Any) -> None:
        self.spool.ack(handle)

    def handle(self) -> Adapter:
        other = HyperionSpool.__new__(HyperionSpool)
        other.directory, other.payload = self.directory, self.payload
        other.spool = Spool(self.directory)         # shares the view and the group commit
        return other

    def fast_fill(self, keys: range) -> None:
        def fill(part: range) -> None:
            for key in part:
                self.put(key)

        threads = [threading.Thread(target=fill, args=(keys[k::8],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def dir_fsyncs(self) -> dict[str, int]:
        counts = {path.name: sync.fsyncs for path, sync in self.spool._sync.items()}
        if self.spool._journal is not None:
            counts["journal (fdatasync)"] = self.spool._journal.fdatasyncs
        return counts


def _set_synchronous(conns: list[sqlite3.Connection], level: str) -> None:
    for conn in conns:
        conn.execute(f"PRAGMA synchronous={level}")


class PersistQueue(Adapter):
    name = "persist-queue SQLiteAckQueue"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        from persistqueue import SQLiteAckQueue

        self.queue = SQLiteAckQueue(str(directory), multithreading=True, auto_commit=True)
        # No option for it: set FULL on both of its connections (getter and putter).
        both: list[sqlite3.Connection] = [self.queue._getter, self.queue._putter]  # type: ignore[list-item]
        self.conns = list({id(c): c for c in both}.values())
        _set_synchronous(self.conns, "FULL")

    def settings(self) -> dict[str, Any]:
        conn = self.conns[0]
        return {"multithreading": True, "auto_commit": True,
                "synchronous": [c.execute("PRAGMA synchronous").fetchone()[0]
                                for c in self.conns],
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "threads": "one queue object shared by all threads (its own locks)"}

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

    def fast_fill(self, keys: range) -> None:
        _set_synchronous(self.conns, "OFF")
        try:
            super().fast_fill(keys)
        finally:
            _set_synchronous(self.conns, "FULL")

    def close(self) -> None:
        self.queue.close()


class LiteQueueAdapter(Adapter):
    name = "litequeue"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.litequeue = importlib.import_module("litequeue")   # untyped
        directory.mkdir(parents=True, exist_ok=True)
        self.path = str(directory / "queue.sqlite3")
        self.queue = self._open()
        self.handles: list[Any] = []

    def _open(self) -> Any:
        queue = self.litequeue.LiteQueue(self.path, timeout=60)
        queue.conn.execute("PRAGMA synchronous=FULL")   # it sets NORMAL itself
        return queue

    def settings(self) -> dict[str, Any]:
        conn = self.queue.conn
        return {"synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "threads": "one LiteQueue (connection) per thread, busy timeout 60 s"}

    def put(self, key: int) -> None:
        self.queue.put(PAYLOAD)

    def take(self) -> Any:
        return self.queue.pop()

    def ack(self, handle: Any) -> None:
        self.queue.done(handle.message_id)

    def handle(self) -> Adapter:
        other = LiteQueueAdapter.__new__(LiteQueueAdapter)
        other.directory, other.litequeue, other.path = self.directory, self.litequeue, self.path
        other.queue = self._open()
        other.handles = []
        self.handles.append(other.queue)
        return other

    def fast_fill(self, keys: range) -> None:
        _set_synchronous([self.queue.conn], "OFF")
        try:
            super().fast_fill(keys)
        finally:
            _set_synchronous([self.queue.conn], "FULL")

    def close(self) -> None:
        for queue in [*self.handles, self.queue]:
            queue.close()


ADAPTERS: list[type[Adapter]] = [HyperionSpool, PersistQueue, LiteQueueAdapter]


# ---------------------------------------------------------------------- modes
def interleaved(queue: Adapter, keys: range) -> float:
    start = time.perf_counter()
    for key in keys:
        queue.put(key)
        handle = queue.take()
        if handle is None:
            raise RuntimeError("an item just put could not be taken")
        queue.ack(handle)
    return time.perf_counter() - start


def batch(queue: Adapter, keys: range) -> tuple[float, float]:
    start = time.perf_counter()
    for key in keys:
        queue.put(key)
    middle = time.perf_counter()
    taken = 0
    while (handle := queue.take()) is not None:
        queue.ack(handle)
        taken += 1
    if taken != len(keys):
        raise RuntimeError(f"put {len(keys)} items but took {taken}")
    return middle - start, time.perf_counter() - middle


def concurrent(queue: Adapter, keys: range, producers: int, workers: int) -> float:
    """``producers`` threads put ``keys`` while ``workers`` threads lease and ack them."""
    handles = [queue.handle() for _ in range(producers + workers)]
    errors: list[BaseException] = []
    done = threading.Event()
    acked = [0]
    guard = threading.Lock()
    barrier = threading.Barrier(producers + workers + 1)

    def produce(handle: Adapter, part: range) -> None:
        try:
            barrier.wait()
            for key in part:
                handle.put(key)
        except BaseException as exc:
            errors.append(exc)

    def work(handle: Adapter) -> None:
        try:
            barrier.wait()
            while True:
                item = handle.take()
                if item is None:
                    if done.is_set():
                        item = handle.take()        # one more look after the last put
                        if item is None:
                            return
                    else:
                        time.sleep(0.0002)
                        continue
                handle.ack(item)
                with guard:
                    acked[0] += 1
        except BaseException as exc:
            errors.append(exc)

    put_threads = [threading.Thread(target=produce, args=(handles[k], keys[k::producers]))
                   for k in range(producers)]
    work_threads = [threading.Thread(target=work, args=(handles[producers + k],))
                    for k in range(workers)]
    for t in put_threads + work_threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in put_threads:
        t.join()
    done.set()
    for t in work_threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    if acked[0] != len(keys):
        raise RuntimeError(f"put {len(keys)} items but acked {acked[0]}")
    return seconds


def lease_cost(queue: Adapter, depth: int, first_key: int) -> dict[str, Any]:
    """Fill to ``depth``, then time single leases (each item acked and replaced untimed, so
    the depth stays put). One untimed lease first: a process's first hyperion lease lists
    queued/ once (``first_lease_in_a_new_process_us`` reports that cost on its own)."""
    queue.fast_fill(range(first_key, first_key + depth))
    key = first_key + depth
    warm = queue.take()
    if warm is None:
        raise RuntimeError("the queue is empty")
    queue.ack(warm)
    queue.put(key)
    key += 1
    times = []
    for _ in range(LEASES_PER_DEPTH):
        start = time.perf_counter()
        handle = queue.take()
        times.append(time.perf_counter() - start)
        if handle is None:
            raise RuntimeError("the queue ran dry")
        queue.ack(handle)
        queue.put(key)
        key += 1
    return {**_percentiles(times), "mean_us": round(statistics.mean(times) * 1e6, 1)}


_FIRST_LEASE = """\
import sys, time
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]
from pathlib import Path
from hyperion.spool import Spool
spool = Spool(Path(sys.argv[1]))
start = time.perf_counter()
lease = spool.lease("first")
seconds = time.perf_counter() - start
spool.ack(lease)
print(seconds)
"""


def first_lease_us(directory: Path) -> float:
    """One lease in a new process: it lists queued/ once (later leases do not)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_LEASE, str(directory)], check=True,
                         capture_output=True, text=True).stdout
    return round(float(out) * 1e6, 1)


# ---------------------------------------------------------------------- disk
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


def fsync_cost(probe: Path, repeats: int = 200) -> dict[str, Any]:
    """What a durable queue pays: an fsync'd overwrite, a new file made durable, and the
    creation of an empty file alone (slow on ext4 without a journal after deletions)."""
    probe.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4096)
    fd = os.open(probe / "overwrite", os.O_WRONLY | os.O_CREAT, 0o644)
    dfd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)

    def overwrite(_: int) -> None:
        os.pwrite(fd, block, 0)
        os.fsync(fd)

    def create(i: int) -> None:
        new = os.open(probe / f"new-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(new, block)
        os.fsync(new)
        os.close(new)
        os.fsync(dfd)

    def empty(i: int) -> None:
        os.close(os.open(probe / f"empty-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    try:
        return {"overwrite_4k_fsync": _percentiles(_timed(repeats, overwrite)),
                "create_4k_fsync_dir_fsync": _percentiles(_timed(repeats, create)),
                "create_empty_file": _percentiles(_timed(repeats, empty))}
    finally:
        os.close(fd)
        os.close(dfd)          # the files stay until the end: deleting them now would slow
                               # every later create on a journal-less ext4


def _mount(path: Path) -> tuple[str, str] | None:
    """(filesystem type, source device) of the mount holding ``path``."""
    best: tuple[int, str, str] | None = None
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                left, _, right = line.partition(" - ")
                mount, fields = left.split()[4], right.split()
                if (str(path) + "/").startswith(mount.rstrip("/") + "/") and (
                        best is None or len(mount) > best[0]) and len(fields) >= 2:
                    best = (len(mount), fields[0], fields[1])
    except OSError:
        return None
    return (best[1], best[2]) if best else None


def _ext4_journal(device: str) -> bool | None:
    try:
        task = Path(f"/sys/fs/ext4/{Path(device).name}/journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------- running
class Run:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.results: dict[str, dict[str, Any]] = {}
        self.adapters: dict[str, type[Adapter]] = {}
        for cls in ADAPTERS:
            try:
                probe = cls(root / f"probe-{cls.name.split()[0]}")
            except ImportError as exc:
                self.results[cls.name] = {
                    "skipped": f"not installed ({exc}); pip install persist-queue litequeue"}
                continue
            self.results[cls.name] = {"settings": probe.settings()}
            probe.close()
            self.adapters[cls.name] = cls

    def each_round(self, mode: str, body: Callable[[Adapter, int, int], dict[str, Any]]
                   ) -> None:
        """Run ``body(queue, round, keys_from)`` for every queue, round after round, the
        queues taking turns (a different one first each round)."""
        names = list(self.adapters)
        queues = {name: self.adapters[name](self.root / f"{mode}-{name.split()[0]}")
                  for name in names}
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        try:
            for r in range(self.args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    try:
                        rounds[name].append(body(queues[name], r, r * 10**6))
                    except Exception as exc:
                        rounds[name].append({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            for name, queue in queues.items():
                self.results[name][mode] = self._merge(rounds[name], queue)
                queue.close()

    @staticmethod
    def _merge(rounds: list[dict[str, Any]], queue: Adapter) -> dict[str, Any]:
        errors = [r["error"] for r in rounds if "error" in r]
        if errors:
            return {"error": errors[0], "rounds": rounds}
        cycles = sum(r["cycles"] for r in rounds)
        seconds = sum(r["seconds"] for r in rounds)
        merged: dict[str, Any] = {"cycles_per_s": round(cycles / seconds, 1),
                                  "seconds": round(seconds, 3),
                                  "rounds_cycles_per_s": [r["cycles_per_s"] for r in rounds]}
        for extra in ("puts_seconds", "lease_acks_seconds"):
            if extra in rounds[0]:
                total = sum(r[extra] for r in rounds)
                merged[extra.replace("_seconds", "_per_s")] = round(cycles / total, 1)
        if isinstance(queue, HyperionSpool):
            fsyncs = queue.dir_fsyncs()
            merged["dir_fsyncs_per_cycle"] = {k: round(v / cycles, 3)
                                              for k, v in fsyncs.items() if v}
        return merged

    def run(self) -> None:
        per_round = max(1, self.args.n // self.args.rounds)

        def one(seconds: float, n: int) -> dict[str, Any]:
            return {"cycles": n, "seconds": seconds, "cycles_per_s": round(n / seconds, 1)}

        def do_interleaved(queue: Adapter, r: int, base: int) -> dict[str, Any]:
            return one(interleaved(queue, range(base, base + per_round)), per_round)

        def do_batch(queue: Adapter, r: int, base: int) -> dict[str, Any]:
            puts, leases = batch(queue, range(base, base + per_round))
            return {**one(puts + leases, per_round), "puts_seconds": puts,
                    "lease_acks_seconds": leases}

        def do_concurrent(queue: Adapter, r: int, base: int) -> dict[str, Any]:
            seconds = concurrent(queue, range(base, base + per_round), self.args.producers,
                                 self.args.workers)
            return one(seconds, per_round)

        self.each_round("interleaved", do_interleaved)
        self.each_round("batch", do_batch)
        self.each_round("concurrent", do_concurrent)
        self.lease_costs()

    def lease_costs(self) -> None:
        for name, cls in self.adapters.items():
            costs: dict[str, Any] = {}
            for depth in self.args.depths:
                directory = self.root / f"depth{depth}-{name.split()[0]}"
                queue = cls(directory)
                try:
                    costs[f"depth_{depth}"] = lease_cost(queue, depth, 0)
                    if isinstance(queue, HyperionSpool):
                        costs[f"depth_{depth}"]["first_lease_in_a_new_process_us"] = (
                            first_lease_us(directory))
                except Exception as exc:
                    costs[f"depth_{depth}"] = {"error": f"{type(exc).__name__}: {exc}"}
                finally:
                    queue.close()
            low, high = (costs.get(f"depth_{d}", {}) for d in (min(self.args.depths),
                                                                max(self.args.depths)))
            if "median_us" in low and "median_us" in high:
                costs["deep_over_shallow"] = {
                    "median": round(high["median_us"] / low["median_us"], 2),
                    "mean": round(high["mean_us"] / low["mean_us"], 2)}
            self.results[name]["lease_cost"] = costs

    def summary(self) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for mode in ("interleaved", "batch", "concurrent"):
            table[f"{mode}_cycles_per_s"] = {
                name: result.get(mode, {}).get("cycles_per_s")
                for name, result in self.results.items() if "skipped" not in result}
        for depth in self.args.depths:
            table[f"lease_median_us_at_{depth}"] = {
                name: result.get("lease_cost", {}).get(f"depth_{depth}", {}).get("median_us")
                for name, result in self.results.items() if "skipped" not in result}
        return table


def _depths(text: str) -> list[int]:
    depths = sorted({int(part) for part in text.split(",") if part.strip()})
    if not depths or depths[0] < 1:
        raise argparse.ArgumentTypeError("depths are positive integers, e.g. 200,10000")
    return depths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000,
                        help="items per mode and queue, over all rounds (default 2000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns the queues take in each mode (default 3)")
    parser.add_argument("--producers", type=int, default=4, help="concurrent mode (default 4)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent mode (default 4)")
    parser.add_argument("--depths", type=_depths, default=[200, 10_000],
                        help="queue depths for the lease cost (default 200,10000)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the queues live (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.producers < 1 or args.workers < 1:
        parser.error("--n, --rounds, --producers and --workers must be at least 1")
    made = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="hyperion-bench-")) if made else args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not made and any(root.iterdir()):
        parser.error(f"--dir {root} must be empty (it is removed at the end)")
    mount = _mount(root)
    try:
        before = fsync_cost(root / "fsync-probe-before")
        run = Run(root, args)
        run.run()
        after = fsync_cost(root / "fsync-probe-after")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if not made:
            root.mkdir(exist_ok=True)
    drift = {f"{key}_after_over_before": round(after[key]["median_us"]
                                               / max(before[key]["median_us"], 0.001), 2)
             for key in before}
    drift["unstable"] = any(not 1 / 3 <= ratio <= 3 for ratio in drift.values())
    document = {
        "benchmark": "durable put -> lease -> ack, one process: single-threaded, concurrent, "
                     "and the lease cost by queue depth",
        "n": args.n,
        "rounds": args.rounds,
        "concurrent_threads": {"producers": args.producers, "workers": args.workers},
        "payload_bytes": len(PAYLOAD),
        "dir": str(root),
        "filesystem": mount[0] if mount else None,
        "ext4_journal": _ext4_journal(mount[1]) if mount and mount[0] == "ext4" else None,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "versions": {"persist-queue": _version("persist-queue"),
                     "litequeue": _version("litequeue")},
        "cpus": os.cpu_count(),
        "modes": {"interleaved": "put one, lease it, ack it; n times, one thread",
                  "batch": "put n, then lease and ack until empty, one thread",
                  "concurrent": f"{args.producers} threads put n items while {args.workers} "
                                "threads lease and ack them",
                  "lease_cost": f"one lease with that many items queued ({LEASES_PER_DEPTH} "
                                "leases, each item acked and replaced untimed)"},
        "fsync_before": before,
        "summary": run.summary(),
        "results": run.results,
        "fsync_after": after,
        "fsync_drift": drift,
        "hyperion_view": {"VIEW_MAX_AGE_S": spool_module.VIEW_MAX_AGE_S,
                          "RESCAN_S": spool_module.RESCAN_S},
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
