"""Results as git notes: one JSON line per outcome, on the landed commit and on the commit a git
request came from (its inbox commit, or the commit its note annotates).

A line is ``{id, state, error, base, applied_onto, landed, checks: [{name, ok, seconds}], at}``;
a note holds one line per outcome, so ``git notes merge -s cat_sort_uniq`` unions two copies.
Writing goes through a durable outbox (state_dir/notes/, a :class:`Spool` keyed one item per
record state), like notifications: a note is not lost when the process dies right after the
terminal state, and a repository that cannot be written is retried with backoff. Writing the
same line twice adds nothing (gitops.add_notes skips lines already present), so the catch-up at
start-up (Reporter.outcome of recent records) is harmless.

Notes are written in batches: each pass leases up to BATCH_MAX ready items and writes their
lines as one notes commit per (repository, results ref), with a fixed number of git processes
however many notes it holds (gitops.add_notes: the changed folders of the notes tree only,
then a compare-and-swap of the ref), and one GitRepo per repository. An item is acknowledged
once the commits holding its lines have landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import time

from pydantic import BaseModel

from hyperion.config import Config
from hyperion.gate.secrets import redact
from hyperion.gitops import GitError, GitRepo
from hyperion.records import TERMINAL, Record
from hyperion.spool import Lease, LeaseLost, Spool, lease_parsed

log = logging.getLogger("hyperion.report.notes")

RETRY_MIN_S = 2.0
RETRY_MAX_S = 600.0
SWEEP_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0
BATCH_MAX = 500      # outbox items written per notes commit
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{40}(?:[0-9a-fA-F]{24})?")


class NoteTarget(BaseModel):
    repo: str
    commit: str


class PendingNote(BaseModel):
    request_id: str
    line: str
    targets: list[NoteTarget]
    created_at: float


def note_line(record: Record) -> str:
    error = None
    if record.error is not None:
        error = {"code": record.error.code.value, "message": redact(record.error.message),
                 "path": record.error.path}
    return json.dumps({
        "id": record.id, "state": record.state.value, "error": error,
        "base": record.base_commit or record.base, "applied_onto": record.applied_onto,
        "landed": record.landed_commit,
        "checks": [{"name": c.name, "ok": c.ok, "seconds": c.seconds} for c in record.checks],
        "at": record.updated_at,
    }, separators=(",", ":"))


def note_targets(config: Config, record: Record) -> list[NoteTarget]:
    """The commits that get this record's line: where it came from, and where it landed."""
    out = []
    source = record.source
    if source.commit is not None and source.repo is not None:
        repo = config.repos.get(source.repo)
        if repo is not None and repo.results_ref is not None:
            out.append(NoteTarget(repo=source.repo, commit=source.commit))
    if record.landed_commit is not None and record.repo is not None:
        repo = config.repos.get(record.repo)
        if repo is not None and repo.results_ref is not None:
            out.append(NoteTarget(repo=record.repo, commit=record.landed_commit))
    return out


def _key(record: Record) -> str:
    rid = record.id if len(record.id) <= 80 else \
        f"{record.id[:60]}-{hashlib.sha256(record.id.encode()).hexdigest()[:12]}"
    return f"{rid}.{len(record.history)}.{record.state.value}"


