"""Path safety against the tree a patch lands on: symlinks and submodules of the target commit.

A path can be harmless as text and still leave the repository: ``link/passwd`` writes to
``/etc/passwd`` when the target tree holds ``link -> /etc``. Refused with ``path_traversal``:

* a patch path (or rename source) below a symlink or a gitlink of the target tree, or below a
  symlink the same patch creates;
* a symlink the patch creates or rewrites (mode ``120000``) whose target is absolute, empty, has
  a control character, reaches into ``.git``, climbs out of the repository once resolved from
  the link's folder, or resolves through a symlink or gitlink of the tree or of the patch (the
  resolution would then depend on where that one points; it is refused rather than followed);
* a gitlink (mode ``160000``: a submodule) added, changed or removed, unless the policy says
  ``allow_submodules: true``.

Only the touched paths, their folders and the folders a new link points through are listed
(``git ls-tree`` with literal paths), so the cost follows the patch, not the repository. Intake
checks against the target's tip; the worker checks again against the exact commit it applies
onto, since the target may have moved in between.
"""

from __future__ import annotations

from hyperion.errors import Code, GateError
from hyperion.gate.patch import FilePatch, Operation
from hyperion.gate.paths import _CONTROL, _is_git_alias, describe, safe_field
from hyperion.gitops import GitRepo

SYMLINK = "120000"
GITLINK = "160000"
MAX_LINK_BYTES = 4096


def _folders(path: str) -> list[str]:
    """The proper ancestor folders of a path: a/b/c -> [a, a/b]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _refuse(path: str, why: str, fix: str) -> GateError:
    return GateError(Code.PATH_TRAVERSAL, f"{describe(path)} {why}; {fix}",
                     path=safe_field(path))


def check_against_tree(repo: GitRepo, commit: str, files: list[FilePatch], *,
                       allow_submodules: bool = False) -> None:
    """Raise GateError (``path_traversal``) unless ``files`` stay inside the repository when
    applied onto ``commit``."""
    touched = [p for f in files for p in (f.path, f.old_path) if p is not None]
    wanted = set(touched)
    for path in touched:
        wanted.update(_folders(path))
    modes = repo.tree_entries(commit, sorted(wanted))
    new_links = {f.path for f in files
                 if f.operation is not Operation.DELETE and f.new_mode == SYMLINK}
    for f in files:
        for checked in (f.path, f.old_path):
            if checked is None:
                continue
            path = checked
            for folder in _folders(path):
                mode = modes.get(folder)
                if mode == SYMLINK or folder in new_links:
                    raise _refuse(path, f"lies beyond the symbolic link {describe(folder)}",
                                  "change the files where the link points, not through it")
                if mode == GITLINK:
                    raise _refuse(path, f"lies inside the submodule {describe(folder)}",
                                  "change the submodule in its own repository")
        _check_gitlink(f, modes, allow_submodules)
    links = [(f, target) for f in files
             if (target := _link_target(repo, commit, f, modes)) is not None]
    if links:
        _check_link_targets(repo, commit, links, modes, new_links)


def _effective_mode(f: FilePatch, modes: dict[str, str]) -> str | None:
    """The mode the path has after the patch."""
    if f.new_mode is not None:
        return f.new_mode
    source = f.old_path if f.old_path is not None else f.path
    return modes.get(source)


def _check_gitlink(f: FilePatch, modes: dict[str, str], allow: bool) -> None:
    if allow:
        return
    involved = {f.old_mode, f.new_mode, modes.get(f.path)}
    if f.old_path is not None:
        involved.add(modes.get(f.old_path))
    if GITLINK in involved:
        raise _refuse(f.path, "is a submodule (a gitlink, mode 160000), and the policy does "
                      "not allow submodule changes", "set `allow_submodules: true` in the "
                      "policy if such changes may land, or leave the submodule out")


def _link_target(repo: GitRepo, commit: str, f: FilePatch,
                 modes: dict[str, str]) -> str | None:
    """The target a symlink has after the patch; None when the path is not a symlink then."""
    if f.operation is Operation.DELETE or _effective_mode(f, modes) != SYMLINK:
        return None
    if f.binary:
        raise _refuse(f.path, "is a symbolic link written by a binary patch, which cannot be "
                      "checked", "send the link as a text diff")
    source = f.old_path if f.old_path is not None else f.path
    old = repo.read_blob(commit, source, MAX_LINK_BYTES) if source in modes else None
    if f.added_text or f.removed_lines:
        # A link's content is one line: the hunk must replace that line as a whole.
        if len(f.added_text) != 1 or (old is not None and b"\n" in old):
            raise _refuse(f.path, "is a symbolic link whose new target is not one line",
                          "a link points to one path")
        return f.added_text[0]
    return old.decode("utf-8", "surrogateescape") if old is not None else ""


def _check_link_targets(repo: GitRepo, commit: str, links: list[tuple[FilePatch, str]],
                        modes: dict[str, str], new_links: set[str]) -> None:
    resolved: list[tuple[FilePatch, str, list[str]]] = []
    for f, target in links:
        if not target:
            raise _refuse(f.path, "is a symbolic link with an empty target",
                          "give the link a relative target inside the repository")
        if _CONTROL.search(target) or "\\" in target:
            raise _refuse(f.path, "is a symbolic link whose target has a control character "
                          "or a backslash", "give the link a plain relative target")
        if target.startswith("/"):
            raise _refuse(f.path, f"is a symbolic link to the absolute path {describe(target)}",
                          "links must point inside the repository, relatively")
        stack: list[str] = []
        walked: list[str] = []
        for part in [*f.path.split("/")[:-1], *target.split("/")]:
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise _refuse(f.path, f"is a symbolic link to {describe(target)}, which "
                                  "leaves the repository", "links must point inside it")
                stack.pop()
                continue
            if _is_git_alias(part):
                raise _refuse(f.path, f"is a symbolic link to {describe(target)}, which "
                              "reaches into .git", "links must not point into .git")
            stack.append(part)
            walked.append("/".join(stack))
        resolved.append((f, target, walked))
    # Every folder the target passes through, and the target itself, must not be a link or a
    # submodule: the resolution would then continue wherever that one points.
    more = sorted({w for _, _, walked in resolved for w in walked} - modes.keys())
    modes = {**modes, **(repo.tree_entries(commit, more) if more else {})}
    for f, target, walked in resolved:
        for step in walked:
            if modes.get(step) in (SYMLINK, GITLINK) or step in new_links:
                raise _refuse(f.path, f"is a symbolic link to {describe(target)}, which "
                              f"resolves through the link or submodule {describe(step)}",
                              "point the link at the final path directly")
