"""Path safety against the target's tree: symlinks and gitlinks of a real repository, at intake
and again in the worker against the commit it applies onto."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Setup, git, make_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion.errors import Code, GateError
from hyperion.gate.patch import parse_patch
from hyperion.gate.tree import check_against_tree
from hyperion.gitops import GitRepo

SUB_SHA = "34ed534fa65f0c6634f8606abb21db4120a3016c"


def new_link(path: str, target: str) -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 120000\nindex 0000000..1234567\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{target}\n"
            "\\ No newline at end of file\n")


def new_file(path: str, text: str = "x") -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1234567\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{text}\n")


def repo_with_links(tmp_path: Path) -> tuple[GitRepo, str]:
    work = make_repo(tmp_path / "r", {"app.py": "VALUE = 1\n", "docs/readme.txt": "hi\n",
                                      "deep/er/file.txt": "x\n"})
    os.symlink("/etc", work / "etc-link")
    os.symlink("..", work / "docs" / "up")
    os.symlink("deep/er", work / "inner")
    git(work, "add", "-A")
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{SUB_SHA},vendor/sub")
    git(work, "commit", "-q", "-m", "links")
    repo = GitRepo(work)
    tip = repo.branch_commit("main")
    assert tip is not None
    return repo, tip


def refused(repo: GitRepo, tip: str, patch: str, **kw: bool) -> str:
    with pytest.raises(GateError) as info:
        check_against_tree(repo, tip, parse_patch(patch), **kw)
    assert info.value.info.code is Code.PATH_TRAVERSAL
    return info.value.info.message


def test_tree_entries_lists_only_what_is_asked(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    modes = repo.tree_entries(tip, ["etc-link", "etc-link/passwd", "docs/up", "vendor/sub",
                                    "vendor/sub/x", "app.py", "nothere", "a*"])
    assert modes == {"etc-link": "120000", "docs/up": "120000", "vendor/sub": "160000",
                     "app.py": "100644"}


def test_paths_beyond_a_symlink_of_the_tree_are_refused(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    assert "beyond the symbolic link 'etc-link'" in refused(repo, tip,
                                                             new_file("etc-link/passwd"))
    assert "docs/up" in refused(repo, tip, new_file("docs/up/app.py"))
    # Even a link that stays inside: writing through it is writing somewhere else.
    refused(repo, tip, new_file("inner/new.txt"))
    check_against_tree(repo, tip, parse_patch(new_file("deep/er/new.txt")))


def test_paths_inside_a_submodule_are_refused(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    assert "inside the submodule" in refused(repo, tip, new_file("vendor/sub/x.c"),
                                             allow_submodules=True)


@pytest.mark.parametrize(("link", "target", "why"), [
    ("l", "/etc/passwd", "absolute"),
    ("l", "..", "leaves the repository"),
    ("docs/l", "../../x", "leaves the repository"),
    ("docs/l", "a/../../../x", "leaves the repository"),
    ("l", ".git/config", ".git"),
    ("docs/l", "../.GIT/hooks", ".git"),
    ("l", "etc-link/passwd", "resolves through"),
    ("l", "docs/up", "resolves through"),
    ("l", "vendor/sub/x", "resolves through"),
])
def test_new_symlinks_must_stay_inside(tmp_path: Path, link: str, target: str,
                                       why: str) -> None:
    repo, tip = repo_with_links(tmp_path)
    assert why in refused(repo, tip, new_link(link, target))


@pytest.mark.parametrize(("link", "target"), [
    ("l", "app.py"), ("docs/l", "../app.py"), ("docs/l", "readme.txt"), ("l", "."),
    ("l", "deep/er/file.txt"), ("l", "not/yet/there"),
])
def test_symlinks_inside_the_repository_pass(tmp_path: Path, link: str, target: str) -> None:
    repo, tip = repo_with_links(tmp_path)
    check_against_tree(repo, tip, parse_patch(new_link(link, target)))


def test_a_path_beyond_a_link_the_same_patch_creates_is_refused(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    patch = new_link("docs/l2", "readme.txt") + new_file("docs/l2/x")
    assert "docs/l2" in refused(repo, tip, patch)
    assert "resolves through" in refused(repo, tip, new_link("a", "docs") +
                                         new_link("b", "a/readme.txt"))


def test_rewriting_an_existing_link_is_checked_without_a_mode_line(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    patch = ("diff --git a/inner b/inner\nindex 1111111..2222222\n--- a/inner\n+++ b/inner\n"
             "@@ -1 +1 @@\n-deep/er\n\\ No newline at end of file\n+/root\n"
             "\\ No newline at end of file\n")
    assert "absolute" in refused(repo, tip, patch)
    # A rename keeps the link's target: checked from the tree, relative to the new folder.
    rename = ("diff --git a/docs/up b/up\nsimilarity index 100%\nrename from docs/up\n"
              "rename to up\n")
    assert "leaves the repository" in refused(repo, tip, rename)
    inside = ("diff --git a/inner b/docs/inner\nsimilarity index 100%\nrename from inner\n"
              "rename to docs/inner\n")
    check_against_tree(repo, tip, parse_patch(inside))


def test_gitlinks_need_the_policy(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    add = (f"diff --git a/lib b/lib\nnew file mode 160000\nindex 0000000..{SUB_SHA[:7]}\n"
           f"--- /dev/null\n+++ b/lib\n@@ -0,0 +1 @@\n+Subproject commit {SUB_SHA}\n")
    assert "allow_submodules" in refused(repo, tip, add)
    check_against_tree(repo, tip, parse_patch(add), allow_submodules=True)
    bump = (f"diff --git a/vendor/sub b/vendor/sub\nindex {SUB_SHA[:7]}..1234567 160000\n"
            f"--- a/vendor/sub\n+++ b/vendor/sub\n@@ -1 +1 @@\n-Subproject commit {SUB_SHA}\n"
            f"+Subproject commit {'1' * 40}\n")
    refused(repo, tip, bump)
    check_against_tree(repo, tip, parse_patch(bump), allow_submodules=True)


def test_intake_refuses_a_write_through_a_symlink_of_the_target(setup: Setup) -> None:
    os.symlink("/etc", setup.repo / "cfg")
    git(setup.repo, "add", "-A")
    git(setup.repo, "commit", "-q", "-m", "a link")
    req = {"kind": "change", "version": 1, "id": "through-1", "agent": "agent-1",
           "repo": "demo", "title": "write through a link", "patch": new_file("cfg/evil"),
           "changes": [{"path": "cfg/evil", "operation": "add"}]}
    setup.drop("t.json", req)
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("through-1")
    assert record["state"] == "rejected"
    assert record["error"]["code"] == "path_traversal"
    assert "cfg" in record["error"]["message"]


def test_the_worker_checks_again_against_the_commit_it_applies_onto(setup: Setup) -> None:
    req = setup.request("moved-1", {"docs/readme.txt": "new\n"})
    path = setup.root / "m.json"
    path.write_text(json.dumps(req))
    out = setup.cli("submit", str(path))
    assert out.returncode == 0 and out.stdout.split() == ["moved-1", "queued"], out.stdout
    # The target moves after intake: docs becomes a link out of the repository.
    git(setup.repo, "rm", "-q", "-r", "docs")
    os.symlink("/tmp", setup.repo / "docs")
    git(setup.repo, "add", "-A")
    git(setup.repo, "commit", "-q", "-m", "docs elsewhere")
    assert setup.cli("run", "--once").returncode == 0
    record = setup.record("moved-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "path_traversal"
    assert "beyond the symbolic link 'docs'" in record["error"]["message"]
    assert git(setup.repo, "log", "--format=%s", "-1").strip() == "docs elsewhere"


STEPS = st.sampled_from(["..", ".", "docs", "up", "inner", "etc-link", "deep", "er", "x",
                         "file.txt", "vendor", "sub", ""])


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitRepo, str]:
    return repo_with_links(tmp_path_factory.mktemp("linked"))


@given(folder=st.sampled_from(["", "docs", "deep", "deep/er", "new"]),
       target=st.lists(STEPS, min_size=1, max_size=5).map("/".join))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_accepted_link_resolves_inside_the_checkout(linked: tuple[GitRepo, str],
                                                       folder: str, target: str) -> None:
    """Whatever the target, a link the check lets through really points inside the checkout
    once the filesystem resolves it (with the tree's own links followed)."""
    repo, tip = linked
    link = f"{folder}/l" if folder else "l"
    try:
        check_against_tree(repo, tip, parse_patch(new_link(link, target)))
    except GateError as exc:
        assert exc.info.code is Code.PATH_TRAVERSAL
        return
    root = os.path.realpath(repo.path)
    resolved = os.path.realpath(os.path.join(root, folder, target))
    assert resolved == root or resolved.startswith(root + os.sep), (link, target, resolved)
    assert ".git" not in Path(os.path.relpath(resolved, root)).parts


def test_many_paths_are_listed_in_several_commands(tmp_path: Path) -> None:
    repo, tip = repo_with_links(tmp_path)
    paths = [f"dir{i:05d}/{'x' * 60}/file" for i in range(3000)] + ["etc-link", "app.py"]
    assert repo.tree_entries(tip, paths) == {"etc-link": "120000", "app.py": "100644"}
