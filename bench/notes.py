"""Result notes: git processes and wall time to deliver N outcomes' notes (issue 5), the per-note
writer of an earlier revision ("before": its result_notes.py and gitops.py, loaded from git)
against this checkout's batched writer ("after"), side by side in one run, on the same kind of
repository: N new commits, and a notes ref that already holds ``--existing`` notes. Prints JSON.

    .venv/bin/python bench/notes.py [--n 50] [--existing 0,2000] [--before main]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_HERE = Path(__file__).resolve().parent
# bench/ holds secrets.py and queue.py: keep it off sys.path so they do not shadow the stdlib
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
REF = "refs/notes/hyperion"


def _module(name: str, source: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, name, "exec"), module.__dict__)   # the old revision's own source
    return module


def old_result_notes(rev: str) -> types.ModuleType:
    """result_notes.py of ``rev``, writing through gitops.py of ``rev``."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    _module("before_gitops", show("src/hyperion/gitops.py"))
    source = show("src/hyperion/result_notes.py").replace(
        "from hyperion.gitops import", "from before_gitops import")
    return _module("before_result_notes", source)


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True,
                          text=True, check=True).stdout


def _commits(repo: Path, count: int, tag: str) -> list[str]:
    stream = "".join(f"commit refs/heads/{tag}\nmark :{i + 1}\n"
                     f"committer B <b@example.invalid> {1_600_000_000 + i} +0000\n"
                     f"data {len(f'{tag}{i}')}\n{tag}{i}\n\n" for i in range(count))
    marks = (repo / f"marks-{tag}").resolve()
    _git(repo, "fast-import", "--quiet", f"--export-marks={marks}", stdin=stream)
    found = dict(line.split() for line in marks.read_text().splitlines())
    return [found[f":{i + 1}"] for i in range(count)]


def _repo(root: Path, existing: int) -> Path:
    from hyperion.gitops import GitRepo

    repo = root / "repo.git"
    _git(root, "init", "-q", "--bare", str(repo))
    if existing:
        old = _commits(repo, existing, "old")
        GitRepo(repo).add_notes(REF, {c: [f"old {c}"] for c in old}, "bench: existing")
    return repo


def run(module: Any, root: Path, n: int, existing: int) -> dict[str, Any]:
    from hyperion.config import Config
    from hyperion.records import Record, Source, State

    repo = _repo(root, existing)
    commits = _commits(repo, n, "new")
    config = Config.model_validate({"state_dir": str(root / "state"),
                                    "repos": {"demo": {"path": str(repo)}}})
    notes = module.ResultNotes(config)
    notes.deliver_ready("bench")    # the outbox's first sweep and prune: not timed
    for i, commit in enumerate(commits):
        notes.queue(Record(id=f"r{i}", kind="change", state=State.LANDED, repo="demo",
                           landed_commit=commit, source=Source(kind="inbox", name="x"),
                           original_sha256="0" * 64, created_at="2026-01-01T00:00:00Z",
                           updated_at="2026-01-01T00:00:01Z"))
    calls = 0
    real_run = subprocess.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_run(*args, **kwargs)

    subprocess.run = counting_run   # type: ignore[assignment]
    try:
        start = time.perf_counter()
        written = notes.deliver_ready("bench")
        seconds = time.perf_counter() - start
    finally:
        subprocess.run = real_run   # type: ignore[assignment]
    shown = _git(repo, "notes", f"--ref={REF}", "show", commits[-1]).splitlines()
    assert written == n and len(shown) == 1, (written, shown)
    return {"notes": written, "git_processes": calls, "seconds": round(seconds, 3),
            "ms_per_note": round(seconds * 1000 / n, 2),
            "notes_commits": int(_git(repo, "rev-list", "--count", REF)) - (1 if existing else 0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--existing", default="0,2000",
                        help="notes already on the ref, comma-separated sizes")
    parser.add_argument("--before", default="main", help="revision with the per-note writer")
    args = parser.parse_args()
    import hyperion.result_notes as after

    before = old_result_notes(args.before)
    results: dict[str, Any] = {}
    for existing in [int(x) for x in args.existing.split(",")]:
        row = {}
        for name, module in (("before", before), ("after", after)):
            with tempfile.TemporaryDirectory() as tmp:
                row[name] = run(module, Path(tmp), args.n, existing)
        row["speedup"] = round(row["before"]["seconds"] / max(row["after"]["seconds"], 1e-9), 1)
        results[f"existing_{existing}"] = row
    print(json.dumps({"n": args.n, "before": args.before, "results": results}, indent=2))


if __name__ == "__main__":
    main()
