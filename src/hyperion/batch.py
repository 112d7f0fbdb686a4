"""Batches: ready requests for one target applied in order, checked once, bisected when red.

Opt-in per repository (``batch: {max: N}``). The worker that leases a request of such a
repository leases up to N-1 more ready ones for the same target (worker.py ``_gather``), then:

1. applies them one on top of the other in one pooled worktree, each as its own commit; one
   that does not apply (or whose manifest hashes lie) fails alone;
2. runs the union of their checks once, on the last commit: the exact tree that will land;
3. green: lands the last commit with one compare-and-swap; every request lands as its own
   commit. Red: bisects the prefixes (a prefix's checks run on its last commit) to find the
   first request that turns them red; it fails alone, the green prefix before it lands, and
   the requests after it go round again on the new tip (so a second culprit is found too).

Crash safety is the single-request one: every member is ``running`` with its own lease and
heartbeat, and records the commit it was applied onto before any check runs, so a later
attempt finds by its trailer whatever landed.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from hyperion import landing
from hyperion.apply import ApplyConflict, apply_patch, render_report
from hyperion.errors import Code, ErrorInfo
from hyperion.gate.review import tree_refusal
from hyperion.gitops import GitRepo
from hyperion.intake.git_requests import landing_identity
from hyperion.outcome import Failed, Retry, Timings
from hyperion.pool import WorktreePool
from hyperion.records import CheckResult, Record, State

if TYPE_CHECKING:
    from hyperion.worker import Member, Worker

log = logging.getLogger("hyperion.batch")


class _Link:
    """A member applied in the chain, as the commit ``commit``."""

    def __init__(self, member: Member, commit: str) -> None:
        self.member = member
        self.commit = commit


class Batch:
    def __init__(self, worker: Worker, members: list[Member]) -> None:
        self.worker = worker
        self.app = worker.app
        self.members = members
        self.open = {m.record.id for m in members}
        self.timings = Timings()
        self.size = len(members)

    # ---------------------------------------------------------------- outcomes of members
    def _record(self, member: Member) -> Record:
        return self.app.records.get(member.record.id) or member.record

    def fail(self, member: Member, info: ErrorInfo, **updates: object) -> None:
        self.open.discard(member.record.id)
        self.worker._finish(member.beat, self._record(member), State.FAILED, info,
                            timings=self.timings, **updates)

    def retry(self, member: Member, info: ErrorInfo, delay_s: float | None, *,
              race: bool = False) -> None:
        self.open.discard(member.record.id)
        self.worker._retry(member.beat, self._record(member), info, delay_s, race=race,
                           timings=self.timings)

    def landed(self, member: Member, commit: str, ref: str | None,
               checks: list[CheckResult] | None = None) -> None:
        self.open.discard(member.record.id)
        updates: dict[str, object] = {"landed_commit": commit, "landed_ref": ref}
        if checks is not None:
            updates["checks"] = checks
        self.worker._finish(member.beat, self._record(member), State.LANDED, None,
                            timings=self.timings, **updates)

    # ---------------------------------------------------------------- the run
    def run(self) -> None:
        first = self.members[0].record
        assert first.repo is not None and first.target is not None
        try:
            repo_config = self.app.config.repos.get(first.repo)
            if repo_config is None:
                for m in self.members:
                    self.fail(m, ErrorInfo(code=Code.LAND_CONFLICT, message=f"the repo "
                                           f"{first.repo!r} is no longer configured"))
                return
            repo = GitRepo.at(repo_config.path)
            lander = landing.for_repo(self.app, first.repo, repo_config, repo)
            pending = list(self.members)
            while pending:
                pending = self._round(first.repo, repo, lander, first.target, pending)
        except Exception as exc:
            from hyperion.worker import unexpected

            for m in self.members:
                if m.record.id in self.open:
                    self.retry(m, unexpected(exc, m.record.id), None)

    def _round(self, repo_name: str, repo: GitRepo, lander: landing.Lander, target: str,
               pending: list[Member]) -> list[Member]:
        """One pass over ``pending``; returns the members to take round again."""
        with ExitStack() as stack:
            with self.timings.step("prepare"):
                tip = lander.tip(target)
                if tip is None:
                    for m in pending:
                        self.fail(m, ErrorInfo(code=Code.LAND_CONFLICT, path="target",
                                               message=f"the target branch {target!r} does "
                                               f"not exist in {lander.where}"))
                    return []
                for m in pending:
                    earlier = lander.already_landed(m.record, tip)
                    if earlier is not None:
                        self.landed(m, earlier, lander.landed_ref(m.record))
                pending = [m for m in pending if m.record.id in self.open]
                if not pending:
                    return []
                pool = WorktreePool(self.app.worktrees_dir(), self.app.locks_dir())
                worktree = stack.enter_context(pool.checkout(repo_name, repo, tip))
            with self.timings.step("apply"):
                chain = self._apply_all(repo, worktree, target, tip, pending)
            if not chain:
                return []
            return self._check_and_land(repo, worktree, lander, target, tip, chain)

    def _apply_all(self, repo: GitRepo, worktree: Path, target: str, tip: str,
                   pending: list[Member]) -> list[_Link]:
        chain: list[_Link] = []
        parent = tip
        for m in pending:
            request = m.request
            assert request.patch is not None
            base_commit = repo.resolve(request.base) if request.base else parent
            if base_commit is None:
                self.fail(m, ErrorInfo(code=Code.APPLY_CONFLICT, path="base", message=(
                    f"the base {request.base!r} is not a commit in the repository")))
                continue
            # The policy from the tip (never from changes not landed yet), the tree as the
            # members before this one leave it.
            refused = tree_refusal(self.app, m.record, repo, tip, request.patch)
            if refused is None and parent != tip:
                refused = tree_refusal(self.app, m.record, repo, parent, request.patch)
            if refused is not None:
                self.fail(m, ErrorInfo(code=refused.code, message=refused.message,
                                       path=refused.path))
                continue
            try:
                applied = apply_patch(repo, worktree, request.patch, tip=parent,
                                      base_commit=base_commit,
                                      want_own_tree=any(c.sha256 for c in request.changes))
                self.worker._check_hashes(request, worktree, repo, applied.own_tree)
            except ApplyConflict as exc:
                self.worker._save_artifact(m.record.id, "conflict-report.json", render_report(
                    m.record.id, target, request.base, exc.report))
                self.fail(m, ErrorInfo(code=Code.APPLY_CONFLICT, message=exc.message))
                continue
            except Failed as exc:
                self._reset(repo, worktree, parent)
                self.fail(m, exc.info)
                continue
            message, author, author_date = landing_identity(repo, m.record, request)
            commit = repo.commit(worktree, parent, message, author, author_date)
            self.app.records.update(m.record.id, applied_onto=parent, base_commit=base_commit,
                                    apply_method=applied.method)
            chain.append(_Link(m, commit))
            parent = commit
        return chain

    @staticmethod
    def _reset(repo: GitRepo, worktree: Path, commit: str) -> None:
        problem = repo.worktree_reset(worktree, commit)
        if problem is not None:
            raise RuntimeError(f"the batch worktree cannot be reset: {problem}")

    def _checks_of(self, chain: list[_Link]) -> list[str]:
        return list(dict.fromkeys(name for link in chain for name in link.member.request.checks))

    def _check(self, worktree: Path, prefix: list[_Link]
               ) -> tuple[list[CheckResult], Failed | Retry | None]:
        owner = prefix[-1].member.record
        return self.worker.run_checks(self._checks_of(prefix), owner.id, owner.attempts,
                                      worktree, self.timings)

    def _check_and_land(self, repo: GitRepo, worktree: Path, lander: landing.Lander,
                        target: str, tip: str, chain: list[_Link]) -> list[Member]:
        results, failure = self._check(worktree, chain)
        if isinstance(failure, Retry):
            for link in chain:
                self.retry(link.member, failure.info, failure.delay_s)
            return []
        if failure is None:
            self._land(lander, target, tip, chain, results)
            return []
        if len(chain) == 1:
            self.fail(chain[0].member, failure.info, checks=results)
            return []
        # Red: the first member whose prefix is red is the culprit. -1 (the tip) is green.
        good, bad = -1, len(chain) - 1
        bad_failure, bad_results = failure, results
        green_results: list[CheckResult] = []
        while bad - good > 1:
            mid = (good + bad) // 2
            self._reset(repo, worktree, chain[mid].commit)
            results, failure = self._check(worktree, chain[:mid + 1])
            if isinstance(failure, Retry):
                for link in chain:
                    self.retry(link.member, failure.info, failure.delay_s)
                return []
            if failure is None:
                good, green_results = mid, results
            else:
                bad, bad_failure, bad_results = mid, failure, results
        culprit = chain[bad]
        log.info("batch of %d: %s turns the checks red", len(chain), culprit.member.record.id,
                 extra={"request_id": culprit.member.record.id})
        self.fail(culprit.member, bad_failure.info.model_copy(update={
            "message": f"{bad_failure.info.message} (found by bisecting a batch of "
                       f"{len(chain)})"}), checks=bad_results)
        if good >= 0:
            self._land(lander, target, tip, chain[:good + 1], green_results)
        # What came after the culprit was checked on top of it: check it again without.
        return [link.member for link in chain[bad + 1:]]

    def _land(self, lander: landing.Lander, target: str, tip: str, chain: list[_Link],
              results: list[CheckResult]) -> None:
        last = chain[-1]
        try:
            with self.timings.step("land"):
                lander.land(last.member.record, target, last.commit, tip)
        except Retry as exc:
            for link in chain:
                self.retry(link.member, exc.info, exc.delay_s, race=exc.race)
            return
        except Failed as exc:
            for link in chain:
                self.fail(link.member, exc.info)
            return
        owner = last.member.record.id
        for link in chain:
            self._copy_check_logs(owner, link.member.record.id, results)
            self.landed(link.member, link.commit, lander.landed_ref(link.member.record),
                        checks=results)

    def _copy_check_logs(self, owner: str, record_id: str, results: list[CheckResult]) -> None:
        if owner == record_id:
            return
        source, dest = self.app.artifacts_dir(owner), self.app.artifacts_dir(record_id)
        dest.mkdir(parents=True, exist_ok=True)
        for result in results:
            try:
                shutil.copyfile(source / result.artifact, dest / result.artifact)
            except OSError:
                log.warning("could not copy %s to %s", result.artifact, record_id)


def run_batch(worker: Worker, members: list[Member]) -> None:
    Batch(worker, members).run()
