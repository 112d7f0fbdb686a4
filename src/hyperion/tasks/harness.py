"""One run of an agent harness: its argv and environment, and the run itself.

A harness is a command from the configuration (never from a request). Its argv items get the
placeholders substituted one by one (no shell ever sees them); its environment is a check's
scrubbed one plus the variables its config names (``${VAR}`` taken from hyperion's own
environment at run time, never logged) plus the ``HYPERION_*`` variables of the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hyperion.config import PLACEHOLDERS, HarnessConfig
from hyperion.fsutil import write_atomic
from hyperion.gate.secrets import redact
from hyperion.run import RunResult, run_command, scrubbed_env

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TRANSCRIPT_MAX_BYTES = 8 * 1024 * 1024


class HarnessEnvError(Exception):
    """The harness's env names a variable hyperion's environment does not have."""


@dataclass(frozen=True)
class RunFiles:
    """The files and values one iteration hands its harness."""

    task_file: Path
    instructions_file: Path
    feedback_file: Path
    worktree: Path
    iteration: int
    has_feedback: bool       # False on the first iteration: HYPERION_FEEDBACK_FILE is unset

    def values(self) -> dict[str, str]:
        return {"task_file": str(self.task_file),
                "instructions_file": str(self.instructions_file),
                "feedback_file": str(self.feedback_file), "worktree": str(self.worktree),
                "iteration": str(self.iteration)}


def harness_argv(config: HarnessConfig, files: RunFiles) -> list[str]:
    """The argv with each placeholder replaced in each item (in one pass: a substituted value
    is never scanned for placeholders again)."""
    values = files.values()
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], item) for item in config.run]


def harness_env(config: HarnessConfig, files: RunFiles, name: str,
                daemon_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The harness's whole environment. Raises HarnessEnvError naming (only) a missing
    variable."""
    source = os.environ if daemon_env is None else daemon_env

    def expand(match: re.Match[str]) -> str:
        value = source.get(match.group(1))
        if value is None:
            raise HarnessEnvError(f"the variable {match.group(1)} that harnesses.{name}.env "
                                  "refers to is not set in hyperion's environment")
        return value

    extra = {key: _ENV_REFERENCE.sub(expand, value) for key, value in config.env.items()}
    extra.update({"HYPERION_TASK_FILE": str(files.task_file),
                  "HYPERION_INSTRUCTIONS_FILE": str(files.instructions_file),
                  "HYPERION_ITERATION": str(files.iteration),
                  "HYPERION_WORKTREE": str(files.worktree)})
    if files.has_feedback:
        extra["HYPERION_FEEDBACK_FILE"] = str(files.feedback_file)
    return scrubbed_env(extra, base=source)


def run_harness(config: HarnessConfig, files: RunFiles, name: str, *, timeout_s: float,
                transcript: Path, raw: Path) -> RunResult:
    """Run the harness in the worktree. Its output (stdout and stderr interleaved) goes to
    ``raw`` (a scratch file beside the worktree, removed with it, also after a crash) and
    reaches ``transcript`` only redacted by the secret scanner."""
    result = run_command(harness_argv(config, files), cwd=files.worktree, timeout_s=timeout_s,
                         output_path=raw, env=harness_env(config, files, name),
                         max_output_bytes=TRANSCRIPT_MAX_BYTES)
    text = raw.read_bytes().decode("utf-8", errors="replace") if raw.exists() else ""
    write_atomic(transcript, redact(text).encode(), sync_dir=False)
    raw.unlink(missing_ok=True)
    return result


def kill_leftovers(task_file: Path) -> int:
    """Kill the process groups of harnesses of this task that a killed hyperion left running
    (found by the HYPERION_TASK_FILE in their environment). Returns how many groups."""
    marker = f"\0HYPERION_TASK_FILE={task_file}\0".encode()
    own = os.getpgrp()
    groups: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
            if marker not in b"\0" + environ:
                continue
            pgid = os.getpgid(int(entry))
        except (OSError, ValueError):
            continue
        if pgid not in (own, 0, 1):
            groups.add(pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return len(groups)
