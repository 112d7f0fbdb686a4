"""`hyperion hook pre-receive`: refuse a push whose requests the gate would refuse.

Installed as a repository's pre-receive hook, it reads the pushed ref updates (``old new ref``
per line) on stdin and judges every request file that the push adds or changes under inbox/
on the inbox branch, and every new request note, with the same gate, codes and messages as
intake. Nothing is stored: what passes is taken by the daemon as usual. Pushed objects are
read from the quarantine folder git names in GIT_OBJECT_DIRECTORY (they are not in the
repository until the hook accepts them); gitops is handed these variables on purpose.
Other refs pass untouched, and a push that touches neither ref costs no gate at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyperion.config import Config, RepoConfig
from hyperion.errors import Code, ErrorInfo

ZERO = "0" * 40


@dataclass(frozen=True)
class Refusal:
    where: str
    info: ErrorInfo

    def __str__(self) -> str:
        at = f" [{self.info.path}]" if self.info.path else ""
        return f"hyperion refused {self.where}: {self.info.code.value}{at}: {self.info.message}"


def repo_for(config: Config, git_dir: Path) -> tuple[str, RepoConfig] | None:
    """The configured repo whose git dir is ``git_dir`` (a hook runs in the git dir)."""
    here = git_dir.resolve()
    for name, repo in config.repos.items():
        if here in (repo.path.resolve(), (repo.path / ".git").resolve()):
            return name, repo
    return None


def pre_receive(config: Config, git_dir: Path, updates: Iterable[str],
                quarantine: dict[str, str]) -> list[Refusal]:
    found = repo_for(config, git_dir)
    if found is None or found[1].git_inbox is None:
        return []
    name, repo = found
    inbox = repo.git_inbox
    assert inbox is not None
    branch_ref = f"refs/heads/{inbox.branch}" if inbox.branch else None
    wanted = []
    for line in updates:
        parts = line.split()
        if len(parts) != 3 or parts[1] == ZERO or parts[2] not in (branch_ref, inbox.notes_ref):
            continue
        wanted.append((None if parts[0] == ZERO else parts[0], parts[1], parts[2]))
    if not wanted:
        return []

    from hyperion.gate.policy import load_policy
    from hyperion.gitops import GitRepo
    from hyperion.intake.git_objects import GitObjects
    from hyperion.intake.git_requests import gate_error, oversized, request_from_note

    policy = load_policy(config.policy)
    git = GitRepo(git_dir, objects_env=quarantine)
    refusals: list[Refusal] = []
    with GitObjects(git_dir, quarantine=quarantine) as objects:
        for old, new, ref in wanted:
            if ref == branch_ref:
                for pushed in objects.pushed_files(old, new, exclude_refs=old is None):
                    where = f"{pushed.path} in {pushed.commit[:12]}"
                    if pushed.symlink:
                        refusals.append(Refusal(where, ErrorInfo(
                            code=Code.PATH_TRAVERSAL, path=pushed.path, message=(
                                "inbox entries must be regular files, not symbolic links; "
                                "commit the request file itself"))))
                        continue
                    error = oversized(git, pushed.blob, config) or \
                        gate_error(config, policy, objects.blob(pushed.blob))
                    if error is not None:
                        refusals.append(Refusal(where, error))
            else:
                for commit, blob in objects.new_notes(old, new):
                    where = f"the note on {commit[:12]} in {ref}"
                    error = oversized(git, blob, config)
                    if error is None:
                        derived = request_from_note(git, name, config, commit,
                                                    objects.blob(blob))
                        error = derived.error or gate_error(config, policy, derived.data)
                    if error is not None:
                        refusals.append(Refusal(where, error))
    return refusals


def hook_git_dir() -> Path:
    return Path(os.environ.get("GIT_DIR") or ".")
