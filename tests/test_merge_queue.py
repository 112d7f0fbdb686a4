"""The merge-queue behaviour of the worker: 3-way fallback and conflict reports, the worktree
pool, resource limits, dry runs, per-step timings, land modes and rollback (issue 5)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import GIT_ENV, Setup, git, make_repo, write_config
from test_pipeline import use_check

MANY_LINES = "".join(f"line {i}\n" for i in range(1, 31))


def _commit_file(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def test_stale_patch_lands_through_a_three_way_merge_from_its_base(setup: Setup) -> None:
    base = _commit_file(setup.repo, "notes.txt", MANY_LINES, "notes")
    request = setup.request("threeway-1", {"notes.txt": MANY_LINES.replace("line 5\n",
                                                                           "line five\n")},
                            base=base)
    # The target changes the patch's context (line 8) and more: it no longer applies as is.
    _commit_file(setup.repo, "notes.txt", MANY_LINES.replace("line 29\n", "line 29!\n")
                 .replace("line 8\n", "line eight\n"), "meanwhile")
    tip = setup.main_sha()
    setup.drop("c.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("threeway-1")
    assert record["state"] == "landed", record["error"]
    assert record["apply_method"] == "3way"
    assert record["base_commit"] == base and record["applied_onto"] == tip
    text = (setup.repo / "notes.txt").read_text()
    assert "line five\n" in text and "line eight\n" in text and "line 29!\n" in text
    assert git(setup.repo, "status", "--porcelain") == ""


def test_patch_that_applies_to_a_moved_tip_is_hash_checked_on_its_base(setup: Setup) -> None:
    base = _commit_file(setup.repo, "notes.txt", MANY_LINES, "notes")
    request = setup.request("offset-1", {"notes.txt": MANY_LINES.replace("line 2\n", "2\n")},
                            base=base)
    _commit_file(setup.repo, "notes.txt", MANY_LINES.replace("line 29\n", "29\n"), "later")
    setup.drop("c.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("offset-1")
    assert record["state"] == "landed", record["error"]
    assert record["apply_method"] == "clean"
    assert (setup.repo / "notes.txt").read_text().count("\n2\n") == 1


def test_true_conflict_fails_with_a_conflict_report(setup: Setup) -> None:
    base = _commit_file(setup.repo, "notes.txt", MANY_LINES, "notes")
    request = setup.request("conflict-1", {"notes.txt": MANY_LINES.replace("line 5\n",
                                                                           "ours\n")},
                            base=base)
    _commit_file(setup.repo, "notes.txt", MANY_LINES.replace("line 5\n", "theirs\n"),
                 "meanwhile")
    tip = setup.main_sha()
    setup.drop("c.json", request)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("conflict-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "apply_conflict"
    assert "notes.txt" in record["error"]["message"] and "3-way" in record["error"]["message"]
    artifact = next(a for a in record["artifacts"] if a["name"] == "conflict-report.json")
    report = json.loads(Path(artifact["path"]).read_text())
    assert report["base_sha"] == base and report["target_sha"] == tip
    assert report["conflicted"] == ["notes.txt"]
    (hunk,) = report["files"][0]["hunks"]
    assert "ours" in hunk and "theirs" in hunk and hunk.startswith("<<<<<<<")
    assert setup.main_sha() == tip


def test_each_step_is_timed_in_the_history_and_the_record(setup: Setup) -> None:
    setup.drop("c.json", setup.request("timed-1", {"app.py": "VALUE = 2\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("timed-1")
    assert record["state"] == "landed"
    assert list(record["timings"]) == ["prepare", "apply", "check:unit", "land"]
    assert all(v >= 0 for v in record["timings"].values())
    assert record["history"][-1]["timings"] == record["timings"]
    assert "check:unit" in record["history"][-1]["reason"]


def test_dry_run_request_is_checked_but_never_lands(setup: Setup) -> None:
    before = setup.main_sha()
    setup.drop("c.json", setup.request("dry-1", {"app.py": "VALUE = 7\n"}, dry_run=True))
    setup.drop("d.json", setup.request("dry-2", {"app.py": "VALUE = 'BROKEN'\n"},
                                       dry_run=True))
    assert setup.cli("run", "--once").returncode == 0
    verified = setup.record("dry-1")
    assert verified["state"] == "verified", verified
    assert verified["result_commit"] and verified["landed_commit"] is None
    assert git(setup.repo, "show", f"{verified['result_commit']}:app.py") == "VALUE = 7\n"
    assert setup.record("dry-2")["error"]["code"] == "check_failed"
    assert setup.main_sha() == before
    listed = json.loads(setup.cli("list", "--state", "verified", "--format", "json").stdout)
    assert [r["id"] for r in listed] == ["dry-1"]


def test_run_dry_run_lands_nothing(setup: Setup) -> None:
    before = setup.main_sha()
    setup.drop("c.json", setup.request("dry-3", {"app.py": "VALUE = 8\n"}))
    assert setup.cli("run", "--once", "--dry-run").returncode == 0
    assert setup.record("dry-3")["state"] == "verified"
    assert setup.main_sha() == before


def test_second_request_is_checked_on_top_of_the_first(setup: Setup) -> None:
    # The second's check passes only when the first's file is in its tree.
    use_check(setup, "import pathlib, sys\n"
              "sys.exit(0 if not pathlib.Path('needs.txt').exists() or "
              "pathlib.Path('provides.txt').exists() else 4)\n")
    first = setup.request("first-1", {"provides.txt": "here\n"})
    second = setup.request("second-1", {"needs.txt": "uses provides.txt\n"},
                           depends_on=["first-1"])
    setup.drop("b.json", second)
    setup.drop("a.json", first)
    assert setup.cli("run", "--once").returncode == 0
    one, two = setup.record("first-1"), setup.record("second-1")
    assert one["state"] == "landed" and two["state"] == "landed", (one, two)
    assert two["applied_onto"] == one["landed_commit"]


def _three_in_one_slot(setup: Setup, prefix: str) -> None:
    """Three requests, one after the other in one worker (so in one pool slot): all land."""
    setup.config.write_text(setup.config.read_text().replace("workers: 2", "workers: 1"))
    for n in range(3):
        setup.drop(f"{n}.json", setup.request(f"{prefix}-{n}", {f"file{n}.txt": f"{n}\n"},
                                              depends_on=[f"{prefix}-{n - 1}"] if n else []))
    assert setup.cli("run", "--once").returncode == 0
    assert [setup.record(f"{prefix}-{n}")["state"] for n in range(3)] == ["landed"] * 3


def test_pool_reuses_a_worktree_and_cleans_what_a_check_left(setup: Setup) -> None:
    # The check first asserts that it starts in a pristine worktree, then dirties it: a
    # tracked file, an untracked one, an ignored-style build folder, an empty folder (which
    # git status never shows), and a staged change.
    use_check(setup, "import pathlib, subprocess\n"
              "assert pathlib.Path('docs/readme.txt').read_text() == 'hello\\n'\n"
              "for left in ('junk-from-before.txt', 'build', 'empty', 'staged.txt'):\n"
              "    assert not pathlib.Path(left).exists(), left\n"
              "pathlib.Path('docs/readme.txt').write_text('scribbled')\n"
              "pathlib.Path('build').mkdir()\n"
              "pathlib.Path('build/out.o').write_text('x')\n"
              "pathlib.Path('empty').mkdir()\n"
              "pathlib.Path('junk-from-before.txt').write_text('junk')\n"
              "pathlib.Path('staged.txt').write_text('staged')\n"
              "subprocess.run(['git', 'add', 'staged.txt'], check=True)\n")
    _three_in_one_slot(setup, "pool")
    slots = sorted(p.name for p in (setup.state / "worktrees" / "demo").iterdir()
                   if not p.name.endswith(".lock"))
    assert slots == ["w0"]
    assert git(setup.repo, "show", "main:docs/readme.txt") == "hello\n"


def test_pool_removes_empty_folders_a_check_left(setup: Setup) -> None:
    # git status never shows an empty folder, so a slot that only has empty folders left
    # passes the status guard: the clean that runs before it must remove them, or the next
    # check's `mkdir out` fails on what an earlier request left.
    use_check(setup, "import pathlib\n"
              "pathlib.Path('out').mkdir()\n"
              "pathlib.Path('nested/empty').mkdir(parents=True)\n")
    _three_in_one_slot(setup, "clean")


def test_pool_replaces_a_worktree_whose_git_link_a_check_rewrote(setup: Setup) -> None:
    elsewhere = make_repo(setup.root / "elsewhere", {"x.txt": "x\n"})
    head = git(elsewhere, "rev-parse", "HEAD")
    use_check(setup, f"import pathlib\npathlib.Path('.git').write_text("
              f"'gitdir: {elsewhere}/.git\\n')\n")
    setup.config.write_text(setup.config.read_text().replace("workers: 2", "workers: 1"))
    setup.drop("a.json", setup.request("link-1", {"app.py": "VALUE = 31\n"}))
    assert setup.cli("run", "--once").returncode == 0
    use_check(setup, "import sys\nsys.exit(0)\n")
    setup.drop("b.json", setup.request("link-2", {"docs/readme.txt": "bye\n"}))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("link-2")["state"] == "landed"
    assert git(elsewhere, "status", "--porcelain") == ""
    assert git(elsewhere, "rev-parse", "HEAD") == head


def test_tracked_hooks_folder_edited_by_the_request_never_runs(setup: Setup) -> None:
    marker = setup.root / "hook-ran"
    hooks = {f"githooks/{name}": f"#!/bin/sh\necho {name} >> {marker}\n"
             for name in ("post-checkout", "post-commit", "pre-commit", "reference-transaction",
                          "post-index-change", "post-merge")}
    for name, text in hooks.items():
        _commit_file(setup.repo, name, text, f"hook {name}")
        (setup.repo / name).chmod(0o755)
    git(setup.repo, "add", "githooks")
    git(setup.repo, "commit", "-qm", "hooks executable", check=False)
    changed = {name: text + "echo changed\n" for name, text in hooks.items()}
    first = setup.request("hooks-2", {**changed, "app.py": "VALUE = 4\n"})
    second = setup.request("hooks-3", {"docs/readme.txt": "again\n"}, depends_on=["hooks-2"])
    # Set last: making the requests above ran git here too.
    git(setup.repo, "config", "core.hooksPath", "githooks")
    setup.drop("h.json", first)
    setup.drop("i.json", second)
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("hooks-2")["state"] == "landed"
    assert setup.record("hooks-3")["state"] == "landed"
    assert not marker.exists(), marker.read_text()


def test_cpu_limit_stops_a_spinning_check(setup: Setup) -> None:
    use_check(setup, "while True:\n    pass\n", timeout_s=60)
    text = setup.config.read_text().replace(
        "    timeout_s: 60\n", "    timeout_s: 60\n    limits: {cpu_s: 1, file_size_mb: 1}\n", 1)
    setup.config.write_text(text)
    setup.drop("c.json", setup.request("cpu-1", {"app.py": "VALUE = 5\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("cpu-1")
    assert record["error"]["code"] == "check_failed"
    assert record["checks"][0]["seconds"] < 30


def test_file_size_limit_binds_the_check(setup: Setup) -> None:
    use_check(setup, "import sys\n"
              "try:\n    open('big.bin', 'wb').write(b'x' * 3 * 1024 * 1024)\n"
              "except OSError:\n    sys.exit(9)\n")
    text = setup.config.read_text().replace(
        "    timeout_s: 60\n", "    timeout_s: 60\n    limits: {file_size_mb: 1}\n", 1)
    setup.config.write_text(text)
    setup.drop("c.json", setup.request("fsize-1", {"app.py": "VALUE = 6\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("fsize-1")
    assert record["error"]["code"] == "check_failed"
    assert record["checks"][0]["exit_code"] in (9, -25)   # EFBIG, or SIGXFSZ


def test_land_branch_mode_leaves_the_target_alone(setup: Setup) -> None:
    text = setup.config.read_text().replace("    target: main\n", "    target: main\n"
                                            "    land: branch\n", 1)
    setup.config.write_text(text)
    before = setup.main_sha()
    setup.drop("c.json", setup.request("review-1", {"app.py": "VALUE = 12\n"}))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("review-1")
    assert record["state"] == "landed", record["error"]
    assert record["landed_ref"] == "refs/heads/hyperion/review-1"
    assert git(setup.repo, "rev-parse", "hyperion/review-1").strip() == record["landed_commit"]
    assert setup.main_sha() == before


def test_land_push_mode_pushes_to_the_remote_with_a_lease(tmp_path: Path) -> None:
    upstream = make_repo(tmp_path / "upstream.git", {"app.py": "VALUE = 1\n",
                                                     "check.py": "import sys\n"},
                         bare=True)
    clone = tmp_path / "gate-clone"
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True,
                   env={**os.environ, **GIT_ENV})
    config = write_config(tmp_path, clone, extra="")
    config.write_text(config.read_text().replace(
        "    target: main\n", f"    target: main\n    land: push\n    remote: {upstream}\n", 1))
    (tmp_path / "inbox").mkdir()
    s = Setup(root=tmp_path, repo=clone, config=config, inbox=tmp_path / "inbox",
              state=tmp_path / "state")
    # Someone else pushes to the remote after the gate's clone was made.
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(upstream), str(other)], check=True,
                   env={**os.environ, **GIT_ENV})
    _commit_file(other, "other.txt", "theirs\n", "someone else")
    git(other, "push", "-q", "origin", "main")
    s.drop("c.json", s.request("push-1", {"app.py": "VALUE = 2\n"}))
    assert s.cli("run", "--once").returncode == 0
    record = s.record("push-1")
    assert record["state"] == "landed", record["error"]
    remote_main = git(upstream, "rev-parse", "main").strip()
    assert remote_main == record["landed_commit"]
    assert git(upstream, "show", "main:other.txt") == "theirs\n"
    assert git(upstream, "show", "main:app.py") == "VALUE = 2\n"


def test_rollback_reverts_through_the_pipeline(setup: Setup, webhook: object) -> None:
    setup.drop("c.json", setup.request("feature-1", {"app.py": "VALUE = 40\n",
                                                     "docs/new.txt": "new\n"}))
    assert setup.cli("run", "--once").returncode == 0
    landed = setup.record("feature-1")
    assert landed["state"] == "landed"
    _commit_file(setup.repo, "docs/readme.txt", "moved on\n", "later work")
    out = setup.cli("rollback", "feature-1", "--reason", "broke prod", "--format", "json")
    assert out.returncode == 0, out.stderr
    rollback_id = json.loads(out.stdout)["id"]
    assert rollback_id == "feature-1.rollback"
    assert setup.cli("run", "--once").returncode == 0
    revert = setup.record(rollback_id)
    assert revert["state"] == "landed", revert["error"]
    original = setup.record("feature-1")
    assert original["state"] == "rolled_back"
    assert original["rolled_back_by"] == rollback_id
    assert (setup.repo / "app.py").read_text() == "VALUE = 1\n"
    assert not (setup.repo / "docs/new.txt").exists()
    assert (setup.repo / "docs/readme.txt").read_text() == "moved on\n"
    message = git(setup.repo, "log", "-1", "--format=%B")
    assert landed["landed_commit"] in message and "broke prod" in message
    again = setup.cli("rollback", "feature-1")
    assert again.returncode == 1 and "rolled_back" in again.stderr


def test_rollback_of_a_request_that_did_not_land_is_refused(setup: Setup) -> None:
    setup.drop("c.json", setup.request("broken-1", {"app.py": "VALUE = 'BROKEN'\n"}))
    assert setup.cli("run", "--once").returncode == 0
    out = setup.cli("rollback", "broken-1")
    assert out.returncode == 1 and "only a landed request" in out.stderr
    assert setup.cli("rollback", "nope").returncode == 1


def test_rollback_is_settled_after_a_crash_before_the_original_moved(setup: Setup) -> None:
    setup.drop("c.json", setup.request("feature-2", {"app.py": "VALUE = 41\n"}))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.cli("rollback", "feature-2").returncode == 0
    assert setup.cli("run", "--once").returncode == 0
    # Simulate the crash: put the original back to landed as if the settle never happened.
    path = setup.state / "records" / "feature-2.json"
    data = json.loads(path.read_text())
    data["state"], data["rolled_back_by"] = "landed", None
    path.write_text(json.dumps(data))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("feature-2")["state"] == "rolled_back"



def _batched(setup: Setup, max_size: int, check: str) -> Path:
    """Batching on, one worker, and a check that counts its runs in runs.log."""
    runs = setup.root / "runs.log"
    use_check(setup, f"import pathlib\nwith open({str(runs)!r}, 'a') as f:\n    f.write('run\\n')\n"
              + check)
    text = setup.config.read_text().replace("workers: 2", "workers: 1").replace(
        "    target: main\n", f"    target: main\n    batch: {{max: {max_size}}}\n", 1)
    setup.config.write_text(text)
    return runs


def test_batch_checks_non_conflicting_requests_once_and_lands_each(setup: Setup) -> None:
    runs = _batched(setup, 10, "")
    ids = [f"batch-{i}" for i in range(8)]
    for i, rid in enumerate(ids):
        setup.drop(f"{rid}.json", setup.request(rid, {f"docs/b{i}.txt": f"{i}\n"}))
    before = setup.main_sha()
    assert setup.cli("run", "--once").returncode == 0
    records = [setup.record(rid) for rid in ids]
    assert [r["state"] for r in records] == ["landed"] * 8, [r["error"] for r in records]
    assert runs.read_text().count("run") == 1
    # Each request is its own commit, in order, on the target.
    log = git(setup.repo, "log", "--reverse", "--format=%H", f"{before}..main").split()
    assert sorted(log) == sorted(r["landed_commit"] for r in records) and len(log) == 8
    for older, newer in itertools.pairwise(log):
        assert git(setup.repo, "rev-parse", f"{newer}^").strip() == older
    assert git(setup.repo, "status", "--porcelain") == ""


def test_batch_with_one_bad_request_bisects_and_fails_only_it(setup: Setup) -> None:
    runs = _batched(setup, 10, "import sys\n"
                    "sys.exit(3 if pathlib.Path('docs/bad.txt').exists() else 0)\n")
    ids = []
    for i in range(7):
        rid = f"mix-{i}"
        ids.append(rid)
        name = "docs/bad.txt" if i == 4 else f"docs/m{i}.txt"
        setup.drop(f"{rid}.json", setup.request(rid, {name: f"{i}\n"}, priority=10 - i))
    assert setup.cli("run", "--once").returncode == 0
    states = {rid: setup.record(rid)["state"] for rid in ids}
    assert states == {**{rid: "landed" for rid in ids}, "mix-4": "failed"}, states
    bad = setup.record("mix-4")
    assert bad["error"]["code"] == "check_failed"
    assert "bisecting a batch" in bad["error"]["message"]
    assert not (setup.repo / "docs/bad.txt").exists()
    # 1 run of all 7, a bisection of about log2(7) runs, 1 run of the 2 after the culprit.
    assert runs.read_text().count("run") <= 6
    log = git(setup.repo, "log", "--format=%(trailers:key=Hyperion-Request,valueonly)")
    assert sorted(x for x in log.split() if x) == sorted(r for r in ids if r != "mix-4")


def test_a_slow_check_is_recorded_when_it_ends_and_a_failure_keeps_where_it_applied(
        setup: Setup) -> None:
    # The second check reads the record while it runs: the first, slow one is in it.
    record_file = setup.state / "records" / "progress-1.json"
    use_check(setup, "import time\ntime.sleep(1.2)\n")
    probe = setup.root / "probe.py"
    probe.write_text("import json, sys\n"
                     f"record = json.load(open({str(record_file)!r}))\n"
                     "names = [c['name'] for c in record['checks']]\n"
                     "sys.exit(0 if names == ['unit'] and record['applied_onto'] else 3)\n")
    text = setup.config.read_text()
    setup.config.write_text(text.replace("checks:\n", "checks:\n  probe:\n    run: "
                                         f"[{json.dumps(sys.executable)}, "
                                         f"{json.dumps(str(probe))}]\n    timeout_s: 60\n"))
    setup.drop("p.json", setup.request("progress-1", {"app.py": "VALUE = 5\n"},
                                       checks=["unit", "probe"]))
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("progress-1")
    assert record["state"] == "landed", record["error"]
    assert [c["name"] for c in record["checks"]] == ["unit", "probe"]
    # A quick failing check: its result and where the patch went on are in the failure.
    use_check(setup, "import sys\nsys.exit(4)\n")
    setup.drop("f.json", setup.request("progress-2", {"app.py": "VALUE = 6\n"}))
    assert setup.cli("run", "--once").returncode == 0
    failed = setup.record("progress-2")
    assert failed["state"] == "failed" and failed["error"]["code"] == "check_failed"
    assert failed["applied_onto"] == record["landed_commit"]
    assert failed["apply_method"] == "clean"
    assert [(c["name"], c["exit_code"]) for c in failed["checks"]] == [("unit", 4)]


def test_rollback_ignores_the_repositorys_diff_settings(setup: Setup) -> None:
    # A repository may ask git diff for no a/ b/ prefixes, or paths relative to a folder:
    # the revert patch hyperion makes must still be one that git apply and the gate read.
    setup.drop("c.json", setup.request("tidy-1", {"docs/readme.txt": "tidied\n"}))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("tidy-1")["state"] == "landed"
    git(setup.repo, "config", "diff.noprefix", "true")
    git(setup.repo, "config", "diff.relative", "true")
    assert setup.cli("rollback", "tidy-1").returncode == 0
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("tidy-1.rollback")["state"] == "landed", \
        setup.record("tidy-1.rollback")["error"]
    assert (setup.repo / "docs/readme.txt").read_text() == "hello\n"