class ResultNotes:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.outbox = Spool(config.state_dir / "notes")
        self._next_sweep = 0.0
        self._next_prune = 0.0

    def queue(self, record: Record) -> bool:
        """Queue the note lines of a terminal record; False when there is nothing to write or
        it was queued before."""
        if record.state not in TERMINAL:
            return False
        targets = note_targets(self.config, record)
        if not targets:
            return False
        pending = PendingNote(request_id=record.id, line=note_line(record), targets=targets,
                              created_at=time.time())
        return self.outbox.put(_key(record), pending.model_dump_json().encode())

    def deliver_ready(self, owner: str) -> int:
        """Write every note that is due; returns how many outcomes were written.

        Up to BATCH_MAX outbox items are leased at a time and their lines written as one
        notes commit per (repository, results ref): the git work of a pass does not grow with
        the number of notes (gitops.add_notes). An item is acknowledged once every notes
        commit it has lines in has landed; when a repository cannot be written, each item with
        lines there is retried with backoff (and buried once it is older than notify.expire_h),
        and its lines that did land elsewhere are written again harmlessly."""
        if time.monotonic() >= self._next_sweep:
            self.outbox.sweep()
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        if time.monotonic() >= self._next_prune:
            self.outbox.prune(self.config.retention_days * 86400)
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
        written = 0
        while True:
            batch = lease_parsed(self.outbox, owner, BATCH_MAX, PendingNote.model_validate_json,
                                 lambda lease: self._close(lease, ok=False, why="unreadable"))
            if not batch:
                return written
            usable = []
            for lease, pending in batch:
                if all(_OBJECT_ID.fullmatch(t.commit) for t in pending.targets):
                    usable.append((lease, pending))
                else:   # it would fail its whole group, every pass
                    self._close(lease, ok=False, why="a target commit is not an object id")
            written += self._write(usable)
            if len(batch) < BATCH_MAX:
                return written

    def _write(self, batch: list[tuple[Lease, PendingNote]]) -> int:
        """Write a batch as one notes commit per (repository, results ref); close each lease.
        Returns how many were acknowledged."""
        groups: dict[tuple[str, str], dict[str, list[str]]] = {}
        requests: dict[tuple[str, str], set[str]] = {}
        touched: list[set[tuple[str, str]]] = []      # per item: the groups its lines are in
        for _, pending in batch:
            keys = set()
            for target in pending.targets:
                repo = self.config.repos.get(target.repo)
                if repo is None or repo.results_ref is None:
                    continue   # unconfigured since: nothing to write to
                key = (target.repo, repo.results_ref)
                groups.setdefault(key, {}).setdefault(target.commit, []).append(pending.line)
                requests.setdefault(key, set()).add(pending.request_id)
                keys.add(key)
            touched.append(keys)
        failed: dict[tuple[str, str], Exception] = {}
        repos: dict[str, GitRepo | Exception] = {}    # one GitRepo per repository and pass
        for key, notes in groups.items():
            name, ref = key
            if name not in repos:
                try:
                    repos[name] = GitRepo.at(self.config.repos[name].path)
                except (GitError, OSError) as exc:
                    repos[name] = exc
            ids = requests[key]
            reason = f"hyperion: result of {next(iter(ids))}" if len(ids) == 1 else \
                f"hyperion: results of {len(ids)} requests"
            try:
                git_repo = repos[name]
                if isinstance(git_repo, Exception):
                    raise git_repo
                git_repo.add_notes(ref, notes, reason)
            except (GitError, OSError) as exc:
                failed[key] = exc
        written = 0
        for (lease, pending), keys in zip(batch, touched, strict=True):
            errors = [failed[key] for key in sorted(keys) if key in failed]
            if errors:
                self._retry(lease, pending, errors[0])
            else:
                self._close(lease, ok=True, why="")
                written += 1
        return written

    def _retry(self, lease: Lease, pending: PendingNote, exc: Exception) -> None:
        age = time.time() - pending.created_at
        if age > self.config.notify.expire_h * 3600:
            log.error("notes: giving up on the result note of %s after %.0f h: %s",
                      pending.request_id, age / 3600, exc,
                      extra={"request_id": pending.request_id})
            self._close(lease, ok=False, why="expired")
            return
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** lease.attempts)
        log.warning("notes: cannot write the result note of %s (%s); retrying",
                    pending.request_id, str(exc)[:300], extra={"request_id": pending.request_id})
        with contextlib.suppress(LeaseLost):
            self.outbox.retry(lease, delay * random.uniform(0.5, 1.0), str(exc)[:500])

    def _close(self, lease: Lease, *, ok: bool, why: str) -> None:
        try:
            if ok:
                self.outbox.ack(lease)
            else:
                self.outbox.bury(lease, why)
        except LeaseLost:
            log.warning("notes: lost the lease of %s", lease.id)
