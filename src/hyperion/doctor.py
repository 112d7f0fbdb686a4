"""`hyperion doctor`: is this installation able to work? One actionable line per problem."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hyperion.config import Config, HarnessConfig, redact_url
from hyperion.gate.policy import load_policy
from hyperion.run import find_program

MIN_GIT = (2, 30)
MIN_INOTIFY_WATCHES = 8192


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    message: str


def diagnose(config: Config, *, send_test: bool = False) -> list[Finding]:
    out = [_git()]
    out += [_repo(name, config) for name in sorted(config.repos)]
    if not config.repos:
        out.append(Finding("repos", False, "no repository is configured: add one under "
                           "`repos:` in the configuration"))
    out.append(_state_dir(config.state_dir))
    out.append(_inbox(config.inbox))
    out.append(_inotify())
    out.append(_policy(config))
    out += [_target_policy(name, config) for name in sorted(config.repos)
            if config.repos[name].policy_from_target]
    out += [_check(name, argv[0]) for name, argv in
            sorted((n, c.run) for n, c in config.checks.items())]
    out += [_harness(name, harness) for name, harness in sorted(config.harnesses.items())]
    out += _notify(config, send_test)
    return out


def _harness(name: str, harness: HarnessConfig) -> Finding:
    program = harness.run[0]
    found = _runnable(program)
    if found is None:
        return Finding(f"harness {name}", False, f"{program!r} is not an executable on PATH: "
                       f"fix harnesses.{name}.run")
    missing = sorted(v for v in harness.env_references() if v not in os.environ)
    if missing:
        return Finding(f"harness {name}", False, f"harnesses.{name}.env takes "
                       f"{', '.join(missing)} from hyperion's environment, which does not have "
                       "it: set it where hyperion starts (e.g. the systemd unit's "
                       "EnvironmentFile)")
    return Finding(f"harness {name}", True, found)


def _runnable(program: str) -> str | None:
    """The file a check or harness started as ``program`` would run (run.find_program),
    when it can be run."""
    found = find_program(program)
    return found if found is not None and os.access(found, os.X_OK) else None


def _git() -> Finding:
    path = find_program("git")
    if path is None:
        return Finding("git", False, "git is not in an absolute folder of PATH: install git "
                       "(2.30 or newer)")
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)\.(\d+)", proc.stdout)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version < MIN_GIT:
        return Finding("git", False, f"git {proc.stdout.strip()} is too old: install git "
                       f"{MIN_GIT[0]}.{MIN_GIT[1]} or newer")
    return Finding("git", True, proc.stdout.strip())


def _repo(name: str, config: Config) -> Finding:
    from hyperion.gitops import GitError, GitRepo

    repo = config.repos[name]
    try:
        git = GitRepo(repo.path)
    except GitError:
        return Finding(f"repo {name}", False, f"{repo.path} is not a git repository: fix "
                       f"repos.{name}.path")
    if git.branch_commit(repo.target) is None:
        return Finding(f"repo {name}", False, f"the target branch {repo.target!r} does not "
                       f"exist in {repo.path}: create it or change repos.{name}.target")
    if not os.access(git.git_dir, os.W_OK):
        return Finding(f"repo {name}", False, f"{git.git_dir} is not writable by this user: "
                       "hyperion must be able to update refs there")
    kind = "bare" if git.bare else "with a working tree"
    return Finding(f"repo {name}", True, f"{repo.path} ({kind}), target {repo.target}")


def _state_dir(state: Path) -> Finding:
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".doctor-{secrets.token_hex(4)}"
        probe.write_bytes(b"x")
        moved = probe.with_name(probe.name + ".moved")
        os.rename(probe, moved)
        moved.unlink()
    except OSError as exc:
        return Finding("state_dir", False, f"{state} is not usable ({exc.strerror}): make it "
                       "writable by this user, on a local filesystem")
    fstype = _fstype(state)
    if fstype in ("nfs", "nfs4", "cifs", "smbfs", "fuse.sshfs"):
        return Finding("state_dir", False, f"{state} is on {fstype}, where rename and flock "
                       "are not reliable: put state_dir on a local filesystem")
    return Finding("state_dir", True, f"{state} ({fstype or 'unknown filesystem'})")


def _fstype(path: Path) -> str | None:
    best, kind = "", None
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (resolved == parts[1] or resolved.startswith(
                parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return kind


def _inbox(inbox: Path) -> Finding:
    if not inbox.exists():
        return Finding("inbox", False, f"{inbox} does not exist: create it (mkdir -p) or fix "
                       "`inbox` in the configuration")
    if not inbox.is_dir() or not os.access(inbox, os.W_OK | os.R_OK | os.X_OK):
        return Finding("inbox", False, f"{inbox} is not a folder this user can read and "
                       "write: fix its permissions")
    return Finding("inbox", True, str(inbox))


def _inotify() -> Finding:
    try:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
        instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        return Finding("inotify", False, "cannot read the inotify limits: the inbox is only "
                       "rescanned every 30 s without inotify")
    if watches < MIN_INOTIFY_WATCHES or instances < 1:
        return Finding("inotify", False, f"inotify limits are low (max_user_watches {watches}, "
                       f"max_user_instances {instances}): raise fs.inotify.max_user_watches "
                       "with sysctl")
    return Finding("inotify", True, f"max_user_watches {watches}, "
                   f"max_user_instances {instances}")


def _policy(config: Config) -> Finding:
    if config.policy is None:
        return Finding("policy", True, "none configured (every valid change is allowed)")
    try:
        policy = load_policy(config.policy)
    except ValueError as exc:
        return Finding("policy", False, f"{exc}: fix the policy file")
    if policy.signatures is not None and find_program("ssh-keygen") is None:
        return Finding("policy", False, f"{config.policy} verifies signatures, but ssh-keygen "
                       "is not on PATH: install OpenSSH's client tools")
    return Finding("policy", True, f"{config.policy} ({len(policy.rules)} rules)")


def _target_policy(name: str, config: Config) -> Finding:
    """The policy a repo reads from its default target's tip: usable there now?"""
    from hyperion.gate.review import tip_policy
    from hyperion.gitops import GitError, GitRepo

    repo_config = config.repos[name]
    path = repo_config.policy_from_target
    assert path is not None
    label = f"policy of {name}"
    try:
        repo = GitRepo(repo_config.path)
        tip = repo.branch_commit(repo_config.target)
        if tip is None:
            return Finding(label, False, f"the target branch {repo_config.target!r} does not "
                           f"exist, so {path} cannot be read from it")
        policy = tip_policy(repo, tip, path)
    except (GitError, ValueError) as exc:
        return Finding(label, False, f"{path} at {repo_config.target}: {exc}; requests to "
                       f"{name} are refused until it is fixed on {repo_config.target}")
    if policy.signatures is not None and find_program("ssh-keygen") is None:
        return Finding(label, False, f"{path} verifies signatures, but ssh-keygen is not on "
                       "PATH: install OpenSSH's client tools")
    return Finding(label, True, f"{path} at {repo_config.target} {tip[:12]} "
                   f"({len(policy.rules)} rules)")


