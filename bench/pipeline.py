"""How much hyperion adds to landing a change, next to plain git, and what a worktree costs.

Usage: .venv/bin/python bench/pipeline.py [--n 50] [--rounds 3] [--files 200]
                                          [--check true|python] [--intake submit|inbox]
                                          [--layout checkout|bare] [--profile]
                                          [--runner once|daemon|both]
                                          [--sizes 1000,20000] [--reps 20] [--dir DIR]
                                          [--skip-pipeline] [--skip-sweep]

Prints one JSON document (see bench/README.md for how to read it). Two parts:

1. pipeline: ``--n`` trivial changes, each to a different file, through hyperion the way a
   user runs it (all submitted with ``hyperion submit`` or dropped in the inbox, then drained
   by ``hyperion run --once --workers 1`` as a child process) against the same patches put on
   an identical repository with plain ``git apply --index && git commit`` in a loop, in the
   same run; and through ``hyperion run --workers 1``, the long-running daemon as systemd
   runs it, started and ready before the clock starts (``--runner`` picks one or both). Each
   round runs every contender, the order rotating. The records' per-step ``timings`` and
   history timestamps say where hyperion's time goes.
2. sweep: preparing a worktree with hyperion's WorktreePool (the first checkout adds it, later
   ones reuse and reset it) on repositories of ``--sizes`` files, next to plain
   ``git worktree add``, ``git checkout`` between the same commits in a plain worktree and
   ``git status`` (what git itself must do on a tree that size).

Everything is made in a new temporary directory (``--dir`` picks its parent) and removed at
the end. Nothing here needs a network.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds secrets.py and queue.py: keep it off sys.path so they do not shadow the stdlib
# modules of those names (pydantic imports `secrets`).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

from hyperion import gitops  # noqa: E402
from hyperion.gitops import GitRepo  # noqa: E402
from hyperion.pool import WorktreePool  # noqa: E402
from hyperion.records import TERMINAL, Record, RecordStore, State  # noqa: E402

IDENTITY = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
FILES_PER_DIR = 100
#: ``hyperion`` with each worker thread's drain (daemon._drain) under cProfile; argv[1] is
#: where the stats go. The main thread (start-up, recovery, intake) is not profiled: the idle
#: ``run --once`` measures that.
PROFILED_CLI = """\
import cProfile, json, sys, time
from hyperion import daemon, gitops
from hyperion.cli import main
out = sys.argv.pop(1)
drain, git, calls = daemon._drain, gitops.git, {}
def counted(args, **kwargs):
    started = time.perf_counter()
    try:
        return git(args, **kwargs)
    finally:
        entry = calls.setdefault(args[0], [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - started
gitops.git = counted
def profiled(worker):
    profile = cProfile.Profile()
    profile.enable()
    try:
        drain(worker)
    finally:
        profile.disable()
        profile.dump_stats(out)
        with open(out + ".git.json", "w") as f:
            json.dump(calls, f)
daemon._drain = profiled
sys.argv[0] = "hyperion"
sys.exit(main())
"""
CHECKS = {"true": ["/bin/true"], "python": [sys.executable, "-c", "pass"]}
#: The contender's name after its source's: hyperion (run --once), hyperion_daemon.
RUNNER_SUFFIX = {"once": "", "daemon": "_daemon"}
RUNNER_LABEL = {"once": "hyperion submit/inbox, then hyperion run --once --workers W",
                "daemon": "hyperion run --workers W, a long-running daemon started and ready "
                          "before the clock"}
#: How often the daemon contender looks for the requests' ends. The end time is the last
#: record's `landed` timestamp, so this only bounds how late the bench notices.
POLL_S = 0.005
READY_TIMEOUT_S = 120.0


def runner_label(runner: str, args: argparse.Namespace) -> str:
    return RUNNER_LABEL[runner].replace("--workers W", f"--workers {args.workers}")


def runners(args: argparse.Namespace) -> list[str]:
    return ["once", "daemon"] if args.runner == "both" else [args.runner]


def log(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- plain git
class PlainGit:
    """git as a person runs it: no hyperion config, no inherited GIT_* variables, an empty
    HOME (so no user configuration), the system configuration ignored."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(IDENTITY)
        self.env.update({"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"})

    def run(self, cwd: Path, *args: str, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                              env=self.env, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: "
                               f"{proc.stderr.decode(errors='replace')}")
        return proc

    def out(self, cwd: Path, *args: str) -> str:
        return self.run(cwd, *args).stdout.decode().strip()


def file_path(i: int) -> str:
    return f"pkg/d{i // FILES_PER_DIR:03d}/f{i:05d}.txt"


def file_text(i: int) -> str:
    return f"file {i}\n"


def make_repo(git: PlainGit, path: Path, files: int) -> Path:
    """A repository with ``files`` one-line files committed on main."""
    path.mkdir(parents=True)
    git.run(path, "init", "-q", "-b", "main")
    for i in range(files):
        p = path / file_path(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(file_text(i))
    git.run(path, "add", "-A")
    git.run(path, "commit", "-q", "-m", f"{files} files")
    return path


def patch_for(i: int, tag: str) -> tuple[str, str]:
    """A git-style patch changing file ``i``'s one line, and the new content's sha256."""
    name, old = file_path(i), file_text(i)
    new = f"file {i}, changed by {tag}\n"
    patch = (f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n"
             f"@@ -1 +1 @@\n-{old}+{new}")
    return patch, hashlib.sha256(new.encode()).hexdigest()


# ---------------------------------------------------------------------- statistics
def summary(values_s: Sequence[float]) -> dict[str, float | int]:
    ms = sorted(v * 1000 for v in values_s)
    if not ms:
        return {"n": 0}
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(p90, 2), "mean_ms": round(statistics.fmean(ms), 2),
            "min_ms": round(ms[0], 2)}


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _parse_at(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------- where we are
def mount_of(path: Path) -> tuple[str, str] | None:
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


# ---------------------------------------------------------------------- part 1: pipeline
@dataclass
class Instance:
    """One hyperion setup of a round: its own repository clone, inbox, state and config.
    ``src``: run hyperion from this source folder instead of the installed one. ``runner``:
    ``once`` (``hyperion run --once`` after the intake) or ``daemon`` (``hyperion run``,
    started and ready before the clock starts)."""

    name: str
    folder: Path
    repo: Path
    config: Path
    src: Path | None = None
    runner: str = "once"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # As installed (pip compiles bytecode): a sandbox's PYTHONDONTWRITEBYTECODE would have
        # every hyperion process compile its ~60 modules from source (~100 ms each start).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.src), *filter(None, [env.get("PYTHONPATH")])])
        return env


class PipelineRound:
    """One round: identical repositories, the same ``n`` patches on each."""

    def __init__(self, root: Path, git: PlainGit, args: argparse.Namespace, index: int) -> None:
        self.root, self.git, self.args, self.index = root, git, args, index
        self.n = args.n
        self.check = CHECKS[args.check]
        files = max(args.files, args.n)
        self.template = make_repo(git, root / "template", files)
        self.plain = self._clone(root / "plain")
        self.plain_check = self._clone(root / "plain-check")
        self.tag = f"round {index}"
        self.patches = [patch_for(i, self.tag) for i in range(self.n)]
        # One instance per source and runner, each with its own clone, inbox and state_dir:
        # hyperion, hyperion_daemon, hyperion_compare, hyperion_compare_daemon.
        self.instances = {
            name: self._instance(name, args.compare_src
                                 if name.startswith("hyperion_compare") else None, runner)
            for name, runner in self.names(args).items()}
        self.plain_done = False

    @staticmethod
    def names(args: argparse.Namespace) -> dict[str, str]:
        """Each hyperion contender's name and runner, in the order of a round's first."""
        bases = ["hyperion"] + (["hyperion_compare"] if args.compare_src is not None else [])
        return {base + RUNNER_SUFFIX[runner]: runner
                for base in bases for runner in runners(args)}

    def _clone(self, path: Path, bare: bool = False) -> Path:
        self.git.run(self.root, "clone", "-q", "--no-hardlinks", *(["--bare"] if bare else []),
                     str(self.template), str(path))
        self.git.run(path, "remote", "remove", "origin")
        return path

    def _instance(self, name: str, src: Path | None, runner: str) -> Instance:
        folder = self.root / name
        folder.mkdir()
        bare = self.args.layout == "bare"
        repo = self._clone(folder / ("repo.git" if bare else "repo"), bare=bare)
        (folder / "inbox").mkdir()
        config = folder / "hyperion.yaml"
        config.write_text(
            f"state_dir: state\ninbox: inbox\nworkers: {self.args.workers}\n"
            f"repos:\n  demo:\n    path: {json.dumps(str(repo))}\n"
            "    target: main\n"
            + (f"    batch: {{max: {self.args.batch}}}\n" if self.args.batch > 1 else "")
            + f"checks:\n  noop:\n    run: {json.dumps(self.check)}\n    timeout_s: 60\n"
            "notify:\n  urls: []\n")
        return Instance(name, folder, repo, config, src, runner)

    # -- plain git
    def run_plain(self, repo: Path, with_check: bool) -> dict[str, Any]:
        per_change: list[float] = []
        started = time.perf_counter()
        for i, (patch, _sha) in enumerate(self.patches):
            t0 = time.perf_counter()
            self.git.run(repo, "apply", "--index", "-", input=patch.encode())
            if with_check:
                subprocess.run(self.check, cwd=repo, stdin=subprocess.DEVNULL, check=True)
            self.git.run(repo, "commit", "-q", "-m", f"change {i} ({self.tag})")
            per_change.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        self.plain_done = True
        count = int(self.git.out(repo, "rev-list", "--count", "main"))
        if count != self.n + 1:
            raise RuntimeError(f"plain git made {count - 1} commits, not {self.n}")
        return {"wall_s": round(wall, 3), "ms_per_change": round(wall * 1000 / self.n, 2),
                "per_change": summary(per_change)}

    # -- hyperion
    @staticmethod
    def _hyperion(inst: Instance, *args: str,
                  profile: Path | None = None) -> tuple[float, str]:
        prefix = [sys.executable, "-c", PROFILED_CLI, str(profile)] \
            if profile else [sys.executable, "-m", "hyperion"]
        started = time.perf_counter()
        proc = subprocess.run([*prefix, "--config", str(inst.config), *args], cwd=inst.folder,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env=inst.env())
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{inst.name} {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr[-2000:]}")
        return wall, proc.stdout

    def _request(self, i: int) -> bytes:
        patch, sha = self.patches[i]
        request = {"kind": "change", "version": 1, "id": f"bench-{self.index}-{i:05d}",
                   "agent": "bench", "repo": "demo", "title": f"change {i} ({self.tag})",
                   "patch": patch, "checks": ["noop"],
                   "changes": [{"path": file_path(i), "operation": "update", "sha256": sha}]}
        return json.dumps(request).encode()

    def _requests(self, inst: Instance) -> list[Path]:
        folder = inst.folder / "requests"
        folder.mkdir()
        paths = []
        for i in range(self.n):
            path = folder / f"{i:05d}.json"
            path.write_bytes(self._request(i))
            paths.append(path)
        return paths

    def run_instance(self, inst: Instance) -> dict[str, Any]:
        return self.run_daemon(inst) if inst.runner == "daemon" else self.run_hyperion(inst)

    def run_hyperion(self, inst: Instance, profile: Path | None = None) -> dict[str, Any]:
        files = self._requests(inst)
        result: dict[str, Any] = {}
        if self.args.intake == "submit":
            submit_s, out = self._hyperion(inst, "submit", "--format", "json",
                                           *map(str, files))
            states = {r["state"] for r in json.loads(out)}
            if states != {"queued"}:
                raise RuntimeError(f"submit answered states {states}")
            result["submit_wall_s"] = round(submit_s, 3)
        else:
            started = time.perf_counter()
            for path in files:
                os.rename(path, inst.folder / "inbox" / path.name)
            result["drop_wall_s"] = round(time.perf_counter() - started, 3)
            submit_s = 0.0
        run_started = time.time()
        workers = str(self.args.workers)
        run_s, _ = self._hyperion(inst, "run", "--once", "--workers", workers, profile=profile)
        idle_s, _ = self._hyperion(inst, "run", "--once", "--workers", workers)
        result.update({"run_once_wall_s": round(run_s, 3),
                       "run_once_idle_s": round(idle_s, 3)})
        total = submit_s + run_s
        result["ms_per_change"] = round(total * 1000 / self.n, 2)
        result["ms_per_change_without_process_start"] = round(
            (total - idle_s - (idle_s if submit_s else 0.0)) * 1000 / self.n, 2)
        result["breakdown_ms_per_change"] = self._breakdown(inst, run_started, run_s, idle_s,
                                                            submit_s)
        self._verify(inst)
        return result

    def _landed(self, inst: Instance) -> list[Record]:
        records = RecordStore(inst.folder / "state").all()
        landed = [r for r in records if r.state is State.LANDED]
        if len(landed) != self.n:
            bad = [(r.id, r.state.value, r.error.message if r.error else None)
                   for r in records if r.state is not State.LANDED][:3]
            raise RuntimeError(f"{len(landed)} of {self.n} landed; for example {bad}")
        return landed

    def _breakdown(self, inst: Instance, run_started: float, run_s: float, idle_s: float,
                   submit_s: float) -> dict[str, Any]:
        worker, spans = worker_breakdown(self._landed(inst))
        before_first = (spans[0][0] - run_started) * 1000
        after_last = (run_started + run_s - spans[-1][1]) * 1000
        return {
            "intake_submit": round(submit_s * 1000 / self.n, 2),
            **worker,
            "run_once_fixed": round((before_first + after_last) / self.n, 2),
            "run_once_fixed_total_ms": round(before_first + after_last, 1),
            "run_once_before_first_ms": round(before_first, 1),
            "run_once_after_last_ms": round(after_last, 1),
            "idle_run_once_ms": round(idle_s * 1000, 1),
            "note": "history timestamps have 1 ms resolution",
        }

    # -- hyperion as a long-running daemon
    def run_daemon(self, inst: Instance) -> dict[str, Any]:
        """``hyperion run --workers 1`` started and ready before the clock starts; the clock
        runs from the first delivery to the last record's ``landed`` timestamp."""
        submit = self.args.intake == "submit"
        files = self._requests(inst) if submit else []
        payloads = [self._request(i) for i in range(self.n)]
        result: dict[str, Any] = {}
        with DaemonProcess(inst, self.args.workers) as daemon:
            result["daemon_start_to_ready_s"] = round(daemon.start(), 3)
            started_wall, started = time.time(), time.perf_counter()
            if submit:
                submit_s, out = self._hyperion(inst, "submit", "--format", "json",
                                               *map(str, files))
                states = {r["state"] for r in json.loads(out)}
                if not states <= {"queued", "running", "landed"}:
                    raise RuntimeError(f"submit answered states {states}")
                result["submit_wall_s"] = round(submit_s, 3)
                deliver_s = submit_s
            else:
                # As an agent drops a request: written beside the inbox, renamed into it.
                inbox = inst.folder / "inbox"
                for i, payload in enumerate(payloads):
                    temporary = inst.folder / f".{i:05d}.json.tmp"
                    temporary.write_bytes(payload)
                    os.rename(temporary, inbox / f"{i:05d}.json")
                deliver_s = time.perf_counter() - started
                result["drop_wall_s"] = round(deliver_s, 3)
            detected = daemon.wait_landed(self.n, timeout_s=max(300.0, self.n * 10.0))
            result["daemon_stop_s"] = round(daemon.stop(), 3)
        landed = self._landed(inst)
        worker, spans = worker_breakdown(landed)
        last_landed = max(end for _, end in spans)
        queued = [_parse_at(r.history[0].at) for r in landed]
        total_s = last_landed - started_wall
        result["ms_per_change"] = round(total_s * 1000 / self.n, 2)
        result["ms_per_change_detected"] = round((detected - started) * 1000 / self.n, 2)
        result["breakdown_ms_per_change"] = {
            "intake_submit": round(deliver_s * 1000 / self.n, 2) if submit else 0.0,
            "deliver_total_ms": round(deliver_s * 1000, 1),
            "last_queued_after_start_ms": round((max(queued) - started_wall) * 1000, 1),
            "first_pickup_ms": round((spans[0][0] - started_wall) * 1000, 1),
            "after_first_pickup": round((last_landed - spans[0][0]) * 1000 / self.n, 2),
            **worker,
            "note": "history timestamps have 1 ms resolution; first_pickup_ms and "
                    "last_queued_after_start_ms are from the first delivery",
        }
        self._verify(inst)
        return result

    def _verify(self, inst: Instance) -> None:
        count = int(self.git.out(inst.repo, "rev-list", "--count", "main"))
        if count != self.n + 1:
            raise RuntimeError(f"hyperion's main has {count - 1} new commits, not {self.n}")
        if not self.plain_done:
            return
        ours = self.git.out(inst.repo, "rev-parse", "main^{tree}")
        plain = self.git.out(self.plain, "rev-parse", "main^{tree}")
        if ours != plain:
            raise RuntimeError("hyperion's main and plain git's main have different trees")


def worker_breakdown(landed: Sequence[Record]) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Per change, from the landed records: each step's mean, the worker's time per request
    (running -> landed) and the gap between one request's landed and the next one's running;
    and the (running, landed) span of each, in order."""
    steps: dict[str, list[float]] = defaultdict(list)
    in_worker: list[float] = []
    spans: list[tuple[float, float]] = []
    for record in landed:
        for name, seconds in record.timings.items():
            steps[name].append(seconds)
        running = [h for h in record.history if h.to is State.RUNNING]
        done = [h for h in record.history if h.to is State.LANDED]
        start, end = _parse_at(running[-1].at), _parse_at(done[-1].at)
        in_worker.append(end - start)
        spans.append((start, end))
    spans.sort()
    between = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    mean_ms: dict[str, float] = {name: round(statistics.fmean(v) * 1000, 2)
                                 for name, v in steps.items()}
    step_total = sum(mean_ms.values())
    worker_ms = statistics.fmean(in_worker) * 1000
    return {
        "steps": mean_ms,
        "steps_total": round(step_total, 2),
        "worker_outside_steps": round(worker_ms - step_total, 2),
        "worker_in_process": round(worker_ms, 2),
        "between_requests": round(statistics.fmean(between) * 1000 if between else 0.0, 2),
        "between_requests_max_ms": round(max(between) * 1000 if between else 0.0, 1),
    }, spans


class DaemonProcess:
    """One instance's ``hyperion run --workers 1`` as a child process, run as systemd runs it
    (``Type=notify``). Ready: the daemon's READY=1 on $NOTIFY_SOCKET, which it sends once
    recovery, the inbox watcher, the first inbox scan and the worker threads are all started
    (daemon.Daemon._run). The registration file in state_dir/daemons/ is written before all
    that, so it is no readiness signal. Done: the ``landed`` lines appended to the audit log,
    which records.py appends after the record itself is written."""

    def __init__(self, inst: Instance, workers: int) -> None:
        self.inst = inst
        self.workers = workers
        digest = hashlib.sha256(str(inst.folder).encode()).hexdigest()[:16]
        self.socket_name = f"hyperion-bench-{os.getpid()}-{digest}"   # abstract: no path limit
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.socket_name)
        self.log_path = inst.folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _alive(self, doing: str) -> subprocess.Popen[bytes]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.inst.name}: the daemon exited {self.proc.returncode} "
                               f"{doing}: {self._tail()}")
        return self.proc

    def start(self) -> float:
        """Start it and wait until it is ready; the seconds that took."""
        env = self.inst.env()
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(key, None)
        env["NOTIFY_SOCKET"] = "@" + self.socket_name
        started = time.perf_counter()
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hyperion", "--config", str(self.inst.config), "run",
                 "--workers", str(self.workers)], cwd=self.inst.folder, env=env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        self.sock.settimeout(0.1)
        while True:
            self._alive("before it was ready")
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"{self.inst.name}: no READY=1 from the daemon within "
                                   f"{READY_TIMEOUT_S:g} s: {self._tail()}")
            try:
                message = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                self.sock.setblocking(False)
                return time.perf_counter() - started

    def _drain_notifications(self) -> None:
        # STATUS= and WATCHDOG=1 keep coming; an unread datagram queue would block the daemon.
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(4096):
                pass

    def wait_landed(self, n: int, timeout_s: float) -> float:
        """Wait until ``n`` requests reached a final state; perf_counter() when that was seen.
        Reads only what was appended to the audit log since the last look, every POLL_S."""
        audit = self.inst.folder / "state" / "audit.jsonl"
        final = {state.value for state in TERMINAL}
        ends: dict[str, str] = {}
        pending = b""
        deadline = time.perf_counter() + timeout_s
        with contextlib.ExitStack() as stack:
            reader: io.BufferedReader | None = None
            while True:
                if reader is None and audit.exists():
                    reader = stack.enter_context(open(audit, "rb"))
                if reader is not None:
                    *lines, pending = (pending + reader.read()).split(b"\n")
                    for line in filter(None, lines):
                        entry = json.loads(line)
                        if entry["to"] in final:
                            ends[entry["id"]] = entry["to"]
                        else:       # retried, requeued: not finished after all
                            ends.pop(entry["id"], None)
                    if len(ends) >= n:
                        seen = time.perf_counter()
                        bad = {k: v for k, v in ends.items() if v != State.LANDED.value}
                        if bad:
                            raise RuntimeError(f"{self.inst.name}: {len(bad)} request(s) did "
                                               f"not land: {dict(list(bad.items())[:3])}")
                        return seen
                self._alive("before the requests were done")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.inst.name}: {len(ends)} of {n} requests done "
                                       f"after {timeout_s:g} s: {self._tail()}")
                self._drain_notifications()
                time.sleep(POLL_S)

    def stop(self) -> float:
        """SIGTERM (systemd's stop) and wait for a clean exit; the seconds that took."""
        proc = self._alive("before it was stopped")
        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            while proc.poll() is None:
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{self.inst.name}: the daemon did not stop within "
                                       f"120 s of SIGTERM: {self._tail()}")
                self._drain_notifications()
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.inst.name}: the daemon exited {proc.returncode} after "
                               f"SIGTERM: {self._tail()}")
        return time.perf_counter() - started


def run_pipeline(root: Path, git: PlainGit, args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        folder = root / f"pipeline-{index}"
        folder.mkdir()
        rnd = PipelineRound(folder, git, args, index)
        names = ["plain", *rnd.instances]
        order = names[index % len(names):] + names[:index % len(names)]
        result: dict[str, Any] = {"order": order}
        for which in order:
            log(f"round {index + 1}/{args.rounds}: {which}, {args.n} changes")
            if which == "plain":
                result["plain_git"] = rnd.run_plain(rnd.plain, with_check=False)
                result["plain_git_with_check"] = rnd.run_plain(rnd.plain_check,
                                                               with_check=True)
            else:
                result[which] = rnd.run_instance(rnd.instances[which])
        for name in rnd.instances:
            suffix = name.removeprefix("hyperion")
            result["ratio" + suffix] = round(
                result[name]["ms_per_change"] / result["plain_git"]["ms_per_change"], 2)
            result["ratio_vs_plain_with_check" + suffix] = round(
                result[name]["ms_per_change"]
                / result["plain_git_with_check"]["ms_per_change"], 2)
        rounds.append(result)
    out: dict[str, Any] = {
        "n": args.n, "rounds": args.rounds, "intake": args.intake, "layout": args.layout,
        "runners": {"hyperion" + RUNNER_SUFFIX[r]: runner_label(r, args) for r in runners(args)},
        "workers": args.workers,
        "check": CHECKS[args.check], "repo_files": max(args.files, args.n),
        "compare_src": str(args.compare_src) if args.compare_src else None,
        "per_round": rounds,
    }

    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(get(r) for r in rounds), 2)

    summary_: dict[str, Any] = {
        "plain_git_ms_per_change": med(lambda r: r["plain_git"]["ms_per_change"]),
        "plain_git_with_check_ms_per_change":
            med(lambda r: r["plain_git_with_check"]["ms_per_change"]),
    }
    for name, inst in PipelineRound.names(args).items():
        suffix = name.removeprefix("hyperion")
        summary_.update({
            f"{name}_ms_per_change": med(lambda r, n=name: r[n]["ms_per_change"]),
            f"{name}_worker_in_process_ms_per_change":
                med(lambda r, n=name: r[n]["breakdown_ms_per_change"]["worker_in_process"]),
            "ratio" + suffix: med(lambda r, k="ratio" + suffix: r[k]),
            "ratio_vs_plain_with_check" + suffix:
                med(lambda r, k="ratio_vs_plain_with_check" + suffix: r[k]),
        })
        if inst == "once":
            summary_[f"{name}_ms_per_change_without_process_start"] = med(
                lambda r, n=name: r[n]["ms_per_change_without_process_start"])
        else:
            summary_.update({
                f"{name}_after_first_pickup_ms_per_change": med(
                    lambda r, n=name: r[n]["breakdown_ms_per_change"]["after_first_pickup"]),
                f"{name}_first_pickup_ms": med(
                    lambda r, n=name: r[n]["breakdown_ms_per_change"]["first_pickup_ms"]),
                f"{name}_between_requests_ms": med(
                    lambda r, n=name: r[n]["breakdown_ms_per_change"]["between_requests"]),
            })
    # The goals, for this source's hyperion under each runner.
    summary_["goals"] = {
        runner: {"contender": "hyperion" + RUNNER_SUFFIX[runner],
                 "runner": runner_label(runner, args),
                 "ratio": summary_["ratio" + RUNNER_SUFFIX[runner]],
                 "ratio_at_most_3": summary_["ratio" + RUNNER_SUFFIX[runner]] <= 3.0,
                 "ratio_at_most_1_5": summary_["ratio" + RUNNER_SUFFIX[runner]] <= 1.5}
        for runner in runners(args)}
    summary_["note"] = "medians over the rounds"
    out["summary"] = summary_
    if args.profile:
        out["profile"] = profile_round(root, git, args)
    return out


def profile_round(root: Path, git: PlainGit, args: argparse.Namespace) -> dict[str, Any]:
    """An extra round, not counted above: the worker's drain under cProfile, per source.
    Only ``run --once`` is profiled (the daemon runs the same Worker code in a thread of its
    own, which this profiler does not reach)."""
    folder = root / "pipeline-profile"
    folder.mkdir()
    rnd = PipelineRound(folder, git, argparse.Namespace(**{**vars(args), "runner": "once"}), 99)
    out: dict[str, Any] = {name: profile_instance(rnd, inst)
                           for name, inst in rnd.instances.items()}
    out["note"] = ("run --once only: the daemon contender is not profiled; its worker runs "
                   "the same code")
    return out


def profile_instance(rnd: PipelineRound, inst: Instance) -> dict[str, Any]:
    stats_path = inst.folder / "run-once.prof"
    log(f"profile round: the drain of {inst.name}'s run --once under cProfile")
    result = rnd.run_hyperion(inst, profile=stats_path)
    n = rnd.n
    stats = pstats.Stats(str(stats_path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    git_calls = json.loads(Path(f"{stats_path}.git.json").read_text())
    popen_calls = sum(v[1] for k, v in raw.items()
                      if k[2] == "_execute_child" and k[0].endswith("subprocess.py"))
    fsyncs = sum(v[1] for k, v in raw.items() if k[2] in ("<built-in method posix.fsync>",
                                                          "<built-in method posix.fdatasync>"))
    by_caller: dict[str, float] = {}
    for (filename, line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if "/hyperion/" in filename:
            by_caller[f"{Path(filename).name}:{line}:{name}"] = ct
    top = sorted(by_caller.items(), key=lambda kv: -kv[1])[:25]
    buffer = io.StringIO()
    pstats.Stats(str(stats_path), stream=buffer).sort_stats("tottime").print_stats(12)
    return {"ms_per_change_profiled": result["ms_per_change"],
            "git_calls_per_change": round(sum(c for c, _ in git_calls.values()) / n, 2),
            "git_ms_per_change": round(sum(t for _, t in git_calls.values()) * 1000 / n, 2),
            "git_by_subcommand": {name: {"calls_per_change": round(c / n, 2),
                                         "ms_per_change": round(t * 1000 / n, 2)}
                                  for name, (c, t) in sorted(git_calls.items(),
                                                             key=lambda kv: -kv[1][1])},
            "child_processes_per_change": round(popen_calls / n, 2),
            "fsyncs_per_change": round(fsyncs / n, 2),
            "hyperion_cumulative_s_top": {k: round(v, 3) for k, v in top},
            "tottime_top": [line for line in buffer.getvalue().splitlines()
                            if line.strip()][-14:]}


# ---------------------------------------------------------------------- part 2: sweep
@contextlib.contextmanager
def count_git() -> Iterator[dict[str, list[float]]]:
    """Time every hyperion git call by subcommand (wraps gitops.git for this process)."""
    calls: dict[str, list[float]] = defaultdict(list)
    original = gitops.git

    def wrapped(args: Sequence[str], **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(args, **kwargs)
        finally:
            calls[args[0]].append(time.perf_counter() - started)

    gitops.git = wrapped  # type: ignore[assignment]
    try:
        yield calls
    finally:
        gitops.git = original


def sweep_size(root: Path, git: PlainGit, files: int, reps: int,
               add_reps: int) -> dict[str, Any]:
    log(f"sweep: making a repository of {files} files")
    repo_path = make_repo(git, root / f"repo-{files}", files)
    # One commit per rep, each changing one file: what a queue of landing requests makes.
    commits = [git.out(repo_path, "rev-parse", "HEAD")]
    for k in range(reps):
        p = repo_path / file_path((k * 37) % files)
        p.write_text(p.read_text() + f"rep {k}\n")
        git.run(repo_path, "commit", "-q", "-a", "-m", f"rep {k}")
        commits.append(git.out(repo_path, "rev-parse", "HEAD"))
    repo = GitRepo(repo_path)
    result: dict[str, Any] = {"files": files}

    # hyperion: the first checkout adds the slot, later ones reuse it.
    (root / "locks").mkdir(exist_ok=True)
    pool = WorktreePool(root / f"pool-{files}", root / "locks")

    def checkout(commit: str, into: WorktreePool = pool) -> Path:
        manager = into.checkout("demo", repo, commit)
        path = manager.__enter__()
        manager.__exit__(None, None, None)
        return path

    # More first checkouts, each in a pool of its own (kept, like the plain worktrees).
    firsts = [timed(lambda k=k: checkout(  # type: ignore[misc]
        commits[k], WorktreePool(root / f"pool-{files}-first-{k}", root / "locks")))
        for k in range(1, add_reps)]
    first = timed(lambda: checkout(commits[0]))
    reuse: list[float] = []
    with count_git() as calls:
        for commit in commits[1:]:
            reuse.append(timed(lambda c=commit: checkout(c)))  # type: ignore[misc]
    slot = root / f"pool-{files}" / "demo" / "w0"
    # A slot a check left dirty: an untracked file and a modified one.
    dirty: list[float] = []
    for k, commit in enumerate(commits[1:6]):
        (slot / f"junk-{k}.txt").write_text("left by a check\n")
        (slot / file_path(1)).write_text("modified by a check\n")
        dirty.append(timed(lambda c=commit: checkout(c)))  # type: ignore[misc]
    result["hyperion_pool"] = {
        "first_checkout": summary([first, *firsts]),
        "reuse": summary(reuse),
        "reuse_after_dirty_check": summary(dirty),
        "reuse_git_calls": {name: {"calls_per_checkout": round(len(v) / len(reuse), 2),
                                   "ms_per_checkout": round(sum(v) * 1000 / len(reuse), 2)}
                            for name, v in sorted(calls.items())},
    }

    # git: a fresh worktree each time. None is removed before the end: on ext4 without a
    # journal (this machine's) files created within minutes of a mass deletion are slow, so
    # removing each worktree would time the allocator, not git (see bench/README.md).
    adds = [timed(lambda k=k: git.run(  # type: ignore[misc]
        repo_path, "worktree", "add", "-q", "--detach", str(root / f"plain-wt-{files}-{k}"),
        commits[k])) for k in range(add_reps)]
    # git: one worktree, moved between the same commits (what reuse cannot beat), and a status.
    plain_wt = root / f"plain-wt-{files}"
    git.run(repo_path, "worktree", "add", "-q", "--detach", str(plain_wt), commits[0])
    moves = [timed(lambda c=commit: git.run(  # type: ignore[misc]
        plain_wt, "checkout", "-q", "--detach", c)) for commit in commits[1:]]
    status = [timed(lambda: git.run(plain_wt, "status", "--porcelain"))
              for _ in range(reps)]
    status_all = [timed(lambda: git.run(plain_wt, "status", "--porcelain", "--ignored",
                                        "--untracked-files=all")) for _ in range(reps)]
    result["git"] = {"worktree_add": summary(adds), "checkout_detach": summary(moves),
                     "status": summary(status),
                     "status_ignored_untracked_all": summary(status_all)}
    return result


def run_sweep(root: Path, git: PlainGit, args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    per_size = {str(size): sweep_size(root / f"sweep-{size}", git, size, args.reps,
                                      min(args.add_reps, args.reps))
                for size in sizes}
    out: dict[str, Any] = {"reps": args.reps, "per_size": per_size}
    if len(sizes) >= 2:
        small, large = per_size[str(sizes[0])], per_size[str(sizes[-1])]

        def growth(get: Callable[[dict[str, Any]], float]) -> float:
            return round(get(large) / get(small), 2)

        out["growth_large_over_small"] = {
            "sizes": f"{sizes[-1]} / {sizes[0]}",
            "hyperion_pool_reuse": growth(lambda s: s["hyperion_pool"]["reuse"]["median_ms"]),
            "hyperion_pool_first_checkout":
                growth(lambda s: s["hyperion_pool"]["first_checkout"]["median_ms"]),
            "git_worktree_add": growth(lambda s: s["git"]["worktree_add"]["median_ms"]),
            "git_checkout_detach": growth(lambda s: s["git"]["checkout_detach"]["median_ms"]),
            "git_status": growth(lambda s: s["git"]["status"]["median_ms"]),
        }
        out["reuse_over_git_worktree_add"] = {
            str(size): round(per_size[str(size)]["hyperion_pool"]["reuse"]["median_ms"]
                             / per_size[str(size)]["git"]["worktree_add"]["median_ms"], 2)
            for size in sizes}
    return out


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="changes per round (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="pipeline rounds (default 3)")
    parser.add_argument("--files", type=int, default=200,
                        help="files in the pipeline's repository (at least --n; default 200)")
    parser.add_argument("--check", choices=sorted(CHECKS), default="true",
                        help="the no-op check: /bin/true, or python -c pass (default true)")
    parser.add_argument("--intake", choices=("submit", "inbox"), default="submit",
                        help="hyperion submit all files in one call, or drop them in the "
                             "inbox for run --once to pick up (default submit)")
    parser.add_argument("--layout", choices=("checkout", "bare"), default="checkout",
                        help="hyperion's repository: main checked out (its working tree "
                             "moves on land, like the plain loop's) or bare (default checkout)")
    parser.add_argument("--compare-src", type=Path, default=None,
                        help="also run hyperion from this source folder (e.g. an older "
                             "version's src/) in every round, for a before/after")
    parser.add_argument("--runner", choices=("once", "daemon", "both"), default="both",
                        help="hyperion as hyperion run --once after the intake, as a "
                             "long-running hyperion run daemon started before the clock, or "
                             "both side by side (default both)")
    parser.add_argument("--workers", type=int, default=1,
                        help="hyperion's workers (default 1; the config's default is 2)")
    parser.add_argument("--batch", type=int, default=1,
                        help="hyperion's repository batches up to this many requests per "
                        "check run (batch: {max: N}); default 1, no batching")
    parser.add_argument("--profile", action="store_true",
                        help="one extra round with run --once under cProfile")
    parser.add_argument("--sizes", default="1000,20000", help="sweep sizes in files")
    parser.add_argument("--reps", type=int, default=20,
                        help="sweep repetitions of reuse, checkout and status (default 20)")
    parser.add_argument("--add-reps", type=int, default=5,
                        help="sweep repetitions of worktree add and of hyperion's first "
                             "checkout, each a new worktree kept to the end (default 5)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the temporary directory (a real disk, not a tmpfs)")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.reps < 2:
        parser.error("--n and --rounds must be >= 1 and --reps >= 2")

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="hyperion-pipeline-", dir=args.dir)).resolve()
    mount = mount_of(root)
    warnings: list[str] = []
    if mount and mount[0] in ("tmpfs", "ramfs"):
        warnings.append(f"{root} is on a {mount[0]}: fsyncs are free there, so hyperion's "
                        "durable writes cost nothing and the ratio flatters it; use --dir on "
                        "a real disk")
        log(f"WARNING: {warnings[-1]}")
    git = PlainGit(root / "home")
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "git": git.out(root, "--version"),
                    "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "dir": str(root), "filesystem": mount[0] if mount else None, "warnings": warnings,
    }
    started = time.perf_counter()
    try:
        if not args.skip_pipeline:
            report["pipeline"] = run_pipeline(root, git, args)
        if not args.skip_sweep:
            report["sweep"] = run_sweep(root, git, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
