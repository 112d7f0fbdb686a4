"""A soak of the spool under SIGKILL: rounds of child processes put, lease, heartbeat, retry,
ack, bury, cancel, requeue, prune and sweep on one spool and are killed at random moments;
at the end the ledger is checked and printed as JSON.

Usage: .venv/bin/python bench/soak.py [--seconds 60] [--dir DIR] [--seed N]

Not run by the test suite (tests/test_spool_crash.py is its short version). Exit status 0 when
the verdict is "ok". Every child writes what it did to its stdout, one line per event, flushed:
"put ID" after put() returned True, "lease ID ATTEMPTS" after lease(), "acked ID" after ack()
returned, "requeuing ID" before requeue() (a kill may come between the requeue and its line).
The ledger then checks, after a final sweep by a fresh process:

- lost: an accepted item in no state directory whose id was not pruned (its key a tombstone);
- duplicated: an item in more than one state, or twice in one;
- double_acked: an ack that returned twice for one id;
- acked_not_done: an id whose ack returned that is neither in done/ nor pruned;
- same_attempt_leased_twice: one (id, attempts) leased twice (ids ever requeued excepted, as a
  requeue starts the attempts again);
- corrupt: files in corrupt/ (nothing here writes garbage, so any is a torn write);
- stuck_running: items still in running/ after the final sweep;
- and whether everything left can still be leased and acked to the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

from hyperion.spool import Spool  # noqa: E402

STATE_DIRS = ("queued", "running", "done", "dead")

CHILD = textwrap.dedent("""\
    import hashlib, os, random, sys, threading, time
    sys.path[:] = [p for p in sys.path if not p.endswith("bench")]
    from pathlib import Path
    from hyperion.spool import LeaseLost, Spool

    root, mode, tag, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    out_lock = threading.Lock()

    def log(*words):
        with out_lock:
            sys.stdout.write(" ".join(str(w) for w in words) + "\\n")
            sys.stdout.flush()

    def payload(item_id):
        return hashlib.sha256(item_id.encode()).digest() * 8

    def putter(name, rng):
        spool = Spool(root)
        for i in range(100000):
            item_id = f"{name}-{i}"
            not_before = time.time() + 0.2 if rng.random() < 0.05 else None
            if spool.put(item_id, payload(item_id), priority=rng.choice([-1, 0, 0, 1]),
                         not_before=not_before):
                log("put", item_id)
            if rng.random() < 0.02 and spool.put(item_id, b"duplicate"):
                log("DUPLICATE-PUT", item_id)
            time.sleep(rng.uniform(0, 0.002))

    def worker(name, rng):
        spool = Spool(root)
        dead = []
        while True:
            roll = rng.random()
            if roll < 0.03:
                spool.sweep()
            elif roll < 0.05 and dead:
                item_id = dead.pop(rng.randrange(len(dead)))
                log("requeuing", item_id)
                spool.requeue(item_id, payload(item_id) if rng.random() < 0.5 else None,
                              reason="soak")
            elif roll < 0.055:
                spool.prune(rng.choice([0.0, 0.5, 2.0]))
            lease = spool.lease(name, ttl_s=rng.choice([30, 30, 30, 0.05]))
            if lease is None:
                time.sleep(0.001)
                continue
            if lease.payload != payload(lease.id):
                log("BAD-PAYLOAD", lease.id)
            log("lease", lease.id, lease.attempts)
            try:
                if rng.random() < 0.1:
                    lease = spool.heartbeat(lease, 30)
                roll = rng.random()
                if roll < 0.35:
                    spool.retry(lease, rng.choice([0, 0, 0.1]), "again")
                elif roll < 0.85:
                    spool.ack(lease)
                    log("acked", lease.id)
                elif roll < 0.95:
                    spool.bury(lease, "dead")
                    dead.append(lease.id)
                # else: keep it, for the sweeper
            except LeaseLost:
                pass

    def canceller(name, rng):
        spool = Spool(root)
        while True:
            for entry in os.listdir(root / "queued"):
                item_id = entry[:-len(".item")].split("-", 6)[-1] if "-" in entry else None
                if item_id and rng.random() < 0.05:
                    spool.cancel(item_id, "superseded")
            time.sleep(0.01)

    target = {"put": putter, "work": worker, "cancel": canceller}[mode]
    threads = [threading.Thread(target=target, args=(f"{tag}t{k}", random.Random(seed + k)),
                                daemon=True)
               for k in range(2 if mode == "work" else 1)]
    for t in threads:
        t.start()
    time.sleep(3600)                    # until the kill
