"""Remote mode: a gate that is not on the git server keeps a bare clone in sync with it.

Every ``fetch_s``, for each repo with ``git_inbox.remote``:
- fetch: the server's branches into refs/hyperion/remote/heads/* (the annotated commits of
  request notes come with them), the inbox branch and the request notes ref onto their local
  names (forced: they are mirrors, and a rewritten inbox branch must come through), and the
  server's results ref into refs/hyperion/remote/results. A local branch the server moved
  ahead is fast-forwarded (compare-and-swap), so changes are applied onto what the server has.
- the local git sources then see the new refs like a push (git_inbox watches the local refs);
- push: every local branch that is ahead of the server's copy (what hyperion landed) and the
  results notes, in one atomic push whose every ref is a compare-and-swap on the server
  (--force-with-lease with the fetched value). A refused push is retried at the next round.

Not handled (logged): a branch the server moved while a landing was waiting to be pushed
(diverged); the landed commit stays local and the error names the branch. A results ref that
diverged on the server (another writer) is merged with `git notes merge -s cat_sort_uniq` by a
person; hyperion does not overwrite it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable

from hyperion.app import App
from hyperion.config import redact_url
from hyperion.gitops import GitError, GitRepo

log = logging.getLogger("hyperion.intake.remote")

MIRROR = "refs/hyperion/remote/heads/"
RESULTS_MIRROR = "refs/hyperion/remote/results"


class RemoteSync:
    def __init__(self, app: App, repo: str) -> None:
        self.app = app
        self.repo = repo
        config = app.config.repos[repo]
        assert config.git_inbox is not None and config.git_inbox.remote is not None
        self.url = config.git_inbox.remote
        self.inbox = config.git_inbox
        self.results_ref = config.results_ref
        if not config.path.exists():
            GitRepo.init_bare(config.path)
            log.info("remote mode %s: created the bare clone %s", repo, config.path)
        self.git = GitRepo.at(config.path)
        if not self.git.bare:
            raise GitError(["init"], 1, f"remote mode needs `path` to be a bare clone that "
                           f"hyperion keeps; {config.path} has a working tree")
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"remote mode {self.repo} ({redact_url(self.url)})"

    def fetch(self) -> None:
        specs = [f"+refs/heads/*:{MIRROR}*"]
        if self.inbox.branch is not None:
            specs.append(f"+refs/heads/{self.inbox.branch}:refs/heads/{self.inbox.branch}")
        optional = []
        if self.inbox.notes_ref is not None:
            optional.append(f"+{self.inbox.notes_ref}:{self.inbox.notes_ref}")
        if self.results_ref is not None:
            optional.append(f"+{self.results_ref}:{RESULTS_MIRROR}")
        with self._lock:
            self.git.fetch(self.url, specs)
            for spec in optional:   # a notes ref the server does not have yet is no error
                try:
                    self.git.fetch(self.url, [spec])
                except GitError as exc:
                    if "couldn't find remote ref" not in exc.stderr:
                        raise
            self._follow_server()

    def _follow_server(self) -> None:
        local = self.git.refs("refs/heads/")
        for mirror, server in self.git.refs(MIRROR).items():
            name = mirror.removeprefix(MIRROR)
            if name == self.inbox.branch:
                continue
            ref = f"refs/heads/{name}"
            mine = local.get(ref)
            if mine == server:
                continue
            if mine is None or self.git.is_ancestor(mine, server):
                self.git.set_ref(ref, server, mine, "hyperion: follow the server")
            elif not self.git.is_ancestor(server, mine):
                log.error("%s: %s diverged: the server moved it while a landed commit waited "
                          "to be pushed; the local %s is kept and not pushed (reconcile by "
                          "hand)", self.where, name, mine[:12])

    def push(self) -> bool:
        """Push what landed and the results notes; True when there was nothing to push or it
        was pushed."""
        with self._lock:
            updates = list(self._updates())
            if not updates:
                return True
            refused = self.git.push_atomic(self.url, updates)
            if refused is not None:
                log.warning("%s: push refused, retried at the next round: %s", self.where,
                            redact_url(refused)[:500])
                return False
            for local, remote, _ in updates:
                value = self.git.ref_value(local)
                mirror = f"{MIRROR}{remote.removeprefix('refs/heads/')}" \
                    if remote.startswith("refs/heads/") else RESULTS_MIRROR
                if value is not None:
                    self.git.set_ref(mirror, value, self.git.ref_value(mirror), "pushed")
            log.info("%s: pushed %s", self.where, ", ".join(r for _, r, _ in updates))
            return True

    def _updates(self) -> Iterable[tuple[str, str, str | None]]:
        mirrors = self.git.refs(MIRROR)
        for ref, mine in self.git.refs("refs/heads/").items():
            name = ref.removeprefix("refs/heads/")
            server = mirrors.get(f"{MIRROR}{name}")
            if name == self.inbox.branch or server is None or server == mine:
                continue
            if self.git.is_ancestor(server, mine):
                yield ref, ref, server
        if self.results_ref is not None:
            mine_notes = self.git.ref_value(self.results_ref)
            server_notes = self.git.ref_value(RESULTS_MIRROR)
            if mine_notes is not None and mine_notes != server_notes:
                if server_notes is None or self.git.is_ancestor(server_notes, mine_notes):
                    yield self.results_ref, self.results_ref, server_notes
                else:
                    log.error("%s: %s diverged on the server; merge it by hand (git notes "
                              "merge -s cat_sort_uniq)", self.where, self.results_ref)


def remote_syncs(app: App) -> list[RemoteSync]:
    out = []
    for name, config in app.config.repos.items():
        if config.git_inbox is None or config.git_inbox.remote is None:
            continue
        try:
            out.append(RemoteSync(app, name))
        except GitError as exc:
            log.error("remote mode %s: %s", name, exc)
    return out


def fetch_all(syncs: list[RemoteSync]) -> None:
    for sync in syncs:
        try:
            sync.fetch()
        except GitError as exc:
            log.error("%s: fetch failed, retried at the next round: %s", sync.where,
                      redact_url(str(exc))[:500])


def push_all(syncs: list[RemoteSync]) -> None:
    for sync in syncs:
        try:
            sync.push()
        except GitError as exc:
            log.error("%s: push failed, retried at the next round: %s", sync.where,
                      redact_url(str(exc))[:500])


def run_remote(app: App, syncs: list[RemoteSync], stop: threading.Event) -> None:
    """The remote thread's body: push what landed, fetch what was pushed, every fetch_s."""
    if not syncs:
        return
    interval = min(s.inbox.fetch_s for s in syncs)
    while not stop.wait(interval):
        deliver_and_push(app, syncs)
        fetch_all(syncs)


def deliver_and_push(app: App, syncs: list[RemoteSync]) -> None:
    """Write the result notes that are due, then push them with what landed."""
    if not syncs:
        return
    try:
        app.reporter.notes.deliver_ready(f"{socket.gethostname()}:{os.getpid()}:remote")
    except Exception:
        log.exception("remote mode: writing result notes failed; retried at the next round")
    push_all(syncs)
