"""The state machine of one leased request: worktree, apply, check, land, report.

A worker never trusts the spool payload more than intake did: it re-parses it into the typed
model. Outcomes:
- landed: the target ref moved to our commit by compare-and-swap (ack);
- failed: apply_conflict, hash_mismatch, check_failed, timeout, land_conflict (bury);
- retried: the target moved under us, or an internal error, while attempts remain.
Exactly-once landing: before applying again after an earlier attempt, the worker looks for a
commit with this request's trailer on the target and, if found, finishes as landed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hyperion import worktrees
from hyperion.app import App
from hyperion.errors import Code, ErrorInfo
from hyperion.fsutil import write_atomic
from hyperion.gitops import GitError, GitRepo, author_identity, commit_message
from hyperion.intake.dependencies import settle_dependents
from hyperion.metrics import METRICS
from hyperion.records import CheckResult, Record, State
from hyperion.requests import ChangeRequest
from hyperion.run import run_command, scrubbed_env
from hyperion.spool import Lease, LeaseLost

log = logging.getLogger("hyperion.worker")

LEASE_TTL_S = 60.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0
MAX_RACES = 50
_land_locks: dict[str, threading.Lock] = {}
_land_locks_guard = threading.Lock()


@contextmanager
def _stage(name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        METRICS.observe("hyperion_stage_seconds", time.monotonic() - started, stage=name)


class Failed(Exception):
    """The request cannot land: a final outcome, not an error of hyperion's."""

    def __init__(self, code: Code, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, path=path)


class Retry(Exception):
    """Try again later (the target moved, or something transient went wrong).

    A lost race to land (``race=True``) is progress, not failure: it does not count against
    ``max_attempts``, only against the safety cap MAX_RACES."""

    def __init__(self, info: ErrorInfo, delay_s: float | None = None, *,
                 race: bool = False) -> None:
        super().__init__(info.message)
        self.info = info
        self.delay_s = delay_s
        self.race = race


def backoff(attempts: int) -> float:
    """Exponential, jittered, clamped: 1 s, 2 s, 4 s... (times 0.5-1.0)."""
    base: float = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** min(attempts, 20))
    jittered: float = base * random.uniform(0.5, 1.0)
    return max(BACKOFF_MIN_S, jittered)


