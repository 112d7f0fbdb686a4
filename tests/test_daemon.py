"""`hyperion run` as a daemon: real inotify intake, drain on SIGTERM, and kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import Setup, git, write_config
from conftest import start_daemon as start


def wait_state(setup: Setup, id: str, states: set[str], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        out = setup.cli("inspect", id, "--format", "json")
        if out.returncode == 0:
            record = json.loads(out.stdout)
            if record["state"] in states:
                return record
        time.sleep(0.2)
    raise AssertionError(f"{id} did not reach {states}: {record}")


def test_watches_the_inbox_and_drains_on_sigterm(setup: Setup,
                                                 daemon: subprocess.Popen[str]) -> None:
    time.sleep(1.0)   # let it start its observer
    setup.drop("renamed.json", setup.request("live-1", {"app.py": "VALUE = 11\n"}))
    wait_state(setup, "live-1", {"landed"})
    # An in-place writer: the file appears empty and grows; only the complete file is taken.
    req = json.dumps(setup.request("live-2", {"docs/readme.txt": "in place\n"})).encode()
    with open(setup.inbox / "inplace.json", "wb") as f:
        for i in range(0, len(req), 64):
            f.write(req[i:i + 64])
            f.flush()
            time.sleep(0.005)
    record = wait_state(setup, "live-2", {"landed", "rejected", "failed"})
    assert record["state"] == "landed", record
    assert not (setup.inbox / "inplace.json").exists()
    # Ignored names stay where they are.
    (setup.inbox / "draft.json.part").write_text("{")
    (setup.inbox / ".hidden.json").write_text("{")
    time.sleep(0.5)
    assert (setup.inbox / "draft.json.part").exists() and (setup.inbox / ".hidden.json").exists()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert git(setup.repo, "status", "--porcelain") == ""


def test_kill_9_during_a_check_loses_nothing_and_lands_once(setup: Setup) -> None:
    # A check slow enough to be killed in the middle of.
    slow = setup.root / "slow_check.py"
    slow.write_text("import time, pathlib\npathlib.Path('" + str(setup.root / "started") +
                    "').write_text('x')\ntime.sleep(3)\n")
    write_config(setup.root, setup.repo, extra="")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(slow)))
    setup.config.write_text(text)
    setup.drop("slow.json", setup.request("crash-1", {"app.py": "VALUE = 42\n"}))
    proc = start(setup)
    deadline = time.monotonic() + 20
    while not (setup.root / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (setup.root / "started").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert setup.record("crash-1")["state"] == "running"
    # A new run finds the dead process's lease (pid gone) and finishes the request.
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    record = setup.record("crash-1")
    assert record["state"] == "landed", record
    log = git(setup.repo, "log", "--format=%H %(trailers:key=Hyperion-Request,valueonly)")
    assert sum("crash-1" in line for line in log.splitlines()) == 1
    assert git(setup.repo, "status", "--porcelain") == ""
    assert record["attempts"] == 2
    # The killed process's worktree was reused from the pool, reset clean; git lists no
    # worktree whose folder is gone.
    slots = [p for p in (setup.state / "worktrees" / "demo").iterdir() if p.is_dir()]
    assert [p.name for p in slots] == ["w0"]
    assert git(slots[0], "status", "--porcelain", "--ignored") == ""
    assert "prunable" not in git(setup.repo, "worktree", "list", "--porcelain")


def test_a_request_that_keeps_killing_its_worker_ends_failed(setup: Setup) -> None:
    # Every attempt's check kills the hyperion process that runs it (kill -9 of its parent).
    killer = setup.root / "killer.py"
    killer.write_text("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(killer)))
    setup.config.write_text(text.replace("workers: 2", "workers: 1") + "max_crashes: 3\n")
    setup.drop("poison.json", setup.request("poison-1", {"app.py": "VALUE = 13\n"}))
    for _ in range(3):                       # max_crashes is 3: three deaths
        out = setup.cli("run", "--once")
        assert out.returncode == -signal.SIGKILL
        assert setup.record("poison-1")["state"] == "running"
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    record = setup.record("poison-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "internal_error"
    assert "gave up after 3 attempts that ended with hyperion's process dying" in \
        record["error"]["message"]


def test_repeated_kill_9_of_a_working_daemon_lands_everything_exactly_once(
        setup: Setup) -> None:
    """kill -9 at random moments (mid-apply, mid-check, mid-land), then a drain: every request
    ends landed, none twice, no lease or worktree left, the checkout clean. bench/ has no
    longer soak."""
    import random

    slow = setup.root / "slow_check.py"
    slow.write_text("import random, time\ntime.sleep(random.uniform(0, 0.3))\n")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(slow)))
    setup.config.write_text(text)
    ids = [f"kill-{i}" for i in range(6)]
    for i, rid in enumerate(ids):
        setup.drop(f"{rid}.json", setup.request(rid, {f"docs/f{i}.txt": f"{i}\n"}))
    rng = random.Random(7)
    for _ in range(4):                      # fewer than max_crashes: nothing may fail
        proc = start(setup)
        time.sleep(rng.uniform(0.4, 1.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    states = {rid: setup.record(rid)["state"] for rid in ids}
    assert set(states.values()) == {"landed"}, states
    log = git(setup.repo, "log", "--format=%(trailers:key=Hyperion-Request,valueonly)")
    assert sorted(line for line in log.split() if line) == sorted(ids)
    assert os.listdir(setup.state / "spool" / "running") == []
    # Pool slots are kept for reuse (reset before each use); git knows each of them.
    assert "prunable" not in git(setup.repo, "worktree", "list", "--porcelain")
    assert git(setup.repo, "status", "--porcelain") == ""


def test_a_land_interrupted_between_checkout_and_ref_is_undone_at_start(setup: Setup) -> None:
    """The crash point of updateInstead: the checkout moved, the branch did not."""
    from hyperion.gitops import GitRepo

    old = setup.main_sha()
    (setup.repo / "new.txt").write_text("half landed\n")
    git(setup.repo, "add", "new.txt")
    tree = git(setup.repo, "write-tree").strip()
    new = git(setup.repo, "commit-tree", tree, "-p", old, "-m", "half").strip()
    git(setup.repo, "reset", "-q", "--hard", old)
    assert GitRepo.move_checkout(setup.repo, old, new) is None        # the checkout moved ...
    locks = setup.state / "locks"
    locks.mkdir(parents=True)
    (locks / "land-demo.intent").write_text(json.dumps(
        {"top": str(setup.repo), "branch": "main", "old": old, "new": new}))
    assert git(setup.repo, "status", "--porcelain") == "A  new.txt\n"  # ... the ref did not
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    assert "moved the checkout" in out.stderr
    assert setup.main_sha() == old
    assert git(setup.repo, "status", "--porcelain") == ""
    assert not (setup.repo / "new.txt").exists()
    assert not (locks / "land-demo.intent").exists()
