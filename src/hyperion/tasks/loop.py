"""The task loop: run the harness, judge and check what it made, land it or feed back, repeat.

The worker hands a leased task here (:func:`run_task`). One attempt:

1. take a slot of the harness (WIP limit) and count a start (rate limit); when either is used
   up the lease goes back to the spool with a delay, spending no attempt;
2. make a worktree at the target's tip (or, resuming, restore the last iteration's commit);
3. for each iteration: run the harness there (argv, scrubbed env, timeout, process group);
   commit the worktree's files on the tip (``gitops.snapshot``), take the diff as a change
   request (``task_id`` set, agent = the harness, scope = the task's ``file_targets``) and run
   the gate on it: a refusal ends the task with its code. Then the checks: green lands (the
   worker's compare-and-swap, ``Hyperion-Request: <task id>`` trailer); red writes the failing
   output's tail (redacted) to the feedback file and goes again, unless the failure is the
   same, normalised, as the previous iteration's (``stuck``).

Every finished iteration is in the record (``iterations``) before the next starts, with its
commit, so a hyperion killed mid-task resumes with the next iteration on the same files (or,
if the target moved, on those files carried onto the new tip). Landing is exactly once: the
trailer is looked up on the target before anything else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hyperion import landing, worktrees
from hyperion.config import HarnessConfig
from hyperion.errors import Code, ErrorInfo, GateError
from hyperion.fsutil import write_atomic
from hyperion.gate.patch import FilePatch, Operation, parse_patch
from hyperion.gate.policy import Action
from hyperion.gate.review import policy_at
from hyperion.gate.secrets import redact
from hyperion.gate.tree import check_against_tree
from hyperion.gate.verdict import judge
from hyperion.gitops import GitError, GitRepo, author_identity, commit_message
from hyperion.metrics import METRICS
from hyperion.records import CheckResult, Record, State, TaskIteration
from hyperion.requests import ChangeEntry, ChangeRequest, TaskRequest
from hyperion.spool import LeaseLost
from hyperion.tasks.failure import failure_fingerprint
from hyperion.tasks.harness import HarnessEnvError, RunFiles, kill_leftovers, run_harness
from hyperion.tasks.limits import reserve_start, take_slot
from hyperion.worker import Failed, Retry

if TYPE_CHECKING:
    from hyperion.heartbeat import Heartbeat
    from hyperion.spool import Lease
    from hyperion.worker import Worker

log = logging.getLogger("hyperion.tasks")

#: How often a task waiting for a free slot of its harness looks again.
SLOT_POLL_S = 5.0
#: The end of a failing output that goes into the feedback file.
FEEDBACK_OUTPUT_BYTES = 16 * 1024
#: The end of the feedback kept in the record (and so in notifications).
FEEDBACK_TAIL_CHARS = 2000
FEEDBACK_FILE = "feedback.txt"


class Hold(Exception):
    """A green iteration whose change the policy wants a person to approve."""

    def __init__(self, reason: str, rules: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rules = rules


def run_task(worker: Worker, lease: Lease, beat: Heartbeat, record: Record,
             crashes: int) -> None:
    """Take a leased task to its next resting state (the worker's seam for ``kind: task``)."""
    app = worker.app
    try:
        task = TaskRequest.model_validate_json(lease.payload)
    except ValueError:
        worker._finish(beat, record, State.FAILED, ErrorInfo(
            code=Code.INTERNAL_ERROR, message="the queued task could not be read back; its "
            "original is kept with the record"), crashes=crashes)
        return
    harness = app.config.harnesses.get(task.harness)
    if harness is None:
        worker._finish(beat, record, State.FAILED, ErrorInfo(
            code=Code.POLICY_DENIED, path="harness", message=f"the harness {task.harness!r} is "
            "no longer configured; add it back under `harnesses`, then `hyperion requeue` "
            "the task"), crashes=crashes)
        return
    task_dir = app.artifacts_dir(record.id)
    if record.state is State.RUNNING:
        # hyperion died mid-iteration: its harness may still be running, on a worktree that
        # start-up removed. It must not go on writing (or spending) beside the next run.
        killed = kill_leftovers(task_dir / "task.json")
        if killed:
            log.warning("%s: killed %d harness process group(s) left by a stopped hyperion",
                        record.id, killed, extra={"request_id": record.id})
    slot = take_slot(app.locks_dir(), task.harness, harness.max_concurrent)
    if slot is None:
        _wait(worker, beat, record, crashes, SLOT_POLL_S,
              f"waiting: the harness {task.harness!r} runs {harness.max_concurrent} task(s) "
              "already (max_concurrent)")
        return
    try:
        delay = reserve_start(app.locks_dir(), task.harness, harness.max_starts_per_hour)
        if delay is not None:
            _wait(worker, beat, record, crashes, delay,
                  f"waiting: the harness {task.harness!r} started {harness.max_starts_per_hour}"
                  " task(s) in the last hour (max_starts_per_hour)")
            return
        died = " (the previous attempt's process died)" if record.state is State.RUNNING else ""
        attempt = lease.attempts + 1 - record.waits
        record = app.records.transition(
            record.id, State.RUNNING, by=worker.name,
            reason=f"attempt {attempt}{died}: harness {task.harness}",
            attempts=attempt, crashes=crashes, error=None)
        _attempt(worker, beat, record, task, harness)
    finally:
        slot.release()


def _wait(worker: Worker, beat: Heartbeat, record: Record, crashes: int, delay_s: float,
          why: str) -> None:
    """Give the lease back for ``delay_s`` without spending an attempt (``waits`` + 1)."""
    app = worker.app
    lease = beat.stop()
    if record.state is State.RUNNING:
        app.records.transition(record.id, State.QUEUED, by=worker.name, reason=why,
                               waits=record.waits + 1, crashes=crashes)
    else:
        app.records.update(record.id, waits=record.waits + 1, crashes=crashes)
    if record.waits == 0:
        log.info("%s %s", record.id, why, extra={"request_id": record.id})
    try:
        app.spool.retry(lease, delay_s, why)
    except LeaseLost:
        log.warning("lease of %s was lost before it could wait", record.id,
                    extra={"request_id": record.id})


def _attempt(worker: Worker, beat: Heartbeat, record: Record, task: TaskRequest,
             harness: HarnessConfig) -> None:
    app = worker.app
    try:
        landed = TaskLoop(worker, record, task, harness).run()
    except Failed as exc:
        worker._finish(beat, app.records.get(record.id) or record, State.FAILED, exc.info)
    except Hold as exc:
        _hold(worker, beat, record, exc)
    except Retry as exc:
        worker._retry(beat, app.records.get(record.id) or record, exc.info, exc.delay_s,
                      race=exc.race)
    except (GitError, OSError) as exc:
        worker._retry(beat, app.records.get(record.id) or record, ErrorInfo(
            code=Code.INTERNAL_ERROR,
            message=f"hyperion hit an error it did not expect ({type(exc).__name__}: "
            f"{redact(str(exc))[:300]}); the task is kept"), None)
    except Exception as exc:
        log.exception("internal error on %s", record.id, extra={"request_id": record.id})
        worker._retry(beat, app.records.get(record.id) or record, ErrorInfo(
            code=Code.INTERNAL_ERROR, message=f"a bug in hyperion ({type(exc).__name__}); "
            "the task is kept and will be retried"), None)
    else:
        current = app.records.get(record.id) or record
        worker._finish(beat, current, State.LANDED, None, landed_commit=landed)


def _hold(worker: Worker, beat: Heartbeat, record: Record, hold: Hold) -> None:
    """Park the task for a person's decision: its spool item goes to dead/ (approve requeues
    it; deny rejects the record), the record to held, with the usual notification."""
    app = worker.app
    lease = beat.stop()
    try:
        app.spool.bury(lease, f"held for approval: {hold.reason}")
    except LeaseLost:
        log.warning("lease of %s was lost before it could be held", record.id,
                    extra={"request_id": record.id})
    held = app.records.transition(record.id, State.HELD, by=worker.name, policy_rules=hold.rules,
                                  reason=f"held for approval: {hold.reason}")
    log.info("%s held for approval", record.id, extra={"request_id": record.id})
    app.reporter.outcome(held)


class TaskLoop:
    """One attempt at a task: its iterations, from where the record says it is."""

    def __init__(self, worker: Worker, record: Record, task: TaskRequest,
                 harness: HarnessConfig) -> None:
        self.worker = worker
        self.app = worker.app
        self.record = record
        self.task = task
        self.harness = harness
        self.name = task.harness
        self.iterations = list(record.iterations)
        self.dir = self.app.artifacts_dir(record.id)
        self.task_file = self.dir / "task.json"
        self.instructions_file = self.dir / "instructions.md"
        self.feedback_file = self.dir / FEEDBACK_FILE
        # Resumed after `hyperion approve`: the held change (exactly that diff) is approved.
        last = self.iterations[-1] if self.iterations else None
        self.approved = last.approval if last is not None and last.outcome == "held" else None
        spent = sum(i.seconds for i in self.iterations)
        self.deadline = time.monotonic() + task.timeout_s - spent
        self.worktree = Path()
        self.scratch = Path()
        self.lander: landing.Lander   # set by run(), which all other steps come after

    # ------------------------------------------------------------------ the attempt
    def run(self) -> str:
        """The landed commit, or Failed / Retry."""
        record = self.record
        assert record.repo is not None and record.target is not None
        repo_config = self.app.config.repos.get(record.repo)
        if repo_config is None:
            raise Failed(Code.LAND_CONFLICT, f"the repo {record.repo!r} is no longer configured")
        repo = GitRepo.at(repo_config.path)
        self.lander = landing.for_repo(self.app, record.repo, repo_config, repo)
        tip = self.lander.tip(record.target)
        if tip is None:
            raise Failed(Code.LAND_CONFLICT, f"the target branch {record.target!r} does not "
                         f"exist in {self.lander.where}", path="target")
        earlier = self.lander.already_landed(record, tip)
        if earlier is not None:
            log.info("%s had already landed as %s before a restart", record.id, earlier,
                     extra={"request_id": record.id})
            return earlier
        self._write_task_files()
        # The pid in the name lets a later start-up remove what a killed process left behind.
        self.worktree = (self.app.worktrees_dir() /
                         f"{record.id}~{os.getpid()}~{secrets.token_hex(3)}")
        # Raw harness output waits here for redaction; start-up prunes it with the worktree.
        self.scratch = self.worktree.with_name(self.worktree.name + ".run")
        self.scratch.mkdir(parents=True, exist_ok=True)
        worktrees.add_worktree(self.app.locks_dir(), record.repo, repo, self.worktree, tip)
        try:
            return self._iterate(repo, tip)
        finally:
            worktrees.remove_worktree(self.app.locks_dir(), record.repo, repo, self.worktree)
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _iterate(self, repo: GitRepo, tip: str) -> str:
        dotgit = _dotgit(self.worktree)
        last = self.iterations[-1] if self.iterations else None
        if last is not None:
            restored = self._restore(repo, tip, last)
            if restored is not None and last.outcome in ("green", "held"):
                # Its checks passed but it did not land (the target moved, hyperion died
                # while landing, or it waited for approval): check it again where it is now,
                # without the harness.
                landed = self._evaluate(repo, tip, restored, last, time.monotonic() -
                                        last.seconds)
                if landed is not None:
                    return landed
        for number in range(len(self.iterations) + 1, self.task.max_iterations + 1):
            landed = self._one(repo, tip, dotgit, number)
            if landed is not None:
                return landed
        last = self.iterations[-1]
        raise Failed(Code.CHECK_FAILED, f"none of the {self.task.max_iterations} iteration(s) "
                     f"passed (the last one: {last.outcome}); the last feedback is in "
                     f"{last.feedback or FEEDBACK_FILE}", path="max_iterations")

    def _one(self, repo: GitRepo, tip: str, dotgit: bytes | None, number: int) -> str | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Failed(Code.TIMEOUT, f"the task used its whole time budget of "
                         f"{self.task.timeout_s} s before iteration {number}", path="timeout_s")
        timeout = min(self.harness.timeout_s, float(self.task.timeout_s), remaining)
        transcript = f"iteration-{number}-transcript.log"
        files = RunFiles(task_file=self.task_file, instructions_file=self.instructions_file,
                         feedback_file=self.feedback_file, worktree=self.worktree,
                         iteration=number,
                         has_feedback=number > 1 and _size(self.feedback_file) > 0)
        started = time.monotonic()
        log.info("%s: iteration %d: running the harness %s", self.record.id, number, self.name,
                 extra={"request_id": self.record.id})
        try:
            result = run_harness(self.harness, files, self.name, timeout_s=timeout,
                                 transcript=self.dir / transcript,
                                 raw=self.scratch / "transcript.raw")
        except HarnessEnvError as exc:
            raise Retry(ErrorInfo(code=Code.INTERNAL_ERROR, path=f"harnesses.{self.name}.env",
                                  message=f"{exc}; set it for hyperion, or change the "
                                  "harness's env")) from None
        METRICS.observe("hyperion_stage_seconds", result.duration_s, stage="harness")
        if result.aborted:
            raise Retry(ErrorInfo(code=Code.INTERNAL_ERROR, message="hyperion was stopped "
                                  f"while the harness ran; the task resumes with iteration "
                                  f"{number}"), delay_s=0)
        if result.start_error is not None:
            raise Retry(ErrorInfo(code=Code.INTERNAL_ERROR, path=f"harnesses.{self.name}.run",
                                  message=f"the harness {self.name!r} could not start "
                                  f"({result.start_error}); fix its `run` in the "
                                  "configuration"))
        entry = TaskIteration(number=number, outcome="running", seconds=0.0,
                              transcript=transcript, harness_exit=result.exit_code)
        if result.timed_out:
            self._record(entry.model_copy(update={
                "outcome": "timeout", "seconds": round(time.monotonic() - started, 3)}))
            raise Failed(Code.TIMEOUT, f"the harness {self.name!r} ran past its limit of "
                         f"{timeout:g} s in iteration {number} and its process group was "
                         f"killed; see {transcript}", path=f"harnesses.{self.name}.timeout_s")
        if _dotgit(self.worktree) != dotgit:
            self._record(entry.model_copy(update={
                "outcome": Code.PATH_TRAVERSAL.value,
                "seconds": round(time.monotonic() - started, 3)}))
            raise Failed(Code.PATH_TRAVERSAL, f"the harness replaced the worktree's .git in "
                         f"iteration {number}, so what it made cannot be trusted", path=".git")
        commit = repo.snapshot(self.worktree, tip, self._message(number),
                               author_identity(self.name))
        if result.exit_code != 0:
            text = (f"Iteration {number}: the harness exited with status {result.exit_code}, "
                    "so its changes were not checked.\nThe end of its output:\n"
                    f"{_tail(self.dir / transcript)}")
            self._red(entry, "harness_failed", text, tip, commit, started)
            return None
        return self._evaluate(repo, tip, commit, entry, started)

    # ------------------------------------------------------------------ judging one result
    def _evaluate(self, repo: GitRepo, tip: str, commit: str, entry: TaskIteration,
                  started: float) -> str | None:
        """Gate, checks, land: the landed commit, None after a red iteration, or Failed."""
        number = entry.number
        patch = repo.diff_text(tip, commit)
        if not patch:
            self._red(entry, "no_changes", f"Iteration {number}: the harness changed no "
                      "file, so there was nothing to check.", tip, commit, started)
            return None
        try:
            files = parse_patch(patch)
            request = self._change(patch, files, number)
            # The same gate as a change: the target tip's policy when the repo names one,
            # and the harness's links and submodules against the tree they land on.
            assert self.record.repo is not None and self.record.target is not None
            policy = policy_at(self.app.config, self.app.policy, self.record.repo, repo, tip,
                               self.record.target)
            verdict = judge(request, self.app.config, policy)
            check_against_tree(repo, tip, files, allow_submodules=policy.allow_submodules)
        except GateError as exc:
            self._refused(entry, exc.info, started, tip, commit, patch)
        digest = hashlib.sha256(patch.encode(errors="surrogateescape")).hexdigest()
        approval = verdict.decision.action is Action.REQUIRE_APPROVAL and \
            digest != self.approved
        stats = {"files": len(files), "added": sum(f.added_lines for f in files),
                 "removed": sum(f.removed_lines for f in files)}
        diff_name = f"iteration-{number}.diff"
        self._save(diff_name, redact(patch))
        if self.record.applied_onto is None:
            self.record = self.app.records.update(self.record.id, applied_onto=tip,
                                                  base_commit=tip)
        entry = entry.model_copy(update={"commit": commit, "onto": tip, "diff": diff_name,
                                         **stats})
        red = self._checks(request, number)
        self._reset(repo, commit)   # nothing the checks left stays
        if red is not None:
            self._red(entry, "check_failed", red, tip, commit, started)
            return None
        if approval:
            self._record(entry.model_copy(update={
                "outcome": "held", "approval": digest,
                "seconds": round(time.monotonic() - started, 3)}))
            raise Hold(f"iteration {number} passed its checks, and {verdict.decision.reason}",
                       list(verdict.decision.rules))
        self._record(entry.model_copy(update={
            "outcome": "green", "seconds": round(time.monotonic() - started, 3)}))
        assert self.record.target is not None
        self.lander.land(self.record, self.record.target, commit, tip)
        return commit

    def _checks(self, request: ChangeRequest, number: int) -> str | None:
        """Run the task's checks with the worker's runner: None when green, else the feedback.
        A check that cannot run at all (undefined, cannot start) ends the task."""
        record = self.app.records.get(self.record.id) or self.record
        green: list[CheckResult] | None = None
        try:
            green = self.worker._run_checks(request, record, self.worktree)
            failure: Failed | None = None
        except Failed as exc:
            failure = exc     # its results were recorded with it
        results = self._rename_check_artifacts(number, green)
        if failure is None:
            return None
        bad = results[-1] if results else None
        if bad is None or failure.info.code not in (Code.CHECK_FAILED, Code.TIMEOUT) or \
                (bad.exit_code is None and not bad.timed_out):
            raise failure
        why = ("ran past its limit and was stopped" if bad.timed_out
               else f"failed with exit code {bad.exit_code}")
        return (f"Iteration {number}: the check {bad.name!r} {why}.\n"
                f"The end of its output:\n{_tail(self.dir / bad.artifact)}")

    def _rename_check_artifacts(self, number: int,
                                checks: list[CheckResult] | None) -> list[CheckResult]:
        """The worker names check output per attempt; a task has several iterations in one.
        ``checks``: the results, else those recorded."""
        if checks is None:
            checks = (self.app.records.get(self.record.id) or self.record).checks
        renamed = []
        for check in checks:
            name = f"iteration-{number}-check-{check.name}.log"
            source = self.dir / check.artifact
            if source.exists() and check.artifact != name:
                os.replace(source, self.dir / name)
            renamed.append(check.model_copy(update={"artifact": name}))
        self.app.records.update(self.record.id, checks=renamed)
        return renamed

    def _refused(self, entry: TaskIteration, info: ErrorInfo, started: float, tip: str,
                 commit: str, patch: str) -> NoReturn:
        """The gate refused what the harness made: the task ends with the gate's code."""
        diff = None
        if info.code is not Code.SECRET_DETECTED:   # the diff holds the secret: never saved
            diff = f"iteration-{entry.number}.diff"
            self._save(diff, redact(patch))
        self._record(entry.model_copy(update={
            "outcome": info.code.value, "seconds": round(time.monotonic() - started, 3),
            "onto": tip, "diff": diff}))
        # The checks of an earlier iteration do not explain this ending (nor its notification).
        self.record = self.app.records.update(self.record.id, checks=[])
        failed = Failed(info.code, f"iteration {entry.number}: {info.message}", path=info.path)
        failed.info = failed.info.model_copy(update={"detail": info.detail})
        raise failed

    def _red(self, entry: TaskIteration, outcome: str, text: str, tip: str, commit: str,
             started: float) -> None:
        """A failed iteration: feedback for the next one, and stop when stuck."""
        feedback = redact(text)
        name = f"iteration-{entry.number}-feedback.txt"
        self._save(name, feedback)
        paths = [str(self.worktree), str(self.app.config.state_dir)]
        entry = entry.model_copy(update={
            "outcome": outcome, "seconds": round(time.monotonic() - started, 3),
            "commit": commit, "onto": tip, "feedback": name,
            "feedback_tail": feedback[-FEEDBACK_TAIL_CHARS:],
            "failure": failure_fingerprint(outcome, text, paths)})
        previous = next((i for i in reversed(self.iterations) if i.number < entry.number), None)
        self._record(entry)
        write_atomic(self.feedback_file, feedback.encode())
        log.info("%s: iteration %d: %s", self.record.id, entry.number, outcome,
                 extra={"request_id": self.record.id})
        if previous is not None and previous.failure == entry.failure:
            raise Failed(Code.STUCK, f"iterations {previous.number} and {entry.number} failed "
                         f"the same way ({outcome}), so the task stopped instead of using "
                         f"the remaining iterations; the last feedback is in {name}",
                         path="max_iterations")

    # ------------------------------------------------------------------ state
    def _reset(self, repo: GitRepo, commit: str) -> None:
        """The worktree back to exactly ``commit``, guarded like a pooled one (a check or the
        harness ran code in it); a worktree that cannot be trusted ends the attempt, and the
        next one resumes in a fresh worktree."""
        problem = repo.worktree_reset(self.worktree, commit)
        if problem is not None:
            raise Retry(ErrorInfo(code=Code.INTERNAL_ERROR, message=f"the task's worktree "
                                  f"could not be reset ({problem}); the task resumes in a "
                                  "fresh one"), delay_s=0)

    def _restore(self, repo: GitRepo, tip: str, last: TaskIteration) -> str | None:
        """Resuming: put the last iteration's files in the fresh worktree. Returns the commit
        they are now (on ``tip``), or None when they could not be brought back."""
        if last.feedback is not None and (self.dir / last.feedback).exists():
            os.replace(self._copy(last.feedback), self.feedback_file)
        if last.commit is None or last.onto is None or repo.resolve(last.commit) is None:
            return None
        if last.onto == tip:
            self._reset(repo, last.commit)
            return last.commit
        if repo.carry(self.worktree, last.onto, last.commit):
            return repo.snapshot(self.worktree, tip, self._message(last.number),
                                 author_identity(self.name))
        note = (f"\n\nNote: {self.record.target} moved since iteration {last.number}, and "
                "the changes made so far no longer apply to it: they were dropped. Start "
                "again from the current files.\n")
        with open(self.feedback_file, "a", encoding="utf-8") as f:
            f.write(note)
        return None

    def _record(self, entry: TaskIteration) -> None:
        self.iterations = [i for i in self.iterations if i.number != entry.number] + [entry]
        self.record = self.app.records.update(self.record.id, iterations=self.iterations)

    def _write_task_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.task_file, self.task.model_dump_json(indent=2).encode(),
                     sync_dir=False)
        write_atomic(self.instructions_file, self.task.instructions.encode(), sync_dir=False)
        if not self.iterations or not self.feedback_file.exists():
            write_atomic(self.feedback_file, b"", sync_dir=False)

    def _save(self, name: str, text: str) -> None:
        write_atomic(self.dir / name, text.encode("utf-8", errors="replace"), sync_dir=False)

    def _copy(self, name: str) -> Path:
        tmp = self.dir / f".{FEEDBACK_FILE}.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes((self.dir / name).read_bytes())
        return tmp

    def _message(self, number: int) -> str:
        body = (f"Task {self.task.id}, requested by {self.task.requested_by}, carried out by "
                f"the harness {self.name} (iteration {number}).")
        return commit_message(self.task.title, body, self.task.id)

    def _change(self, patch: str, files: list[FilePatch], number: int) -> ChangeRequest:
        changes = [ChangeEntry(path=f.path, operation=f.operation.value,
                               from_=f.old_path if f.operation is Operation.RENAME else None)
                   for f in files]
        return ChangeRequest(
            kind="change", version=1, id=self.task.id, agent=self.name, repo=self.record.repo,
            target=self.record.target, title=self.task.title,
            body=f"iteration {number} of task {self.task.id}", patch=patch, changes=changes,
            file_targets=self.task.file_targets, checks=self.task.checks,
            priority=self.task.priority, task_id=self.task.id)


def _dotgit(worktree: Path) -> bytes | None:
    try:
        return (worktree / ".git").read_bytes()
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path) -> str:
    """The end of an output file (at most FEEDBACK_OUTPUT_BYTES), as text."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - FEEDBACK_OUTPUT_BYTES))
            data = f.read()
    except OSError:
        return "(no output was saved)"
    text = data.decode("utf-8", errors="replace")
    return ("[...]\n" if size > FEEDBACK_OUTPUT_BYTES else "") + text
