"""Every git operation hyperion performs. No other module runs git.

Git is run as argv (never a shell) with repository hooks and fsmonitor disabled: a repository
may point core.hooksPath at a tracked folder, which a request could change. The environment is
stripped of GIT_* variables inherited from whoever started hyperion.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperion.gitindex import small_index
from hyperion.gitinproc import InProcessGit
from hyperion.refswap import ZERO_OID
from hyperion.run import find_program

SAFE_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.untrackedCache=false",
    "-c", "advice.detachedHead=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)
COMMITTER = ("hyperion", "hyperion@localhost")
_COMMITTER_ENV = {"GIT_COMMITTER_NAME": COMMITTER[0], "GIT_COMMITTER_EMAIL": COMMITTER[1]}
NOTE_ATTEMPTS = 50
_ARGV_BUDGET = 64 * 1024   # bytes of paths per git command line (ARG_MAX is far above)
TRAILER = "Hyperion-Request"
_TRAILER_LINE = re.compile(rf"^\s*{TRAILER}\s*:", re.IGNORECASE | re.MULTILINE)


class GitError(Exception):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"git {' '.join(args[:3])}... exited {returncode}: {self.stderr[:500]}")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # No replace refs: hyperion lands and checks the objects as stored, and its in-process
    # reader (gitinproc) sees them the same way.
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0",
                "GIT_NO_REPLACE_OBJECTS": "1"})
    if extra:
        env.update(extra)
    return env


_PROGRAM: tuple[str, str] | None = None     # (PATH, git's absolute path found there)


def _program() -> str:
    """git's absolute path, looked up once per value of PATH, in its absolute folders only.
    Started by its bare name, a child would try every folder of PATH in turn, and search a
    relative one ("." or an empty entry) from the worktree it runs in, where a request can
    put an executable `git` of its own."""
    global _PROGRAM
    path = os.environ.get("PATH", os.defpath)
    found = _PROGRAM
    if found is None or found[0] != path:
        program = find_program("git", path)
        if program is None:
            raise FileNotFoundError(errno.ENOENT, "git is not in any absolute folder of PATH",
                                    "git")
        found = _PROGRAM = (path, program)
    return found[1]


def git(args: Sequence[str], *, cwd: Path, input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([_program(), *SAFE_CONFIG, *args], cwd=cwd, input=input,
                          capture_output=True, env=_env(env), check=False,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _start(args: Sequence[str], *, cwd: Path, stderr: bool = False
           ) -> subprocess.Popen[bytes]:
    """git started and left running (its output piped, and its errors with ``stderr``),
    for a caller that does something else meanwhile."""
    return subprocess.Popen([_program(), *SAFE_CONFIG, *args], cwd=cwd, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL)


def _out(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    return git(args, cwd=cwd, env=env).stdout.decode().strip()


def commit_message(title: str, body: str, request_id: str) -> str:
    # A body must not be able to claim another request's trailer (it decides "already landed").
    body = _TRAILER_LINE.sub(lambda m: m.group(0).replace(":", " (quoted):"), body.strip())
    parts = [title.strip()]
    if body:
        parts.append(body)
    parts.append(f"{TRAILER}: {request_id}")
    return "\n\n".join(parts) + "\n"


def author_identity(agent: str) -> tuple[str, str]:
    name = agent.split("@", 1)[0] or agent
    email = agent if "@" in agent else f"{agent}@agents.hyperion.invalid"
    return name, email


@dataclass(frozen=True)
class Checkout:
    """A repository's own working tree: its top folder and the branch checked out there."""

    toplevel: Path
    branch: str | None


@dataclass(frozen=True)
class MergeResult:
    """What git merge-tree made of two commits: a tree (with conflict markers in the files
    that conflict), the conflicted paths, and git's conflict messages."""

    tree: str
    conflicted: tuple[str, ...]
    messages: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.conflicted


@dataclass(frozen=True)
class PushRefusal:
    stale: bool      # the remote branch was not where we expected: re-apply and retry
    detail: str


@dataclass(frozen=True)
class CommitOrigin:
    """Who wrote a commit and what they said: kept when hyperion re-lands it."""

    author_name: str
    author_email: str
    author_date: str     # git's raw format: "<seconds> <+zone>"
    message: str


def _admin_dir(worktree: Path) -> Path | None:
    """The worktree's folder in the repository (what its ``.git`` file names)."""
    try:
        link = (worktree / ".git").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(link[len("gitdir: "):].strip()) if link.startswith("gitdir: ") else None


#: Per pool worktree, the index file its last commit was written from (see _index_mark).
_COMMITTED_INDEX: dict[Path, tuple[str, _IndexMark]] = {}


@dataclass(frozen=True)
class _IndexMark:
    """What identifies an index file as written: its inode, size, times and trailing
    checksum (git rewrites an index through a new file, never in place), and the version in
    its header."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    checksum: bytes
    version: int | None


def _index_mark(admin: Path | None) -> _IndexMark | None:
    """The mark of the index in ``admin`` (a worktree's folder in the repository), read
    with one open; None when there is none."""
    if admin is None:
        return None
    try:
        fd = os.open(admin / "index", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return _mark_of(st, os.pread(fd, 8, 0), os.pread(fd, 32, max(0, st.st_size - 32)))
    except OSError:
        return None
    finally:
        os.close(fd)


def _mark_of(st: os.stat_result, header: bytes, checksum: bytes) -> _IndexMark:
    """The mark of an index file from its stat data, its first 8 bytes and its last 32."""
    version = int.from_bytes(header[4:8], "big") if header[:4] == b"DIRC" else None
    return _IndexMark(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, checksum, version)


def _made_here(worktree: Path, commit: str) -> bool:
    """This process's last commit in ``worktree`` is ``commit``, from an index of version 2
    (which cannot mark a file skip-worktree or assume-unchanged)."""
    mark = _COMMITTED_INDEX.get(worktree)
    return mark is not None and mark[0] == commit and mark[1].version == 2


def _index_as_committed(worktree: Path, commit: str, admin: Path | None = None) -> bool:
    """The worktree's index is the very file this process wrote ``commit`` from (and of
    version 2)."""
    return (_made_here(worktree, commit) and
            _COMMITTED_INDEX[worktree][1] == _index_mark(admin or _admin_dir(worktree)))


def _index_version(worktree: Path) -> int | None:
    """The version in the worktree's index header; None when it cannot be read."""
    mark = _index_mark(_admin_dir(worktree))
    return mark.version if mark is not None else None