""")


def inventory(root: Path) -> tuple[Counter[str], Counter[str]]:
    """How often each id occurs across the state directories, and in how many states."""
    ids: Counter[str] = Counter()
    states: dict[str, set[str]] = {}
    for state in STATE_DIRS:
        for name in os.listdir(root / state):
            if name.startswith(".") or not name.endswith(".item"):
                continue
            header = json.loads((root / state / name).read_bytes().split(b"\n", 1)[0])
            ids[header["id"]] += 1
            states.setdefault(header["id"], set()).add(state)
    return ids, Counter({item_id: len(s) for item_id, s in states.items()})


def tombstones(root: Path) -> set[str]:
    return {n for n in os.listdir(root / "keys") if (root / "keys" / n).is_symlink()}


def soak(root: Path, seconds: float, seed: int) -> dict[str, Any]:
    Spool(root)
    script = root.parent / f"{root.name}-child.py"
    script.write_text(CHILD)
    rng = random.Random(seed)
    accepted: set[str] = set()
    acked: Counter[str] = Counter()
    leased: Counter[tuple[str, int]] = Counter()
    requeued: set[str] = set()
    alarms: list[str] = []
    kills = rounds = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        rounds += 1
        modes = ["put", "put", "work", "work"] + (["cancel"] if rounds % 2 else [])
        procs = [subprocess.Popen([sys.executable, str(script), str(root), mode,
                                   f"r{rounds}{mode[0]}{k}", str(rng.randrange(1 << 30))],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k, mode in enumerate(modes)]
        round_start = time.monotonic()
        for at, proc in sorted(((round_start + rng.uniform(0.15, 0.8), p) for p in procs),
                               key=lambda pair: pair[0]):
            time.sleep(max(0.0, at - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
            kills += 1
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != -signal.SIGKILL:
                alarms.append(f"a child ended by itself ({proc.returncode}): {err[-500:]}")
            for line in out.splitlines():
                word, *rest = line.split()
                if word == "put":
                    accepted.add(rest[0])
                elif word == "lease":
                    leased[(rest[0], int(rest[1]))] += 1
                elif word == "acked":
                    acked[rest[0]] += 1
                elif word == "requeuing":
                    requeued.add(rest[0])
                elif word in ("DUPLICATE-PUT", "BAD-PAYLOAD"):
                    alarms.append(line)
    script.unlink()

    final = Spool(root, orphan_grace_s=0)        # every child is dead: sweep like a restart
    swept_at_end = final.sweep()
    ids, states = inventory(root)
    pruned = tombstones(root)
    corrupt = root / "corrupt"
    ledger = {
        "lost": sorted(accepted - set(ids) - pruned),
        "duplicated": sorted(i for i, n in ids.items() if n > 1),
        "in_two_states": sorted(i for i, n in states.items() if n > 1),
        "double_acked": sorted(i for i, n in acked.items() if n > 1),
        "acked_not_done": sorted(i for i in acked
                                 if i not in pruned and final.state_of(i) != "done"),
        "same_attempt_leased_twice": sorted(f"{i}@{a}" for (i, a), n in leased.items()
                                            if n > 1 and i not in requeued),
        "corrupt": sorted(os.listdir(corrupt)) if corrupt.exists() else [],
        "stuck_running": final.counts()["running"],
        "alarms": alarms,
    }
    counts_before_drain = final.counts()
    drained = 0
    drain_until = time.monotonic() + 10         # some items wait a moment (not_before)
    while time.monotonic() < drain_until:
        lease = final.lease("drain")
        if lease is not None:
            final.ack(lease)
            drained += 1
        elif final.counts()["queued"] == 0:
            break
        else:
            time.sleep(0.05)
    after = final.counts()
    workable = after["queued"] == 0 and after["running"] == 0
    ok = workable and not any(ledger[k] for k in ledger)
    return {
        "verdict": "ok" if ok else "FAILED",
        "seconds": round(time.monotonic() - started, 1),
        "rounds": rounds,
        "sigkills": kills,
        "accepted": len(accepted),
        "acks_that_returned": sum(acked.values()),
        "leases": sum(leased.values()),
        "requeued_ids": len(requeued),
        "pruned_ids": len(pruned),
        "swept_at_end": swept_at_end,
        "counts_at_end": counts_before_drain,
        "drained_after": drained,
        "everything_left_was_workable": workable,
        "ledger": {k: (v[:20] if isinstance(v, list) else v) for k, v in ledger.items()},
        "ledger_sizes": {k: (len(v) if isinstance(v, list) else v) for k, v in ledger.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long to keep killing children (default 60)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the spool lives (default: a new temporary directory, "
                             "removed at the end unless the verdict failed)")
    parser.add_argument("--seed", type=int, default=None, help="for the kill schedule")
    args = parser.parse_args(argv)
    # The final sweep logs every lease it returns; the JSON says how many.
    logging.getLogger("hyperion.spool").setLevel(logging.ERROR)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    made = args.dir is None
    base = Path(tempfile.mkdtemp(prefix="hyperion-soak-")) if made else args.dir.resolve()
    root = base / "spool"
    result = soak(root, args.seconds, seed)
    result["seed"] = seed
    result["dir"] = str(root)
    if made and result["verdict"] == "ok":
        shutil.rmtree(base, ignore_errors=True)
        result["dir"] += " (removed)"
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result["verdict"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
