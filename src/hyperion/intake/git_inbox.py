"""The git sources: request files pushed under inbox/ on a branch, and request notes.

For each configured repo with ``git_inbox``: every request file under ``inbox/`` that a commit
on the inbox branch adds or changes since the commit processed last goes through accept(), the
same intake as the inbox folder, with the source recorded as repo + commit + path. Every note
under ``notes_ref`` that is new goes through accept() as the change request of the commit it
annotates (see git_requests). What was taken is remembered by blob id (git_state), so the same
blob is never taken twice and a rewritten branch history does not land anything again.

Watching: watchdog on the repository's refs/ folder and packed-refs (git updates a ref by
renaming ``X.lock`` to ``X``), plus a check every ``poll_s`` in case an event was missed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from hyperion.app import App
from hyperion.errors import Code, ErrorInfo
from hyperion.gitops import GitError, GitRepo
from hyperion.intake.accept import Outcome, accept, reject
from hyperion.intake.git_objects import GitObjects, PushedFile
from hyperion.intake.git_remote import (
    RemoteSync,
    deliver_and_push,
    fetch_all,
    remote_syncs,
    run_remote,
)
from hyperion.intake.git_requests import oversized, request_from_note
from hyperion.intake.git_state import GitInboxState
from hyperion.records import Source
from hyperion.requests import claimed_id

log = logging.getLogger("hyperion.intake.git")


class GitInbox:
    """One repository's git sources. ``check()`` takes whatever is new."""

    def __init__(self, app: App, repo: str) -> None:
        self.app = app
        self.repo = repo
        config = app.config.repos[repo]
        assert config.git_inbox is not None
        self.inbox = config.git_inbox
        self.git = GitRepo.at(config.path)
        self.state = GitInboxState(app.config.state_dir, repo)
        self._lock = threading.Lock()

    @property
    def git_dir(self) -> Path:
        return self.git.git_dir

    def check(self) -> list[Outcome]:
        with self._lock, GitObjects(self.git.git_dir) as objects:
            out: list[Outcome] = []
            if self.inbox.branch is not None:
                out += self._branch(objects, self.inbox.branch)
            if self.inbox.notes_ref is not None:
                out += self._notes(objects, self.inbox.notes_ref)
            return out

    # ---------------------------------------------------------------- inbox branch
    def _branch(self, objects: GitObjects, branch: str) -> list[Outcome]:
        tip = objects.ref(f"refs/heads/{branch}")
        last = self.state.last("branch")
        if tip is None or tip == last:
            return []
        out = []
        for pushed in objects.pushed_files(last, tip):
            if self.state.seen(pushed.blob):
                continue
            out.append(self._file(objects, pushed))
            self.state.mark(pushed.blob)
        self.state.set_last("branch", tip)
        return out

    def _file(self, objects: GitObjects, pushed: PushedFile) -> Outcome:
        source = Source(kind="git-inbox", name=f"{self.repo}:{pushed.commit[:12]}:{pushed.path}",
                        repo=self.repo, commit=pushed.commit, path=pushed.path)
        if pushed.symlink:
            info = ErrorInfo(code=Code.PATH_TRAVERSAL, path=pushed.path, message=(
                "inbox entries must be regular files, not symbolic links; commit the request "
                "file itself"))
            marker = f"{pushed.path} -> (not followed), blob {pushed.blob}\n".encode()
            return reject(self.app, marker, source, None, None, info, "git-inbox")
        large = oversized(self.git, pushed.blob, self.app.config)
        if large is not None:
            marker = f"{pushed.path}: blob {pushed.blob} (too large; not read)\n".encode()
            return reject(self.app, marker, source, None, None, large, "git-inbox")
        outcome = accept(self.app, objects.blob(pushed.blob), source, by="git-inbox")
        log.info("git inbox %s: %s from %s is %s", self.repo, outcome.id, pushed.path,
                 outcome.state.value, extra={"request_id": outcome.id})
        return outcome

    # ---------------------------------------------------------------- request notes
    def _notes(self, objects: GitObjects, ref: str) -> list[Outcome]:
        tip = objects.ref(ref)
        last = self.state.last("notes")
        if tip is None or tip == last:
            return []
        out = []
        for commit, blob in objects.new_notes(last, tip):
            key = f"{commit}-{blob}"
            if self.state.seen(key):
                continue
            out.append(self._note(objects, commit, blob, ref))
            self.state.mark(key)
        self.state.set_last("notes", tip)
        return out

    def _note(self, objects: GitObjects, commit: str, blob: str, ref: str) -> Outcome:
        source = Source(kind="git-note", name=f"{self.repo}:{commit[:12]}:{ref}@{blob[:12]}",
                        repo=self.repo, commit=commit, path=ref)
        large = oversized(self.git, blob, self.app.config)
        if large is not None:
            marker = f"note on {commit}: blob {blob} (too large; not read)\n".encode()
            return reject(self.app, marker, source, None, None, large, "git-note")
        note = objects.blob(blob)
        derived = request_from_note(self.git, self.repo, self.app.config, commit, note)
        claimed = claimed_id(derived.obj)    # only a well-formed id names a record file
        existing = self.app.records.get(claimed) if claimed is not None else None
        if existing is not None and existing.source == source:
            # This very note was taken before a crash kept the marker from being written: the
            # derived patch may differ now (the target moved), but it is the same request. (A
            # changed note with a used id goes on to accept(), which refuses it `duplicate`.)
            return Outcome(existing.id, existing.state, existing.error, repeated=True)
        if derived.error is not None:
            outcome = reject(self.app, derived.data, source, claimed, derived.obj,
                             derived.error, "git-note")
        else:
            outcome = accept(self.app, derived.data, source, by="git-note")
        log.info("git note %s: %s on %s is %s", self.repo, outcome.id, commit[:12],
                 outcome.state.value, extra={"request_id": outcome.id})
        return outcome


