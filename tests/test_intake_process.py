"""`hyperion run` takes the inbox in a child process of its own (intake/process.py): it starts
it, gives it the running configuration, hears from it, starts it again when it dies, and takes
it down when it stops or is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup
from conftest import start_daemon as start

from hyperion.app import App
from hyperion.config import load_config
from hyperion.daemon import Daemon
from hyperion.metrics import METRICS


def daemon_status(setup: Setup, pid: int) -> dict[str, Any]:
    out = setup.cli("status", "--format", "json")
    assert out.returncode == 0, out.stderr
    for entry in json.loads(out.stdout)["daemons"]:
        if entry.get("pid") == pid:
            return dict(entry)
    return {}


def wait_for(what: str, probe: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def intake_of(setup: Setup, daemon: subprocess.Popen[str], restarts: int = 0,
              other_than: int | None = None) -> int:
    """The pid of the daemon's live intake process (not ``other_than``), once it has been
    started ``restarts`` times again."""
    def probe() -> int | None:
        intake = daemon_status(setup, daemon.pid).get("intake") or {}
        if intake.get("alive") and intake.get("restarts") == restarts and \
                intake.get("pid") != other_than:
            return int(intake["pid"])
        return None
    return int(wait_for("the intake process", probe))


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def state_of(setup: Setup, rid: str) -> str | None:
    out = setup.cli("inspect", rid, "--format", "json")
    return json.loads(out.stdout)["state"] if out.returncode == 0 else None


def wait_state(setup: Setup, rid: str, states: set[str]) -> str:
    return str(wait_for(f"{rid} in {states}",
                        lambda: (s := state_of(setup, rid)) in states and s))


def test_a_child_process_takes_the_inbox_at_a_lower_priority(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    child = intake_of(setup, daemon)
    assert child != daemon.pid and parent_of(child) == daemon.pid
    assert os.getpriority(os.PRIO_PROCESS, child) - os.getpriority(os.PRIO_PROCESS,
                                                                    daemon.pid) == 10
    setup.drop("one.json", setup.request("proc-1", {"app.py": "VALUE = 11\n"}))
    assert wait_state(setup, "proc-1", {"landed", "failed", "rejected"}) == "landed"
    # Rejections are the child's work too, with their error codes.
    setup.drop("bad.json", b"{ not json")
    rejected = wait_for("the rejected record", lambda: [
        r for r in json.loads(setup.cli("list", "--format", "json").stdout)
        if r["state"] == "rejected"])
    assert [r["error"]["code"] for r in rejected] == ["invalid_json"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert gone(child)


def test_a_killed_intake_process_is_started_again_and_nothing_is_lost(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    first = intake_of(setup, daemon)
    os.kill(first, signal.SIGKILL)
    # Dropped while no intake runs: it waits in the inbox for the next one.
    setup.drop("during.json", setup.request("proc-2", {"app.py": "VALUE = 12\n"}))
    second = intake_of(setup, daemon, restarts=1)
    assert second != first and parent_of(second) == daemon.pid
    assert wait_state(setup, "proc-2", {"landed", "failed", "rejected"}) == "landed"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert daemon.stderr is not None
    assert "exited with signal SIGKILL; starting it again" in daemon.stderr.read()


def test_the_intake_process_ends_with_a_daemon_killed_by_9(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    child = intake_of(setup, daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    wait_for("the orphaned intake process to end", lambda: gone(child), timeout=15)


def test_a_reload_hands_the_intake_process_the_new_configuration(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    first = intake_of(setup, daemon)
    text = setup.config.read_text()
    setup.config.write_text(text + "limits:\n  max_request_bytes: 200\n")
    daemon.send_signal(signal.SIGHUP)
    second = intake_of(setup, daemon, other_than=first)  # a new child, not a restart
    assert second != first and gone(first)
    setup.drop("big.json", setup.request("proc-3", {"app.py": "VALUE = 13\n"}))
    # Too large to be read: its record is named after the file.
    rejected = wait_for("the rejected record", lambda: json.loads(
        setup.cli("list", "--format", "json").stdout))
    assert [(r["id"].split(".rej-")[0], r["error"]["code"]) for r in rejected] == [
        ("big", "too_large")]


def requests_total() -> dict[str, float]:
    """hyperion_requests_total by state, as this process's metrics endpoint would serve it."""
    prefix = 'hyperion_requests_total{state="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in METRICS.render().splitlines() if line.startswith(prefix)}


def test_the_metrics_count_what_the_intake_process_took(setup: Setup) -> None:
    app = App.open(load_config(str(setup.config)))
    daemon = Daemon(app, workers=1)
    before = requests_total()
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for("the daemon to serve", lambda: daemon.intake is not None)
        assert daemon.status()["intake"]["mode"] == "process"
        setup.drop("bad.json", b"[]")
        setup.drop("good.json", setup.request("proc-4", {"app.py": "VALUE = 14\n"}))
        wait_state(setup, "proc-4", {"landed"})
        after = requests_total()
        moved = {state: after[state] - before.get(state, 0) for state in after}
        assert {k: v for k, v in moved.items() if v} == {
            "rejected": 1, "queued": 1, "running": 1, "landed": 1}
    finally:
        daemon.stop.set()
        daemon._wake.set()
        runner.join(60)
    assert not runner.is_alive()


def test_an_intake_process_that_cannot_start_leaves_the_inbox_to_a_thread(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    app = App.open(load_config(str(setup.config)))
    daemon = Daemon(app, workers=1)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for("the daemon to serve", lambda: daemon.intake is not None)
        assert daemon.status()["intake"]["mode"] == "thread"
        setup.drop("good.json", setup.request("proc-5", {"app.py": "VALUE = 15\n"}))
        monkeypatch.undo()           # the checks need the real interpreter
        wait_state(setup, "proc-5", {"landed"})
    finally:
        daemon.stop.set()
        daemon._wake.set()
        runner.join(60)
    assert not runner.is_alive()


def test_intake_process_false_keeps_the_intake_in_a_thread(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    daemon.kill()
    daemon.wait()
    setup.config.write_text(setup.config.read_text() + "intake:\n  process: false\n")
    proc = start(setup)
    try:
        intake = wait_for("the daemon's status",
                          lambda: daemon_status(setup, proc.pid).get("intake"))
        assert intake["mode"] == "thread"
        setup.drop("one.json", setup.request("proc-6", {"app.py": "VALUE = 16\n"}))
        assert wait_state(setup, "proc-6", {"landed", "failed", "rejected"}) == "landed"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_backlog_longer_than_the_ready_timeout_is_not_taken_for_a_hang(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child reports every file of its start-up scan: the daemon waits for a long backlog
    as long as it hears from it, rather than giving up on the child."""
    monkeypatch.setattr("hyperion.intake.process.READY_TIMEOUT_S", 2.0)
    for i in range(800):
        (setup.inbox / f"bad-{i:03d}.json").write_bytes(b'{"n": %d}' % i)   # schema_violation
    app = App.open(load_config(str(setup.config)))
    daemon = Daemon(app, workers=1)
    runner = threading.Thread(target=daemon.run)
    started = time.monotonic()
    runner.start()
    try:
        wait_for("the daemon to serve", lambda: daemon.intake is not None, timeout=120)
        assert time.monotonic() - started > 2.0          # the scan did outlast the timeout
        assert daemon.status()["intake"]["mode"] == "process"
        assert list(setup.inbox.iterdir()) == []
    finally:
        daemon.stop.set()
        daemon._wake.set()
        runner.join(60)
