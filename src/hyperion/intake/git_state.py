"""What the git sources have already taken: the one owner of state_dir/git-inbox/.

    git-inbox/<repo>/branch       the inbox branch commit processed last
    git-inbox/<repo>/notes        the request-notes commit processed last
    git-inbox/<repo>/seen/<key>   one empty file per ingested object: the blob id of a request
                                  file, or <commit>-<blob> of a request note

The seen set, not the last commit, is what keeps a request from landing twice: after a history
rewrite (a force push) of the inbox branch the same files come back as new commits, but with
the same blob ids. A marker is written after accept() made the record durable; a crash in
between re-reads the file, and accept() of the same bytes is a no-op.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hyperion.fsutil import fsync_dir, write_atomic

_KEY = re.compile(r"^[0-9a-f]{40}(-[0-9a-f]{40})?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


class GitInboxState:
    def __init__(self, state_dir: Path, repo: str) -> None:
        self.root = state_dir / "git-inbox" / repo
        self.seen_dir = self.root / "seen"
        self.seen_dir.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = {n for n in os.listdir(self.seen_dir) if _KEY.match(n)}

    def last(self, which: str) -> str | None:
        """The commit of ``which`` ("branch" or "notes") processed last, if any."""
        try:
            value = (self.root / which).read_text().strip()
        except FileNotFoundError:
            return None
        return value if _SHA.match(value) else None

    def set_last(self, which: str, commit: str) -> None:
        write_atomic(self.root / which, f"{commit}\n".encode())

    def seen(self, key: str) -> bool:
        return key in self._seen

    def mark(self, key: str) -> None:
        if not _KEY.match(key) or key in self._seen:
            return
        fd = os.open(self.seen_dir / key, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
        fsync_dir(self.seen_dir)
        self._seen.add(key)
