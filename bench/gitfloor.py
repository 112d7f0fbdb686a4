"""What hyperion's git work costs alone, beside plain git, in one run (issue 5, "Speed").

bench/pipeline.py times the whole daemon. This times only the git work a change takes in it,
through hyperion's own code but without anything else: for each change, a pooled worktree at
the last commit (`WorktreePool.checkout_unproven`), `git apply --index`, the write-tree with
the clean-worktree proof beside it and the commit made in-process
(`GitRepo.commit_proving_clean`), the check (`run.run_command`, `/bin/true`), and the
compare-and-swap of the branch (`GitRepo.set_ref`) in a second thread while the next change is
applied, as the landing stage does. No intake, gate, records, queue, notes or notifications.
Beside it, in the same round, plain `git apply --index - && git commit` in a loop on an
identical repository. The difference between this floor and pipeline.py's daemon is what
hyperion's own bookkeeping costs.

    .venv/bin/python bench/gitfloor.py [--n 200] [--rounds 5] [--files 200] [--dir /var/tmp]

Prints JSON: per round each contender's ms per change and the ratio, and their medians.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# bench/ holds secrets.py and queue.py: keep it off sys.path so they do not shadow the stdlib
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from hyperion.gitops import GitRepo  # noqa: E402
from hyperion.pool import WorktreePool  # noqa: E402
from hyperion.run import run_command  # noqa: E402

AUTHOR = ("bench", "bench@example.invalid")


def _pipeline() -> Any:
    spec = importlib.util.spec_from_file_location("bench_pipeline", _HERE / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = module
    spec.loader.exec_module(module)
    return module


def plain(git: Any, repo: Path, patches: list[str]) -> float:
    started = time.perf_counter()
    for i, patch in enumerate(patches):
        git.run(repo, "apply", "--index", "-", input=patch.encode())
        git.run(repo, "commit", "-q", "-m", f"change {i}")
    return time.perf_counter() - started


def floor(repo_path: Path, work: Path, patches: list[str], paths: list[str]) -> float:
    repo = GitRepo(repo_path)
    (work / "locks").mkdir()
    pool = WorktreePool(work / "worktrees", work / "locks")
    tip = repo.branch_commit("main")
    assert tip is not None
    with pool.checkout_unproven("floor", repo, tip):
        pass                                   # the slot added, untimed
    lands: queue.Queue[tuple[str, str] | None] = queue.Queue()
    failures: list[str] = []

    def lander() -> None:
        while (item := lands.get()) is not None:
            new, old = item
            if not repo.set_ref("refs/heads/main", new, old, "bench: land"):
                failures.append(new)

    thread = threading.Thread(target=lander)
    started = time.perf_counter()
    thread.start()
    for i, patch in enumerate(patches):
        with pool.checkout_unproven("floor", repo, tip) as slot:
            if not slot.trusted and not slot.folders_are_real([paths[i]]):
                slot.prove()
            reason = repo.try_apply(slot.path, patch)
            assert reason is None, reason
            if slot.trusted:
                commit = repo.commit(slot.path, tip, f"change {i}\n", AUTHOR)
            else:
                made = repo.commit_proving_clean(slot.path, tip, f"change {i}\n", AUTHOR)
                assert made is not None, "the slot held something else"
                commit = made
            result = run_command(["/bin/true"], cwd=slot.path, timeout_s=60,
                                 output_path=work / "logs" / f"{i}.log")
            assert result.ok
        lands.put((commit, tip))
        tip = commit
    lands.put(None)
    thread.join()
    elapsed = time.perf_counter() - started
    assert not failures and repo.branch_commit("main") == tip
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    pl = _pipeline()
    root = Path(tempfile.mkdtemp(prefix="hyperion-gitfloor-", dir=args.dir))
    try:
        git = pl.PlainGit(root / "home")
        os.environ["HOME"] = str(root / "home")   # hyperion's git: no user configuration
        template = pl.make_repo(git, root / "template", max(args.files, args.n))
        patches = [pl.patch_for(i, "floor")[0] for i in range(args.n)]
        rounds: list[dict[str, float]] = []
        for r in range(args.rounds):
            result: dict[str, float] = {}
            order = ["plain", "floor"] if r % 2 == 0 else ["floor", "plain"]
            for name in order:
                folder = root / f"r{r}-{name}"
                folder.mkdir()
                if name == "plain":
                    repo = folder / "repo"
                    git.run(root, "clone", "-q", "--no-hardlinks", str(template), str(repo))
                    seconds = plain(git, repo, patches)
                else:
                    repo = folder / "repo.git"
                    git.run(root, "clone", "-q", "--bare", "--no-hardlinks", str(template),
                            str(repo))
                    seconds = floor(repo, folder, patches,
                                    [pl.file_path(i) for i in range(args.n)])
                result[f"{name}_ms_per_change"] = round(seconds * 1000 / args.n, 2)
                print(f"[gitfloor] round {r + 1}/{args.rounds}: {name} "
                      f"{result[f'{name}_ms_per_change']} ms per change", file=sys.stderr)
            result["ratio"] = round(result["floor_ms_per_change"]
                                    / result["plain_ms_per_change"], 2)
            rounds.append(result)
        medians = {key: round(statistics.median(r[key] for r in rounds), 2)
                   for key in rounds[0]}
        print(json.dumps({"n": args.n, "files": max(args.files, args.n), "rounds": rounds,
                          "median": medians, "cpus": os.cpu_count()}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
