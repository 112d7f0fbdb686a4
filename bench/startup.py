"""CLI start-up cost: `hyperion --version`, `list`, `validate` against bare Python, side by side
in one run. Prints JSON. The goal (issue 8): --version at most 100 ms over bare Python, and the
quick commands never import apprise, dulwich or watchdog.

    .venv/bin/python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], runs: int, cwd: Path) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 1),
            "min_ms": round(samples[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "hyperion.yaml").write_text("state_dir: state\ninbox: inbox\n")
        (root / "req.json").write_text('{"kind": "change"}')
        py = sys.executable
        hyperion = [py, "-m", "hyperion", "--config", str(root / "hyperion.yaml")]
        results = {
            "bare_python": timed([py, "-c", "pass"], args.runs, root),
            "hyperion --version": timed([*hyperion, "--version"], args.runs, root),
            "hyperion list": timed([*hyperion, "list"], args.runs, root),
            "hyperion validate": timed([*hyperion, "validate", "req.json"], args.runs, root),
        }
    base = results["bare_python"]["median_ms"]
    out = {"runs": args.runs, "results": results,
           "over_bare_python_ms": {k: round(v["median_ms"] - base, 1)
                                   for k, v in results.items() if k != "bare_python"},
           "goal": "--version <= 100 ms over bare python"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
