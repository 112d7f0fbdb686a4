"""Soak a working `hyperion run` under hundreds of SIGKILLs, then check that nothing was lost
or done twice.

A real git repository (non-bare, main checked out) and a configuration with a check that takes a
moment (a Python script sleeping 0.05-0.3 s that fails on a file containing BROKEN) and a
notification target appending to a file. N change requests: most add a file of their own (they
land), some add a BROKEN file (their check fails), and some come in groups of three that change
the same line of one shared file (the first to land wins; the others fail apply_conflict).

Requests arrive in the inbox in batches while `hyperion run` is started as a child process and
killed with SIGKILL over and over, at a random moment or aimed at a step of the pipeline: just
after an attempt starts (mid-prepare/apply), while a check runs (mid-check), while a land has
its intent file (mid-land), or just after new files reach the inbox (mid-intake). Then
`hyperion run --once` drains what is left, and the script checks:

- every request has a record in a terminal state (none lost, none stuck);
- none landed twice: on the target, at most one commit carries a request's
  `Hyperion-Request:` trailer, exactly one for every landed record, and it is the record's
  landed_commit; no commit for a request that did not land;
- no lease left in spool/running/ or outbox/running/, nothing in spool/corrupt/, every spool
  item finished (done/ or dead/), the inbox empty;
- no worktree left beside the pool's slots (state/worktrees/demo/w<N>), `git worktree list`
  has only the checkout and those slots, none locked or prunable, and the checkout is clean
  on main;
- result notes: none left to write, each landed request's line exactly once, on its landed
  commit and on no other, and `git fsck --strict` clean (the notes' objects are written
  in-process, and kills fall between those writes and the ref's swap);
- one notification per terminal state: exactly one outbox message for each record's final
  state, and at least one delivery of it. A kill between a delivery and its acknowledgement
  makes the endpoint receive it again (delivery to an outside endpoint is at least once): such
  repeats are counted (`notifications.delivered_again`) and are not violations.

It prints one JSON document: kills (by aim), requests, the terminal states (with error codes),
violations (a list; empty when all is well), seconds. Exit 1 when there are violations (the
directory is then kept). Options: --requests, --kills, --seed, --seconds (a time limit for the
kill phase), --workers, --dir, --keep.

    .venv/bin/python bench/soak_daemon.py --requests 200 --kills 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent / "inbox-example" / "notify_plugin"
GIT_ENV = {"GIT_AUTHOR_NAME": "Soak", "GIT_AUTHOR_EMAIL": "soak@example.invalid",
           "GIT_COMMITTER_NAME": "Soak", "GIT_COMMITTER_EMAIL": "soak@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1"}
TERMINAL = {"landed", "failed", "rejected", "rolled_back", "cancelled"}
GROUPS = 8                      # shared files that conflict groups edit

CHECK = """\
import pathlib, random, sys, time
marker = pathlib.Path(sys.argv[1]) / f"check-{time.time_ns()}"
marker.write_text("")
time.sleep(random.uniform(0.05, 0.3))
broken = any("BROKEN" in p.read_text() for p in pathlib.Path("soak").glob("*.txt"))
sys.exit(3 if broken else 0)
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo)}
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


