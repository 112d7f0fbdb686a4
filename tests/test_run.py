"""hyperion.run with real child processes (no mocks): exit codes, output capture and its cap,
timeouts that kill the whole process group, leftover background processes, start errors, the
scrubbed environment, stdin, cwd and closed descriptors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.run import RunResult, run_command, scrubbed_env

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def run(argv: list[str], tmp_path: Path, **kwargs: object) -> RunResult:
    kwargs.setdefault("timeout_s", 10.0)
    return run_command(argv, cwd=tmp_path, output_path=tmp_path / "out" / "run.log",
                       **kwargs)  # type: ignore[arg-type]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process. A zombie is dead: it waits for its parent (here maybe
    a container's init that never reaps) but runs nothing and holds no file."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int, timeout: float = 3.0) -> list[int]:
    """Live processes whose process group is ``pgid``, after waiting up to ``timeout`` seconds
    for them to go (a process killed with SIGKILL may take a moment to finish dying)."""
    deadline = time.monotonic() + timeout
    while True:
        members = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = _stat_fields(int(entry.name))
                if fields is not None and int(fields[2]) == pgid and fields[0] not in "ZX":
                    members.append(int(entry.name))
        if not members or time.monotonic() >= deadline:
            return members
        time.sleep(0.02)


def wait_dead(pids: list[int], timeout: float = 3.0) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds (SIGKILL delivery is async)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def values(text: str) -> dict[str, int]:
    """``key=123`` words printed by a child."""
    return {k: int(v) for k, _, v in (w.partition("=") for w in text.split()) if v.isdigit()}


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test, so a failing test leaves no stray sleeper behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- exit codes and results ---------------------------------------------------------------

def test_exit_zero_is_ok(tmp_path: Path) -> None:
    result = run([PY, "-c", "print('hello')"], tmp_path)
    assert result.exit_code == 0 and result.ok
    assert not result.timed_out and result.start_error is None and not result.truncated
    assert result.argv == (PY, "-c", "print('hello')")
    assert result.output_path.read_text() == "hello\n"
    assert result.tail == "hello\n" and result.output_bytes == 6
    assert 0 < result.duration_s < 10


@pytest.mark.parametrize("code", [1, 3, 255])
def test_nonzero_exit_code(tmp_path: Path, code: int) -> None:
    result = run([PY, "-c", f"import sys; sys.exit({code})"], tmp_path)
    assert result.exit_code == code
    assert not result.ok and not result.timed_out and result.start_error is None


def test_death_by_signal_is_a_negative_exit_code(tmp_path: Path) -> None:
    result = run(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), tmp_path)
    assert result.exit_code == -signal.SIGKILL
    assert not result.ok and not result.timed_out


def test_refuses_bad_argv(tmp_path: Path) -> None:
    for argv in ([], ["echo", 1], ["echo", b"x"], "echo hi", ["echo", "a\0b"]):
        with pytest.raises(ValueError):
            run(argv, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run(["true"], tmp_path, timeout_s=0)
    assert not (tmp_path / "out" / "run.log").exists()


def test_no_shell_is_involved(tmp_path: Path) -> None:
    result = run(["echo", "$HOME", "; rm -rf x", "`id`"], tmp_path)
    assert result.ok
    assert result.output_path.read_text() == "$HOME ; rm -rf x `id`\n"


# --- output ---------------------------------------------------------------------------------

def test_stdout_and_stderr_interleaved(tmp_path: Path) -> None:
    result = run(py("""
        import sys
        for i in range(3):
            sys.stdout.write(f"out{i}\\n"); sys.stdout.flush()
            sys.stderr.write(f"err{i}\\n"); sys.stderr.flush()
        sys.exit(2)
        """), tmp_path)
    assert result.exit_code == 2
    expected = "out0\nerr0\nout1\nerr1\nout2\nerr2\n"
    assert result.output_path.read_text() == expected
    assert result.tail == expected


def test_output_file_parents_created_and_file_replaced(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c" / "check.log"
    for word in ("first-run-longer", "second"):
        result = run_command(["echo", word], cwd=tmp_path, timeout_s=10, output_path=out)
        assert result.ok and result.output_path == out
    assert out.read_text() == "second\n"


def test_output_cap_truncation_marker_and_total_count(tmp_path: Path) -> None:
    total = 3 * 1024 * 1024 + 7  # far more than a pipe buffer: the parent must keep draining
    result = run(py(f"""
        import sys
        data = b"x" * ({total} - 4) + b"END\\n"
        sys.stdout.buffer.write(data)
        """), tmp_path, max_output_bytes=1000, tail_bytes=10)
    assert result.ok
    assert result.truncated and result.output_bytes == total
    content = result.output_path.read_bytes()
    assert content == b"x" * 1000 + b"\n[hyperion: output truncated after 1000 bytes]\n"
    assert result.tail == "xxxxxxEND\n"  # the end of everything written, not of the file


def test_output_exactly_at_cap_is_not_truncated(tmp_path: Path) -> None:
    result = run(py("import sys; sys.stdout.write('y' * 99 + '\\n')"), tmp_path,
                 max_output_bytes=100)
    assert not result.truncated and result.output_bytes == 100
    assert result.output_path.read_text() == "y" * 99 + "\n"


def test_tail_is_decoded_with_replacement(tmp_path: Path) -> None:
    result = run(py(r"import sys; sys.stdout.buffer.write(b'ok \xff\xfe done\n')"), tmp_path)
    assert result.tail == "ok \ufffd\ufffd done\n"
    assert result.output_path.read_bytes() == b"ok \xff\xfe done\n"


def test_tail_bytes_zero(tmp_path: Path) -> None:
    result = run(["echo", "hi"], tmp_path, tail_bytes=0)
    assert result.tail == "" and result.output_bytes == 3


# --- timeouts and process groups ------------------------------------------------------------

def test_timeout_kills_child_and_grandchild(tmp_path: Path, cleanup: list[int]) -> None:
    started = time.monotonic()
    result = run(["sh", "-c", "sleep 100 & echo bg=$!; echo leader=$$; sleep 100"],
                 tmp_path, timeout_s=0.5, kill_grace_s=2.0)
    elapsed = time.monotonic() - started
    pids = values(result.output_path.read_text())
    cleanup.extend(pids.values())
    assert result.timed_out and result.exit_code is None and not result.ok
    assert result.start_error is None
    assert 0.5 <= elapsed < 2.0, "SIGTERM alone should have ended sh and the sleeps"
    assert set(pids) == {"bg", "leader"}
    assert wait_dead(list(pids.values())) == []
    assert group_members(pids["leader"]) == []
    assert result.output_path.read_text().endswith(
        "\n[hyperion: timed out after 0.5 s; process group killed]\n")


FORK_IGNORING_TERM = """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        time.sleep(100)
        os._exit(0)
    print(f"leader={os.getpid()} child={child}", flush=True)
    time.sleep(100)
    """


def test_sigterm_ignored_then_sigkill_after_grace(tmp_path: Path, cleanup: list[int]) -> None:
    started = time.monotonic()
    result = run(py(FORK_IGNORING_TERM), tmp_path, timeout_s=0.5, kill_grace_s=0.7)
    elapsed = time.monotonic() - started
    pids = values(result.output_path.read_text())
    cleanup.extend(pids.values())
    assert set(pids) == {"leader", "child"}
    assert result.timed_out and result.exit_code is None
    assert 1.2 <= elapsed < 4.0, "killed by SIGKILL once the grace period ran out"
    assert wait_dead(list(pids.values())) == []
    assert group_members(pids["leader"]) == []


def test_background_grandchild_killed_after_normal_exit(tmp_path: Path,
                                                        cleanup: list[int]) -> None:
    # The backgrounded sleep inherits the pipe: a naive reader would wait for it forever.
    started = time.monotonic()
    result = run(["sh", "-c", "sleep 100 & echo bg=$!; echo leader=$$; exit 0"], tmp_path,
                 timeout_s=30)
    elapsed = time.monotonic() - started
    pids = values(result.output_path.read_text())
    cleanup.extend(pids.values())
    assert result.ok and result.exit_code == 0 and not result.timed_out
    assert elapsed < 2.0
    assert set(pids) == {"bg", "leader"}
    assert wait_dead([pids["bg"]]) == []
    assert group_members(pids["leader"]) == []


def test_background_daemon_with_own_output_is_killed(tmp_path: Path,
                                                     cleanup: list[int]) -> None:
    result = run(py("""
        import os, subprocess, sys
        p = subprocess.Popen(["sleep", "100"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        print(f"bg={p.pid} leader={os.getpid()}", flush=True)
        sys.exit(4)
        """), tmp_path, timeout_s=30)
    pids = values(result.output_path.read_text())
    cleanup.extend(pids.values())
    assert result.exit_code == 4 and not result.timed_out
    assert wait_dead([pids["bg"]]) == []
    assert group_members(pids["leader"]) == []


def test_escaped_process_holding_pipe_does_not_hang(tmp_path: Path,
                                                    cleanup: list[int]) -> None:
    # A process that leaves the group (new session) cannot be killed with it, and it keeps
    # the pipe open; run_command must still return soon after the child exits.
    started = time.monotonic()
    result = run(py("""
        import subprocess
        p = subprocess.Popen(["sleep", "100"], start_new_session=True)
        print(f"escaped={p.pid}", flush=True)
        """), tmp_path, timeout_s=30)
    elapsed = time.monotonic() - started
    pids = values(result.output_path.read_text())
    cleanup.extend(pids.values())
    assert result.ok and "escaped" in pids
    assert elapsed < 3.0
    assert alive(pids["escaped"])  # outside the group: cleaned up by the fixture


def test_output_written_just_before_exit_is_kept(tmp_path: Path, cleanup: list[int]) -> None:
    # The leader fills the pipe and exits while a background process still holds it open:
    # what is buffered in the pipe is read before reading stops.
    result = run(py("""
        import os, subprocess, sys
        p = subprocess.Popen(["sleep", "100"])
        sys.stdout.write(f"bg={p.pid}\\n" + "z" * 300_000 + "\\n")
        """), tmp_path, timeout_s=30)
    text = result.output_path.read_text()
    cleanup.extend(values(text).values())
    assert result.ok and text.endswith("z" * 300_000 + "\n")
    assert result.output_bytes == len(text)
    assert wait_dead(list(values(text).values())) == []


def test_child_closing_its_output_early_still_waited_for(tmp_path: Path) -> None:
    result = run(py("""
        import os, sys, time
        print("bye", flush=True)
        os.close(1); os.close(2)
        time.sleep(0.3)
        sys.exit(5)
        """), tmp_path)
    assert result.exit_code == 5 and result.duration_s >= 0.3
    assert result.output_path.read_text() == "bye\n"


# --- start errors ---------------------------------------------------------------------------

def test_executable_not_found(tmp_path: Path) -> None:
    result = run(["pytestx-hyperion-missing", "-q"], tmp_path)
    assert result.start_error == "executable not found: pytestx-hyperion-missing"
    assert result.exit_code is None and not result.ok and not result.timed_out
    assert result.output_bytes == 0 and result.tail == ""
    assert "executable not found" in result.output_path.read_text()


def test_executable_path_not_found(tmp_path: Path) -> None:
    result = run([str(tmp_path / "nope" / "tool")], tmp_path)
    assert result.start_error == f"executable not found: {tmp_path / 'nope' / 'tool'}"


def test_executable_not_runnable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run([str(script)], tmp_path)
    if os.geteuid() == 0 and result.start_error is None:
        pytest.skip("root may execute anything")  # pragma: no cover
    assert result.start_error is not None and "permission denied" in result.start_error
    assert result.exit_code is None


def test_missing_cwd_is_a_start_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    result = run_command(["true"], cwd=missing, timeout_s=5, output_path=tmp_path / "o.log")
    assert result.start_error is not None and str(missing) in result.start_error
    assert "working directory" in result.start_error and not result.ok


# --- environment, stdin, cwd, descriptors ---------------------------------------------------

PRINT_ENV = py("import json, os; print(json.dumps(dict(os.environ)))")


def test_env_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERION_TEST_SECRET_TOKEN", "s3cr3t")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_xxx")
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("PYTHONPATH", "/evil")
    monkeypatch.setenv("VIRTUAL_ENV", "/venv")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("TERM", "xterm-256color")
    result = run(PRINT_ENV, tmp_path, env=scrubbed_env({"CHECK_MODE": "strict"}))
    assert result.ok, result.tail
    seen = json.loads(result.output_path.read_text())
    assert "s3cr3t" not in result.output_path.read_text()
    for name in ("HYPERION_TEST_SECRET_TOKEN", "GITHUB_TOKEN", "GIT_DIR", "PYTHONPATH",
                 "VIRTUAL_ENV"):
        assert name not in seen
    assert seen["LC_ALL"] == "C.UTF-8" and seen["TZ"] == "UTC"
    assert seen["TERM"] == "dumb" and seen["CHECK_MODE"] == "strict"
    assert seen["PATH"] == os.environ["PATH"]


def test_default_env_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERION_TEST_SECRET_TOKEN", "s3cr3t")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    result = run(PRINT_ENV, tmp_path)
    seen = json.loads(result.output_path.read_text())
    assert "HYPERION_TEST_SECRET_TOKEN" not in seen
    assert seen["LC_ALL"] == "C.UTF-8" and seen["TERM"] == "dumb"


def test_explicit_env_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/daemon")
    result = run(PRINT_ENV, tmp_path, env={"ONLY": "this"})
    seen = json.loads(result.output_path.read_text())
    assert seen.get("ONLY") == "this"
    assert "HOME" not in seen and "PATH" not in seen


def test_scrubbed_env_keeps_only_the_allowed_variables() -> None:
    base = {"PATH": "/bin", "HOME": "/h", "LANG": "en_US.UTF-8", "LANGUAGE": "en",
            "TZ": "UTC", "TMPDIR": "/t", "LC_CTYPE": "C", "LC_MESSAGES": "C", "TERM": "xterm",
            "AWS_SECRET_ACCESS_KEY": "k", "GIT_WORK_TREE": "/w", "PYTHONPATH": "/p",
            "VIRTUAL_ENV": "/v", "SSH_AUTH_SOCK": "/s", "LCX": "no", "path": "lower"}
    env = scrubbed_env(base=base)
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "en_US.UTF-8", "LANGUAGE": "en",
                   "TZ": "UTC", "TMPDIR": "/t", "LC_CTYPE": "C", "LC_MESSAGES": "C",
                   "TERM": "dumb"}
    with_extra = scrubbed_env({"CI": "1", "TERM": "vt100"}, base=base)
    assert with_extra["CI"] == "1" and with_extra["TERM"] == "vt100"
    assert scrubbed_env(base={}) == {"TERM": "dumb"}
    assert base["TERM"] == "xterm"  # base not modified


def test_stdin_is_dev_null(tmp_path: Path) -> None:
    # Were stdin the parent's terminal or a pipe, the read would block until the timeout.
    result = run(py("""
        import os, sys
        data = sys.stdin.buffer.read()
        st, null = os.fstat(0), os.stat("/dev/null")
        print(len(data), (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino))
        """), tmp_path, timeout_s=5)
    assert result.ok and not result.timed_out
    assert result.output_path.read_text() == "0 True\n"


def test_cwd_is_honoured(tmp_path: Path) -> None:
    work = tmp_path / "work tree"
    work.mkdir()
    result = run_command([PY, "-c", "import os; print(os.getcwd())"], cwd=work, timeout_s=10,
                         output_path=tmp_path / "cwd.log")
    assert result.ok
    assert Path(result.output_path.read_text().strip()).resolve() == work.resolve()


def test_parent_descriptors_are_closed(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    try:
        result = run(py(f"""
            import os
            try:
                os.fstat({write_fd})
                print("open")
            except OSError:
                print("closed")
            """), tmp_path)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert result.output_path.read_text() == "closed\n"


def test_child_leads_its_own_session(tmp_path: Path) -> None:
    result = run(py("import os; print(os.getpid() == os.getpgrp() == os.getsid(0))"),
                 tmp_path)
    assert result.output_path.read_text() == "True\n"


def _tool(folder: Path, name: str, says: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\necho {says}\n")
    (folder / name).chmod(0o755)


@pytest.mark.parametrize("limits", [None, {"cpu": 30}])
def test_a_program_named_without_a_folder_is_never_the_worktrees(
        tmp_path: Path, limits: dict[str, int] | None) -> None:
    """A request can add an executable named like a check's program; with "." or an empty
    entry in PATH, the child, started in the worktree, would run that one."""
    _tool(tmp_path / "bin", "lint-hyperion", "the configured tool")
    worktree = tmp_path / "worktree"
    _tool(worktree, "lint-hyperion", "the request's own")
    for path in (f".{os.pathsep}{tmp_path / 'bin'}", f"{os.pathsep}{tmp_path / 'bin'}"):
        result = run_command(["lint-hyperion"], cwd=worktree, timeout_s=10,
                             output_path=tmp_path / "out.log", limits=limits,
                             env={"PATH": path})
        assert result.ok and result.tail == "the configured tool\n", result
    result = run_command(["lint-hyperion"], cwd=worktree, timeout_s=10, limits=limits,
                         output_path=tmp_path / "out.log", env={"PATH": "."})
    assert result.start_error == "executable not found: lint-hyperion"


def test_with_limits_a_program_is_found_from_the_childs_folder(tmp_path: Path) -> None:
    """It was looked for from the daemon's own folder, so a check like ./scripts/x.sh was
    refused as not found once it had limits."""
    worktree = tmp_path / "worktree"
    _tool(worktree / "scripts", "check-hyperion.sh", "from the worktree")
    result = run_command(["./scripts/check-hyperion.sh"], cwd=worktree, timeout_s=10,
                         limits={"cpu": 30}, output_path=tmp_path / "out.log",
                         env={"PATH": "/usr/bin:/bin"})
    assert result.ok and result.tail == "from the worktree\n", result
    missing = run_command(["./scripts/none.sh"], cwd=worktree, timeout_s=10,
                          limits={"cpu": 30}, output_path=tmp_path / "out.log",
                          env={"PATH": "/usr/bin:/bin"})
    assert missing.start_error == "executable not found: ./scripts/none.sh"
