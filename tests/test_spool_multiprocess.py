"""Four processes with two worker threads each (and a sweeper thread each) drain one spool.

Every lease is logged with the system-wide monotonic clock when lease() returned and when the
holder closed it, and holders keep each item for a random moment, so a second holder of an item
would show up as two overlapping intervals. Some items are retried (they come back to the
queue for any process to take) and some leases are extended by heartbeats; the sweepers run
all the time and must never take a live lease.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

from hyperion.spool import Spool

ITEMS = 400
PROCESSES = 4

WORKER = textwrap.dedent("""\
    import random, sys, threading, time
    from pathlib import Path
    from hyperion.spool import LeaseLost, Spool

    root, tag, budget = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    out_lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + 60
    taken = [0]                     # leases taken by this process: a runaway bug stops here

    def log(*words):
        with out_lock:
            sys.stdout.write(" ".join(str(w) for w in words) + "\\n")

    def worker(name):
        spool = Spool(root)
        rng = random.Random()
        idle = 0
        while time.monotonic() < deadline:
            with out_lock:
                if taken[0] >= budget:
                    return
            lease = spool.lease(name, ttl_s=60)
            if lease is None:
                counts = spool.counts()
                if counts["queued"] == 0 and counts["running"] == 0:
                    idle += 1
                    if idle > 3:
                        return
                time.sleep(0.002)
                continue
            idle = 0
            start = time.monotonic_ns()
            with out_lock:
                taken[0] += 1
            assert lease.payload == lease.id.encode(), lease.id
            time.sleep(rng.uniform(0, 0.002))
            try:
                if rng.random() < 0.1:
                    lease = spool.heartbeat(lease, 60)
                if lease.attempts == 0 and int(lease.id.split("-")[1]) % 4 == 0:
                    log("L", lease.id, lease.attempts, start, time.monotonic_ns(), "retry", tag)
                    spool.retry(lease, 0, "once more")
                else:
                    log("L", lease.id, lease.attempts, start, time.monotonic_ns(), "ack", tag)
                    spool.ack(lease)
                    log("A", lease.id)
            except LeaseLost:
                log("LOST", lease.id)

    def sweeper():
        spool = Spool(root)
        while not stop.is_set():
            swept = spool.sweep()
            if swept:
                log("SWEPT", swept)
            time.sleep(0.005)

    threads = [threading.Thread(target=worker, args=(f"{tag}-w{i}",)) for i in range(2)]
    sweep_thread = threading.Thread(target=sweeper)
    for t in threads:
        t.start()
    sweep_thread.start()
    for t in threads:
        t.join()
    stop.set()
    sweep_thread.join()
    sys.stdout.flush()
""")


def test_four_processes_drain_one_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    ids = [f"item-{n}" for n in range(ITEMS)]

    def put(chunk: list[str]) -> None:
        own = Spool(root)
        for item_id in chunk:
            assert own.put(item_id, item_id.encode(), priority=int(item_id[5:]) % 3)

    putters = [threading.Thread(target=put, args=(ids[k::4],)) for k in range(4)]
    for t in putters:
        t.start()
    for t in putters:
        t.join()
    assert spool.counts()["queued"] == ITEMS

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    budget = str(ITEMS * 2)
    procs = [subprocess.Popen([sys.executable, str(script), str(root), f"p{k}", budget],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(PROCESSES)]
    lines: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines += out.splitlines()

    holds: dict[str, list[tuple[int, int, int, str]]] = defaultdict(list)
    acked: dict[str, int] = defaultdict(int)
    leased_by: dict[str, int] = defaultdict(int)
    for line in lines:
        word, *rest = line.split()
        assert word not in ("LOST", "SWEPT"), f"a live lease was taken away: {line}"
        if word == "L":
            item_id, attempts, start, end, outcome, process = rest
            holds[item_id].append((int(start), int(end), int(attempts), outcome))
            leased_by[process] += 1
        elif word == "A":
            acked[item_id := rest[0]] += 1

    # Every item acknowledged exactly once; the retried ones were leased twice.
    assert [item_id for item_id, n in acked.items() if n > 1] == [], "acknowledged twice"
    assert sorted(acked) == sorted(ids)
    for item_id, item_holds in holds.items():
        item_holds.sort()
        retried = int(item_id.split("-")[1]) % 4 == 0
        assert [h[2] for h in item_holds] == ([0, 1] if retried else [0]), item_id
        assert [h[3] for h in item_holds] == (["retry", "ack"] if retried else ["ack"])
        # Never held by two at once: each hold ends before the next one begins.
        for earlier, later in itertools.pairwise(item_holds):
            assert earlier[1] <= later[0], f"{item_id} was held twice at once"
    # The work was shared between the processes.
    assert len(leased_by) >= 2, leased_by
    assert spool.counts() == {"queued": 0, "running": 0, "done": ITEMS, "dead": 0}
