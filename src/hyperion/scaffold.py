"""`hyperion init`: a working setup in a folder. Never overwrites anything.

The policy it writes is the package's default_policy.yaml (the same text as policies/default.yaml
in the source tree; a test keeps them equal)."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

CONFIG_TEMPLATE = """\
# hyperion configuration. Relative paths resolve against this file's folder.
state_dir: .hyperion            # records, spool, artifacts, audit.jsonl
inbox: inbox                    # drop request files (JSON) here
workers: 2
max_attempts: 3                 # attempts for transient failures before `failed`
repos:
{repos}
checks:
  # Each check is an argv list, run in the change's worktree; never through a shell.
  unit:
    run: ["python3", "-m", "pytest", "-q"]
    timeout_s: 600
# Agent harnesses that tasks (kind: "task") may name. argv lists, never through a shell;
# placeholders: {task_file} {instructions_file} {feedback_file} {worktree} {iteration}.
# Only the variables `env` names reach a harness ("${VAR}": from hyperion's environment).
# Check agent flags against your version of the agent.
harnesses: {}
#  script:
#    run: ["python3", "/opt/agents/fix.py", "{instructions_file}", "{feedback_file}"]
#    timeout_s: 600
#  claude:
#    run: ["claude", "-p", "--permission-mode", "acceptEdits", "--output-format", "text",
#          "Carry out the task in {instructions_file}; {feedback_file}, if not empty,
#           says why the last attempt failed. Do not commit."]
#    timeout_s: 1800
#    env: {ANTHROPIC_API_KEY: "${ANTHROPIC_API_KEY}"}
#    max_concurrent: 2           # tasks at once (more wait)
#    max_starts_per_hour: 20
#  codex:
#    run: ["codex", "exec", "--full-auto", "--skip-git-repo-check",
#          "Carry out the task in {instructions_file}; {feedback_file}, if not empty,
#           says why the last attempt failed. Do not commit."]
#    env: {OPENAI_API_KEY: "${OPENAI_API_KEY}"}
policy: policies/default.yaml   # limits and rules; see the comments in that file
notify:
  urls: []                      # apprise URLs, e.g. "json://127.0.0.1:8099/hook"
"""


def _is_git_repo(path: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"],
                          capture_output=True, check=False)
    return proc.returncode == 0


def init_dir(directory: Path, *, repo: str | None, target: str) -> list[tuple[Path, bool]]:
    """Create hyperion.yaml, inbox/ and the state dir; returns (path, created?) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, bool]] = []
    config = directory / "hyperion.yaml"
    if config.exists():
        results.append((config, False))
    else:
        repo_path = repo if repo is not None else ("." if _is_git_repo(directory) else None)
        if repo_path is None:
            repos = ("  {}   # add one:  myrepo: {path: ../myrepo, target: main}")
        else:
            name = Path(os.path.abspath(directory / repo_path)).name or "repo"
            name = "".join(c if c.isalnum() or c in "._-" else "-" for c in name) or "repo"
            repos = f"  {name}:\n    path: {repo_path}\n    target: {target}"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(CONFIG_TEMPLATE.replace("{repos}", repos))   # the template has other braces
        results.append((config, True))
    for sub in ("inbox", ".hyperion", "policies"):
        path = directory / sub
        results.append((path, not path.exists()))
        path.mkdir(exist_ok=True)
    policy = directory / "policies" / "default.yaml"
    if policy.exists():
        results.append((policy, False))
    else:
        text = (resources.files("hyperion") / "default_policy.yaml").read_text(encoding="utf-8")
        fd = os.open(policy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        results.append((policy, True))
    return results