def detached_head(worktree: Path, admin: Path | None = None) -> str | None:
    """The commit a worktree's detached HEAD names, from its file (in ``admin``, its folder
    in the repository, when known); None when not readable that way (then git is asked)."""
    admin = admin or _admin_dir(worktree)
    try:
        head = (admin / "HEAD").read_text().strip() if admin is not None else ""
    except (OSError, UnicodeDecodeError):
        return None
    return head if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head) else None


def _move_detached_head(worktree: Path, old: str, new: str, admin: Path | None = None) -> bool:
    """Move a pool worktree's detached HEAD from ``old`` to ``new`` as update-ref would (a
    lock file renamed over HEAD), without its process; False when HEAD is not ``old`` or
    is locked, for git to decide. The slot's HEAD reflog is not kept: nobody reads it."""
    admin = admin or _admin_dir(worktree)
    if admin is None or detached_head(worktree, admin) != old:
        return False
    try:
        head, lock = admin / "HEAD", admin / "HEAD.lock"
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError:
        return False
    try:
        os.write(fd, f"{new}\n".encode())
    finally:
        os.close(fd)
    os.replace(lock, head)
    return True


_OPEN: dict[str, GitRepo] = {}
_OPEN_LOCK = threading.Lock()


class GitRepo:
    @classmethod
    def at(cls, path: Path) -> GitRepo:
        """The repository at ``path``, opened once per process: opening asks git where its
        folder is (a process), and the in-process reader keeps its caches across requests.
        Opened again when that folder no longer holds a repository (deleted, re-created)."""
        key = os.path.abspath(path)
        with _OPEN_LOCK:
            repo = _OPEN.get(key)
        if repo is not None and (repo.git_dir / "HEAD").is_file():
            return repo
        repo = cls(path)
        with _OPEN_LOCK:
            _OPEN[key] = repo
        return repo

    def __init__(self, path: Path, *, objects_env: dict[str, str] | None = None) -> None:
        """``objects_env``: GIT_OBJECT_DIRECTORY / GIT_ALTERNATE_OBJECT_DIRECTORIES to read
        through, deliberately passed on (a pre-receive hook reads pushed objects from the
        quarantine folder git names there); every other inherited GIT_* variable is dropped."""
        self.path = path
        self.objects_env = dict(objects_env or {})
        if not path.exists():
            raise GitError(["rev-parse"], 128, f"{path} does not exist")
        out = _out(["rev-parse", "--absolute-git-dir", "--is-bare-repository"], cwd=path)
        git_dir, bare = out.splitlines()
        self.git_dir = Path(git_dir)
        self.bare = bare == "true"
        # Reads through a quarantine folder stay with git (gitinproc uses the repository's own
        # objects only).
        self._inproc = None if self.objects_env else InProcessGit(self.git_dir,
                                                                  bare=self.bare)
        self._toplevel: Path | None = None      # of a non-bare repository, learnt once
        self._worktrees_dir: Path | None = None  # git_dir/worktrees resolved, learnt once

    # -- reading
    def resolve(self, rev: str) -> str | None:
        proc = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
                   cwd=self.git_dir, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def branch_commit(self, branch: str) -> str | None:
        ref = f"refs/heads/{branch}"
        found = self._inproc.commit_of_ref(ref) if self._inproc is not None else None
        return found if found is not None else self.resolve(ref)

    def tree_entries(self, commit: str, paths: Sequence[str]) -> dict[str, str]:
        """The mode (``100644``, ``120000`` symlink, ``160000`` gitlink, ``040000`` folder...)
        of each of ``paths`` that exists in ``commit``'s tree. Only these paths are listed, not
        the whole tree; a path below a symlink or gitlink is not listed (ask for its folders).
        """
        if self._inproc is not None:
            modes = self._inproc.modes(commit, sorted(set(paths)))
            if modes is not None:
                return modes
        found: dict[str, str] = {}
        wanted = set(paths)
        batch: list[str] = []
        size = 0
        for path in sorted(wanted):
            batch.append(path)
            size += len(path) + 1
            if size > _ARGV_BUDGET:
                found.update(self._ls_tree(commit, batch, wanted))
                batch, size = [], 0
        if batch:
            found.update(self._ls_tree(commit, batch, wanted))
        return found

    def _ls_tree(self, commit: str, paths: list[str], wanted: set[str]) -> dict[str, str]:
        # Literal pathspecs: a path holding "*" or "[" names that file, not a pattern.
        out = git(["ls-tree", "-z", "--full-tree", commit, "--", *paths], cwd=self.git_dir,
                  env={"GIT_LITERAL_PATHSPECS": "1"}).stdout
        found = {}
        for entry in out.split(b"\0"):
            meta, tab, name = entry.partition(b"\t")
            path = name.decode("utf-8", "surrogateescape")
            if tab and path in wanted:
                found[path] = meta.split(b" ", 1)[0].decode()
        return found

    def read_blob(self, commit: str, path: str, max_bytes: int) -> bytes | None:
        """The content of the file ``path`` in ``commit``; None when it is not a file there.
        ValueError when it is larger than ``max_bytes``."""
        if self._inproc is not None:
            answered, data = self._inproc.blob(commit, path, max_bytes)
            if answered:
                return data
        spec = f"{commit}:{path}"
        proc = git(["cat-file", "-t", spec], cwd=self.git_dir, check=False)
        if proc.returncode != 0 or proc.stdout.strip() != b"blob":
            return None
        size = int(_out(["cat-file", "-s", spec], cwd=self.git_dir))
        if size > max_bytes:
            raise ValueError(f"{path} is {size} bytes, over {max_bytes}")
        return git(["cat-file", "blob", spec], cwd=self.git_dir).stdout

    def find_landed(self, request_id: str, tip: str, since: str | None) -> str | None:
        """The commit on ``tip``'s history (after ``since``) carrying this request's trailer."""
        rng = f"{since}..{tip}" if since else tip
        out = _out(["log", "--format=%H%x00%(trailers:key=" + TRAILER + ",valueonly)%x01",
                    rng, "--"], cwd=self.git_dir)
        for entry in out.split("\x01"):
            sha, _, values = entry.strip().partition("\x00")
            if sha and request_id in values.split():
                return sha
        return None

    def checkout(self) -> Checkout | None:
        """The repository's own working tree, unless bare."""
        if self.bare:
            return None
        if self._toplevel is None:
            self._toplevel = Path(_out(["rev-parse", "--show-toplevel"], cwd=self.path))
        top = self._toplevel
        answered, head = self._inproc.head_ref() if self._inproc is not None else (False, None)
        if answered:
            ref = head or ""
        else:
            proc = git(["symbolic-ref", "--quiet", "HEAD"], cwd=top, check=False)
            ref = proc.stdout.decode().strip()
        branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
        return Checkout(toplevel=top, branch=branch)

    # -- worktrees
    def worktree_add(self, path: Path, commit: str) -> None:
        git(["worktree", "add", "--detach", "--force", str(path), commit], cwd=self.git_dir)

    def worktree_remove(self, path: Path) -> None:
        git(["worktree", "remove", "--force", "--force", str(path)], cwd=self.git_dir,
            check=False)
        self.prune_worktrees()

    def worktree_reset(self, path: Path, commit: str) -> str | None:
        """Bring a reused worktree back to ``commit`` with nothing else in it. None when done,
        else why it cannot be trusted (then it must be removed and added afresh).

        A check ran arbitrary code in it, so it is checked, not assumed: its ``.git`` file
        must still lead to its own admin folder in this repository and back, and afterwards
        nothing may be modified, staged, untracked or ignored."""
        reason = self.worktree_link_problem(path)
        if reason is not None:
            return reason
        # The usual slot is already at ``commit`` (the request before landed it there) with
        # only what its checks left over: then one ls-files proves that was nothing, or clean
        # + status suffice, and the checkout (the costliest) is skipped. Tracked files a
        # check changed, or another commit (known from HEAD's file without a process), take
        # the checkout.
        if detached_head(path) == commit:
            if self._untouched_since_commit(path, commit):
                return self._index_flags_problem(path)
            proc = git(["clean", "-ffdxq"], cwd=path, check=False)
            if proc.returncode != 0:
                return f"git clean failed: {proc.stderr.decode(errors='replace')[:200]}"
            if self._left_over(path, commit) is None:
                return self._index_flags_problem(path)
        for args in (["checkout", "--force", "--detach", commit],
                     ["clean", "-ffdxq"]):
            proc = git(args, cwd=path, check=False)
            if proc.returncode != 0:
                return f"git {args[0]} failed: {proc.stderr.decode(errors='replace')[:200]}"
        problem = self._left_over(path, commit)
        if problem is not None:
            return problem
        return self._index_flags_problem(path)

    @staticmethod
    def _untouched_since_commit(path: Path, commit: str) -> bool:
        """Whether the worktree is exactly ``commit`` as this process committed it there:
        its index as committed (:meth:`index_as_committed`), and git lists no untracked or
        ignored file or folder (empty ones included) and no tracked file modified or
        deleted. One read-only ls-files instead of clean + status, for a check that left
        nothing behind."""
        if not _index_as_committed(path, commit):
            return False
        proc = git(["ls-files", "-z", "--others", "--directory", "--modified", "--deleted"],
                   cwd=path, check=False)
        return proc.returncode == 0 and proc.stdout == b""

    def index_as_committed(self, path: Path, commit: str) -> bool:
        """Whether the slot ``path`` is still this repository's worktree, with HEAD at
        ``commit`` and the very index file this process committed ``commit`` from (so
        nothing is staged and no file is marked skip-worktree), all read without git. What
        the worktree's files hold is left to prove (:meth:`commit_proving_clean`)."""
        admin = self._linked_admin(path)
        return (admin is not None and detached_head(path, admin) == commit
                and _index_as_committed(path, commit, admin))

    @staticmethod
    def made_here(path: Path, commit: str) -> bool:
        """Whether this process's last commit in the slot ``path`` is ``commit``, written from
        an index of version 2: what :meth:`index_as_committed` then finds on disk unless
        something changed the slot's files in the repository since (known from memory)."""
        return _made_here(path, commit)

    def admin_folder(self, path: Path) -> Path | None:
        """The worktree ``path``'s folder in this repository (its HEAD and index), when its
        link is sound."""
        return self._linked_admin(path)

    @staticmethod
    def _left_over(path: Path, commit: str) -> str | None:
        """Why the worktree is not exactly ``commit``: HEAD elsewhere, or anything modified,
        staged, untracked or ignored. One status answers both (the ``# branch.oid`` header,
        and any line that is not a ``# `` header)."""
        status = git(["status", "--porcelain=v2", "--branch", "-z", "--ignored",
                      "--untracked-files=all"], cwd=path, check=False)
        if status.returncode != 0:
            return f"git status failed: {status.stderr.decode(errors='replace')[:200]}"
        entries = [e for e in status.stdout.split(b"\0") if e]
        head = next((e.removeprefix(b"# branch.oid ").decode(errors="replace")
                     for e in entries if e.startswith(b"# branch.oid ")), None)
        if head != commit:
            return "HEAD is not the wanted commit after checkout"
        if any(not e.startswith(b"# ") for e in entries):
            return "files remain modified or untracked after the reset"
        return None

    @staticmethod
    def _index_flags_problem(path: Path) -> str | None:
        """Why the worktree's index cannot be trusted: a file marked skip-worktree (or assume
        unchanged) that git checkout leaves as a check wrote it and git status does not show.

        Call after worktree_link_problem() found the ``.git`` file sound. skip-worktree needs
        an index of version 3 or 4; git writes version 2 unless configured or asked to, so
        only another version costs a listing of the index."""
        if _index_version(path) == 2:
            return None
        proc = git(["ls-files", "-v", "-z"], cwd=path, check=False)
        if proc.returncode != 0:
            return f"git ls-files failed: {proc.stderr.decode(errors='replace')[:200]}"
        if any(e[:2] != b"H " for e in proc.stdout.split(b"\0") if e):
            return "files are marked skip-worktree or assume-unchanged in its index"
        return None

    def worktree_link_problem(self, path: Path) -> str | None:
        """Why the worktree at ``path`` is not a sound worktree of this repository; None."""
        return self._link(path)[1]

    def _linked_admin(self, path: Path) -> Path | None:
        """The slot's folder in this repository when its link is sound, else None."""
        admin, problem = self._link(path)
        return admin if problem is None else None

    def _link(self, path: Path) -> tuple[Path | None, str | None]:
        """(the worktree's folder in the repository, None) when ``path``'s ``.git`` file
        and git's record of the worktree agree, else (None, what is wrong)."""
        try:
            if path.joinpath(".git").is_symlink():
                return None, "its .git is not a gitdir file"
            text = (path / ".git").read_text()
        except (OSError, UnicodeDecodeError):
            return None, "its .git file is missing or unreadable"
        if not text.startswith("gitdir: "):
            return None, "its .git is not a gitdir file"
        admin = Path(text[len("gitdir: "):].strip())
        if not self._in_worktrees(admin):
            return None, "its .git file points outside this repository's worktrees"
        try:
            back = Path((admin / "gitdir").read_text().strip())
        except OSError:
            return None, "git no longer knows this worktree"
        # The same path as written needs no resolving (the slot's own path, as git recorded
        # it when hyperion added it): each resolve costs a stat of every folder on the way.
        if back != path / ".git" and back.resolve() != (path / ".git").resolve():
            return None, "git registers this worktree for another folder"
        return admin, None

    def _in_worktrees(self, admin: Path) -> bool:
        """Whether ``admin`` is (resolved) a folder right inside this repository's
        ``worktrees`` folder."""
        worktrees = self._worktrees_dir
        if worktrees is None:
            worktrees = self._worktrees_dir = (self.git_dir / "worktrees").resolve()
        if admin.parent == worktrees and admin.name != "..":
            # Written right below the resolved folder: it resolves there unless it is a link.
            with contextlib.suppress(OSError):
                if not stat.S_ISLNK(os.lstat(admin).st_mode):
                    return True
        return admin.resolve().parent == worktrees

    def prune_worktrees(self) -> None:
        """Forget worktrees whose folders are gone."""
        git(["worktree", "prune"], cwd=self.git_dir, check=False)

    # -- applying and committing (in a worktree)
    @staticmethod
    def try_apply(worktree: Path, patch: str) -> str | None:
        """Apply the patch to the worktree's index and files: None when it applied, else git's
        reason, with nothing changed (without --reject git checks every hunk of every file
        before it writes anything, so a separate ``--check`` run would only cost a process)."""
        proc = git(["apply", "--index", "--whitespace=nowarn", "-"], cwd=worktree,
                   input=patch.encode(), check=False)
        return None if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()

    @staticmethod
    def apply(worktree: Path, patch: str) -> None:
        # --index is atomic across files: all of the patch applies, or none of it.
        git(["apply", "--index", "--whitespace=nowarn", "-"], cwd=worktree, input=patch.encode())

    def commit(self, worktree: Path, parent: str, message: str, author: tuple[str, str],
               author_date: str | None = None) -> str:
        """Commit the worktree's index on ``parent`` (its HEAD); HEAD moves there. Its tree is
        written in-process when gitindex reads the index (gitinproc.tree_of_index), else by
        ``git write-tree``."""
        admin = _admin_dir(worktree)
        in_process = self._tree_of_index(admin)
        mark: _IndexMark | None
        if in_process is not None:
            tree, mark = in_process
            sha = self.commit_tree(tree, parent, message, author, author_date)
        else:
            sha, admin, mark = self._commit_object(
                worktree, _out(["write-tree"], cwd=worktree), parent, message, author,
                author_date, admin)
        self._head_moved(worktree, parent, sha, admin, mark)
        return sha

    def commit_proving_clean(self, worktree: Path, parent: str, message: str,
                             author: tuple[str, str],
                             author_date: str | None = None) -> str | None:
        """:meth:`commit`, for a slot whose last check may have left something behind
        (pool.py): while git writes the tree and the commit object is made, ls-files proves
        the worktree holds the index and nothing else (no untracked, ignored, modified or
        deleted file, no empty folder). None when it does not: HEAD stays (the commit object
        made is left to nothing), and the slot must be reset."""
        # The write-tree is started first, and the commit object made while the listing
        # runs: the commit waits for the tree only.
        writing = _start(["write-tree"], cwd=worktree, stderr=True)
        leftovers: subprocess.Popen[bytes] | None = None
        try:
            leftovers = _start(["ls-files", "-z", "--others", "--directory", "--modified",
                                "--deleted"], cwd=worktree)
            written, error = writing.communicate()
            if writing.returncode != 0:
                raise GitError(["write-tree"], writing.returncode,
                               error.decode(errors="replace"))
            sha, admin, mark = self._commit_object(worktree, written.decode().strip(), parent,
                                                   message, author, author_date)
        finally:
            if writing.returncode is None:
                writing.communicate()
            listed, _ = leftovers.communicate() if leftovers is not None else (b"", None)
        if leftovers.returncode != 0 or listed:
            return None
        self._head_moved(worktree, parent, sha, admin, mark)
        return sha

    def _tree_of_index(self, admin: Path | None) -> tuple[str, _IndexMark] | None:
        """What ``git write-tree`` would write from the index in ``admin`` (a worktree's folder
        in the repository), written in-process when gitindex reads it, and the mark of that
        index (read once for both); None: ask git."""
        if admin is None or self._inproc is None:
            return None
        try:
            with open(admin / "index", "rb") as index:
                header = index.read(12)
                if not small_index(header):
                    return None     # not read whole: git writes its tree
                data = header + index.read()
                st = os.fstat(index.fileno())
        except OSError:
            return None
        tree = self._inproc.tree_of_index(data)
        return None if tree is None else (tree, _mark_of(st, header, data[-32:]))

    def _commit_object(self, worktree: Path, tree: str, parent: str, message: str,
                       author: tuple[str, str], author_date: str | None,
                       admin: Path | None = None
                       ) -> tuple[str, Path | None, _IndexMark | None]:
        """The commit of the worktree's ``tree`` on ``parent`` (not yet its HEAD), the
        worktree's folder in the repository, and the mark of the index it was written from."""
        admin = admin or _admin_dir(worktree)
        mark = _index_mark(admin)
        return self.commit_tree(tree, parent, message, author, author_date), admin, mark

    @staticmethod
    def _head_moved(worktree: Path, parent: str, sha: str, admin: Path | None,
                    mark: _IndexMark | None) -> None:
        """The worktree's HEAD moved from ``parent`` to its new commit ``sha``, written from
        the index ``mark`` names."""
        if not _move_detached_head(worktree, parent, sha, admin):
            git(["update-ref", "--no-deref", "HEAD", sha], cwd=worktree)
        if mark is not None:
            _COMMITTED_INDEX[worktree] = (sha, mark)

    # -- three-way fallback (no worktree needed)
    def apply_to_commit(self, base: str, patch: str) -> tuple[str | None, str]:
        """The tree of ``base`` with ``patch`` applied, in a private index: (tree, "") or
        (None, git's reason)."""
        with tempfile.TemporaryDirectory(prefix="hyperion-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git(["read-tree", base], cwd=self.git_dir, env=env)
            proc = git(["apply", "--cached", "--whitespace=nowarn", "-"], cwd=self.git_dir,
                       input=patch.encode(), env=env, check=False)
            if proc.returncode != 0:
                return None, proc.stderr.decode(errors="replace").strip()
            return _out(["write-tree"], cwd=self.git_dir, env=env), ""

    def commit_tree(self, tree: str, parent: str | None, message: str,
                    author: tuple[str, str], author_date: str | None = None) -> str:
        """Write the commit of ``tree`` on ``parent`` (None: a root commit), its message as
        given (in-process when that gives what git would write, else with git commit-tree)."""
        parents = [parent] if parent is not None else []
        if self._inproc is not None:
            sha = self._inproc.write_commit(tree, parents, message, author, author_date,
                                            COMMITTER)
            if sha is not None:
                return sha
        env = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1], **_COMMITTER_ENV}
        if author_date is not None:
            env["GIT_AUTHOR_DATE"] = author_date
        return git(["commit-tree", tree, *(arg for p in parents for arg in ("-p", p)),
                    "-F", "-"], cwd=self.git_dir, input=message.encode(),
                   env=env).stdout.decode().strip()

    def merge_trees(self, ours: str, theirs: str) -> MergeResult:
        """Merge two commits without touching any working tree (git merge-tree)."""
        proc = git(["merge-tree", "--write-tree", "-z", "--name-only", "--messages", ours,
                    theirs], cwd=self.git_dir, check=False)
        if proc.returncode not in (0, 1):
            raise GitError(["merge-tree"], proc.returncode, proc.stderr.decode(errors="replace"))
        fields = proc.stdout.decode(errors="surrogateescape").split("\0")
        tree, rest = fields[0], fields[1:]
        conflicted: list[str] = []
        while rest and rest[0] != "":
            conflicted.append(rest.pop(0))
        rest = rest[1:]
        messages: list[str] = []
        while len(rest) >= 3 and rest[0].isdigit():
            count = int(rest[0])
            kind, text = rest[1 + count], rest[2 + count]
            if kind.startswith("CONFLICT"):
                messages.append(text.strip())
            rest = rest[3 + count:]
        return MergeResult(tree=tree, conflicted=tuple(dict.fromkeys(conflicted)),
                           messages=tuple(messages))

    def blob_bytes(self, tree: str, path: str) -> bytes:
        """The content of ``path`` in ``tree`` (a symlink's target), or b"" when absent."""
        proc = git(["cat-file", "blob", f"{tree}:{path}"], cwd=self.git_dir, check=False)
        return proc.stdout if proc.returncode == 0 else b""

    def blob_text(self, tree: str, path: str, limit: int = 1 << 20) -> str:
        return self.blob_bytes(tree, path)[:limit].decode(errors="replace")

    @staticmethod
    def load_tree(worktree: Path, old: str, tree: str) -> None:
        """Make the worktree's index and files ``tree`` (from the commit ``old`` it is at)."""
        git(["read-tree", "-u", "-m", old, tree], cwd=worktree)

    # -- tasks: what a harness made in a worktree
    def snapshot(self, worktree: Path, parent: str, message: str,
                 author: tuple[str, str]) -> str:
        """Commit the worktree's files as they are now on ``parent``: new, changed and deleted
        files, modes and symlinks (files .gitignore ignores are left out). HEAD moves there."""
        git(["add", "--all", "--", "."], cwd=worktree)
        return self.commit(worktree, parent, message, author)

    def diff_text(self, old: str, new: str) -> str:
        """The diff from commit ``old`` to ``new`` with renames (see :meth:`diff`). Bytes
        that are not UTF-8 are kept as surrogates, which the secret scanner reports rather
        than reads past."""
        return self.diff(old, new, renames=True).decode("utf-8", errors="surrogateescape")

    def carry(self, worktree: Path, old: str, new: str) -> bool:
        """Apply the change from ``old`` to ``new`` to the worktree (index and files, three-way
        where needed); False, changing nothing, when it does not apply."""
        patch = self.diff(old, new, renames=True)
        if not patch:
            return True
        proc = git(["apply", "--index", "--3way", "--whitespace=nowarn", "-"], cwd=worktree,
                   input=patch, check=False)
        if proc.returncode != 0:
            git(["reset", "-q", "--hard", "HEAD"], cwd=worktree, check=False)
            return False
        return True

    # -- landing
    def carries_request(self, commit: str, request_id: str) -> bool:
        """Whether ``commit``'s message has this request's trailer."""
        out = _out(["log", "-1", f"--format=%(trailers:key={TRAILER},valueonly)", commit, "--"],
                   cwd=self.git_dir)
        return request_id in out.split()

    def force_ref(self, ref: str, commit: str) -> None:
        """Point ``ref`` at ``commit`` whatever it was (hyperion's own tracking refs)."""
        git(["update-ref", ref, commit], cwd=self.git_dir)

    def fetch_branch(self, remote: str, branch: str, into: str) -> str | None:
        """Fetch ``branch`` of ``remote`` into the ref ``into``; its commit, or None when the
        remote has no such branch. Raises GitError when the remote cannot be reached."""
        proc = git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", remote,
                    f"+refs/heads/{branch}:{into}"], cwd=self.git_dir, check=False)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            if "couldn't find remote ref" in stderr:
                return None
            raise GitError(["fetch", remote], proc.returncode, stderr)
        return self.resolve(into)

    def push_cas(self, remote: str, commit: str, branch: str, old: str) -> PushRefusal | None:
        """Push ``commit`` to ``branch`` of ``remote`` only if it is still at ``old``.

        None when it landed. A PushRefusal says whether the remote moved (``stale``) or
        refused for its own reasons (a hook, a protected branch). Raises GitError when the
        remote cannot be reached at all."""
        ref = f"refs/heads/{branch}"
        proc = git(["push", "--atomic", "--porcelain", "--no-verify",
                    f"--force-with-lease={ref}:{old}", "--", remote, f"{commit}:{ref}"],
                   cwd=self.git_dir, check=False)
        if proc.returncode == 0:
            return None
        out = proc.stdout.decode(errors="replace")
        lines = [line for line in out.splitlines() if line.startswith("!")]
        if not lines:
            raise GitError(["push", remote], proc.returncode, proc.stderr.decode(errors="replace"))
        detail = lines[0].split("\t")[-1]
        stale = "remote rejected" not in detail
        return PushRefusal(stale=stale, detail=detail.strip())

    @staticmethod
    def checkout_status(top: Path) -> tuple[str | None, str | None]:
        """(the commit HEAD is at, why the working tree cannot be updated in place or None
        when its tracked files are clean), with one ``git status`` after a refresh. HEAD is
        None only with a reason (git status failed).

        This status may write its refresh to the index (as a person's git status does; other
        hyperion commands take no optional locks): read-tree -m later trusts the index's stat
        data, and a file touched but not changed would otherwise look modified to it."""
        proc = git(["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=no",
                    "--ignore-submodules=all"], cwd=top, check=False,
                   env={"GIT_OPTIONAL_LOCKS": "1"})
        if proc.returncode != 0:
            return None, ("git status failed there "
                          f"({proc.stderr.decode(errors='replace').strip()[:200]})")
        head: str | None = None
        staged = unstaged = False
        fields = iter(proc.stdout.split(b"\0"))
        for entry in fields:
            if entry.startswith(b"# branch.oid "):
                head = entry.removeprefix(b"# branch.oid ").decode(errors="replace")
            elif entry[:2] in (b"1 ", b"2 "):
                staged = staged or entry[2:3] != b"."
                unstaged = unstaged or entry[3:4] != b"."
                if entry[:1] == b"2":
                    next(fields, None)          # a rename's original path follows
            elif entry[:2] == b"u ":
                unstaged = True
        if head is None:
            return None, "git status did not say where its HEAD is"
        if unstaged:
            return head, "it has uncommitted changes"
        if staged:
            return head, "it has staged changes"
        return head, None

    @staticmethod
    def move_checkout(top: Path, old: str, new: str) -> str | None:
        """Two-way merge of index and files from old to new; None on success, else git's reason.

        git refuses (changing nothing) when a local change or untracked file would be lost.
        """
        proc = git(["read-tree", "-u", "-m", old, new], cwd=top, check=False)
        return None if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()

    # -- commits requested by notes (read through objects_env when a hook set it)
    def _read(self, args: Sequence[str], *, input: bytes | None = None,
              check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return git(args, cwd=self.git_dir, input=input, env=self.objects_env or None,
                   check=check)

    def object_size(self, sha: str) -> int | None:
        proc = self._read(["cat-file", "-s", sha], check=False)
        return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip().isdigit() \
            else None

    def has_commit(self, sha: str) -> bool:
        return self._read(["cat-file", "-e", f"{sha}^{{commit}}"], check=False).returncode == 0

    def merge_base(self, a: str, b: str) -> str | None:
        proc = self._read(["merge-base", "--end-of-options", a, b], check=False)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    def diff(self, old: str, new: str, *, renames: bool = False) -> bytes:
        """The git-style diff of two commits that `git apply` and the gate take back (modes,
        binary content; renames only when asked), whatever the repository's diff settings
        (no prefixes, relative paths, external drivers, unquoted paths)."""
        return self._read(["-c", "core.quotePath=true", "diff", "--binary", "--full-index",
                           "--find-renames" if renames else "--no-renames", "--no-color",
                           "--no-ext-diff", "--no-textconv", "--no-relative",
                           "--src-prefix=a/", "--dst-prefix=b/", "--end-of-options", old, new,
                           "--"]).stdout

    def commit_origin(self, sha: str) -> CommitOrigin | None:
        proc = self._read(["cat-file", "commit", sha], check=False)
        if proc.returncode != 0:
            return None
        header, _, message = proc.stdout.decode("utf-8", errors="replace").partition("\n\n")
        for line in header.splitlines():
            if line.startswith("author "):
                m = re.match(r"^author (.*) <([^>]*)> (\d+ [+-]\d{4})$", line)
                if m:
                    return CommitOrigin(m.group(1), m.group(2), m.group(3), message)
        return None

    # -- results as notes
    def ref_value(self, ref: str) -> str | None:
        proc = git(["rev-parse", "--verify", "--quiet", "--end-of-options", ref],
                   cwd=self.git_dir, check=False)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    def add_note_lines(self, ref: str, commit: str, lines: Sequence[str], reason: str) -> bool:
        """Add ``lines`` to the note on ``commit`` in ``ref``; False when all were there."""
        return self.add_notes(ref, {commit: list(lines)}, reason) > 0

    # Notes trees fan out at most this deep (ab/cd/ef/<34 hex>): deeper takes ~2**32 notes.
    NOTE_FANOUT_MAX = 3
    _NOTE_OBJECT = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")

    def add_notes(self, ref: str, notes: dict[str, list[str]], reason: str) -> int:
        """Add each commit's lines to its note in ``ref``, all in one notes commit; returns how
        many notes changed (0: every line was there already, and no commit is made).

        Lines already in a note are not added again, so writing the same outcome twice changes
        nothing. A note keeps the fan-out path it has (ab/cdef..., ab/cd/ef..., any depth). A
        new note goes into the deepest folder its commit's prefix already has there, and one
        level further down when that folder fans out: when it has subfolders, or when each of
        the 16 first hex digits of its note names is taken by two notes or more (git's own
        rule, notes.c determine_fanout; git fans out at roughly 100 notes). Notes are not moved
        to a new fan-out the way `git notes` rewrites a whole tree: `git notes` finds a note at
        any depth, and a mixed tree is one git reads and writes too.

        Only the folders on the changed paths are read and written, never the whole notes
        tree. Those folders, the old notes, the new note blobs, folders and notes commit are
        read and written in-process (gitinproc); where it cannot answer exactly as git would,
        git does it with processes that do not grow with the number of notes (one
        `cat-file --batch` for the folders, one for the old notes, one `hash-object` for all new
        blobs, one `mktree --batch` per depth, `commit-tree`). git then swaps the ref, a
        compare-and-swap (`git notes add` would overwrite a concurrent writer's note); the whole
        step is retried when another writer moved the ref in between.
        """
        wanted: dict[str, list[str]] = {}
        for commit, lines in notes.items():
            flat = commit.lower()
            if not self._NOTE_OBJECT.fullmatch(flat):
                raise GitError(["notes"], 1, f"not an object id: {commit[:80]!r}")
            wanted.setdefault(flat, []).extend(lines)
        if not any(wanted.values()):
            return 0
        for _ in range(NOTE_ATTEMPTS):
            old = self._notes_commit(ref)
            folders, placed = self._place_notes(old, wanted)
            if not placed:
                return 0
            root = self._write_notes_tree(folders, placed)
            new = self.commit_tree(root, old, reason + "\n", COMMITTER)
            if self.set_ref(ref, new, old, reason):
                return len(placed)
        raise GitError(["update-ref", ref], 1, f"{ref} kept moving: gave up after "
                       f"{NOTE_ATTEMPTS} attempts to add notes")

    def _notes_commit(self, ref: str) -> str | None:
        if self._inproc is not None:
            answered, commit = self._inproc.ref_target(ref)
            if answered:
                return commit
        return self.ref_value(ref)

    def _place_notes(self, old: str | None, wanted: dict[str, list[str]]
                     ) -> tuple[_Folders, dict[tuple[str, str], str]]:
        """The folders of ``old``'s notes tree on the paths of ``wanted`` (path -> entries),
        and (folder, name) -> the note's new text for each note that changes."""
        depth_max = self.NOTE_FANOUT_MAX
        folders: _Folders = {"": {}}
        if old is not None:
            paths = {self._note_folder(flat, depth)
                     for flat in wanted for depth in range(depth_max + 1)}
            folders = self._read_note_folders(old, sorted(paths))
        found: dict[str, tuple[str, str, str]] = {}   # commit -> (folder, name, blob)
        home: dict[str, str] = {}     # commit without a note -> the deepest folder it has
        for flat in wanted:
            folder, depth = "", 0
            while True:
                entry = folders[folder].get(flat[2 * depth:].encode())
                if entry is not None and entry[0] != b"40000":
                    found[flat] = (folder, flat[2 * depth:], entry[1])
                    break
                child = self._note_folder(flat, depth + 1)
                if depth == depth_max or child not in folders:
                    home[flat] = folder
                    break
                folder, depth = child, depth + 1
        texts = self._read_note_blobs(sorted({blob for _, _, blob in found.values()}))
        placed: dict[tuple[str, str], str] = {}
        new: dict[str, list[tuple[str, str]]] = {}    # folder -> [(commit, text)]
        for flat, lines in wanted.items():
            at = found.get(flat)
            have = [] if at is None else \
                [line for line in texts[at[2]].splitlines() if line.strip()]
            missing = [line for line in dict.fromkeys(lines) if line not in have]
            if not missing:
                continue
            text = "\n".join([*have, *missing]) + "\n"
            if at is not None:
                placed[(at[0], at[1])] = text
            else:
                new.setdefault(home[flat], []).append((flat, text))
        for folder, notes in new.items():
            depth = folder.count("/") + 1 if folder else 0
            if depth < depth_max and self._fans_out(folders[folder],
                                                    [flat[2 * depth:] for flat, _ in notes]):
                depth += 1
            for flat, text in notes:
                placed[(self._note_folder(flat, depth), flat[2 * depth:])] = text
        return folders, placed

    def _read_note_folders(self, old: str, paths: Sequence[str]) -> _Folders:
        """The entries (name -> mode, object id) of each of ``paths`` that is a folder in
        ``old``'s tree ("" is the root), read in-process or by one `cat-file --batch`."""
        if self._inproc is not None:
            found = self._inproc.folders(old, paths)
            if found is not None:
                return {"": {}, **found}
        request = "".join(f"{old}:{path}\n" for path in paths).encode()
        out = git(["cat-file", "--batch"], cwd=self.git_dir, input=request).stdout
        folders: _Folders = {"": {}}
        for path, (kind, data) in zip(paths, self._batch_objects(out, len(paths)), strict=True):
            if kind == "tree":
                folders[path] = self._tree_entries(data, len(old) // 2)
        return folders

    def _read_note_blobs(self, blobs: Sequence[str]) -> dict[str, str]:
        if not blobs:
            return {}
        found = self._inproc.blobs(blobs) if self._inproc is not None else None
        if found is not None:
            return {blob: data.decode("utf-8", errors="replace") for blob, data in found.items()}
        out = git(["cat-file", "--batch"], cwd=self.git_dir,
                  input="".join(f"{blob}\n" for blob in blobs).encode()).stdout
        texts = {}
        for blob, (kind, data) in zip(blobs, self._batch_objects(out, len(blobs)), strict=True):
            if kind != "blob":
                raise GitError(["cat-file", "--batch"], 1, f"note {blob} is {kind}")
            texts[blob] = data.decode("utf-8", errors="replace")
        return texts

    def _write_notes_tree(self, folders: _Folders, placed: dict[tuple[str, str], str]) -> str:
        """Write the note blobs and every folder on their paths, deepest first; the new root
        tree's id."""
        keys = list(placed)
        blobs = self._write_blobs([placed[key].encode() for key in keys])
        changes: _Folders = {}
        for (folder, name), blob in zip(keys, blobs, strict=True):
            changes.setdefault(folder, {})[name.encode()] = (b"100644", blob)
            while folder:      # every folder up to the root changes with it
                folder = folder.rpartition("/")[0]
                changes.setdefault(folder, {})
        written: dict[str, str] = {}    # folder -> its new tree, one depth at a time
        for depth in range(self.NOTE_FANOUT_MAX, -1, -1):
            level = sorted(f for f in changes if (f.count("/") + 1 if f else 0) == depth)
            if not level:
                continue
            for child, tree in written.items():
                parent, _, name = child.rpartition("/")
                changes[parent][name.encode()] = (b"40000", tree)
            trees = self._write_trees([{**folders.get(folder, {}), **changes[folder]}
                                       for folder in level])
            written = dict(zip(level, trees, strict=True))
        return written[""]

    def _write_blobs(self, contents: Sequence[bytes]) -> list[str]:
        """Write blobs as they are (no filters): in-process, else one `hash-object`."""
        if self._inproc is not None:
            ids = [self._inproc.write_blob(data) for data in contents]
            if all(ids):
                return [oid for oid in ids if oid is not None]
        with tempfile.TemporaryDirectory(prefix="hyperion-notes-") as tmp:
            listing = []
            for i, data in enumerate(contents):
                file = Path(tmp) / str(i)
                file.write_bytes(data)
                listing.append(f"{file}\n")
            out = git(["hash-object", "-w", "--no-filters", "--stdin-paths"],
                      cwd=self.git_dir, input="".join(listing).encode()).stdout
        return out.decode().split()

    def _write_trees(self, trees: Sequence[dict[bytes, tuple[bytes, str]]]) -> list[str]:
        """Write trees of entries (name -> mode, object id): in-process, else one
        `mktree --batch`."""
        if self._inproc is not None:
            ids = [self._inproc.write_tree(entries) for entries in trees]
            if all(ids):
                return [oid for oid in ids if oid is not None]
        batch = [b"".join(b"%s %s %s\t%s\0" % (mode, self._MKTREE_TYPE.get(mode, b"blob"),
                                                 oid.encode(), name)
                          for name, (mode, oid) in entries.items()) + b"\0"
                 for entries in trees]
        # --missing: skip looking up every entry (they come from the tree read above or were
        # just written); it halves the cost of a folder with many notes.
        return git(["mktree", "-z", "--missing", "--batch"], cwd=self.git_dir,
                   input=b"".join(batch)).stdout.decode().split()

    _MKTREE_TYPE = {b"40000": b"tree", b"160000": b"commit"}

    @staticmethod
    def _note_folder(flat: str, depth: int) -> str:
        """The folder of a note at fan-out ``depth``: "", "ab", "ab/cd"..."""
        return "/".join(flat[2 * j:2 * j + 2] for j in range(depth))

    @staticmethod
    def _fans_out(entries: dict[bytes, tuple[bytes, str]], new_names: Sequence[str]) -> bool:
        """Whether git would fan a notes folder out: each of the 16 hex digits starts a
        subfolder's name or the names of two notes or more (notes.c determine_fanout)."""
        taken: dict[str, int] = {}
        for raw, (mode, _) in entries.items():
            name = raw.decode(errors="replace")
            if not name or not all(c in "0123456789abcdef" for c in name):
                continue       # not a note: git keeps it but does not count it
            taken[name[0]] = taken.get(name[0], 0) + (2 if mode == b"40000" else 1)
        for name in new_names:
            taken[name[0]] = taken.get(name[0], 0) + 1
        return all(taken.get(digit, 0) >= 2 for digit in "0123456789abcdef")

    @staticmethod
    def _batch_objects(out: bytes, count: int) -> list[tuple[str, bytes]]:
        """(type, content) of each object `cat-file --batch` printed; ("missing", b"") for a
        name it could not find."""
        objects, pos = [], 0
        for _ in range(count):
            end = out.find(b"\n", pos)
            if end < 0:
                raise GitError(["cat-file", "--batch"], 1, "its output ended early")
            header = out[pos:end].split(b" ")
            pos = end + 1
            if len(header) == 3 and header[2].isdigit():
                size = int(header[2])
                objects.append((header[1].decode(errors="replace"), out[pos:pos + size]))
                pos += size + 1
            else:
                objects.append(("missing", b""))
        return objects

    @staticmethod
    def _tree_entries(data: bytes, oid_bytes: int) -> dict[bytes, tuple[bytes, str]]:
        """A raw tree object's entries: name -> (mode, object id)."""
        entries, pos = {}, 0
        while pos < len(data):
            space = data.find(b" ", pos)
            nul = data.find(b"\0", max(space, 0))
            if space < 0 or nul < 0 or nul + 1 + oid_bytes > len(data):
                raise GitError(["cat-file", "--batch"], 1, "a notes folder is not a valid tree")
            entries[data[space + 1:nul]] = (data[pos:space],
                                             data[nul + 1:nul + 1 + oid_bytes].hex())
            pos = nul + 1 + oid_bytes
        return entries

    # -- remote mode
    @staticmethod
    def init_bare(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        git(["init", "--quiet", "--bare", "--end-of-options", str(path)], cwd=path.parent)

    def fetch(self, url: str, refspecs: Sequence[str]) -> None:
        git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
             "--end-of-options", url, *refspecs], cwd=self.git_dir)

    def push_atomic(self, url: str, updates: Sequence[tuple[str, str, str | None]]) -> str | None:
        """Push ``(local ref, remote ref, expected remote value or None for absent)`` all or
        nothing, each a compare-and-swap on the remote (--force-with-lease); None on success,
        else git's reason."""
        args = ["push", "--quiet", "--atomic", "--porcelain", "--no-verify"]
        for _, remote_ref, expected in updates:
            args.append(f"--force-with-lease={remote_ref}:{expected or ''}")
        args += ["--end-of-options", url, *(f"{local}:{remote}" for local, remote, _ in updates)]
        proc = git(args, cwd=self.git_dir, check=False)
        if proc.returncode == 0:
            return None
        return (proc.stderr + proc.stdout).decode(errors="replace").strip()[:2000]

    def refs(self, prefix: str) -> dict[str, str]:
        """Ref name -> commit, for the refs under ``prefix``."""
        out = _out(["for-each-ref", "--format=%(refname) %(objectname)", prefix],
                   cwd=self.git_dir)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return git(["merge-base", "--is-ancestor", ancestor, descendant], cwd=self.git_dir,
                   check=False).returncode == 0

    def set_ref(self, ref: str, new: str, old: str | None, reason: str) -> bool:
        """Compare-and-swap any ref (``old`` None: it must not exist yet), in-process where
        that is certain to do what git does (refswap), else with git. Its reflog names
        hyperion as who moved it."""
        if self._inproc is not None:
            moved = self._inproc.swap_ref(ref, new, old, reason, COMMITTER)
            if moved is not None:
                return moved
        return git(["update-ref", "-m", reason, ref, new, old or ZERO_OID], cwd=self.git_dir,
                   env=_COMMITTER_ENV, check=False).returncode == 0


# A notes tree's folders read for one write: path ("" the root, "ab", "ab/cd") -> its entries
# (name -> mode, object id).
_Folders = dict[str, dict[bytes, tuple[bytes, str]]]
