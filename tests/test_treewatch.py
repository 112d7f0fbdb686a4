"""TreeWatch (treewatch.py) on real folders with real inotify: whatever is done to a tree's
files or folders after a mark is seen, by this process or a child; reading is not; folders
made between two marks are watched from the next one on."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperion.treewatch import TreeWatch


def _tree(root: Path) -> Path:
    (root / "src" / "pkg" / "deep").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "empty").mkdir()
    (root / "README").write_text("readme\n")
    (root / "src" / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "src" / "pkg" / "deep" / "data.txt").write_text("0123456789\n")
    (root / "docs" / "guide.txt").write_text("guide\n")
    return root


def _watch(root: Path) -> TreeWatch:
    watch = TreeWatch.open(root)
    assert watch is not None
    assert watch.mark()
    return watch


def _mmap_write(path: Path) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        mapped[0:1] = b"X"


CHANGES: dict[str, Callable[[Path], None]] = {
    "create": lambda r: (r / "src" / "pkg" / "deep" / "new.txt").write_text("new\n"),
    "overwrite-same-size": lambda r: (r / "src" / "pkg" / "mod.py").write_text("VALUE = 2\n"),
    "append": lambda r: open(r / "docs" / "guide.txt", "a").close(),
    "truncate": lambda r: os.truncate(r / "README", 0),
    "delete": lambda r: (r / "docs" / "guide.txt").unlink(),
    "chmod": lambda r: (r / "README").chmod(0o755),
    "touch": lambda r: os.utime(r / "src" / "pkg" / "deep" / "data.txt", (1, 1)),
    "rename": lambda r: (r / "README").rename(r / "README.old"),
    "mkdir": lambda r: (r / "empty" / "made").mkdir(),
    "rmdir": lambda r: (r / "empty").rmdir(),
    "symlink": lambda r: (r / "docs" / "link").symlink_to("/etc"),
    "folder-to-symlink": lambda r: (shutil.rmtree(r / "docs"), (r / "docs").symlink_to("/")),
    "mmap": lambda r: _mmap_write(r / "src" / "pkg" / "deep" / "data.txt"),
    "hard-link-inside": lambda r: os.link(r / "README", r / "docs" / "README"),
}


def test_reading_and_listing_are_not_changes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    for path in root.rglob("*"):
        path.stat()
        if path.is_file():
            path.read_bytes()
    subprocess.run(["cat", str(root / "README")], check=True, capture_output=True)
    subprocess.run(["ls", "-laR", str(root)], check=True, capture_output=True)
    assert not watch.changed()
    watch.close()


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_is_seen(tmp_path: Path, change: str) -> None:
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    assert not watch.changed()
    CHANGES[change](root)
    assert watch.changed()
    watch.close()


def test_a_change_made_by_a_child_process_is_seen(tmp_path: Path) -> None:
    """As a check makes it: from another process, deep in the tree, then the process ends."""
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    subprocess.run([sys.executable, "-c", "import pathlib; pathlib.Path("
                    "'src/pkg/deep/__pycache__').mkdir()"], cwd=root, check=True)
    assert watch.changed()
    watch.close()


def test_folders_made_between_marks_are_watched_from_the_next_mark(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    # What our own commands do between two windows (an apply adding files in new folders).
    (root / "new" / "deeper" / "deepest").mkdir(parents=True)
    (root / "new" / "deeper" / "file.txt").write_text("x\n")
    shutil.rmtree(root / "docs")
    assert watch.changed()
    assert watch.mark()
    assert not watch.changed()
    (root / "new" / "deeper" / "deepest" / "junk").write_text("left by a check\n")
    assert watch.changed()
    watch.close()


def _move_a_folder(root: Path) -> Path:
    (root / "src" / "pkg").rename(root / "src" / "moved")
    return root / "src" / "moved" / "deep"


def _replace_the_root(root: Path) -> Path:
    shutil.rmtree(root)
    _tree(root)
    return root / "docs"


@pytest.mark.parametrize("rearrange", [_move_a_folder, _replace_the_root])
def test_folders_moved_or_a_root_replaced_have_the_tree_watched_afresh(
        tmp_path: Path, rearrange: Callable[[Path], Path]) -> None:
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    inside = rearrange(root)
    assert watch.changed()
    assert watch.mark()
    assert not watch.changed()
    (inside / "junk").write_text("x\n")
    assert watch.changed()
    watch.close()


def test_a_tree_that_cannot_be_watched_has_no_watch(tmp_path: Path) -> None:
    assert TreeWatch.open(tmp_path / "absent") is None
    root = _tree(tmp_path / "tree")
    watch = _watch(root)
    shutil.rmtree(root)
    assert not watch.mark()                  # gone for good: it cannot tell any more
    assert watch.changed()
    watch.close()
    assert watch.changed()


def test_a_closed_watch_holds_no_descriptor(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    before = len(os.listdir("/proc/self/fd"))
    watches = [_watch(root) for _ in range(20)]
    assert len(os.listdir("/proc/self/fd")) == before + 20
    for watch in watches:
        watch.close()
        watch.close()
    assert len(os.listdir("/proc/self/fd")) == before


def _tree_and_beside(tmp_path: Path) -> tuple[Path, Path, TreeWatch]:
    """A tree, and a folder outside it (as a worktree's folder in its repository) watched
    by itself beside it."""
    root = _tree(tmp_path / "tree")
    beside = tmp_path / "repo" / "worktrees" / "w0"
    (beside / "logs").mkdir(parents=True)
    (beside / "HEAD").write_text("a" * 40 + "\n")
    watch = TreeWatch.open(root, (beside,))
    assert watch is not None and watch.mark() and not watch.changed()
    return root, beside, watch


@pytest.mark.parametrize("change", [
    lambda b: (b / "HEAD").write_text("b" * 40 + "\n"),
    lambda b: os.utime(b / "HEAD", (1, 1)),
    lambda b: ((b / "index.lock").write_text("x"), (b / "index.lock").rename(b / "index")),
    lambda b: b.rename(b.parent / "w0.gone"),
    # The folder above replaced by a copy: no event reaches the watch, the path now names
    # another folder.
    lambda b: (shutil.copytree(b.parent, b.parent.with_name("copy")),
               b.parent.rename(b.parent.with_name("old")),
               b.parent.with_name("copy").rename(b.parent)),
], ids=["write", "touch", "renamed-over", "moved-away", "parent-replaced"])
def test_a_change_in_a_folder_watched_beside_the_tree_is_seen(
        tmp_path: Path, change: Callable[[Path], object]) -> None:
    _root, beside, watch = _tree_and_beside(tmp_path)
    try:
        change(beside)
        assert watch.changed()
    finally:
        watch.close()


def test_a_folder_watched_beside_the_tree_is_watched_by_itself(tmp_path: Path) -> None:
    """Its own files count, not what is inside its folders (a worktree's reflog), and a
    folder made in it between marks gets no watch."""
    _root, beside, watch = _tree_and_beside(tmp_path)
    try:
        (beside / "logs" / "HEAD").write_text("reflog line\n")
        assert not watch.changed()
        (beside / "refs").mkdir()
        assert watch.changed()
        assert watch.mark() and not watch.changed()
        (beside / "refs" / "x").write_text("x\n")
        assert not watch.changed()
    finally:
        watch.close()
