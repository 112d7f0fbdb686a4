"""Landing a checked commit, per repository mode, and making crashed lands whole again.

Modes (``repos.<name>.land``):

- ``ref`` (default): compare-and-swap the target branch from the tip the checks ran on to the
  new commit. When the target is the repository's own checked-out branch, its working tree is
  moved too, like ``receive.denyCurrentBranch=updateInstead``: a dirty tree is left alone.
- ``branch``: create ``hyperion/<id>`` at the commit for a person to merge; the target never
  moves.
- ``push``: for a gate working on a clone. The tip is fetched from ``remote`` before each
  attempt; landing is ``git push --atomic`` with a lease on that tip (a compare-and-swap on the
  remote), so a remote that moved meanwhile makes the request re-apply and re-check.

Every mode finds a land that a crash interrupted before its acknowledgement by the request's
``Hyperion-Request`` trailer, so that nothing lands twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from hyperion.app import App
from hyperion.config import RepoConfig
from hyperion.errors import Code, ErrorInfo
from hyperion.fsutil import exclusive, write_atomic
from hyperion.gitops import GitRepo
from hyperion.outcome import Failed, Retry
from hyperion.records import Record

log = logging.getLogger("hyperion.landing")



class Lander(Protocol):
    where: str
    repo: GitRepo

    def tip(self, target: str) -> str | None:
        """The commit the target is at now (fetched first in push mode)."""

    def already_landed(self, record: Record, tip: str) -> str | None:
        """The commit an earlier attempt of ``record`` landed, if a crash hid it."""

    def land(self, record: Record, target: str, commit: str, tip: str) -> None:
        """Land ``commit`` (a child of ``tip``); raises Retry on a lost race, Failed."""

    def landed_ref(self, record: Record) -> str | None:
        """Where a landed request is, when that is not its target branch."""


def for_repo(app: App, name: str, config: RepoConfig, repo: GitRepo) -> Lander:
    if config.land == "branch":
        return BranchLander(repo)
    if config.land == "push":
        assert config.remote is not None
        return PushLander(repo, config.remote)
    return RefLander(app, name, repo)


def _landed_since_applied(repo: GitRepo, record: Record, tip: str) -> str | None:
    """The commit with ``record``'s trailer between the tip an earlier attempt applied onto
    and ``tip``: what that attempt landed before a crash hid it."""
    if record.applied_onto is None:
        return None
    return repo.find_landed(record.id, tip, since=record.applied_onto)


def _moved(target: str) -> Retry:
    return Retry(ErrorInfo(code=Code.LAND_CONFLICT, message=f"{target} moved while the "
                           "change was being checked"), delay_s=0, race=True)


class RefLander:
    def __init__(self, app: App, name: str, repo: GitRepo) -> None:
        self.app, self.name, self.repo = app, name, repo
        self.where = str(repo.path)

    def tip(self, target: str) -> str | None:
        return self.repo.branch_commit(target)

    def already_landed(self, record: Record, tip: str) -> str | None:
        return _landed_since_applied(self.repo, record, tip)

    def landed_ref(self, record: Record) -> str | None:
        return None

    def land(self, record: Record, target: str, commit: str, tip: str) -> None:
        repo = self.repo
        reason = f"hyperion: land {record.id}"
        with land_lock(self.app, self.name):
            recover_checkout(self.app, self.name, repo)
            checkout = repo.checkout()
            if checkout is None or checkout.branch != target:
                # The compare-and-swap is the check that the target is still at the tip.
                if not repo.set_ref(f"refs/heads/{target}", commit, tip, reason):
                    raise _moved(target)
                return
            # The target is checked out: behave like receive.denyCurrentBranch=updateInstead.
            # Its HEAD is the target branch, so the status's HEAD says whether it moved.
            top = checkout.toplevel
            head, dirty = repo.checkout_status(top)
            if head is not None and head != tip:
                raise _moved(target)
            if dirty is not None:
                raise Failed(Code.LAND_CONFLICT, f"{target} is checked out in {top} and {dirty}; "
                             "hyperion left it alone. Commit or stash them, then resubmit")
            # Written before the checkout moves, removed once the ref agrees: a crash between
            # the two is finished or undone by recover_checkout().
            intent = intent_path(self.app, self.name)
            write_atomic(intent, json.dumps({"top": str(top), "branch": target, "old": tip,
                                             "new": commit}).encode())
            refused = repo.move_checkout(top, tip, commit)
            if refused is not None:
                intent.unlink(missing_ok=True)
                raise Failed(Code.LAND_CONFLICT, f"{target} is checked out in {top} and updating "
                             f"it would lose local files ({refused.splitlines()[0][:200]}); "
                             "hyperion left it alone")
            if not repo.set_ref(f"refs/heads/{target}", commit, tip, reason):
                repo.move_checkout(top, commit, tip)
                intent.unlink(missing_ok=True)
                raise _moved(target)
            intent.unlink(missing_ok=True)


class BranchLander:
    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.where = str(repo.path)

    def tip(self, target: str) -> str | None:
        return self.repo.branch_commit(target)

    @staticmethod
    def _branch(record: Record) -> str:
        return f"hyperion/{record.id}"

    def landed_ref(self, record: Record) -> str | None:
        return f"refs/heads/{self._branch(record)}"

    def already_landed(self, record: Record, tip: str) -> str | None:
        current = self.repo.branch_commit(self._branch(record))
        if current is None or not self.repo.carries_request(current, record.id):
            return None
        return current

    def land(self, record: Record, target: str, commit: str, tip: str) -> None:
        branch = self._branch(record)
        if self.repo.set_ref(f"refs/heads/{branch}", commit, None,
                             f"hyperion: {record.id} for review"):
            return
        if self.already_landed(record, tip) is None:
            raise Failed(Code.LAND_CONFLICT, f"the branch {branch} already exists and is not "
                         "this request's; delete it or resubmit with a new id")


class PushLander:
    def __init__(self, repo: GitRepo, remote: str) -> None:
        self.repo, self.remote = repo, remote
        self.where = f"the remote {remote}"

    @staticmethod
    def _tracking(target: str) -> str:
        return f"refs/hyperion/upstream/{target}"

    def tip(self, target: str) -> str | None:
        return self.repo.fetch_branch(self.remote, target, self._tracking(target))

    def already_landed(self, record: Record, tip: str) -> str | None:
        return _landed_since_applied(self.repo, record, tip)

    def landed_ref(self, record: Record) -> str | None:
        return None

    def land(self, record: Record, target: str, commit: str, tip: str) -> None:
        refused = self.repo.push_cas(self.remote, commit, target, tip)
        if refused is None:
            self.repo.force_ref(self._tracking(target), commit)
            return
        log.info("push of %s to %s refused: %s", record.id, self.remote, refused.detail[:200],
                 extra={"request_id": record.id})
        if refused.stale:
            raise _moved(target)
        raise Failed(Code.LAND_CONFLICT, f"the remote {self.remote} refused the push to "
                     f"{target} ({refused.detail[:200]})")


# ---------------------------------------------------------------- the land lock and recovery

@contextmanager
def land_lock(app: App, repo_name: str) -> Iterator[None]:
    """One land at a time per repository, across threads and processes."""
    with exclusive(app.locks_dir() / f"land-{repo_name}.lock"):
        yield


def intent_path(app: App, repo_name: str) -> Path:
    return app.locks_dir() / f"land-{repo_name}.intent"


def recover_checkout(app: App, repo_name: str, repo: GitRepo) -> None:
    """Finish or undo a move of a repository's own checkout that a crash interrupted.

    If the branch reached the new commit, the land happened and the checkout is there too.
    If not, the checkout is moved back to the old commit (a no-op if it never moved), so the
    user's working tree always matches its branch. Call with the repo's land lock held."""
    intent = intent_path(app, repo_name)
    try:
        data = json.loads(intent.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        intent.unlink(missing_ok=True)
        return
    if repo.branch_commit(data["branch"]) != data["new"]:
        refused = repo.move_checkout(Path(data["top"]), data["new"], data["old"])
        if refused is not None:
            log.error("the checkout %s was left between %s and %s by a crash and cannot be "
                      "moved back (%s): fix it by hand, e.g. git read-tree -u -m %s %s",
                      data["top"], data["old"][:12], data["new"][:12], refused[:200],
                      data["new"], data["old"])
            return
        log.warning("moved the checkout %s back to %s after an interrupted land",
                    data["top"], data["old"][:12])
    intent.unlink(missing_ok=True)


def recover_checkouts(app: App) -> None:
    """Start-up: recover_checkout() for every repository, under its land lock."""
    for name, config in app.config.repos.items():
        if not intent_path(app, name).exists():
            continue
        with land_lock(app, name):
            recover_checkout(app, name, GitRepo.at(config.path))
