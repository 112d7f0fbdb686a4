"""In-process reads of a repository's refs and trees (dulwich), for the per-request hot path.

Every request asks the same few questions before it is applied: where its target branch is,
and what the target tree holds at the paths the patch touches (tree safety, the policy file).
A git process per question costs 1-3 ms; dulwich answers from the same files in-process in
about 0.1 ms. This module only reads, never writes (writing stays with the git CLI in gitops).

It answers only what it can answer exactly as git would, and says "don't know" (None) for
everything else, so the caller asks git: a ref that is not a well-formed name or does not
point at a commit (an annotated tag needs peeling), an object not found (a partial clone
fetches lazily), a repository format dulwich does not support. Replace refs are the one
place dulwich and git could disagree; hyperion's git runs with GIT_NO_REPLACE_OBJECTS=1
(gitops), so both read the objects as stored.

dulwich caches pack indexes and the packed-refs file, re-checking them when git changes them
(new packs after a fetch or gc, a packed-refs rewrite); loose refs are read from disk on every
call. One reader serves all threads of the process, behind a lock.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

_COMMIT = 1     # dulwich's type numbers
_TREE = 2
_BLOB = 3
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFGITLINK = 0o160000


class TreeReader:
    """Refs and tree entries of one repository; None from any method means "ask git"."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self._lock = threading.Lock()
        self._repo: Any = None
        self._broken = False

    def _open(self) -> Any:
        if self._repo is None and not self._broken:
            try:
                from dulwich.repo import Repo

                self._repo = Repo(str(self.git_dir))
            except Exception:
                # Any format dulwich cannot read: git answers every question instead.
                self._broken = True
            else:
                _OPENED.append(self)
        return self._repo

    def close(self) -> None:
        with self._lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None

    def commit_of_ref(self, ref: str) -> str | None:
        """The commit ``ref`` (a full name, e.g. refs/heads/main) points at, following
        symbolic refs; None when it does not exist, is not a commit, or cannot be read here."""
        from dulwich.refs import Ref, check_ref_format

        name = Ref(ref.encode("utf-8", "surrogateescape"))
        if not check_ref_format(name):
            return None
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                sha = repo.refs[name]
                kind, _ = repo.object_store.get_raw(sha)
            except Exception:
                return None
        return sha.decode() if kind == _COMMIT else None

    def modes(self, commit: str, paths: list[str]) -> dict[str, str] | None:
        """``git ls-tree``'s mode (``100644``, ``040000``...) of each of ``paths`` that exists
        in ``commit``'s tree; a path below a symlink, gitlink or file is absent, as in
        ls-tree. None when the commit or a tree on the way cannot be read here."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                return self._modes(repo, commit, paths)
            except Exception:
                return None

    def blob(self, commit: str, path: str, max_bytes: int) -> tuple[bool, bytes | None]:
        """(answered, content): the content of the file (or symlink) ``path`` in ``commit``,
        None when it is not one there. ValueError when larger than ``max_bytes``.
        ``answered`` False: ask git."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return False, None
            try:
                entry = self._entry(repo, self._root(repo, commit), _split(path), {})
                if entry is None:
                    return True, None
                mode, sha = entry
                if mode & _S_IFMT in (_S_IFDIR, _S_IFGITLINK):
                    return True, None
                kind, data = repo.object_store.get_raw(sha)
            except Exception:
                return False, None
        if kind != _BLOB:
            return True, None
        if len(data) > max_bytes:
            raise ValueError(f"{path} is {len(data)} bytes, over {max_bytes}")
        return True, bytes(data)

    # -- walking trees
    @staticmethod
    def _root(repo: Any, commit: str) -> bytes:
        kind, raw = repo.object_store.get_raw(commit.encode())
        if kind != _COMMIT or not raw.startswith(b"tree "):
            raise KeyError(commit)
        return bytes(raw[5:45])

    def _modes(self, repo: Any, commit: str, paths: list[str]) -> dict[str, str]:
        root = self._root(repo, commit)
        trees: dict[bytes, Any] = {}
        found: dict[str, str] = {}
        for path in paths:
            entry = self._entry(repo, root, _split(path), trees)
            if entry is not None:
                found[path] = f"{_canonical(entry[0]):06o}"
        return found

    @staticmethod
    def _entry(repo: Any, root: bytes, parts: list[bytes] | None,
               trees: dict[bytes, Any]) -> tuple[int, bytes] | None:
        if not parts:
            return None
        tree_id, mode = root, _S_IFDIR
        for part in parts:
            if mode & _S_IFMT != _S_IFDIR:
                return None          # below a file, symlink or gitlink: not listed
            tree = trees.get(tree_id)
            if tree is None:
                tree = trees[tree_id] = repo.object_store[tree_id]
                if tree.type_num != _TREE:
                    raise KeyError(tree_id)
            try:
                mode, tree_id = tree[part]
            except KeyError:
                return None
        return mode, tree_id


def _canonical(mode: int) -> int:
    # As git reads trees: an old 100664 file is 100644, anything executable 100755.
    if mode & _S_IFMT == 0o100000:
        return 0o100755 if mode & 0o100 else 0o100644
    return mode


def _split(path: str) -> list[bytes] | None:
    parts = path.encode("utf-8", "surrogateescape").split(b"/")
    return None if any(p in (b"", b".", b"..") for p in parts) else parts


_OPENED: list[TreeReader] = []


@atexit.register
def _close_all() -> None:
    # dulwich warns (with tracebacks) about pack files still open at interpreter exit.
    for reader in _OPENED:
        reader.close()