@dataclass
class Heartbeat:
    """Keeps a lease alive from a side thread while long checks run."""

    app: App
    lease: Lease

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{self.lease.id}")

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_TTL_S / 3):
            try:
                self.lease = self.app.spool.heartbeat(self.lease, LEASE_TTL_S)
            except LeaseLost:
                log.error("lease of %s was lost while working on it", self.lease.id,
                          extra={"request_id": self.lease.id})
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Lease:
        """Stop beating; returns the latest lease (to close it without a race)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.lease


def prune_worktrees(app: App) -> int:
    """Remove worktrees whose creating process is gone (killed mid-request). Returns how many."""
    root = app.worktrees_dir()
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        parts = entry.name.split("~")
        if len(parts) != 3 or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    for name, repo in app.config.repos.items():
        try:
            # Also repairs an add that a killed process left half done (it wedges git).
            worktrees.prune(app.locks_dir(), name, GitRepo(repo.path), root)
        except GitError as exc:
            log.warning("cannot prune worktrees of %s: %s", repo.path, exc)
    return removed


def recover_checkout(app: App, repo_name: str, repo: GitRepo) -> None:
    """Finish or undo a move of a repository's own checkout that a crash interrupted.

    If the branch reached the new commit, the land happened and the checkout is there too.
    If not, the checkout is moved back to the old commit (a no-op if it never moved), so the
    user's working tree always matches its branch. Call with the repo's land lock held."""
    intent = app.locks_dir() / f"land-{repo_name}.intent"
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
        intent = app.locks_dir() / f"land-{name}.intent"
        if not intent.exists():
            continue
        with Worker(app, "recovery")._land_lock(name):
            recover_checkout(app, name, GitRepo(config.path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.name = name

    def run_one(self, on_lease: Callable[[str], None] | None = None) -> bool:
        """Lease one ready request and take it to its next resting state. False if none."""
        lease = self.app.spool.lease(self.name, ttl_s=LEASE_TTL_S)
        if lease is None:
            return False
        if on_lease is not None:
            on_lease(lease.id)
        with Heartbeat(self.app, lease) as beat:
            self._process(lease, beat)
        return True

    # ------------------------------------------------------------------ one request
    def _process(self, lease: Lease, beat: Heartbeat) -> None:
        records = self.app.records
        record = records.get(lease.id)
        if record is None or record.terminal:
            # Finished before a crash kept us from acking, or never recorded: nothing to do.
            log.warning("spool item %s has no open record; acknowledging it", lease.id)
            self.app.spool.ack(beat.stop())
            return
        # Still `running`: the process of the previous attempt died in the middle of it. Such
        # attempts have their own budget, so that restarts of the daemon do not eat the retry
        # budget, and a request that kills its worker every time does not loop forever.
        crashed = record.state is State.RUNNING
        crashes = record.crashes + (1 if crashed else 0)
        if crashes >= self.app.config.max_crashes:
            self._finish(beat, record, State.FAILED, ErrorInfo(
                code=Code.INTERNAL_ERROR, message=f"gave up after {crashes} attempts that "
                "ended with hyperion's process dying; the request is kept with its record "
                "(check the log, then `hyperion requeue` it)"), crashes=crashes)
            return
        try:
            request = ChangeRequest.model_validate_json(lease.payload)
        except ValueError:
            self._finish(beat, record, State.FAILED, ErrorInfo(
                code=Code.INTERNAL_ERROR, message="the queued request could not be read back; "
                "its original is kept with the record"))
            return
        died = " (the previous attempt's process died)" if crashed else ""
        record = records.transition(record.id, State.RUNNING, by=self.name,
                                    reason=f"attempt {lease.attempts + 1}{died}",
                                    attempts=lease.attempts + 1, crashes=crashes, error=None)
        try:
            landed = self._attempt(request, record, beat)
        except Failed as exc:
            self._finish(beat, record, State.FAILED, exc.info)
        except Retry as exc:
            self._retry(beat, record, exc.info, exc.delay_s, race=exc.race)
        except (GitError, OSError) as exc:
            self._retry(beat, record, ErrorInfo(
                code=Code.INTERNAL_ERROR,
                message=f"hyperion hit an error it did not expect ({type(exc).__name__}: "
                f"{str(exc)[:300]}); the request is kept"), None)
        except Exception as exc:
            log.exception("internal error on %s", record.id, extra={"request_id": record.id})
            self._retry(beat, record, ErrorInfo(
                code=Code.INTERNAL_ERROR, message=f"a bug in hyperion ({type(exc).__name__}); "
                "the request is kept and will be retried"), None)
        else:
            current = records.get(record.id) or record
            self._finish(beat, current, State.LANDED, None, landed_commit=landed)

    def _attempt(self, request: ChangeRequest, record: Record, beat: Heartbeat) -> str:
        assert record.repo is not None and record.target is not None
        repo_config = self.app.config.repos.get(record.repo)
        if repo_config is None:
            raise Failed(Code.LAND_CONFLICT, f"the repo {record.repo!r} is no longer configured")
        repo = GitRepo(repo_config.path)
        target = record.target
        tip = repo.branch_commit(target)
        if tip is None:
            raise Failed(Code.LAND_CONFLICT, f"the target branch {target!r} does not exist in "
                         f"{repo_config.path}", path="target")
        if record.applied_onto is not None:
            earlier = repo.find_landed(record.id, tip, since=record.applied_onto)
            if earlier is not None:
                log.info("%s had already landed as %s before a restart", record.id, earlier,
                         extra={"request_id": record.id})
                return earlier
        base_commit = repo.resolve(request.base) if request.base else tip
        # The pid in the name lets a later start-up remove what a killed process left behind.
        worktree = self.app.worktrees_dir() / f"{record.id}~{os.getpid()}~{secrets.token_hex(3)}"
        worktree.parent.mkdir(parents=True, exist_ok=True)
        with _stage("prepare"):
            worktrees.add_worktree(self.app.locks_dir(), record.repo, repo, worktree, tip)
        try:
            assert request.patch is not None
            with _stage("apply"):
                reason = repo.apply_check(worktree, request.patch)
            if reason is not None:
                self._save_artifact(record.id, "apply-conflict.txt",
                                    f"target: {target} at {tip}\nbase: {request.base}\n\n"
                                    f"git apply --check said:\n{reason}\n")
                first = reason.splitlines()[0] if reason else "no reason given"
                raise Failed(Code.APPLY_CONFLICT, f"the patch does not apply to {target} at "
                             f"{tip[:12]} ({first[:200]}); rebase it onto the current {target}")
            with _stage("apply"):
                repo.apply(worktree, request.patch)
                self._check_hashes(request, worktree)
                message = commit_message(request.title, request.body, request.id)
                commit = repo.commit(worktree, tip, message, author_identity(request.agent))
            self.app.records.update(record.id, applied_onto=tip, base_commit=base_commit)
            self._run_checks(request, record, worktree)
            with _stage("land"):
                self._land(repo, record, target, commit, tip)
            return commit
        finally:
            worktrees.remove_worktree(self.app.locks_dir(), record.repo, repo, worktree)

    def _check_hashes(self, request: ChangeRequest, worktree: Path) -> None:
        for i, entry in enumerate(request.changes):
            if entry.sha256 is None:
                continue
            path = worktree / entry.path
            try:
                data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            except OSError:
                data = b""
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise Failed(Code.HASH_MISMATCH, f"after applying, {entry.path!r} does not have "
                             "the sha256 the manifest gives; regenerate the patch and manifest "
                             "together", path=f"changes[{i}].sha256")

    def _run_checks(self, request: ChangeRequest, record: Record, worktree: Path) -> None:
        results: list[CheckResult] = []
        for name in request.checks:
            check = self.app.config.checks.get(name)
            if check is None:
                raise Failed(Code.CHECK_NOT_ALLOWED, f"the check {name!r} is no longer defined "
                             "in the configuration", path="checks")
            artifact = f"check-{name}-attempt{record.attempts}.log"
            result = run_command(check.run, cwd=worktree, timeout_s=check.timeout_s,
                                 output_path=self.app.artifacts_dir(record.id) / artifact,
                                 env=scrubbed_env(check.env))
            METRICS.observe("hyperion_stage_seconds", result.duration_s, stage="check")
            results.append(CheckResult(
                name=name, ok=result.ok, exit_code=result.exit_code, timed_out=result.timed_out,
                seconds=round(result.duration_s, 3), artifact=artifact, tail=result.tail[-2000:]))
            self.app.records.update(record.id, checks=results)
            if result.aborted:
                raise Retry(ErrorInfo(code=Code.INTERNAL_ERROR, message="hyperion was stopped "
                                      f"while the check {name!r} ran; the request is requeued"),
                            delay_s=0)
            if result.timed_out:
                raise Failed(Code.TIMEOUT, f"the check {name!r} ran past its limit of "
                             f"{check.timeout_s:g} s and was stopped; see {artifact}",
                             path=f"checks.{name}")
            if result.start_error is not None:
                raise Failed(Code.CHECK_FAILED, f"the check {name!r} could not start "
                             f"({result.start_error}); fix its `run` in the configuration",
                             path=f"checks.{name}")
            if not result.ok:
                raise Failed(Code.CHECK_FAILED, f"the check {name!r} failed with exit code "
                             f"{result.exit_code}; its output is in {artifact}",
                             path=f"checks.{name}")

    @contextmanager
    def _land_lock(self, repo_name: str) -> Iterator[None]:
        with _land_locks_guard:
            lock = _land_locks.setdefault(repo_name, threading.Lock())
        with lock:
            fd = os.open(self.app.locks_dir() / f"land-{repo_name}.lock",
                         os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _land(self, repo: GitRepo, record: Record, target: str, commit: str, tip: str) -> None:
        assert record.repo is not None
        moved = ErrorInfo(code=Code.LAND_CONFLICT, message=f"{target} moved while the change "
                          "was being checked")
        reason = f"hyperion: land {record.id}"
        with self._land_lock(record.repo):
            recover_checkout(self.app, record.repo, repo)
            if repo.branch_commit(target) != tip:
                raise Retry(moved, delay_s=0, race=True)
            checkout = repo.checkout()
            if checkout is None or checkout.branch != target:
                if not repo.compare_and_swap(target, commit, tip, reason):
                    raise Retry(moved, delay_s=0, race=True)
                return
            # The target is checked out: behave like receive.denyCurrentBranch=updateInstead.
            top = checkout.toplevel
            dirty = repo.checkout_dirty(top)
            if dirty is not None:
                raise Failed(Code.LAND_CONFLICT, f"{target} is checked out in {top} and {dirty}; "
                             "hyperion left it alone. Commit or stash them, then resubmit")
            if repo.checkout_head(top) != tip:
                raise Retry(moved, delay_s=0, race=True)
            # Written before the checkout moves, removed once the ref agrees: a crash between
            # the two is finished or undone by recover_checkout().
            intent = self._intent_path(record.repo)
            write_atomic(intent, json.dumps({"top": str(top), "branch": target, "old": tip,
                                             "new": commit}).encode())
            refused = repo.move_checkout(top, tip, commit)
            if refused is not None:
                intent.unlink(missing_ok=True)
                raise Failed(Code.LAND_CONFLICT, f"{target} is checked out in {top} and updating "
                             f"it would lose local files ({refused.splitlines()[0][:200]}); "
                             "hyperion left it alone")
            if not repo.compare_and_swap(target, commit, tip, reason):
                repo.move_checkout(top, commit, tip)
                intent.unlink(missing_ok=True)
                raise Retry(moved, delay_s=0, race=True)
            intent.unlink(missing_ok=True)

    def _intent_path(self, repo_name: str) -> Path:
        return self.app.locks_dir() / f"land-{repo_name}.intent"

    # ------------------------------------------------------------------ outcomes
    def _save_artifact(self, record_id: str, name: str, text: str) -> None:
        directory = self.app.artifacts_dir(record_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")

    def _finish(self, beat: Heartbeat, record: Record, state: State, error: ErrorInfo | None,
                **updates: object) -> None:
        lease = beat.stop()
        reason = error.summary() if error else (f"landed as {updates.get('landed_commit')}")
        final = self.app.records.transition(record.id, state, by=self.name, reason=reason,
                                            error=error, **updates)
        try:
            if state is State.LANDED:
                self.app.spool.ack(lease)
            else:
                self.app.spool.bury(lease, error.summary() if error else state.value)
        except LeaseLost:
            log.warning("lease of %s was lost before it could be closed", record.id,
                        extra={"request_id": record.id})
        log.info("%s %s", record.id, state.value, extra={"request_id": record.id})
        self.app.reporter.outcome(final)
        settle_dependents(self.app, final)

    def _retry(self, beat: Heartbeat, record: Record, info: ErrorInfo,
               delay_s: float | None, *, race: bool = False) -> None:
        lease = beat.stop()
        races = record.races + (1 if race else 0)
        # Attempts that failed for a reason worth a retry: not crashes, not lost races.
        tries = lease.attempts + 1 - record.crashes - races
        if race and races >= MAX_RACES:
            self._finish(beat, record, State.FAILED, info.model_copy(update={
                "message": f"{info.message}, {races} times in a row: the target moves faster "
                "than this request's checks run"}), races=races)
            return
        if not race and tries >= self.app.config.max_attempts:
            self._finish(beat, record, State.FAILED, info.model_copy(update={
                "message": f"{info.message} (gave up after {tries} attempts)"}))
            return
        # Grows with the failed tries only: restarts of the daemon must not stretch it.
        delay = backoff(max(0, tries - 1)) if delay_s is None else delay_s
        self.app.records.transition(record.id, State.QUEUED, by=self.name,
                                    reason=f"{info.summary()}; retrying in {delay:.1f} s",
                                    error=info, races=races)
        try:
            self.app.spool.retry(lease, delay, info.summary())
        except LeaseLost:
            log.warning("lease of %s was lost before the retry", record.id,
                        extra={"request_id": record.id})