# ---------------------------------------------------------------------- set-up
def make_setup(root: Path) -> tuple[Path, Path]:
    """The repository and the configuration file."""
    repo = root / "demo"
    (repo / "soak").mkdir(parents=True)
    (repo / "shared").mkdir()
    (repo / "soak" / ".keep").write_text("")
    for k in range(GROUPS):
        (repo / "shared" / f"g{k}.txt").write_text("base\n")
    (repo / "README").write_text("soak target\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    markers = root / "markers"
    markers.mkdir()
    check = root / "check.py"
    check.write_text(CHECK)
    config = root / "hyperion.yaml"
    config.write_text(f"""\
state_dir: state
inbox: inbox
workers: {{workers}}
max_crashes: 100
repos:
  demo:
    path: {repo}
    target: main
checks:
  unit:
    run: [{json.dumps(sys.executable)}, {json.dumps(str(check))}, {json.dumps(str(markers))}]
    timeout_s: 60
notify:
  urls: [{json.dumps("hyperionfile://" + str(root / "notifications.jsonl"))}]
  plugin_paths: [{json.dumps(str(PLUGIN))}]
""")
    (root / "inbox").mkdir()
    return repo, config


def make_requests(root: Path, repo: Path, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """N change requests made with real `git diff`s against main, and what each should do."""
    scratch = root / "scratch"
    git(repo, "worktree", "add", "-q", "--detach", str(scratch), "HEAD")
    requests = []
    group = 0
    i = 0
    while len(requests) < n:
        roll = rng.random()
        if roll < 0.15 and n - len(requests) >= 3:
            members = [(f"c{i + j}", f"shared/g{group % GROUPS}.txt", f"v{i + j}\n")
                       for j in range(3)]
            group += 1
        elif roll < 0.3:
            members = [(f"b{i}", f"soak/r{i}.txt", f"BROKEN {i}\n")]
        else:
            members = [(f"r{i}", f"soak/r{i}.txt", f"request {i}\n")]
        for request_id, path, text in members:
            existed = (scratch / path).exists()
            (scratch / path).write_text(text)
            git(scratch, "add", "-A")
            patch = git(scratch, "diff", "--cached")
            git(scratch, "reset", "-q", "--hard", "HEAD")
            git(scratch, "clean", "-qfd")
            requests.append({
                "kind": "change", "version": 1, "id": request_id, "agent": "soak",
                "repo": "demo", "title": f"soak {request_id}", "patch": patch,
                "changes": [{"path": path, "operation": "update" if existed else "add",
                             "sha256": hashlib.sha256(text.encode()).hexdigest()}],
                "checks": ["unit"]})
        i += len(members)
    git(repo, "worktree", "remove", "--force", str(scratch))
    return requests[:n]


def drop(inbox: Path, request: dict[str, Any]) -> None:
    tmp = inbox.parent / f".{request['id']}.json.part"
    tmp.write_text(json.dumps(request))
    os.rename(tmp, inbox / f"{request['id']}.json")


# ---------------------------------------------------------------------- kills
def start(root: Path, config: Path) -> subprocess.Popen[bytes]:
    log = open(root / "daemon.log", "ab")       # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen([sys.executable, "-m", "hyperion", "--config", str(config),
                                 "run"], cwd=root, stdout=log, stderr=log)
    finally:
        log.close()


