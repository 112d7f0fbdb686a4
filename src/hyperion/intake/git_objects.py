"""Reading what was pushed, with dulwich: refs, request files on the inbox branch, notes.

dulwich is imported lazily (~110 ms). A pre-receive hook reads through the quarantine folder
git names in GIT_OBJECT_DIRECTORY (pushed objects live there until the hook accepts them),
overlaid on the repository's own objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INBOX_DIR = b"inbox"
_HEX40 = re.compile(rb"^[0-9a-f]{40}$")
S_IFMT = 0o170000
S_IFREG = 0o100000
S_IFLNK = 0o120000


@dataclass(frozen=True)
class PushedFile:
    """A request file that is new or changed under inbox/ in ``commit``."""

    commit: str
    path: str
    blob: str
    symlink: bool


def request_file_name(path: bytes) -> bool:
    name = path.rsplit(b"/", 1)[-1]
    return name.endswith(b".json") and not name.startswith(b".")


class GitObjects:
    def __init__(self, git_dir: Path, *, quarantine: dict[str, str] | None = None) -> None:
        from dulwich.repo import Repo

        self.repo: Any = Repo(str(git_dir))
        self.store: Any = self.repo.object_store
        if quarantine and quarantine.get("GIT_OBJECT_DIRECTORY"):
            from dulwich.object_store import DiskObjectStore, OverlayObjectStore

            pushed = DiskObjectStore(quarantine["GIT_OBJECT_DIRECTORY"])
            self.store = OverlayObjectStore([pushed, self.repo.object_store])
        self._notes_cache: dict[str, list[tuple[str, str]]] = {}

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> GitObjects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ref(self, name: str) -> str | None:
        try:
            value: bytes = self.repo.refs[name.encode()]
        except KeyError:
            return None
        return value.decode()

    def blob(self, sha: str) -> bytes:
        data: bytes = self.store[sha.encode()].as_raw_string()
        return data

    def has(self, sha: str) -> bool:
        return sha.encode() in self.store

    # ---------------------------------------------------------------- the inbox branch
    def commits(self, old: str | None, new: str, *, exclude_refs: bool = False) -> list[str]:
        """Commits reachable from ``new`` and not from ``old``, oldest first. After a
        force push ``old`` is not an ancestor: the rewritten commits are all listed (the
        caller's seen set skips what was taken before). ``exclude_refs``: also leave out what
        every branch already has (a new branch made from main lists only its own commits)."""
        from dulwich.walk import ORDER_TOPO, Walker

        exclude: list[Any] = [old.encode()] if old is not None and self.has(old) else []
        if exclude_refs:
            exclude += [sha for ref, sha in self.repo.refs.as_dict(b"refs/heads").items()
                        if sha != new.encode() and sha in self.store]
        include: list[Any] = [new.encode()]
        walker = Walker(self.store, include, exclude=exclude, order=ORDER_TOPO)
        return [entry.commit.id.decode() for entry in walker][::-1]

    def _inbox_entries(self, tree: Any) -> dict[bytes, tuple[int, bytes]]:
        from dulwich.object_store import tree_lookup_path

        try:
            mode, sha = tree_lookup_path(self.store.__getitem__, tree, INBOX_DIR)
        except KeyError:
            return {}
        if mode & S_IFMT != 0o040000:
            return {}
        return {entry.path: (entry.mode, entry.sha)
                for entry in self.store.iter_tree_contents(sha)}

    def changed_files(self, commit: str) -> list[PushedFile]:
        """Request files under inbox/ that ``commit`` adds or changes (against its first
        parent; for a root commit, all of them)."""
        obj = self.store[commit.encode()]
        parent_entries: dict[bytes, tuple[int, bytes]] = {}
        if obj.parents:
            parent_entries = self._inbox_entries(self.store[obj.parents[0]].tree)
        out = []
        for path, (mode, sha) in sorted(self._inbox_entries(obj.tree).items()):
            if not request_file_name(path) or parent_entries.get(path) == (mode, sha):
                continue
            kind = mode & S_IFMT
            if kind not in (S_IFREG, S_IFLNK):
                continue   # a submodule entry: no content to read
            out.append(PushedFile(commit=commit, path=(INBOX_DIR + b"/" + path).decode(
                "utf-8", errors="replace"), blob=sha.decode(), symlink=kind == S_IFLNK))
        return out

    def pushed_files(self, old: str | None, new: str, *,
                     exclude_refs: bool = False) -> Iterator[PushedFile]:
        for commit in self.commits(old, new, exclude_refs=exclude_refs):
            yield from self.changed_files(commit)

    # ---------------------------------------------------------------- notes
    def notes(self, notes_commit: str) -> list[tuple[str, str]]:
        """(annotated commit, note blob) for every note in a notes commit; read once per
        notes commit (dulwich would re-detect the fan-out for every single note)."""
        cached = self._notes_cache.get(notes_commit)
        if cached is not None:
            return cached
        tree = self.store[notes_commit.encode()].tree
        out = []
        for entry in self.store.iter_tree_contents(tree):
            name = entry.path.replace(b"/", b"")
            if _HEX40.match(name) and entry.mode & S_IFMT == S_IFREG:
                out.append((name.decode(), entry.sha.decode()))
        out.sort()
        if len(self._notes_cache) > 8:
            self._notes_cache.clear()
        self._notes_cache[notes_commit] = out
        return out

    def new_notes(self, old: str | None, new: str) -> list[tuple[str, str]]:
        """Notes in ``new`` that ``old`` does not have with the same content."""
        before = set(self.notes(old)) if old is not None and self.has(old) else set()
        return [n for n in self.notes(new) if n not in before]


def quarantine_env() -> dict[str, str]:
    """The object-directory variables git gives a pre-receive hook (pushed objects)."""
    env = {}
    # Relative to the hook's working folder (the git dir); made absolute for later reads.
    if os.environ.get("GIT_OBJECT_DIRECTORY"):
        env["GIT_OBJECT_DIRECTORY"] = os.path.abspath(os.environ["GIT_OBJECT_DIRECTORY"])
    alternates = os.environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES")
    if alternates:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.pathsep.join(
            os.path.abspath(p) for p in alternates.split(os.pathsep) if p)
    return env
