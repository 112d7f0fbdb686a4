"""Policy evaluation latency: 100 rules against a 1,000-file patch (goal: p99 under 5 ms).

Usage: .venv/bin/python bench/policy.py [--rules 100] [--files 1000] [--repeat 300]

Prints one JSON document (bench/README.md says how to read it). The rule set mixes what real
policies hold: folder rules (``svc17/**``), extension rules anywhere (``**/*.tf``), exact files,
negations (``paths_not``), agent-scoped rules, operation rules with file-count thresholds and a
few rules with character classes; about a tenth of them fire on the patch. The patch is a real
unified diff of 1,000 files (updates, additions, deletions, a rename) parsed by the gate's own
parser.

Three timings, each over ``--repeat`` evaluations after a warm-up:

- ``decide``: the policy decision alone (hyperion.gate.policy.decide) on parsed files; a fresh
  list of files each time, so no per-call cache can carry over (``decide_cpu``: the same calls
  in this thread's CPU time, without the time other processes took the CPU);
- ``compile``: turning a freshly loaded policy into its matcher (paid once per policy load);
- ``verdict``: the whole pure gate (hyperion.gate.verdict.judge): parse the 1,000-file patch,
  cross-check the manifest, path checks, limits, the secret scan and the decision.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/secrets.py sits beside this file: keep this folder off sys.path so it does not shadow
# the stdlib `secrets` module that pydantic imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from hyperion.config import Config, RepoConfig  # noqa: E402
from hyperion.errors import Code, GateError  # noqa: E402
from hyperion.gate.patch import FilePatch, parse_patch  # noqa: E402
from hyperion.gate.policy import Policy, compiled, decide  # noqa: E402
from hyperion.gate.verdict import judge  # noqa: E402
from hyperion.requests import request_from_json  # noqa: E402

EXTENSIONS = ("py", "go", "ts", "tf", "yaml", "md", "json", "sh", "rs", "txt")


def make_paths(n: int, rng: random.Random) -> list[str]:
    paths = set()
    while len(paths) < n:
        svc = rng.randrange(60)
        depth = rng.randrange(1, 4)
        dirs = "/".join(f"d{rng.randrange(8)}" for _ in range(depth))
        paths.add(f"svc{svc}/{dirs}/file{rng.randrange(10_000)}.{rng.choice(EXTENSIONS)}")
    return sorted(paths)


def make_rules(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 10
        rule: dict[str, Any] = {"name": f"rule-{i}", "action": rng.choice(
            ["allow", "notify", "require_approval", "deny"]), "reason": f"reason {i}"}
        if kind in (0, 1, 2):      # a folder that does not exist in the patch (most rules)
            rule["match"] = {"paths": [f"team{i}/**", f"svc{100 + i}/**"]}
        elif kind == 3:            # an extension anywhere
            rule["match"] = {"paths": [f"**/*.{EXTENSIONS[i % len(EXTENSIONS)]}x"]}
        elif kind == 4:            # an exact file, absent
            rule["match"] = {"paths": [f"svc{i % 60}/d0/config-{i}.yaml", "Dockerfile"]}
        elif kind == 5:            # a folder with an exclusion, for another agent
            rule["match"] = {"paths": [f"svc{i % 60}/**"], "paths_not": ["**/*.md"],
                             "agents": [f"bot-{i}-*"]}
        elif kind == 6:            # operations with a threshold
            rule["match"] = {"operations": ["delete"], "min_files": 500}
        elif kind == 7:            # character classes
            rule["match"] = {"paths": [f"svc[0-9]/d[!0-7]/*.{EXTENSIONS[i % 10]}"]}
        elif kind == 8:            # fires on the patch (a folder that is there)
            rule["match"] = {"paths": [f"svc{i % 60}/d{i % 8}/**"], "min_lines": 1}
        else:                      # an agent rule with a line threshold
            rule["match"] = {"agents": ["codex-*"], "min_lines": 10_000_000}
        rules.append(rule)
    return rules


def make_patch(paths: list[str]) -> tuple[str, list[dict[str, Any]]]:
    parts: list[str] = []
    changes: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        if i % 10 == 1:
            parts.append(f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex "
                         f"0000000..1111111\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,2 @@\n"
                         f"+line one {i}\n+line two\n")
            changes.append({"path": path, "operation": "add"})
        elif i % 10 == 2:
            parts.append(f"diff --git a/{path} b/{path}\ndeleted file mode 100644\nindex "
                         f"1111111..0000000\n--- a/{path}\n+++ /dev/null\n@@ -1 +0,0 @@\n"
                         f"-old {i}\n")
            changes.append({"path": path, "operation": "delete"})
        else:
            parts.append(f"diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n"
                         f"--- a/{path}\n+++ b/{path}\n@@ -1,2 +1,2 @@\n context\n-old {i}\n"
                         f"+new {i}\n")
            changes.append({"path": path, "operation": "update"})
    return "".join(parts), changes


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 3), "mean_ms":
            round(statistics.fmean(ordered) * 1000, 3)}


def timed(fn: Any, repeat: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds per call; with ``cpu``, also this thread's CPU seconds per call
    (which leave out the time the machine gave to other processes)."""
    for _ in range(min(20, repeat)):
        fn()
    samples = []
    for _ in range(repeat):
        started_cpu = time.thread_time()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.thread_time() - started_cpu)
    return samples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    paths = make_paths(args.files, rng)
    rules = make_rules(args.rules, rng)
    policy_data = {"version": 1, "rules": rules,
                   "limits": {"max_files": 100_000, "max_lines": 10_000_000,
                              "max_patch_bytes": 1 << 30}}
    policy = Policy.model_validate(policy_data)
    patch, changes = make_patch(paths)
    files = parse_patch(patch)
    decision = decide(policy, "codex-7", files)

    def fresh_files() -> list[FilePatch]:
        return list(files)

    decide_cpu: list[float] = []
    decide_samples = timed(lambda: decide(policy, "codex-7", fresh_files()), args.repeat,
                           decide_cpu)
    compile_samples = timed(lambda: compiled(Policy.model_validate(policy_data)),
                            max(20, args.repeat // 10))
    config = Config(repos={"demo": RepoConfig(path=Path("/nonexistent"))})
    request = request_from_json({
        "kind": "change", "version": 1, "id": "bench-1", "agent": "codex-7", "repo": "demo",
        "title": "a wide change", "patch": patch, "changes": changes})
    def verdict() -> None:
        try:
            judge(request, config, policy)
        except GateError as exc:  # a deny is an outcome of the verdict like any other
            assert exc.info.code is Code.POLICY_DENIED, exc.info

    verdict_samples = timed(verdict, max(20, args.repeat // 10))
    decide_stats = percentiles(decide_samples)
    report = {
        "python": platform.python_version(),
        "rules": args.rules, "files": len(files), "patch_bytes": len(patch.encode()),
        "fired_rules": len(decision.rules), "decision": decision.action.value,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "decide": decide_stats,
        "decide_cpu": percentiles(decide_cpu),
        "compile": percentiles(compile_samples),
        "verdict": percentiles(verdict_samples),
        "goal": {"decide_p99_ms_under": 5.0, "met": decide_stats["p99_ms"] < 5.0},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