def _check(name: str, program: str) -> Finding:
    found = _runnable(program)
    if found is None:
        return Finding(f"check {name}", False, f"{program!r} is not an executable on PATH: "
                       f"fix checks.{name}.run")
    return Finding(f"check {name}", True, found)


def _notify(config: Config, send_test: bool) -> list[Finding]:
    if not config.notify.urls and config.notify.config is None:
        return [Finding("notify", True, "no notification targets configured")]
    return [Finding(f"notify {r.target}", r.ok, r.message)
            for r in test_targets(config, send=send_test)]


@dataclass(frozen=True)
class TargetResult:
    target: str      # the URL, credentials redacted
    ok: bool
    message: str


def test_targets(config: Config, *, send: bool) -> list[TargetResult]:
    """Check (and with ``send``, notify through) each configured target separately."""
    from hyperion.report import build_client

    out = []
    for i, target in enumerate(config.notify.targets()):
        shown = redact_url(target.url)
        client = build_client(config.notify, only=i)
        if len(client) == 0:
            out.append(TargetResult(shown, False, "apprise cannot use this URL (unknown "
                                    "scheme or malformed): fix notify.urls"))
            continue
        if not send:
            out.append(TargetResult(shown, True, "parses (send a test with --notify or "
                                    "`hyperion notify test`)"))
            continue
        ok = bool(client.notify(title="hyperion: test notification", body="A test message "
                                "from hyperion; no action needed.", notify_type="info"))
        out.append(TargetResult(shown, ok, "delivered" if ok else "NOT delivered: check that "
                                "the target is up and reachable, and its credentials"))
    return out