def git_inboxes(app: App) -> list[GitInbox]:
    """A source for every configured repo with ``git_inbox`` (a broken one is logged)."""
    out = []
    for name, config in app.config.repos.items():
        if config.git_inbox is None:
            continue
        try:
            out.append(GitInbox(app, name))
        except GitError as exc:
            log.error("git inbox %s: cannot open %s: %s", name, config.path, exc)
    return out


def check_all(sources: list[GitInbox]) -> list[Outcome]:
    out: list[Outcome] = []
    for source in sources:
        out += _safely(source)
    return out


def _safely(source: GitInbox) -> list[Outcome]:
    try:
        return source.check()
    except Exception:   # a bad push must never stop intake; the next check retries it
        log.exception("git inbox %s: check failed; it is retried at the next ref update or "
                      "poll", source.repo)
        return []


class GitWatcher:
    """Checks the git sources when their refs change, and every ``poll_s`` regardless."""

    def __init__(self, sources: list[GitInbox], *, app: App | None = None,
                 syncs: list[RemoteSync] | None = None) -> None:
        self.sources = sources
        self.app = app
        self.syncs = syncs or []
        self.events: queue.Queue[str] = queue.Queue()
        self._observer: Any = None

    def start(self) -> None:
        if not self.sources:
            return
        from watchdog.events import (
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        events = self.events
        # Only what a ref update does (X.lock renamed to X, a loose ref deleted): reading the
        # refs at each check opens them, and open events would trigger the next check.
        wanted = [FileMovedEvent, FileCreatedEvent, FileDeletedEvent]

        def handler_for(repo: str) -> Any:
            class Handler(FileSystemEventHandler):
                def on_any_event(self, event: Any) -> None:
                    if event.is_directory or event.event_type not in (
                            "moved", "created", "deleted"):
                        return
                    path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
                    if path.endswith(".lock"):
                        return
                    if "/refs/" in path or path.endswith("/packed-refs"):
                        events.put(repo)
            return Handler()

        self._observer = Observer()
        for source in self.sources:
            handler = handler_for(source.repo)
            refs = source.git_dir / "refs"
            refs.mkdir(exist_ok=True)
            self._observer.schedule(handler, str(refs), recursive=True, event_filter=wanted)
            self._observer.schedule(handler, str(source.git_dir), recursive=False,
                                    event_filter=wanted)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        """Stop watching; in remote mode, push the last results once more."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self.app is not None:
            deliver_and_push(self.app, self.syncs)

    def run(self, stop: threading.Event) -> None:
        """Check on events until ``stop`` is set (the git intake thread's body)."""
        by_name = {s.repo: s for s in self.sources}
        next_poll = {s.repo: time.monotonic() + s.inbox.poll_s for s in self.sources}
        while not stop.is_set():
            due = [name for name, at in next_poll.items() if at <= time.monotonic()]
            try:
                due.append(self.events.get(timeout=0.5))
                time.sleep(0.02)   # a push updates several refs: take them in one check
                while True:
                    due.append(self.events.get_nowait())
            except queue.Empty:
                pass
            for name in dict.fromkeys(due):
                source = by_name.get(name)
                if source is not None:
                    _safely(source)
                    next_poll[name] = time.monotonic() + source.inbox.poll_s


def start_git_intake(app: App,
                     stop: threading.Event) -> tuple[GitWatcher, list[threading.Thread]]:
    """Remote mode first (create and fetch the clones), then watch, then check: nothing
    pushed between the two is missed. Returns the watcher and its threads (not started):
    the git intake, and the remote fetch/push rounds."""
    syncs = remote_syncs(app)
    fetch_all(syncs)
    sources = git_inboxes(app)
    watcher = GitWatcher(sources, app=app, syncs=syncs)
    watcher.start()
    check_all(sources)
    return watcher, [
        threading.Thread(target=watcher.run, args=(stop,), name="git-intake", daemon=True),
        threading.Thread(target=run_remote, args=(app, syncs, stop), name="git-remote",
                         daemon=True)]


def take_git_once(app: App) -> list[RemoteSync]:
    """`run --once`: fetch (remote mode) and take what was pushed; returns the remote syncs
    for push_all() at the end."""
    syncs = remote_syncs(app)
    fetch_all(syncs)
    check_all(git_inboxes(app))
    return syncs