def wait_for(predicate: Any, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def entries(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def aim_and_wait(aim: str, root: Path, rng: random.Random) -> bool:
    """Wait for the moment ``aim`` names; False when it did not come (the kill is then at a
    random moment)."""
    state = root / "state"
    if aim == "random":
        time.sleep(rng.uniform(0.05, 2.0))
        return True
    if aim == "apply":
        # An attempt starts (its record goes to running): kill while it prepares and applies.
        audit = state / "audit.jsonl"
        start = audit.stat().st_size if audit.exists() else 0

        def started() -> bool:
            try:
                with open(audit, "rb") as f:
                    f.seek(start)
                    return b'"to": "running"' in f.read()
            except FileNotFoundError:
                return False
        if not wait_for(started, 4.0, poll=0.002):
            return False
        time.sleep(rng.uniform(0, 0.03))
        return True
    if aim == "check":
        before = entries(root / "markers")
        if not wait_for(lambda: bool(entries(root / "markers") - before), 4.0):
            return False
        time.sleep(rng.uniform(0, 0.2))
        return True
    if aim == "land":
        intent = state / "locks" / "land-demo.intent"
        return wait_for(intent.exists, 6.0, poll=0.0005)
    if aim == "intake":
        time.sleep(rng.uniform(0.3, 1.2))   # the start-up scan of the inbox
        return True
    raise ValueError(aim)


# ---------------------------------------------------------------------- verdict
def verify(root: Path, repo: Path, requests: list[dict[str, Any]]) -> dict[str, Any]:
    state = root / "state"
    violations: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    for request in requests:
        path = state / "records" / f"{request['id']}.json"
        try:
            records[request["id"]] = json.loads(path.read_text())
        except FileNotFoundError:
            violations.append(f"{request['id']}: no record (lost)")
    histogram: Counter[str] = Counter()
    for rid, record in records.items():
        error = (record.get("error") or {}).get("code")
        histogram[record["state"] + (f" ({error})" if error else "")] += 1
        if record["state"] not in TERMINAL:
            violations.append(f"{rid}: not in a terminal state: {record['state']}")
    # Landed once: trailers on the target.
    log = git(repo, "log", "main", "--format=%H %(trailers:key=Hyperion-Request,valueonly,"
              "separator=%x20)")
    commits: dict[str, list[str]] = {}
    for line in log.splitlines():
        sha, _, ids = line.partition(" ")
        for rid in ids.split():
            commits.setdefault(rid, []).append(sha)
    for rid, record in records.items():
        found = commits.get(rid, [])
        if len(found) > 1:
            violations.append(f"{rid}: landed {len(found)} times: {found}")
        if record["state"] == "landed":
            if len(found) != 1:
                violations.append(f"{rid}: landed but {len(found)} commits carry its trailer")
            elif record.get("landed_commit") != found[0]:
                violations.append(f"{rid}: landed_commit {record.get('landed_commit')} is not "
                                  f"the commit with its trailer {found[0]}")
        elif found:
            violations.append(f"{rid}: {record['state']} but commits carry its trailer: "
                              f"{found}")
    # Queues, worktrees, checkout.
    for spool in ("spool", "outbox", "notes"):
        left = sorted(entries(state / spool / "running"))
        if left:
            violations.append(f"{spool}/running/ not empty: {left[:5]}")
        corrupt = sorted(entries(state / spool / "corrupt"))
        if corrupt:
            violations.append(f"{spool}/corrupt/ not empty: {corrupt[:5]}")
    queued = sorted(n for n in entries(state / "spool" / "queued") if not n.startswith("."))
    if queued:
        violations.append(f"spool/queued/ not empty: {queued[:5]}")
    inbox = sorted(entries(root / "inbox"))
    if inbox:
        violations.append(f"inbox not empty: {inbox[:5]}")
    # The pool keeps its slots (worktrees/demo/w<N>, reset before each use); nothing else.
    strays = sorted(n for n in entries(state / "worktrees") if n != "demo")
    strays += sorted(n for n in entries(state / "worktrees" / "demo")
                     if not re.fullmatch(r"w\d+(\.lock)?", n))
    if strays:
        violations.append(f"worktrees left beside the pool: {strays[:5]}")
    listed = git(repo, "worktree", "list", "--porcelain")
    slots = {str((state / "worktrees" / "demo" / n).resolve())
             for n in entries(state / "worktrees" / "demo") if re.fullmatch(r"w\d+", n)}
    for block in listed.strip().split("\n\n"):
        path = block.splitlines()[0].removeprefix("worktree ")
        if "prunable" in block or "locked" in block:
            violations.append(f"git worktree list: {block!r}")
        elif Path(path).resolve() != repo.resolve() and str(Path(path).resolve()) not in slots:
            violations.append(f"git lists a worktree that is not the pool's: {path}")
    status = git(repo, "status", "--porcelain")
    if status:
        violations.append(f"the checkout is not clean: {status[:200]!r}")
    if git(repo, "symbolic-ref", "HEAD").strip() != "refs/heads/main":
        violations.append("the checkout is not on main")
    # Notifications: one message per final state, delivered at least once.
    keys = entries(state / "outbox" / "keys")
    outbox_left = sorted(n for n in entries(state / "outbox" / "queued")
                         if not n.startswith("."))
    if outbox_left:
        violations.append(f"notifications not delivered: {outbox_left[:5]}")
    delivered: Counter[str] = Counter()
    try:
        lines = (root / "notifications.jsonl").read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        delivered[json.loads(line)["title"]] += 1
    again = 0
    for rid, record in records.items():
        final = record["state"]
        messages = [k for k in keys if k.startswith(f"{rid}.") and k.endswith(f".{final}")
                    and k[len(rid) + 1:-len(final) - 1].isdigit()]
        if len(messages) != 1:
            violations.append(f"{rid}: {len(messages)} notification messages for {final}")
        times = delivered[f"hyperion: {rid} {final}"]
        if times == 0:
            violations.append(f"{rid}: its {final} notification was not delivered")
        again += max(0, times - 1)
    violations += verify_notes(state, repo, records)
    retries: Counter[str] = Counter()
    for record in records.values():
        for entry in record.get("history", []):
            if "retrying in" in entry.get("reason", ""):
                retries[entry["reason"].partition("; retrying in")[0][:120]] += 1
    return {"records": len(records), "terminal_states": dict(sorted(histogram.items())),
            "retries_by_reason": dict(retries.most_common(10)),
            "crashed_attempts": sum(r.get("crashes", 0) for r in records.values()),
            "landed_commits": sum(1 for r in records.values() if r["state"] == "landed"),
            "notifications": {"lines": len(lines), "delivered_again": again},
            "violations": violations}


def verify_notes(state: Path, repo: Path, records: dict[str, dict[str, Any]]) -> list[str]:
    """Result notes: all written, each landed request's line once on its landed commit and on
    no other commit, and the repository's objects sound (notes objects are written in-process,
    and kills land between their writes and the ref's swap)."""
    violations = []
    left = sorted(n for n in entries(state / "notes" / "queued") if not n.startswith("."))
    if left:
        violations.append(f"result notes not written: {left[:5]}")
    on: dict[str, list[tuple[str, str]]] = {}     # request id -> [(commit, state)]
    listed = git(repo, "notes", "--ref=hyperion", "list").split()
    for blob, commit in zip(listed[::2], listed[1::2], strict=True):
        for line in git(repo, "cat-file", "blob", blob).splitlines():
            entry = json.loads(line)
            on.setdefault(entry["id"], []).append((commit, entry["state"]))
    for rid, record in records.items():
        lines = on.get(rid, [])
        if record["state"] == "landed" and lines != [(record["landed_commit"], "landed")]:
            violations.append(f"{rid}: result note lines {lines}, not one on its landed commit")
        elif record["state"] != "landed" and lines:
            violations.append(f"{rid}: {record['state']} but has result note lines {lines}")
    try:
        git(repo, "fsck", "--strict", "--no-dangling", "--no-progress")
    except RuntimeError as exc:
        violations.append(f"git fsck: {str(exc)[:300]}")
    return violations


# ---------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=1800,
                        help="time limit of the kill phase (default 1800)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None,
                        help="an empty or new directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    root = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="soak-daemon-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        parser.error(f"{root} is not empty")
    started = time.monotonic()
    repo, config = make_setup(root)
    config.write_text(config.read_text().replace("{workers}", str(args.workers)))
    requests = make_requests(root, repo, args.requests, rng)
    pending = list(requests)
    first = max(1, len(pending) * 2 // 5)
    for request in pending[:first]:
        drop(root / "inbox", request)
    pending = pending[first:]
    kills: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    aims = ["random", "apply", "check", "land", "intake"]
    weights = [3, 2, 3, 3, 1]
    kill_phase = time.monotonic()
    while sum(kills.values()) < args.kills and time.monotonic() - kill_phase < args.seconds:
        aim = rng.choices(aims, weights)[0]
        if pending and (aim == "intake" or rng.random() < 0.3):
            size = rng.randint(1, 6)
            batch, pending = pending[:size], pending[size:]
            for request in batch:
                drop(root / "inbox", request)
        proc = start(root, config)
        hit = aim_and_wait(aim, root, rng)
        if proc.poll() is not None:
            missed["exited"] += 1
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills[aim if hit else f"{aim} (not seen: at random)"] += 1
    for request in pending:
        drop(root / "inbox", request)
    kill_seconds = time.monotonic() - kill_phase
    # Drain: --once until nothing waits (a retry may be scheduled a little later).
    drains = 0
    waiting: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        drains += 1
        with open(root / "daemon.log", "ab") as log:
            once = subprocess.run([sys.executable, "-m", "hyperion", "--config", str(config),
                                   "run", "--once"], cwd=root, stdout=log, stderr=log,
                                  check=False)
        if once.returncode != 0:
            break
        records = [json.loads(p.read_text()) for p in (root / "state" / "records").glob("*.json")]
        open_records = [r for r in records if r["state"] not in TERMINAL]
        if drains == 1:
            waiting = [f"{r['id']}: {r['state']} after {r.get('attempts')} attempts "
                       f"({r.get('crashes')} crashed): {r['history'][-1]['reason'][:160]}"
                       for r in open_records]
        if len(records) >= len(requests) and not open_records:
            break
        time.sleep(1.0)
    verdict = verify(root, repo, requests)
    if once.returncode != 0:
        verdict["violations"].insert(0, f"hyperion run --once exited {once.returncode}")
    report = {"seed": seed, "requests": len(requests), "workers": args.workers,
              "open_after_first_drain": {"count": len(waiting), "examples": waiting[:5]},
              "kills": sum(kills.values()), "kills_by_aim": dict(sorted(kills.items())),
              "starts_that_exited_before_the_kill": missed["exited"],
              "kill_phase_seconds": round(kill_seconds, 1), "drain_runs": drains,
              **verdict, "seconds": round(time.monotonic() - started, 1), "dir": str(root)}
    ok = not verdict["violations"]
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        report["dir"] = None
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
