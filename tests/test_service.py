"""Running for real: detached start/stop with a pidfile, sd_notify, HUP reload, USR1 dump,
JSON logs, and the drain timeout. Real processes, real signals, a real datagram socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Setup


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def wait_running(setup: Setup) -> None:
    """Until the daemon has registered (its signal handlers are installed by then)."""
    wait_for(lambda: json.loads(setup.cli("status", "--format", "json").stdout)["daemons"])


def reloads(setup: Setup) -> dict[str, int]:
    daemons = json.loads(setup.cli("status", "--format", "json").stdout)["daemons"]
    return daemons[0].get("reloads", {}) if daemons else {}


def state_of(setup: Setup, id: str) -> str | None:
    out = setup.cli("inspect", id, "--format", "json")
    return json.loads(out.stdout)["state"] if out.returncode == 0 else None


def test_start_status_second_start_refused_stop_drains(setup: Setup) -> None:
    out = setup.cli("start")
    assert out.returncode == 0, out.stderr
    assert "started" in out.stdout
    try:
        status = json.loads(setup.cli("status", "--format", "json").stdout)
        assert len(status["daemons"]) == 1 and status["detached_pid"]
        assert status["running"] is True and status["pid"] == status["detached_pid"]
        assert status["uptime_s"] >= 0 and set(status["queue"]) >= {"queued", "running"}
        second = setup.cli("start")
        assert second.returncode == 1
        assert "already running" in second.stderr
        setup.drop("c.json", setup.request("bg-1", {"app.py": "VALUE = 77\n"}))
        wait_for(lambda: state_of(setup, "bg-1") == "landed")
    finally:
        stop = setup.cli("stop")
    assert stop.returncode == 0, stop.stderr
    status = json.loads(setup.cli("status", "--format", "json").stdout)
    assert status["daemons"] == [] and status["detached_pid"] is None
    assert status["running"] is False and status["pid"] is None
    assert status["records"] == {"landed": 1}
    assert status["recent"][0]["id"] == "bg-1" and status["recent"][0]["to"] == "landed"
    assert setup.cli("stop").stdout.strip() == "hyperion: not running"


def test_start_with_a_bad_config_fails_attached(setup: Setup) -> None:
    setup.config.write_text(setup.config.read_text() + "workers: nine\n")
    out = setup.cli("start")
    assert out.returncode == 2 and "workers" in out.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def start_run(setup: Setup, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                             *extra, "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=setup.root, env={**os.environ, **(env or {})})


def collect(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if any(until in m for m in got):
            return got
    raise AssertionError(f"never received {until!r}; got {got}")


def test_sd_notify_ready_watchdog_reload_stopping(setup: Setup,
                                                  notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    proc = start_run(setup, env=env)
    try:
        got = collect(notify_socket, "READY=1")
        ready = next(m for m in got if "READY=1" in m)
        assert "STATUS=" in ready and "queued" in ready
        got = collect(notify_socket, "WATCHDOG=1")
        start = time.monotonic()
        collect(notify_socket, "WATCHDOG=1")
        assert time.monotonic() - start < 1.5       # every WATCHDOG_USEC / 2 or so
        proc.send_signal(signal.SIGHUP)
        got = collect(notify_socket, "RELOADING=1")
        assert "MONOTONIC_USEC=" in next(m for m in got if "RELOADING=1" in m)
        collect(notify_socket, "READY=1")
        proc.send_signal(signal.SIGTERM)
        collect(notify_socket, "STOPPING=1")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hup_swaps_in_a_new_policy_and_refuses_a_bad_one(setup: Setup) -> None:
    policy = setup.root / "policy.yaml"
    policy.write_text("version: 1\n")
    setup.config.write_text(setup.config.read_text() + f"policy: {policy}\n")
    proc = start_run(setup, "--log-format", "json")
    try:
        wait_running(setup)
        policy.write_text("version: 1\nrules:\n  - name: freeze\n    match: {paths: [app.py]}\n"
                          "    action: deny\n    reason: frozen\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(setup).get("ok") == 1)
        setup.drop("a.json", setup.request("hup-1", {"app.py": "VALUE = 1000\n"}))
        wait_for(lambda: state_of(setup, "hup-1") == "rejected")
        assert setup.record("hup-1")["error"]["code"] == "policy_denied"
        policy.write_text("version: 1\nrules: [{name: x, action: perhaps}]\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(setup).get("refused") == 1)
        setup.drop("b.json", setup.request("hup-2", {"app.py": "VALUE = 1001\n"}))
        wait_for(lambda: state_of(setup, "hup-2") == "rejected")   # the old policy still rules
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message", "request_id"} <= set(e) for e in lines)
    assert any("reload refused" in e["message"] and e["level"] == "ERROR" for e in lines)
    assert any(e["message"].startswith("status: ") for e in lines)
    assert any(e["request_id"] == "hup-1" for e in lines)


def test_drain_timeout_stops_checks_and_requeues(setup: Setup) -> None:
    marker = setup.root / "slow-once"
    check = setup.root / "slow_check.py"
    check.write_text(f"import pathlib, time\nm = pathlib.Path({str(marker)!r})\n"
                     "if not m.exists():\n    m.write_text('x')\n    time.sleep(60)\n")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(check)))
    setup.config.write_text(text + "drain_timeout_s: 1\n")
    setup.drop("c.json", setup.request("drain-1", {"app.py": "VALUE = 5\n"}))
    proc = start_run(setup)
    try:
        wait_for(marker.exists)
        wait_running(setup)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record = setup.record("drain-1")
    assert record["state"] == "queued"
    assert "stopped while the check" in record["history"][-1]["reason"]
    out = setup.cli("run", "--once")
    assert out.returncode == 0, out.stderr
    assert setup.record("drain-1")["state"] == "landed"


def test_doctor_healthy_then_names_each_problem(setup: Setup) -> None:
    out = setup.cli("doctor", "--format", "json")
    assert out.returncode == 0, out.stdout
    report = json.loads(out.stdout)
    assert report["ok"] and {c["name"] for c in report["checks"]} >= {
        "git", "repo demo", "state_dir", "inbox", "inotify", "policy", "check unit"}
    text = setup.config.read_text().replace(f"path: {setup.repo}", "path: /nonexistent/repo")
    setup.config.write_text(text.replace("target: main", "target: main\n  other:\n"
                                         f"    path: {setup.repo}\n    target: nope"))
    out = setup.cli("doctor")
    assert out.returncode == 1
    failures = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 2
    assert any("repo demo" in f and "not a git repository" in f for f in failures)
    assert any("repo other" in f and "'nope' does not exist" in f for f in failures)


def test_metrics_endpoint_answers_prometheus_text(setup: Setup) -> None:
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    setup.config.write_text(setup.config.read_text() +
                            f'metrics:\n  listen: "127.0.0.1:{port}"\n')
    proc = start_run(setup)
    try:
        setup.drop("c.json", setup.request("m-1", {"app.py": "VALUE = 31\n"}))
        wait_for(lambda: state_of(setup, "m-1") == "landed")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert 'hyperion_requests_total{state="landed"} 1' in text
    assert 'hyperion_queue_depth{state="done"} 1' in text
    assert 'hyperion_stage_seconds_bucket{stage="check",le="+Inf"} 1' in text
    assert "hyperion_workers 2" in text and "# TYPE hyperion_workers_busy gauge" in text


@pytest.mark.parametrize("args", [["--version"], ["list"], ["inspect", "nope"],
                                  ["validate", "missing.json"], ["status"]])
def test_quick_commands_do_not_import_heavy_libraries(setup: Setup, args: list[str]) -> None:
    code = ("import sys\nfrom hyperion.cli import main\n"
            f"try:\n    main(['--config', {str(setup.config)!r}, *{args!r}])\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('apprise', 'dulwich', 'watchdog') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=setup.root)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_log_lines_never_carry_a_secret(tmp_path: Path) -> None:
    token = "ghp_" + "Zx9Kq2Lm8Np4Rt6Vw1Yb3Cd5Fg7Hj0Ks2Lq4"
    code = ("import logging\nfrom hyperion.logs import setup_logging\n"
            "setup_logging('INFO', 'json')\n"
            f"logging.getLogger('x').info('token %s here', {token!r})\n"
            "try:\n"
            f"    raise ValueError({token!r})\n"
            "except ValueError:\n"
            "    logging.getLogger('x').exception('failed')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert token not in out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert "[redacted" in lines[0]["message"] and "[redacted" in lines[1]["exc"]


def test_doctor_finds_programs_where_hyperion_starts_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only PATH's absolute folders count, as when hyperion starts git, a check or a harness:
    a program reachable only through "." is reported missing."""
    from hyperion import doctor

    tool = tmp_path / "lint-hyperion"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    real_git = shutil.which("git")
    assert real_git is not None
    monkeypatch.setenv("PATH", f".{os.pathsep}{os.path.dirname(real_git)}")
    assert doctor._git().ok
    assert not doctor._check("lint", "lint-hyperion").ok
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.path.dirname(real_git)}")
    assert doctor._check("lint", "lint-hyperion").ok
    monkeypatch.setenv("PATH", ".")
    assert not doctor._git().ok
