"""The state machine of one leased request: worktree, apply, check, land, report.

A worker never trusts the spool payload more than intake did: it re-parses it into the typed
model. Outcomes:
- landed: the commit landed (see landing.py for the modes) and the lease is acked;
- verified: a dry run, applied and checked green, never landed (acked);
- failed: apply_conflict, hash_mismatch, check_failed, timeout, land_conflict (buried);
- retried: the target moved under us, or an internal error, while attempts remain.
Exactly-once landing: before applying again after an earlier attempt, the worker looks for a
commit with this request's trailer where it would have landed and, if found, finishes as landed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from hyperion import landing, worktrees
from hyperion.app import App
from hyperion.apply import Applied, ApplyConflict, apply_patch, render_report
from hyperion.batch import run_batch
from hyperion.errors import Code, ErrorInfo
from hyperion.fsutil import pid_alive
from hyperion.gate.patch import parse_patch
from hyperion.gate.review import tree_refusal
from hyperion.gitops import GitError, GitRepo
from hyperion.heartbeat import LEASE_TTL_S, Heartbeat
from hyperion.intake.dependencies import settle_dependents
from hyperion.intake.git_requests import landing_identity
from hyperion.land_stage import LandStage, Place
from hyperion.outcome import Failed, Landing, Result, Retry, Timings
from hyperion.pool import Slot, WorktreePool
from hyperion.records import CheckResult, Record, State
from hyperion.requests import ChangeRequest
from hyperion.rollback import settle_rollback
from hyperion.run import run_command, scrubbed_env
from hyperion.spool import Lease, LeaseLost

__all__ = ["Failed", "Retry", "Worker", "backoff", "prune_worktrees"]

log = logging.getLogger("hyperion.worker")

PROGRESS_MIN_S = 1.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0
MAX_RACES = 50


def backoff(attempts: int) -> float:
    """Exponential, jittered, clamped: 1 s, 2 s, 4 s... (times 0.5-1.0)."""
    base: float = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** min(attempts, 20))
    jittered: float = base * random.uniform(0.5, 1.0)
    return max(BACKOFF_MIN_S, jittered)


def prune_worktrees(app: App) -> int:
    """Start-up: remove worktrees nobody can use any more. Returns how many.

    Pool slots (pool.py) that fail their guard, folders of repositories no longer configured,
    and the per-attempt worktrees (``<id>~<pid>~<random>``: tasks, and earlier versions)
    whose process is gone."""
    root = app.worktrees_dir()
    root.mkdir(parents=True, exist_ok=True)
    removed = 0
    for entry in root.iterdir():
        parts = entry.name.split("~")
        if len(parts) != 3 or not parts[1].isdigit() or pid_alive(int(parts[1])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    repos: dict[str, GitRepo] = {}
    for name, repo in app.config.repos.items():
        try:
            repos[name] = GitRepo.at(repo.path)
            # Also repairs an add that a killed process left half done (it wedges git).
            worktrees.prune(app.locks_dir(), name, repos[name], root)
        except GitError as exc:
            log.warning("cannot prune worktrees of %s: %s", repo.path, exc)
    return removed + WorktreePool(root, app.locks_dir()).prune(repos)


def unexpected(exc: Exception, record_id: str) -> ErrorInfo:
    """The error to retry with after an exception hyperion did not expect."""
    if isinstance(exc, GitError | OSError):
        return ErrorInfo(code=Code.INTERNAL_ERROR, message="hyperion hit an error it did not "
                         f"expect ({type(exc).__name__}: {str(exc)[:300]}); the request is kept")
    log.exception("internal error on %s", record_id, extra={"request_id": record_id})
    return ErrorInfo(code=Code.INTERNAL_ERROR, message=f"a bug in hyperion "
                     f"({type(exc).__name__}); the request is kept and will be retried")


@dataclass
class Member:
    """A leased request that is open (running) in this worker."""

    beat: Heartbeat
    request: ChangeRequest
    record: Record


class Worker:
    """Takes leased requests to their next resting state. With a landing ``stage`` (the
    daemon's and ``run --once``'s, shared by their workers), a single request of a
    ``land: ref`` repository is applied on top of the last commit claimed there for its
    target, and once checked, landed by the stage while the worker goes on (land_stage.py)."""

    def __init__(self, app: App, name: str, *, stage: LandStage | None = None) -> None:
        self.app = app
        self.name = name
        self.stage = stage

    def run_one(self, on_lease: Callable[[str], None] | None = None) -> bool:
        """Lease one ready request (with a batch of more, when its repository batches) and
        take it to its next resting state, or hand it to the landing stage. False if none
        was ready."""
        lease = self.app.spool.lease(self.name, ttl_s=LEASE_TTL_S)
        if lease is None:
            return False
        if on_lease is not None:
            on_lease(lease.id)
        beat = Heartbeat(self.app, lease).__enter__()
        handed = False
        try:
            opened = self._open(lease, beat)
            if opened is None:
                return True
            request, record = opened
            limit = self._batch_limit(request, record)
            if limit <= 1:
                handed = self._process(beat, request, record, may_hand=True)
                return True
            if self.stage is not None:        # a batch lands from the real tip
                self.stage.wait_empty(record.repo or "", record.target or "")
            members, others, later = self._gather(Member(beat, request, record), limit)
            try:
                if len(members) == 1:
                    self._process(beat, request, record)
                else:
                    run_batch(self, members)
            finally:
                for member in members:
                    member.beat.stop()
                for other in others:
                    try:
                        self._process(other.beat, other.request, other.record)
                    finally:
                        other.beat.stop()
                for task_lease, task_beat in later:
                    try:
                        self._open(task_lease, task_beat)   # runs the task
                    finally:
                        task_beat.stop()
        finally:
            if not handed:
                beat.stop()
        return True

    def settle(self) -> bool:
        """Wait until the landing stage has landed (or failed) all that was claimed there;
        True if there was any (their outcomes may have queued more work: retries,
        dependents)."""
        return self.stage.wait_empty() if self.stage is not None else False

    # ------------------------------------------------------------------ one request
    def _open(self, lease: Lease, beat: Heartbeat) -> tuple[ChangeRequest, Record] | None:
        """The leased request, read back and marked running; None when it was finished here."""
        records = self.app.records
        record = records.get(lease.id)
        if record is None or record.terminal:
            # Finished before a crash kept us from acking, or never recorded: nothing to do.
            log.warning("spool item %s has no open record; acknowledging it", lease.id)
            self.app.spool.ack(beat.stop())
            return None
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
            return None
        if record.kind == "task":
            from hyperion.tasks.loop import run_task  # tasks import this module

            if self.stage is not None:        # a task lands from the real tip
                self.stage.wait_empty(record.repo or "", record.target or "")
            run_task(self, lease, beat, record, crashes)
            return None
        try:
            request = ChangeRequest.model_validate_json(lease.payload)
        except ValueError:
            self._finish(beat, record, State.FAILED, ErrorInfo(
                code=Code.INTERNAL_ERROR, message="the queued request could not be read back; "
                "its original is kept with the record"))
            return None
        died = " (the previous attempt's process died)" if crashed else ""
        # Written behind: run_checks() waits for it before any check runs.
        record = records.transition_behind(record.id, State.RUNNING, by=self.name,
                                           reason=f"attempt {lease.attempts + 1}{died}",
                                           attempts=lease.attempts + 1, crashes=crashes,
                                           error=None)
        return request, record

    def _batch_limit(self, request: ChangeRequest, record: Record) -> int:
        repo_config = self.app.config.repos.get(record.repo or "")
        if repo_config is None or repo_config.batch is None or repo_config.land == "branch":
            return 1
        if request.dry_run or self.app.dry_run:
            return 1
        return repo_config.batch.max

    def _gather(self, first: Member, limit: int
                ) -> tuple[list[Member], list[Member], list[tuple[Lease, Heartbeat]]]:
        """More ready requests for the same repository and target, up to ``limit`` in all.
        Other requests leased on the way (opened), and tasks (not yet opened), are returned
        to be processed one by one afterwards."""
        members: list[Member] = [first]
        others: list[Member] = []
        later: list[tuple[Lease, Heartbeat]] = []
        while len(members) < limit:
            lease = self.app.spool.lease(self.name, ttl_s=LEASE_TTL_S)
            if lease is None:
                break
            beat = Heartbeat(self.app, lease).__enter__()
            record = self.app.records.get(lease.id)
            if record is not None and record.kind == "task":
                # A task's harness may run for long: not while a batch waits on it.
                later.append((lease, beat))
                continue
            opened = self._open(lease, beat)
            if opened is None:
                continue
            member = Member(beat, *opened)
            same = (member.record.repo, member.record.target) == \
                (first.record.repo, first.record.target)
            if same and not member.request.dry_run:
                members.append(member)
            else:
                others.append(member)
        return members, others, later

    def _process(self, beat: Heartbeat, request: ChangeRequest, record: Record, *,
                 may_hand: bool = False) -> bool:
        """One attempt at ``request``, to its outcome; True when its land was handed to the
        landing stage instead (which then finishes it, and stops ``beat``)."""
        timings = Timings()
        claimed: list[Place] = []
        handed_over = False
        try:
            result = self._conclude(beat, record, timings, lambda: self._attempt(
                request, record, timings, claimed if may_hand else None))
            if result is not None and result.landing is not None:
                assert self.stage is not None
                landing_ = result.landing
                self.stage.hand(landing_.place, lambda: self._conclude(
                    beat, record, timings,
                    lambda: self._land(record, landing_, timings)) is not None)
                handed_over = True
        finally:
            # Claimed, then not handed over (a red check, any failure): what other workers
            # applied on top of it cannot land either, and they must not wait for it.
            if not handed_over and self.stage is not None:
                for place in claimed:
                    self.stage.abandon(place)
        return handed_over

    def _conclude(self, beat: Heartbeat, record: Record, timings: Timings,
                  attempt: Callable[[], Result]) -> Result | None:
        """Run ``attempt`` and record its outcome; its Result when green (None otherwise).
        A Result still to land (``landing``) is left open for the landing stage."""
        try:
            result = attempt()
        except Failed as exc:
            self._finish(beat, record, State.FAILED, exc.info, timings=timings)
        except Retry as exc:
            self._retry(beat, record, exc.info, exc.delay_s, race=exc.race, timings=timings)
        except Exception as exc:
            self._retry(beat, record, unexpected(exc, record.id), None, timings=timings)
        else:
            if result.landing is not None:
                return result
            current = self.app.records.get(record.id) or record
            if result.state is State.VERIFIED:
                self._finish(beat, current, State.VERIFIED, None, timings=timings,
                             result_commit=result.commit)
            else:
                self._finish(beat, current, State.LANDED, None, timings=timings,
                             landed_commit=result.commit, landed_ref=result.ref)
            return result
        return None

    def _land(self, record: Record, landing_: Landing, timings: Timings) -> Result:
        """The landing stage's part of a handed request (in its thread)."""
        place = landing_.place
        self.app.records.written(record.id)      # where it applied: see _apply_and_check
        with timings.step("land"):
            landing_.lander.land(record, place.target, place.commit, landing_.tip)
        return Result(State.LANDED, place.commit, landing_.lander.landed_ref(record))

    def _attempt(self, request: ChangeRequest, record: Record, timings: Timings,
                 claimed: list[Place] | None = None) -> Result:
        """One attempt. With ``claimed`` (a single request that may go to the landing
        stage), it claims the next place on its target there (appended to ``claimed`` for
        the caller, who hands it over or abandons it) and is applied on top of the commit
        before that place, if any, else on the target's tip."""
        assert record.repo is not None and record.target is not None
        repo_config = self.app.config.repos.get(record.repo)
        if repo_config is None:
            raise Failed(Code.LAND_CONFLICT, f"the repo {record.repo!r} is no longer configured")
        lander = landing.for_repo(self.app, record.repo, repo_config,
                                  GitRepo.at(repo_config.path))
        dry_run = self.app.dry_run or request.dry_run
        behind = (self.stage if claimed is not None and not dry_run
                  and repo_config.land == "ref" else None)
        place = behind.claim(record.repo, record.target) if behind is not None else None
        if place is not None and claimed is not None:
            claimed.append(place)
        ahead = place.parent if place is not None else None
        try:
            return self._apply_and_check(request, record, timings, lander, dry_run,
                                         behind, place)
        except Failed as exc:
            if place is not None and behind is not None:
                behind.abandon(place)        # nothing more is built on it meanwhile
            # Applied on top of a commit still to land, a failure may be that commit's doing
            # (a red check, a conflict with its change): it counts only if that commit
            # lands; else the request goes round again on the real tip.
            if ahead is None or behind is None or behind.outcome(ahead):
                raise
            raise Retry(ErrorInfo(code=Code.LAND_CONFLICT, message=(
                f"{exc.info.code.value} on top of {ahead.commit[:12]}, which did not land; "
                "applying it again on the target's tip")), delay_s=0, race=True) from exc

    def _apply_and_check(self, request: ChangeRequest, record: Record, timings: Timings,
                         lander: landing.Lander, dry_run: bool, behind: LandStage | None,
                         place: Place | None) -> Result:
        assert record.repo is not None and record.target is not None
        repo, target = lander.repo, record.target
        ahead = place.parent if place is not None else None
        with ExitStack() as stack:
            with timings.step("prepare"):
                tip = ahead.commit if ahead is not None else lander.tip(target)
                if tip is None:
                    raise Failed(Code.LAND_CONFLICT, f"the target branch {target!r} does not "
                                 f"exist in {lander.where}", path="target")
                earlier = lander.already_landed(record, tip)
                if earlier is not None:
                    log.info("%s had already landed as %s before a restart", record.id,
                             earlier, extra={"request_id": record.id})
                    return Result(State.LANDED, earlier, lander.landed_ref(record))
                base_commit = repo.resolve(request.base) if request.base else tip
                if base_commit is None:
                    raise Failed(Code.APPLY_CONFLICT, f"the base {request.base!r} is not a "
                                 "commit in the repository", path="base")
                assert request.patch is not None
                if (refused := tree_refusal(self.app, record, repo, tip, request.patch)):
                    raise Failed(refused.code, refused.message, refused.path)
                identity = landing_identity(repo, record, request)
                pool = WorktreePool(self.app.worktrees_dir(), self.app.locks_dir())
                slot = stack.enter_context(pool.checkout_unproven(record.repo, repo, tip))
                worktree = slot.path
            with timings.step("apply"):
                applied, commit = self._apply_and_commit(request, record, repo, slot, tip,
                                                         base_commit, identity)
                if behind is not None and place is not None:
                    # The next request for this target may now be applied on top of it.
                    behind.made(place, commit, tip)
            applied_fields: dict[str, object] = {"applied_onto": tip, "base_commit": base_commit,
                                                 "apply_method": applied.method}
            slot.watch_from_here()
            results = self._run_checks(request, record, worktree, timings, applied_fields)
        # The slot is given back before this: the one durable write before the
        # land, since the exactly-once search after a crash starts at applied_onto. Handed
        # to the landing stage, it is written behind while the stage lands the change
        # before, and the stage waits for it before the ref moves (_land).
        fields = {"checks": results, **applied_fields}
        if place is not None:
            self.app.records.update_behind(record.id, **fields)
            return Result(State.LANDED, commit, landing=Landing(place, lander, tip))
        self.app.records.update(record.id, **fields)
        if dry_run:
            return Result(State.VERIFIED, commit)
        with timings.step("land"):
            lander.land(record, target, commit, tip)
        return Result(State.LANDED, commit, lander.landed_ref(record))

    def _apply_and_commit(self, request: ChangeRequest, record: Record, repo: GitRepo,
                          slot: Slot, tip: str, base_commit: str,
                          identity: tuple[str, tuple[str, str], str | None]
                          ) -> tuple[Applied, str]:
        """The patch applied in ``slot`` (at ``tip``) and committed. A slot not yet proven
        clean (pool.py) is proven while the commit is written; when what its last check left
        is in the way (the apply or the hash check fails, or the proof finds it), the slot is
        reset and all done once more, so only a proven slot's failure counts. A slot where a
        folder the patch writes in is not a real folder (a symlink a check left) is reset
        before anything is applied."""
        assert request.patch is not None
        message, author, author_date = identity
        if not slot.trusted and not slot.folders_are_real(
                [p for f in parse_patch(request.patch) for p in (f.path, f.old_path) if p]):
            log.info("%s: a folder the patch writes in is not a folder in the worktree (what "
                     "a check left there); reset before applying", record.id,
                     extra={"request_id": record.id})
            slot.prove()
        while True:
            try:
                applied = apply_patch(
                    repo, slot.path, request.patch, tip=tip, base_commit=base_commit,
                    want_own_tree=any(c.sha256 for c in request.changes), merge=slot.trusted)
                self._check_hashes(request, slot.path, repo, applied.own_tree)
            except (ApplyConflict, Failed) as exc:
                if not slot.trusted:
                    slot.prove()
                    continue
                if isinstance(exc, Failed):
                    raise
                self._save_artifact(record.id, "conflict-report.json", render_report(
                    record.id, record.target or "", request.base, exc.report))
                raise Failed(Code.APPLY_CONFLICT, exc.message) from None
            if slot.trusted:
                return applied, repo.commit(slot.path, tip, message, author, author_date)
            commit = repo.commit_proving_clean(slot.path, tip, message, author, author_date)
            if commit is not None:
                slot.trusted = True
                return applied, commit
            log.info("%s: the worktree held what a check left there; reset and applied "
                     "again", record.id, extra={"request_id": record.id})
            slot.prove()

    @staticmethod
    def _check_hashes(request: ChangeRequest, worktree: Path, repo: GitRepo,
                      own_tree: str | None) -> None:
        """The manifest's sha256 values against the patch's result: the worktree's files, or
        after a 3-way merge the patch applied to its own base (``own_tree``)."""
        for i, entry in enumerate(request.changes):
            if entry.sha256 is None:
                continue
            if own_tree is not None:
                data = repo.blob_bytes(own_tree, entry.path)
            else:
                path = worktree / entry.path
                try:
                    data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
                except OSError:
                    data = b""
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise Failed(Code.HASH_MISMATCH, f"after applying, {entry.path!r} does not have "
                             "the sha256 the manifest gives; regenerate the patch and manifest "
                             "together", path=f"changes[{i}].sha256")

    def _run_checks(self, request: ChangeRequest, record: Record, worktree: Path,
                    timings: Timings | None = None,
                    fields: dict[str, object] | None = None) -> list[CheckResult]:
        """Run the request's checks; their results, or Failed/Retry with them (and
        ``fields``) recorded. A check that ran for a second or more is recorded when it ends,
        for `hyperion inspect` during a long run; quick ones go with the caller's next write."""
        extra = dict(fields or {})

        def progress(results: list[CheckResult]) -> None:
            if results[-1].seconds >= PROGRESS_MIN_S:
                self.app.records.update(record.id, checks=results, **extra)

        results, failure = self.run_checks(request.checks, record.id, record.attempts,
                                           worktree, timings or Timings(), progress)
        if failure is not None:
            self.app.records.update(record.id, checks=results, **extra)
            raise failure
        return results

    def run_checks(self, names: list[str], record_id: str, attempt: int, worktree: Path,
                   timings: Timings,
                   progress: Callable[[list[CheckResult]], None] | None = None,
                   ) -> tuple[list[CheckResult], Failed | Retry | None]:
        """Run the named checks in order until one fails; their output goes to
        ``record_id``'s artifacts. Returns the results and why they failed (None: green)."""
        # A check that kills hyperion must find its request marked running, so that the
        # attempt counts as a crash (records.py: the mark may be written behind).
        self.app.records.settle(record_id)
        results: list[CheckResult] = []
        for name in names:
            check = self.app.config.checks.get(name)
            if check is None:
                return results, Failed(Code.CHECK_NOT_ALLOWED, f"the check {name!r} is no "
                                       "longer defined in the configuration", path="checks")
            artifact = f"check-{name}-attempt{attempt}.log"
            result = run_command(check.run, cwd=worktree, timeout_s=check.timeout_s,
                                 output_path=self.app.artifacts_dir(record_id) / artifact,
                                 env=scrubbed_env(check.env),
                                 limits=check.limits.as_rlimits() if check.limits else None)
            timings.add(f"check:{name}", result.duration_s)
            results.append(CheckResult(
                name=name, ok=result.ok, exit_code=result.exit_code, timed_out=result.timed_out,
                seconds=round(result.duration_s, 3), artifact=artifact, tail=result.tail[-2000:]))
            if progress is not None:
                progress(results)
            if result.aborted:
                return results, Retry(ErrorInfo(
                    code=Code.INTERNAL_ERROR, message="hyperion was stopped while the check "
                    f"{name!r} ran; the request is requeued"), delay_s=0)
            if result.timed_out:
                return results, Failed(Code.TIMEOUT, f"the check {name!r} ran past its limit "
                                       f"of {check.timeout_s:g} s and was stopped; see "
                                       f"{artifact}", path=f"checks.{name}")
            if result.start_error is not None:
                return results, Failed(Code.CHECK_FAILED, f"the check {name!r} could not start "
                                       f"({result.start_error}); fix its `run` in the "
                                       "configuration", path=f"checks.{name}")
            if not result.ok:
                return results, Failed(Code.CHECK_FAILED, f"the check {name!r} failed with "
                                       f"exit code {result.exit_code}; its output is in "
                                       f"{artifact}", path=f"checks.{name}")
        return results, None

    # ------------------------------------------------------------------ outcomes
    def _save_artifact(self, record_id: str, name: str, text: str) -> None:
        directory = self.app.artifacts_dir(record_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")

    def _finish(self, beat: Heartbeat, record: Record, state: State, error: ErrorInfo | None,
                *, timings: Timings | None = None, **updates: object) -> None:
        lease = beat.stop()
        if error is not None:
            reason = error.summary()
        elif state is State.VERIFIED:
            reason = f"dry run: checks passed on {updates.get('result_commit')}, not landed"
        else:
            where = f" on {updates['landed_ref']}" if updates.get("landed_ref") else ""
            reason = f"landed as {updates.get('landed_commit')}{where}"
        if timings is not None and timings.steps:
            reason += f" ({timings.describe()})"
        final = self.app.records.transition(
            record.id, state, by=self.name, reason=reason, error=error,
            timings=timings.steps if timings is not None else None, **updates)
        try:
            if state in (State.LANDED, State.VERIFIED):
                self.app.spool.ack(lease)
            else:
                self.app.spool.bury(lease, error.summary() if error else state.value)
        except LeaseLost:
            log.warning("lease of %s was lost before it could be closed", record.id,
                        extra={"request_id": record.id})
        log.info("%s %s", record.id, state.value, extra={"request_id": record.id})
        self.app.reporter.outcome(final)
        if state is State.LANDED:
            settle_rollback(self.app, final)
        settle_dependents(self.app, final)

    def _retry(self, beat: Heartbeat, record: Record, info: ErrorInfo,
               delay_s: float | None, *, race: bool = False,
               timings: Timings | None = None) -> None:
        lease = beat.stop()
        races = record.races + (1 if race else 0)
        # Attempts that failed for a reason worth a retry: not crashes, not lost races.
        # Not leases a task gave back to wait for its harness's limits (``waits``) either.
        tries = lease.attempts + 1 - record.crashes - races - record.waits
        if race and races >= MAX_RACES:
            self._finish(beat, record, State.FAILED, info.model_copy(update={
                "message": f"{info.message}, {races} times in a row: the target moves faster "
                "than this request's checks run"}), races=races, timings=timings)
            return
        if not race and tries >= self.app.config.max_attempts:
            self._finish(beat, record, State.FAILED, info.model_copy(update={
                "message": f"{info.message} (gave up after {tries} attempts)"}),
                timings=timings)
            return
        # Grows with the failed tries only: restarts of the daemon must not stretch it.
        delay = backoff(max(0, tries - 1)) if delay_s is None else delay_s
        self.app.records.transition(record.id, State.QUEUED, by=self.name,
                                    reason=f"{info.summary()}; retrying in {delay:.1f} s",
                                    error=info, races=races,
                                    timings=timings.steps if timings is not None else None)
        try:
            self.app.spool.retry(lease, delay, info.summary())
        except LeaseLost:
            log.warning("lease of %s was lost before the retry", record.id,
                        extra={"request_id": record.id})
