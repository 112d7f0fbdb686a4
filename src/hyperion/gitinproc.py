"""What hyperion does to a repository in-process (dulwich) instead of with a git process.

Every request asks the same few questions before it is applied (where its target branch is,
what the target tree holds at the paths the patch touches: tree safety, the policy file) and
then writes one commit object; its result note reads and writes a few notes folders, note blobs
and a notes commit. A git process costs 1-3 ms each on a small machine; dulwich does the same
from the same files in-process in about 0.1 ms. Only these are done here, and the
configuration refswap needs to move a ref as git would; everything else stays with the git
CLI (gitops).

It answers only what it can answer exactly as git would, and says "don't know" (None) for
everything else, so the caller asks git: a ref that is not a well-formed name or does not
point at a commit (an annotated tag needs peeling), an object not found (a partial clone
fetches lazily), a repository format dulwich does not support, an identity git would rewrite,
a configured commit encoding. Replace refs are the one place dulwich and git could disagree;
hyperion's git runs with GIT_NO_REPLACE_OBJECTS=1 (gitops), so both see objects as stored.

dulwich caches pack indexes and the packed-refs file, re-checking them when git changes them
(new packs after a fetch or gc, a packed-refs rewrite); loose refs are read from disk on every
call. Objects are written as git writes loose objects (same format, permissions of a
shared repository, fsync as core.fsyncObjectFiles says). One instance serves all threads of
the process, behind a lock.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Imported with this module, at start: refswap tells its own locks from an earlier process's
# by when the process started.
from hyperion.gitindex import read_index
from hyperion.refswap import Reflog, should_autocreate, swap

#: Folders whose last tree tree_of_index keeps; beyond that it starts afresh.
_MAX_KNOWN_FOLDERS = 10_000
#: A tree object written or refreshed this recently is not refreshed again (git gc prunes
#: loose objects left over for two weeks unless told otherwise).
_FRESH_S = 600.0
_COMMIT = 1     # dulwich's type numbers
_TREE = 2
_BLOB = 3
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFGITLINK = 0o160000


#: Characters git strips from the ends of a name or email ("crud"), or never keeps inside.
_CRUD = set(".,:;<>\"\\'") | {chr(c) for c in range(33)}
_RAW_DATE = re.compile(r"^(\d{1,12}) ([+-])(\d\d)(\d\d)$")


class InProcessGit:
    """Refs, tree entries and commit objects of one repository; None from any method means
    "ask git"."""

    def __init__(self, git_dir: Path, *, bare: bool = True) -> None:
        self.git_dir = git_dir
        self.bare = bare      # as git sees it (dulwich calls any git folder opened bare)
        self._lock = threading.Lock()
        self._repo: Any = None
        self._broken = False
        self._encoding_key: _ConfigKey | None = None
        self._utf8 = False
        self._ref_key: _ConfigKey | None = None
        self._log_setting: str | None = None
        # Objects never change under their id: the trees and commit roots read last are
        # kept (every request the gate reviews against the same tip reads the same trees).
        self._trees: dict[bytes, Any] = {}
        # Per folder, the entries of its tree written last from a worktree's index and that
        # tree: the folders an apply did not touch but the index's cache-tree left marked
        # invalid (nothing rewrites it between applies) are the same again.
        self._index_trees: dict[bytes, tuple[list[Any], list[Any], Any, float]] = {}
        self._roots: dict[str, bytes] = {}

    def _open(self) -> Any:
        if self._repo is None and not self._broken:
            try:
                from dulwich.repo import Repo

                repo = Repo(str(self.git_dir))
            except Exception:
                # Any format dulwich cannot read: git answers every question instead.
                self._broken = True
                return None
            if _extensions(repo) - _PLAIN_EXTENSIONS:
                # Another object format (sha256), ref storage, a partial clone...: what
                # dulwich would read or write there is not certain to be what git does.
                repo.close()
                self._broken = True
                return None
            self._repo = repo
            # Its pack files are closed when this goes away, or at exit (dulwich warns, with
            # tracebacks, about packs still open then).
            weakref.finalize(self, repo.close)
        return self._repo

    def close(self) -> None:
        with self._lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None

    def commit_of_ref(self, ref: str) -> str | None:
        """The commit ``ref`` (a full name, e.g. refs/heads/main) points at, following
        symbolic refs; None when it does not exist, is not a commit, or cannot be read here."""
        return self.ref_target(ref)[1]

    def ref_target(self, ref: str) -> tuple[bool, str | None]:
        """(answered, the commit ``ref`` points at, following symbolic refs; None when there
        is no such ref). Not answered: not a well-formed name, not a commit, unreadable."""
        from dulwich.refs import Ref, check_ref_format

        name = Ref(ref.encode("utf-8", "surrogateescape"))
        if not check_ref_format(name):
            return False, None
        with self._lock:
            repo = self._open()
            if repo is None:
                return False, None
            try:
                try:
                    sha = repo.refs[name]
                except KeyError:    # no such ref, or a symbolic ref to none (git's to say)
                    return repo.refs.read_ref(name) is None, None
                kind, _ = _raw(repo, sha)
            except Exception:
                return False, None
        return (True, sha.decode()) if kind == _COMMIT else (False, None)

    def head_ref(self) -> tuple[bool, str | None]:
        """(answered, the full ref name HEAD points at; None when HEAD is detached)."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return False, None
            try:
                raw = repo.refs.read_ref(b"HEAD")
            except Exception:
                return False, None
        if raw is None:
            return False, None
        if raw.startswith(b"ref: "):
            return True, raw[5:].strip().decode("utf-8", "surrogateescape")
        return True, None

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
                entry = self._entry(repo, self._root(repo, commit), _split(path), self._trees)
                if entry is None:
                    return True, None
                mode, sha = entry
                if mode & _S_IFMT in (_S_IFDIR, _S_IFGITLINK):
                    return True, None
                kind, data = _raw(repo, sha)
            except Exception:
                return False, None
        if kind != _BLOB:
            return True, None
        if len(data) > max_bytes:
            raise ValueError(f"{path} is {len(data)} bytes, over {max_bytes}")
        return True, bytes(data)

    def write_commit(self, tree: str, parents: Sequence[str], message: str,
                     author: tuple[str, str], author_date: str | None,
                     committer: tuple[str, str]) -> str | None:
        """Write the commit object ``git commit-tree tree -p parent...`` would write (author
        and committer from the given identities, dates now unless ``author_date``, git's raw
        ``<seconds> <+zone>``); its id, or None to let git write it."""
        if not (_plain_identity(author) and _plain_identity(committer)):
            return None
        now = int(time.time())
        offset = time.localtime(now).tm_gmtoff
        author_time, author_offset = now, offset
        if author_date is not None:
            parsed = _RAW_DATE.match(author_date)
            if parsed is None or author_date.endswith(" -0000"):
                return None
            sign = -1 if parsed.group(2) == "-" else 1
            author_time = int(parsed.group(1))
            author_offset = sign * (int(parsed.group(3)) * 3600 + int(parsed.group(4)) * 60)
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            if not self._utf8_commits(repo):
                return None   # git would add an encoding header
            try:
                from dulwich.objects import Commit, ObjectID

                commit = Commit()
                commit.tree = ObjectID(tree.encode())
                commit.parents = [ObjectID(parent.encode()) for parent in parents]
                commit.author = f"{author[0]} <{author[1]}>".encode()
                commit.committer = f"{committer[0]} <{committer[1]}>".encode()
                commit.author_time, commit.author_timezone = author_time, author_offset
                commit.commit_time, commit.commit_timezone = now, offset
                commit.message = message.encode()
                repo.object_store.add_object(commit)
            except UnicodeEncodeError:
                raise
            except Exception:
                return None
            return str(commit.id.decode())

    def folders(self, commit: str, paths: Sequence[str]) -> dict[str, Entries] | None:
        """The entries of each of ``paths`` ("" the root) that is a folder in ``commit``'s tree:
        name -> (mode as git writes it, object id). None: ask git."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                root = self._root(repo, commit)
                found: dict[str, Entries] = {}
                for path in paths:
                    if path:
                        entry = self._entry(repo, root, _split(path), self._trees)
                        if entry is None or entry[0] & _S_IFMT != _S_IFDIR:
                            continue
                        tree_id = entry[1]
                    else:
                        tree_id = root
                    tree = _object(repo, tree_id)
                    if tree.type_num != _TREE:
                        return None
                    found[path] = {name: (b"%o" % mode, sha.decode())
                                   for name, mode, sha in tree.iteritems()}
            except Exception:
                return None
        return found

    def blobs(self, ids: Sequence[str]) -> dict[str, bytes] | None:
        """The content of each blob; None: ask git (one is missing or not a blob)."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            found = {}
            try:
                for oid in ids:
                    kind, data = _raw(repo, oid.encode())
                    if kind != _BLOB:
                        return None
                    found[oid] = bytes(data)
            except Exception:
                return None
        return found

    def write_blob(self, data: bytes) -> str | None:
        """Write a blob (``git hash-object -w --no-filters``); its id, or None: ask git."""
        from dulwich.objects import Blob

        return self._add(Blob.from_string(data))

    def write_tree(self, entries: Entries) -> str | None:
        """Write the tree of ``entries`` (``git mktree``: any order in, git's order out); its
        id, or None: ask git."""
        from dulwich.objects import ObjectID, Tree

        tree = Tree()
        try:
            for name, (mode, oid) in entries.items():
                tree.add(name, int(mode, 8), ObjectID(oid.encode()))
        except ValueError:
            return None
        return self._add(tree)

    def tree_of_index(self, data: bytes) -> str | None:
        """The tree ``git write-tree`` writes from the index file ``data`` (gitindex): the
        folders its cache-tree marks invalid rebuilt from the entries, as git does, and their
        tree objects written; its id, or None: ask git."""
        index = read_index(data)
        if index is None:
            return None
        from dulwich.objects import ObjectID, ShaFile

        subfolders: dict[bytes, list[bytes]] = {}
        for folder in index.folders:
            if folder:
                subfolders.setdefault(folder.rpartition(b"/")[0], []).append(folder)
        ids: dict[bytes, ObjectID] = {}
        rebuilt: list[bytes] = []       # parents before their subfolders
        pending = [b""]
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                while pending:
                    folder = pending.pop()
                    cached = index.cached.get(folder)
                    # As git does: a valid cache-tree id counts while its tree is there.
                    if cached is not None and _exists(repo, oid := ObjectID(
                            cached.hex().encode())):
                        ids[folder] = oid
                        continue
                    rebuilt.append(folder)
                    pending.extend(subfolders.get(folder, ()))
                now = time.monotonic()
                for folder in reversed(rebuilt):
                    files = index.files.get(folder, [])
                    subs = [(sub.rpartition(b"/")[2], ids[sub])
                            for sub in subfolders.get(folder, ())]
                    known = self._index_trees.get(folder)
                    if known is not None and known[0] == files and known[1] == subs:
                        tree, written = known[2], known[3]
                    else:
                        written = None
                        entries = [(name + b"/", b"40000 %s\0%s" % (name, bytes.fromhex(
                            sub_id.decode()))) for name, sub_id in subs]
                        entries += [(name, b"%o %s\0%s" % (mode, name, oid))
                                    for name, mode, oid in files]
                        if not all(_tree_name(name) for name, _, _ in files) or \
                                not all(_tree_name(name) for name, _ in subs):
                            return None     # no path git would have put in an index
                        entries.sort()      # git's order: a folder's name as if with "/"
                        tree = ShaFile.from_raw_string(_TREE, b"".join(e for _, e in entries))
                        if len(self._index_trees) >= _MAX_KNOWN_FOLDERS:
                            self._index_trees.clear()
                    if written is None or now - written > _FRESH_S:
                        # Written, or when it is there, its time refreshed (as git does:
                        # a git gc must not prune it as an old leftover).
                        repo.object_store.add_object(tree)
                        written = now
                    self._index_trees[folder] = (files, subs, tree, written)
                    ids[folder] = tree.id
            except Exception:
                return None
        return ids[b""].decode()

    def _add(self, obj: Any) -> str | None:
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                repo.object_store.add_object(obj)
            except Exception:
                return None
        return str(obj.id.decode())

    def swap_ref(self, ref: str, new: str, old: str | None, message: str,
                 committer: tuple[str, str]) -> bool | None:
        """``git update-ref -m message ref new old`` in-process (refswap); None: ask git."""
        with self._lock:
            repo = self._open()
            setting = self._ref_setting(repo) if repo is not None else None
        if setting is None:
            return None
        return swap(self.git_dir, ref, new, old,
                    Reflog(should_autocreate(setting, ref), committer, message),
                    lambda commit: self._committed_by(commit, committer))

    def _committed_by(self, commit: str, committer: tuple[str, str]) -> bool:
        """Whether ``commit`` is a commit object whose committer is ``committer``."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return False
            try:
                obj = _object(repo, commit.encode())
            except Exception:
                return False
        want = f"{committer[0]} <{committer[1]}>".encode()
        return bool(obj.type_num == _COMMIT and obj.committer == want)

    def _ref_setting(self, repo: Any) -> str | None:
        """core.logAllRefUpdates as git would take it here ("always", "true", "false"), or
        None where git writes refs in some other way than refswap does: a linked worktree's
        folder, a per-worktree configuration, a shared repository (its permissions), a value
        git would refuse. Cached until a configuration file changes."""
        key = self._config_key((self.git_dir / "commondir", self.git_dir / "config.worktree"))
        if self._ref_key == key:
            return self._log_setting
        setting: str | None = None
        if key[-2:] == (None, None):
            try:
                config = repo.get_config_stack()
                shared = _setting(config, b"sharedRepository")
                logs = _setting(config, b"logAllRefUpdates")
            except Exception:
                shared = logs = b"?"
            if shared is None or shared.lower() in _NOT_SHARED:
                setting = (("false" if self.bare else "true") if logs is None
                           else _LOG_SETTINGS.get(logs.lower()))
        self._ref_key, self._log_setting = key, setting
        return setting

    def _config_key(self, more: Sequence[Path] = ()) -> _ConfigKey:
        """The state of every configuration file git reads here (and of ``more``)."""
        return tuple(_stat_key(path) for path in (
            self.git_dir / "config", Path.home() / ".gitconfig",
            Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "git/config",
            Path("/etc/gitconfig"), *more))

    def _utf8_commits(self, repo: Any) -> bool:
        """Whether git would write commits without an encoding header (no i18n.commitEncoding
        other than UTF-8 in any configuration it reads); cached until one of them changes."""
        key = self._config_key()
        if self._encoding_key == key:
            return self._utf8
        try:
            encoding = repo.get_config_stack().get((b"i18n",), b"commitEncoding")
        except KeyError:
            encoding = None
        except Exception:
            return False
        self._utf8 = encoding is None or encoding.lower() in (b"utf-8", b"utf8")
        self._encoding_key = key
        return self._utf8

    # -- walking trees
    def _root(self, repo: Any, commit: str) -> bytes:
        root = self._roots.get(commit)
        if root is None:
            kind, raw = _raw(repo, commit.encode())
            if kind != _COMMIT or not raw.startswith(b"tree "):
                raise KeyError(commit)
            if len(self._roots) >= _CACHED:
                self._roots.clear()
            root = self._roots[commit] = bytes(raw[5:45])
        return root

    def _modes(self, repo: Any, commit: str, paths: list[str]) -> dict[str, str]:
        root = self._root(repo, commit)
        found: dict[str, str] = {}
        for path in paths:
            entry = self._entry(repo, root, _split(path), self._trees)
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
                tree = _object(repo, tree_id)
                if tree.type_num != _TREE:
                    raise KeyError(tree_id)
                if len(trees) >= _CACHED:
                    trees.clear()
                trees[tree_id] = tree
            try:
                mode, tree_id = tree[part]
            except KeyError:
                return None
        return mode, tree_id


#: A tree's entries as git lists them: name -> (mode as written in the tree, object id).
Entries = dict[bytes, tuple[bytes, str]]

#: Trees (and commits' root trees) kept per repository between calls, at most.
_CACHED = 256


def _object(repo: Any, sha: bytes) -> Any:
    """The object ``sha`` (40 hex digits): its loose file first. dulwich looks in its packs
    first, and when an object is in none of them lists the pack folder again to look for new
    packs: for every object git has just written, which is loose."""
    from dulwich.objects import ShaFile, hex_to_filename, valid_hexsha

    if valid_hexsha(sha):
        try:
            return ShaFile.from_path(hex_to_filename(repo.object_store.path, sha.decode()))
        except FileNotFoundError:
            pass
    return repo.object_store[sha]


def _exists(repo: Any, sha: bytes) -> bool:
    """Whether the object ``sha`` (40 hex digits) is in the repository: its loose file, else
    a pack (dulwich's own test reads a loose object whole)."""
    from dulwich.objects import hex_to_filename

    if os.path.exists(hex_to_filename(repo.object_store.path, sha.decode())):
        return True
    return bool(repo.object_store.contains_packed(sha))


def _raw(repo: Any, sha: bytes) -> tuple[int, bytes]:
    """(type number, content) of the object ``sha``, read as :func:`_object` does."""
    obj = _object(repo, sha)
    return obj.type_num, obj.as_raw_string()

#: Repository extensions that change nothing this module reads or writes.
_PLAIN_EXTENSIONS = {b"worktreeconfig", b"preciousobjects", b"noop"}


def _extensions(repo: Any) -> set[bytes]:
    try:
        return {name.lower() for name, _ in repo.get_config().items((b"extensions",))}
    except KeyError:
        return set()


_ConfigKey = tuple[tuple[int, int, int] | None, ...]
#: core.logAllRefUpdates as git reads it (a value missing here is one git refuses).
_LOG_SETTINGS = {**dict.fromkeys((b"true", b"yes", b"on", b"1"), "true"),
                 **dict.fromkeys((b"false", b"no", b"off", b"0", b""), "false"),
                 b"always": "always"}
_NOT_SHARED = {b"false", b"no", b"off", b"", b"umask"}    # git refuses "0" there


def _setting(config: Any, name: bytes) -> bytes | None:
    try:
        value = config.get((b"core",), name)
    except KeyError:
        return None
    return value if isinstance(value, bytes) else b"?"


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _plain_identity(identity: tuple[str, str]) -> bool:
    """A name and email git would write as given: nothing stripped from their ends, no
    angle brackets or control characters inside, neither empty."""
    for part in identity:
        if not part or part[0] in _CRUD or part[-1] in _CRUD or \
                any(c in "<>" or ord(c) < 32 for c in part):
            return False
    return True


def _canonical(mode: int) -> int:
    # As git reads trees: an old 100664 file is 100644, anything executable 100755.
    if mode & _S_IFMT == 0o100000:
        return 0o100755 if mode & 0o100 else 0o100644
    return mode


def _tree_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"\0" not in name and b"/" not in name


def _split(path: str) -> list[bytes] | None:
    parts = path.encode("utf-8", "surrogateescape").split(b"/")
    return None if any(p in (b"", b".", b"..") for p in parts) else parts
