"""Restarts do not stretch the retry delay: attempts that ended with hyperion's process dying
have their own budget, and the backoff of a retry grows with the failed tries only."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

from conftest import Setup


def test_crashed_attempts_do_not_stretch_the_backoff(setup: Setup) -> None:
    # The first three checks kill the hyperion process that runs them (kill -9 of its parent).
    count = setup.root / "count"
    killer = setup.root / "killer.py"
    killer.write_text(
        "import os, pathlib, signal\n"
        f"p = pathlib.Path({str(count)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        "if n < 3:\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n")
    text = setup.config.read_text().replace('"check.py"', json.dumps(str(killer)))
    setup.config.write_text(text.replace("workers: 2", "workers: 1") + "max_crashes: 10\n")
    setup.drop("r.json", setup.request("crashy-1", {"app.py": "VALUE = 5\n"}))
    for _ in range(3):
        out = setup.cli("run", "--once")
        assert out.returncode == -signal.SIGKILL
    # Then an attempt fails for a reason worth a retry: git cannot add a worktree (an entry
    # that a live process is still adding blocks it; the pooled one is gone).
    shutil.rmtree(setup.state / "worktrees" / "demo" / "w0")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        entry = setup.repo / ".git" / "worktrees" / f"busy-{live.pid}-abcdef"
        entry.mkdir(parents=True)
        (entry / "locked").write_text("initializing\n")
        (entry / "gitdir").write_text(
            f"{setup.state / 'worktrees' / f'busy~{live.pid}~abcdef'}/.git\n")
        (entry / "commondir").write_text("")
        out = setup.cli("run", "--once")
        assert out.returncode == 0, out.stderr
    finally:
        live.kill()
        live.wait()
    record = setup.record("crashy-1")
    assert record["state"] == "queued", record
    assert record["attempts"] == 4
    reason = record["history"][-1]["reason"]
    delay = float(re.search(r"retrying in ([0-9.]+) s", reason).group(1))  # type: ignore[union-attr]
    assert delay <= 1.0, reason          # the first failed try: the shortest backoff
