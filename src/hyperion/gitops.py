"""Every git operation hyperion performs. No other module runs git.

Git is run as argv (never a shell) with repository hooks and fsmonitor disabled: a repository
may point core.hooksPath at a tracked folder, which a request could change. The environment is
stripped of GIT_* variables inherited from whoever started hyperion.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SAFE_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.untrackedCache=false",
    "-c", "advice.detachedHead=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)
COMMITTER = ("hyperion", "hyperion@localhost")
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
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    if extra:
        env.update(extra)
    return env


def git(args: Sequence[str], *, cwd: Path, input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["git", *SAFE_CONFIG, *args], cwd=cwd, input=input,
                          capture_output=True, env=_env(env), check=False,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _out(args: Sequence[str], *, cwd: Path) -> str:
    return git(args, cwd=cwd).stdout.decode().strip()


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


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise GitError(["rev-parse"], 128, f"{path} does not exist")
        out = _out(["rev-parse", "--absolute-git-dir", "--is-bare-repository"], cwd=path)
        git_dir, bare = out.splitlines()
        self.git_dir = Path(git_dir)
        self.bare = bare == "true"

    # -- reading
    def resolve(self, rev: str) -> str | None:
        proc = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
                   cwd=self.git_dir, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def branch_commit(self, branch: str) -> str | None:
        return self.resolve(f"refs/heads/{branch}")

    def tree_entries(self, commit: str, paths: Sequence[str]) -> dict[str, str]:
        """The mode (``100644``, ``120000`` symlink, ``160000`` gitlink, ``040000`` folder...)
        of each of ``paths`` that exists in ``commit``'s tree. Only these paths are listed, not
        the whole tree; a path below a symlink or gitlink is not listed (ask for its folders).
        """
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
        top = Path(_out(["rev-parse", "--show-toplevel"], cwd=self.path))
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

    def prune_worktrees(self) -> None:
        """Forget worktrees whose folders are gone."""
        git(["worktree", "prune"], cwd=self.git_dir, check=False)

    # -- applying and committing (in a worktree)
    @staticmethod
    def apply_check(worktree: Path, patch: str) -> str | None:
        """None when the patch applies to the worktree's index and files; else git's reason."""
        proc = git(["apply", "--check", "--index", "--whitespace=nowarn", "-"], cwd=worktree,
                   input=patch.encode(), check=False)
        return None if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()

    @staticmethod
    def apply(worktree: Path, patch: str) -> None:
        # --index is atomic across files: all of the patch applies, or none of it.
        git(["apply", "--index", "--whitespace=nowarn", "-"], cwd=worktree, input=patch.encode())

    @staticmethod
    def commit(worktree: Path, parent: str, message: str, author: tuple[str, str]) -> str:
        tree = _out(["write-tree"], cwd=worktree)
        env = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
               "GIT_COMMITTER_NAME": COMMITTER[0], "GIT_COMMITTER_EMAIL": COMMITTER[1]}
        sha = git(["commit-tree", tree, "-p", parent, "-F", "-"], cwd=worktree,
                  input=message.encode(), env=env).stdout.decode().strip()
        git(["update-ref", "--no-deref", "HEAD", sha], cwd=worktree)
        return sha

    # -- landing
    def compare_and_swap(self, branch: str, new: str, old: str, reason: str) -> bool:
        proc = git(["update-ref", "-m", reason, f"refs/heads/{branch}", new, old],
                   cwd=self.git_dir, check=False)
        return proc.returncode == 0

    @staticmethod
    def checkout_dirty(top: Path) -> str | None:
        """Why the working tree cannot be updated in place, or None when it is clean."""
        git(["update-index", "-q", "--refresh"], cwd=top, check=False)
        if git(["diff-files", "--quiet", "--ignore-submodules"], cwd=top,
               check=False).returncode != 0:
            return "it has uncommitted changes"
        if git(["diff-index", "--cached", "--quiet", "--ignore-submodules", "HEAD", "--"],
               cwd=top, check=False).returncode != 0:
            return "it has staged changes"
        return None

    @staticmethod
    def checkout_head(top: Path) -> str | None:
        proc = git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd=top, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    @staticmethod
    def move_checkout(top: Path, old: str, new: str) -> str | None:
        """Two-way merge of index and files from old to new; None on success, else git's reason.

        git refuses (changing nothing) when a local change or untracked file would be lost.
        """
        proc = git(["read-tree", "-u", "-m", old, new], cwd=top, check=False)
        return None if proc.returncode == 0 else proc.stderr.decode(errors="replace").strip()
