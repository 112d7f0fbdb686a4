"""Putting a request's patch onto the target's tip in a worktree, with a three-way fallback.

First ``git apply --index`` on the tip (git checks every hunk before it writes anything, so a
patch that does not apply changes nothing). When it does not apply there and the request names
a base that differs from the tip, the patch is applied to its base instead (in a private index,
no worktree) and that result is merged into the tip with ``git merge-tree``: the usual case of
an agent that worked on a slightly old checkout. A merge that conflicts fails
``apply_conflict`` with a report a person can act on: the files, the
conflicting hunks (with git's conflict markers), and the base and target commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperion.gitops import COMMITTER, GitRepo

#: Limits on what a conflict report copies out of the merged files.
MAX_REPORT_FILES = 50
MAX_HUNKS_PER_FILE = 20
MAX_HUNK_CHARS = 4000
_OURS, _THEIRS = "<<<<<<<", ">>>>>>>"


@dataclass
class ApplyConflict(Exception):
    """The patch cannot be put onto the tip; ``report`` is saved as an artifact."""

    message: str
    report: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Applied:
    """How the patch went on. ``own_tree`` is the tree of the patch on its own base when it
    took the 3-way merge: the manifest's sha256 values describe that, not the merged files."""

    method: str                 # "clean" or "3way"
    own_tree: str | None = None


def apply_patch(repo: GitRepo, worktree: Path, patch: str, *, tip: str,
                base_commit: str | None, want_own_tree: bool = False,
                merge: bool = True) -> Applied:
    """Apply ``patch`` to the worktree (index and files), which is clean at ``tip``.

    ``want_own_tree``: also make ``own_tree`` when the patch applied cleanly onto a tip that
    is not its base (the tip may have changed the same files elsewhere). ``merge``: fall back
    to the 3-way merge (not into a worktree not yet proven clean: the merge may write files
    the patch does not name). Raises :class:`ApplyConflict`."""
    reason = repo.try_apply(worktree, patch)
    if reason is None:
        own_tree = None
        if want_own_tree and base_commit is not None and base_commit != tip:
            own_tree, _ = repo.apply_to_commit(base_commit, patch)
        return Applied("clean", own_tree=own_tree)
    report: dict[str, Any] = {"target_sha": tip, "base_sha": base_commit,
                              "apply_check": reason[:4000]}
    if not merge:
        raise ApplyConflict(f"the patch does not apply cleanly to {tip[:12]}", report)
    first = reason.splitlines()[0][:200] if reason else "no reason given"
    if base_commit is None or base_commit == tip:
        raise ApplyConflict(f"the patch does not apply to the target at {tip[:12]} ({first}) "
                            "and names no older base to merge from; rebase it onto the "
                            "current target", report)
    tree, why = repo.apply_to_commit(base_commit, patch)
    if tree is None:
        report["apply_to_base"] = why[:4000]
        raise ApplyConflict(f"the patch applies neither to the target at {tip[:12]} nor to "
                            f"its own base {base_commit[:12]} ({why.splitlines()[0][:200]}); "
                            "regenerate it against its base", report)
    side = repo.commit_tree(tree, base_commit, "hyperion: the request on its base\n", COMMITTER)
    merged = repo.merge_trees(tip, side)
    if not merged.clean:
        files = [{"path": path, "hunks": conflict_hunks(repo.blob_text(merged.tree, path))}
                 for path in merged.conflicted[:MAX_REPORT_FILES]]
        report.update({"conflicted": list(merged.conflicted), "messages": list(merged.messages),
                       "files": files})
        names = ", ".join(merged.conflicted[:5])
        more = f" and {len(merged.conflicted) - 5} more" if len(merged.conflicted) > 5 else ""
        raise ApplyConflict(f"the patch conflicts with the target at {tip[:12]} even with a "
                            f"3-way merge from its base {base_commit[:12]} in {names}{more}; "
                            "rebase it onto the current target (see the conflict report)",
                            report)
    repo.load_tree(worktree, tip, merged.tree)
    return Applied("3way", own_tree=tree)


def conflict_hunks(text: str) -> list[str]:
    """The ``<<<<<<<`` ... ``>>>>>>>`` blocks of a merged file, each capped."""
    hunks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line.startswith(_OURS):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith(_THEIRS):
                hunks.append("\n".join(current)[:MAX_HUNK_CHARS])
                current = None
                if len(hunks) >= MAX_HUNKS_PER_FILE:
                    break
    return hunks


def render_report(request_id: str, target: str, base: str | None,
                  report: dict[str, Any]) -> str:
    """The report as saved: JSON a script can read, with the request's names in it."""
    return json.dumps({"request": request_id, "target": target, "base": base, **report},
                      indent=2, ensure_ascii=False) + "\n"
