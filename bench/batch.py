"""Batching against one-by-one, side by side in one run: N non-conflicting requests with a slow
check through `hyperion run --once --workers 1`, once with `batch: {max: M}` and once without;
then without batching through `--workers W` (default 2), whose workers check requests in
parallel, each on top of the one before (the landing stage's speculation). Prints JSON: check
runs, wall seconds, and whether everything landed. The goal (issue 5): 20 requests with a
5-second check land in about 3 check runs, not 20.

    .venv/bin/python bench/batch.py [--n 20] [--check-s 5] [--max 10] [--bad 0] [--workers 2]
    .venv/bin/python bench/batch.py --compare-src DIR   # the W-worker case with DIR's src too

`--bad K` makes K of the requests turn the check red, to measure the bisection's cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def make_request(rid: str, path: str, text: str) -> dict[str, object]:
    body = "".join(f"+{line}\n" for line in text.splitlines())
    patch = (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
             f"+++ b/{path}\n@@ -0,0 +1,{len(text.splitlines())} @@\n{body}")
    return {"kind": "change", "version": 1, "id": rid, "agent": "bench", "repo": "demo",
            "title": f"add {path}", "patch": patch, "checks": ["slow"],
            "changes": [{"path": path, "operation": "add",
                         "sha256": hashlib.sha256(text.encode()).hexdigest()}]}


def run_case(root: Path, n: int, check_s: float, batch_max: int | None, bad: int,
             workers: int = 1, src: Path | None = None) -> dict:
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("bench\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "initial")
    runs = root / "runs.log"
    check = root / "check.py"
    check.write_text(
        "import pathlib, sys, time\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"time.sleep({check_s})\n"
        "sys.exit(3 if any(pathlib.Path('files').glob('bad*')) else 0)\n")
    batch = f"    batch: {{max: {batch_max}}}\n" if batch_max else ""
    (root / "hyperion.yaml").write_text(
        f"state_dir: state\ninbox: inbox\nworkers: {workers}\nrepos:\n  demo:\n"
        f"    path: {repo}\n"
        f"    target: main\n{batch}checks:\n  slow:\n"
        f"    run: [{json.dumps(sys.executable)}, {json.dumps(str(check))}]\n"
        f"    timeout_s: {check_s * 10 + 60}\n")
    (root / "inbox").mkdir()
    bad_ids = {f"req-{i:03d}" for i in range(0, n, max(1, n // bad))[:bad]} if bad else set()
    for i in range(n):
        rid = f"req-{i:03d}"
        name = f"files/bad{i}.txt" if rid in bad_ids else f"files/f{i}.txt"
        request = make_request(rid, name, f"{i}\n")
        request["priority"] = n - i      # keep submission order
        (root / "inbox" / f"{rid}.json").write_text(json.dumps(request))
    hyperion = [sys.executable, "-m", "hyperion", "--config", str(root / "hyperion.yaml")]
    env = {**os.environ, **({"PYTHONPATH": str(src.resolve())} if src else {})}
    started = time.perf_counter()
    subprocess.run([*hyperion, "run", "--once"], check=True, capture_output=True, env=env)
    seconds = time.perf_counter() - started
    listed = json.loads(subprocess.run([*hyperion, "list", "--limit", str(n + 10), "--format",
                                        "json"], check=True, capture_output=True).stdout)
    states: dict[str, int] = {}
    for record in listed:
        states[record["state"]] = states.get(record["state"], 0) + 1
    wrong = [r["id"] for r in listed
             if (r["state"] == "landed") == (r["id"] in bad_ids)]
    return {"check_runs": runs.read_text().count("run"), "wall_s": round(seconds, 2),
            "states": states, "wrong_outcomes": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--check-s", type=float, default=5.0)
    parser.add_argument("--max", type=int, default=10)
    parser.add_argument("--bad", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2,
                        help="workers of the parallel case (default 2)")
    parser.add_argument("--compare-src", type=Path, default=None,
                        help="another version's src/ for the parallel case, run beside it")
    args = parser.parse_args()
    cases: list[tuple[str, int | None, int, Path | None]] = [
        ("batched", args.max, 1, None), ("one_by_one", None, 1, None),
        (f"workers_{args.workers}", None, args.workers, None)]
    if args.compare_src:
        cases.append((f"workers_{args.workers}_compare", None, args.workers, args.compare_src))
    results = {}
    for label, batch_max, workers, src in cases:
        with tempfile.TemporaryDirectory(prefix="hyperion-bench-batch-") as tmp:
            results[label] = run_case(Path(tmp), args.n, args.check_s, batch_max, args.bad,
                                      workers, src)
    print(json.dumps({"n": args.n, "check_s": args.check_s, "batch_max": args.max,
                      "bad": args.bad, "workers": args.workers, "results": results,
                      "speedup": round(results["one_by_one"]["wall_s"]
                                       / max(results["batched"]["wall_s"], 1e-9), 2)},
                     indent=2))


if __name__ == "__main__":
    main()
