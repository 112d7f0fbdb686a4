"""The patch parser against real git: diffs made by `git diff` must read the way
`git apply --numstat --summary -z` reads them, and hostile text must end in a GateError."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hyperion.errors import Code, GateError
from hyperion.gate.patch import FilePatch, Operation, parse_patch
from hyperion.gate.paths import check_path

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}


def git(cwd: Path, *args: str, stdin: bytes | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    proc = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr.decode(errors='replace')}")
    return proc


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    return path


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty repository to run `git apply --numstat` in."""
    return init_repo(tmp_path_factory.mktemp("scratch"))


@dataclass(frozen=True)
class GitView:
    numstat: list[tuple[str, str, str]]
    summary: list[str]


def git_view(repo: Path, patch: str) -> GitView | None:
    """What `git apply` reads in ``patch`` (None when it refuses the patch)."""
    proc = git(repo, "apply", "--numstat", "--summary", "-z", "-", stdin=patch.encode(),
               check=False)
    if proc.returncode != 0:
        return None
    *records, summary = proc.stdout.decode().split("\0")
    numstat = []
    for record in records:
        added, removed, path = record.split("\t", 2)
        numstat.append((added, removed, path))
    lines = [re.sub(r" \(\d+%\)$", " (N%)", line) for line in summary.split("\n") if line]
    # A "similarity index" or "dissimilarity index" line on a plain update only makes git say
    # "rewrite" (and move the file name off the mode change line): not a different change.
    out: list[str] = []
    for line in lines:
        rewrite = re.fullmatch(r" rewrite (.*) \(N%\)", out[-1]) if out else None
        if rewrite and re.fullmatch(r" mode change \d+ => \d+", line):
            out[-1] = f"{line} {rewrite.group(1)}"
            continue
        if rewrite:
            out.pop()
        out.append(line)
    if out and re.fullmatch(r" rewrite (.*) \(N%\)", out[-1]):
        out.pop()
    return GitView(numstat, out)


def braces(kind: str, old: str, new: str) -> str:
    """git apply --summary's "rename a/{x => y} (N%)" with the common directories pulled out."""
    prefix = ""
    while True:
        so, sn = old.find("/"), new.find("/")
        if so < 0 or sn < 0 or so != sn or old[:so] != new[:sn]:
            break
        prefix += old[:so + 1]
        old, new = old[so + 1:], new[sn + 1:]
    if prefix:
        return f" {kind} {prefix}{{{old} => {new}}} (N%)"
    return f" {kind} {old} => {new} (N%)"


def expected_view(files: list[FilePatch]) -> GitView:
    numstat = []
    summary = []
    for f in files:
        if f.binary:
            numstat.append(("-", "-", f.path))
        else:
            numstat.append((str(f.added_lines), str(f.removed_lines), f.path))
        mode_change = f.old_mode is not None and f.new_mode is not None \
            and f.old_mode != f.new_mode
        if f.operation is Operation.ADD and f.old_path is None:
            summary.append(f" create mode {f.new_mode} {f.path}" if f.new_mode
                           else f" create {f.path}")
        elif f.operation is Operation.DELETE:
            summary.append(f" delete mode {f.old_mode} {f.path}" if f.old_mode
                           else f" delete {f.path}")
        elif f.old_path is not None:
            kind = "rename" if f.operation is Operation.RENAME else "copy"
            summary.append(braces(kind, f.old_path, f.path))
            if mode_change:
                summary.append(f" mode change {f.old_mode} => {f.new_mode}")
        elif mode_change:
            summary.append(f" mode change {f.old_mode} => {f.new_mode} {f.path}")
    return GitView(numstat, summary)


def assert_agrees_with_git(repo: Path, patch: str) -> list[FilePatch]:
    files = parse_patch(patch)
    view = git_view(repo, patch)
    assert view is not None, "parse_patch accepted a patch git apply refuses"
    assert expected_view(files) == view
    return files


def refused(patch: str, code: Code = Code.BAD_PATCH) -> GateError:
    with pytest.raises(GateError) as info:
        parse_patch(patch)
    assert info.value.info.code is code, info.value.info
    assert info.value.info.message.isprintable()
    return info.value


def one(patch: str) -> FilePatch:
    files = parse_patch(patch)
    assert len(files) == 1
    return files[0]


# --- real diffs from git, generated ------------------------------------------------------------

SEGMENT = st.text(alphabet="abcdé .-_\"'", min_size=1, max_size=5)
PATH = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
LINE = st.sampled_from(["alpha", "beta", "gamma", "delta", "", "  indented", "tab\there",
                        "crlf\r", "ünïcödé", "+plus", "-minus", "\\ back", "@@ -1 +1 @@"])


def safe(path: str) -> bool:
    try:
        check_path(path, "test")
    except GateError:
        return False
    return True


@st.composite
def text_content(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(LINE, max_size=12))
    text = "\n".join(lines)
    if lines and draw(st.booleans()):
        text += "\n"
    return text.encode()


@st.composite
def content(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["text", "text", "text", "text", "binary", "link", "exec"]))
    if kind == "binary":
        return kind, draw(st.binary(max_size=40)) + b"\0"
    if kind == "link":
        return kind, draw(st.text(alphabet="abc./", min_size=1, max_size=10)).encode()
    return kind, draw(text_content())


@dataclass(frozen=True)
class Scenario:
    base: dict[str, tuple[str, bytes]]
    edits: dict[str, tuple[str, tuple[str, bytes] | None, str | None]]  # op, content, target
    added: dict[str, tuple[str, bytes]]
    flags: tuple[str, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    names = draw(st.lists(PATH.filter(safe), min_size=1, max_size=8, unique=True))
    # No name may be a directory of another.
    names = [n for n in names if not any(m.startswith(n + "/") for m in names if m != n)]
    half = max(1, len(names) // 2)
    base_names, spare = names[:half], names[half:]
    base = {name: draw(content()) for name in base_names}
    edits: dict[str, tuple[str, tuple[str, bytes] | None, str | None]] = {}
    for name, (kind, _) in base.items():
        op = draw(st.sampled_from(["keep", "modify", "delete", "rename", "rename-modify",
                                   "chmod", "modify-chmod"]))
        if op.startswith("rename") and not spare:
            op = "modify"
        if "chmod" in op and kind == "link":
            op = "modify"
        if op == "keep":
            continue
        target = spare.pop() if op.startswith("rename") else None
        new = None
        if "modify" in op:
            new = (kind, draw(text_content()) if kind in ("text", "exec") else
                   draw(content())[1] if kind == "binary" else b"other/target")
        edits[name] = (op, new, target)
    added = {name: draw(content()) for name in spare if draw(st.booleans())}
    flags = [draw(st.sampled_from(["-M", "--no-renames", "-C", "--find-copies-harder"])),
             f"-U{draw(st.integers(0, 3))}"]
    if draw(st.booleans()):
        flags.append("--binary")
    if draw(st.booleans()):
        flags += ["--src-prefix=old/", "--dst-prefix=new/"]
    if draw(st.booleans()):
        flags.append("--full-index")
    return Scenario(base, edits, added, tuple(flags))


def write(root: Path, name: str, item: tuple[str, bytes]) -> None:
    kind, data = item
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    if kind == "link":
        os.symlink(data.decode(), path)
        return
    path.write_bytes(data)
    mode = 0o755 if kind == "exec" else 0o644
    path.chmod(mode)


def build(root: Path, scenario: Scenario) -> str:
    repo = init_repo(root / "repo")
    for name, item in scenario.base.items():
        write(repo, name, item)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "base")
    for name, (op, new, target) in scenario.edits.items():
        path = repo / name
        if op == "delete":
            path.unlink()
            continue
        if target is not None:
            (repo / target).parent.mkdir(parents=True, exist_ok=True)
            path.rename(repo / target)
            name, path = target, repo / target
        if new is not None:
            kind = scenario.base.get(name, new)[0]
            write(repo, name, new if not path.is_file() or path.is_symlink()
                  else (kind, new[1]))
            if "chmod" in op:
                path.chmod(0o644 if path.stat().st_mode & stat.S_IXUSR else 0o755)
        elif "chmod" in op:
            path.chmod(0o644 if path.stat().st_mode & stat.S_IXUSR else 0o755)
    for name, item in scenario.added.items():
        write(repo, name, item)
    git(repo, "add", "-A")
    return git(repo, "diff", "--cached", *scenario.flags).stdout.decode()


@given(scenarios())
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_real_git_diffs_read_as_git_apply_reads_them(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        patch = build(Path(tmp), scenario)
        assume(patch)
        try:
            files = assert_agrees_with_git(Path(tmp) / "repo", patch)
        except GateError:
            # Refused: only where git cannot read its own diff either (see
            # test_git_cannot_read_some_of_its_own_diffs).
            assert git_view(Path(tmp) / "repo", patch) is None
            return
    # The added text of a new text file is the file, line by line.
    for f in files:
        item = scenario.added.get(f.path)
        if f.operation is Operation.ADD and f.old_path is None and item is not None \
                and item[0] in ("text", "exec"):
            lines = item[1].decode().split("\n")
            if lines[-1] == "":
                lines.pop()
            assert f.added_text == tuple(lines)


# --- fuzzing: anything is a list of FilePatch or a GateError -----------------------------------

FRAGMENTS = st.sampled_from([
    "diff --git a/x b/x", "diff --git a/x b/y", 'diff --git "a/x" "b/x"', "--- a/x", "+++ b/x",
    "--- /dev/null", "+++ /dev/null", "--- x", "+++ x", "@@ -1 +1 @@", "@@ -0,0 +1,2 @@",
    "@@ -1,2 +0,0 @@", "@@ -1,3 +1,3 @@ ctx", "@@ -", " context", "-old", "+new", "",
    "\\ No newline at end of file", "new file mode 100644", "deleted file mode 100644",
    "old mode 100644", "new mode 100755", "rename from x", "rename to y", "copy from x",
    "copy to y", "similarity index 90%", "index 0123abc..4567def 100644", "GIT binary patch",
    "literal 3", "Binary files a/x and b/x differ", "A00000", '--- "a/\\303\\251"',
    "--- a/x\t2020-01-01 00:00:00.000000000 +0000", "\r", "\x00", "\\",
])


@given(st.text(max_size=400))
@settings(max_examples=400, deadline=timedelta(milliseconds=500))
def test_any_text_parses_or_raises_gate_error(text: str) -> None:
    try:
        files = parse_patch(text)
    except GateError as error:
        assert error.info.message.isprintable()
    else:
        assert files


@given(st.lists(FRAGMENTS | st.text(max_size=12), max_size=30),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
@settings(max_examples=800, deadline=timedelta(milliseconds=500))
def test_patch_shaped_text_parses_or_raises_gate_error(
        lines: list[str], newline: str, final: bool) -> None:
    text = newline.join(lines) + (newline if final else "")
    try:
        files = parse_patch(text)
    except GateError as error:
        assert error.info.code in (Code.BAD_PATCH, Code.PATH_TRAVERSAL)
        assert error.info.message.isprintable()
    else:
        for f in files:
            check_path(f.path, "x")


CORPUS_FILES = {
    "app.py": b"import os\n\nVALUE = 1\n\n\ndef main():\n    return VALUE\n",
    "docs/readme.txt": b"hello\r\nworld\r\n",
    "data.bin": b"\0\1\2\3binary",
    "old name.txt": b"one\ntwo\nthree\nfour\nfive\nsix\n",
    "\u00e9t\u00e9.txt": b"summer\n",
    "noeol": b"no newline",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A few real diffs exercising every kind of section, to mutate."""
    repo = init_repo(tmp_path_factory.mktemp("corpus") / "repo")
    for name, data in CORPUS_FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "app.py").write_bytes(b"import os\n\nVALUE = 2\n\n\ndef main():\n    return 0\n")
    (repo / "docs/readme.txt").write_bytes(b"hello\r\nthere\r\nworld\r\n")
    (repo / "data.bin").write_bytes(b"\0\1\2\3binary!")
    (repo / "old name.txt").rename(repo / "new name.txt")
    (repo / "\u00e9t\u00e9.txt").chmod(0o755)
    (repo / "noeol").write_bytes(b"still no newline")
    (repo / "new.txt").write_bytes(b"fresh\n")
    (repo / "empty").write_bytes(b"")
    os.symlink("app.py", repo / "link")
    git(repo, "add", "-A")
    diffs = [git(repo, "diff", "--cached", "-M", *flags).stdout.decode()
             for flags in ([], ["--binary"], ["-U0"], ["--no-renames", "-U1"])]
    diffs.append("From: someone\nSubject: a plain diff\n\n--- a/app.py\t2024-05-01 10:00:00 +0200\n"
                 "+++ b/app.py\t2024-05-01 11:00:00 +0200\n@@ -3 +3 @@\n-VALUE = 1\n+VALUE = 2\n"
                 "--- /dev/null\n+++ b/brand new\n@@ -0,0 +1,2 @@\n+a\n+b\n"
                 "--- a/noeol\n+++ b/noeol\n@@ -1 +1,2 @@\n-no newline\n\\ No newline at end "
                 "of file\n+no\n+newline\n")
    return diffs


MUTATION_LINES = st.sampled_from([
    "@@ -1 +1 @@", "@@ -1,2 +1,2 @@", "--- a/app.py", "+++ b/app.py", "--- /dev/null",
    "+++ /dev/null", "diff --git a/app.py b/app.py", "diff --git a/x b/x", "new file mode 100644",
    "deleted file mode 100644", "old mode 100644", "new mode 100755", "rename from app.py",
    "rename to z.py", "copy from app.py", "copy to z.py", "index 1234567..89abcde 100644",
    "\\ No newline at end of file", "", " ", "-", "+", "+added", "-removed", " context",
    "GIT binary patch", "literal 0", "Binary files a/x and b/x differ", "garbage",
    "--- a/app.py\t1970-01-01 00:00:00 +0000", "similarity index 50%",
])


@st.composite
def mutated(draw: st.DrawFn, corpus: list[str]) -> str:
    patch = draw(st.sampled_from(corpus))
    lines = patch.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "swap", "char", "truncate",
                                   "crlf"]))
        if op == "delete":
            del lines[at]
        elif op == "duplicate":
            lines.insert(at, lines[at])
        elif op == "insert":
            lines.insert(at, draw(MUTATION_LINES))
        elif op == "swap" and at + 1 < len(lines):
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        elif op == "char":
            line = lines[at]
            pos = draw(st.integers(0, len(line)))
            char = draw(st.sampled_from(list(" +-@\\\r\t\"/01a")))
            lines[at] = line[:pos] + char + line[pos + 1:]
        elif op == "truncate":
            cut = draw(st.integers(0, len(lines[at])))
            lines = [*lines[:at], lines[at][:cut]]
        elif op == "crlf":
            lines[at] += "\r"
    return "\n".join(lines)


@given(data=st.data())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_diffs_are_refused_or_read_as_git_reads_them(
        data: st.DataObject, corpus: list[str], scratch: Path) -> None:
    patch = data.draw(mutated(corpus))
    try:
        parse_patch(patch)
    except GateError:
        return
    assert_agrees_with_git(scratch, patch)


NAMES = ["x", "y", "d/x", "d /f", "x y", "\u00e9"]
EXTENDED = ["new file mode 100644", "deleted file mode 100644", "old mode 100644",
            "new mode 100755", "rename from {old}", "rename to {new}", "copy from {old}",
            "copy to {new}", "similarity index 90%", "index 0123abc..4567def 100644",
            "new file mode 120000"]


def quoted(prefix: str, name: str, quote: bool) -> str:
    if name == "/dev/null":
        return name
    if quote or not name.isascii():
        return '"' + (prefix + name).encode().decode("latin-1").translate(
            {c: f"\\{c:03o}" for c in range(128, 256)}) + '"'
    return prefix + name


@st.composite
def hunk_lines(draw: st.DrawFn) -> list[str]:
    old, new = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    lines = [f"@@ -{draw(st.integers(0, 2))},{old} +{draw(st.integers(0, 2))},{new} @@"]
    while old or new:
        kind = draw(st.sampled_from([k for k, ok in ((" c", old and new), ("-a", old),
                                                     ("+b", new)) if ok]))
        old -= kind != "+b"
        new -= kind != "-a"
        lines.append(kind)
        if draw(st.integers(0, 9)) == 0:
            lines.append("\\ No newline at end of file")
    if draw(st.integers(0, 4)) == 0:
        lines.insert(draw(st.integers(1, len(lines))),
                     draw(st.sampled_from([" c", "-a", "+b", "", "garbage"])))
    return lines


@st.composite
def generated_section(draw: st.DrawFn) -> list[str]:
    old = draw(st.sampled_from(NAMES))
    new = draw(st.sampled_from([old, old, *NAMES]))
    quote = draw(st.integers(0, 3)) == 0
    if draw(st.integers(0, 3)) == 0:
        old_side = draw(st.sampled_from([old, old, "/dev/null"]))
        new_side = draw(st.sampled_from([old, old, new, "/dev/null"]))
        stamp = draw(st.sampled_from(["", "\t2020-01-01 00:00:00 +0000", " 2020-01-01 10:00:00"]))
        out = [f"--- {quoted('a/', old_side, quote)}{stamp}",
               f"+++ {quoted('b/', new_side, quote)}{stamp}"]
        for _ in range(draw(st.integers(1, 2))):
            out += draw(hunk_lines())
        return out
    out = [f"diff --git {quoted('a/', old, quote)} {quoted('b/', new, quote)}"]
    for line in draw(st.lists(st.sampled_from(EXTENDED), max_size=3, unique=True)):
        out.append(line.format(old=old, new=new))
    if draw(st.booleans()):
        out.append("--- " + quoted("a/", draw(st.sampled_from([old, old, new, "/dev/null"])),
                                   quote))
        out.append("+++ " + quoted("b/", draw(st.sampled_from([new, new, old, "/dev/null"])),
                                   quote))
    body = draw(st.sampled_from(["hunks", "hunks", "none", "binary", "binary files"]))
    if body == "hunks":
        for _ in range(draw(st.integers(1, 2))):
            out += draw(hunk_lines())
    elif body == "binary":
        out += ["GIT binary patch", "literal 0", "HcmV?d00001", ""]
    elif body == "binary files":
        out.append(f"Binary files a/{old} and b/{new} differ")
    return out


@given(st.lists(generated_section(), min_size=1, max_size=3),
       st.lists(st.sampled_from(["", "commentary", "---", "-- ", "+x"]), max_size=2),
       st.sampled_from(["\n", "\n", "\n", "\r\n"]))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_patches_are_refused_or_read_as_git_reads_them(
        scratch: Path, sections: list[list[str]], commentary: list[str], newline: str) -> None:
    lines = commentary + [line for section in sections for line in section]
    patch = newline.join(lines) + newline
    try:
        parse_patch(patch)
    except GateError:
        return
    assert_agrees_with_git(scratch, patch)


def test_the_corpus_itself_reads_as_git_reads_it(corpus: list[str], scratch: Path) -> None:
    for patch in corpus:
        assert_agrees_with_git(scratch, patch)


# --- what each kind of section reads as --------------------------------------------------------

def test_update_with_context_and_counts(scratch: Path) -> None:
    f = one("diff --git a/src/x.py b/src/x.py\nindex 1111111..2222222 100644\n--- a/src/x.py\n"
            "+++ b/src/x.py\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C\n c\n")
    assert f == FilePatch(path="src/x.py", old_path=None, operation=Operation.UPDATE,
                          old_mode="100644", new_mode="100644", binary=False, added_lines=2,
                          removed_lines=1, added_text=("B", "C"))
    assert_agrees_with_git(scratch, "diff --git a/src/x.py b/src/x.py\n--- a/src/x.py\n"
                                    "+++ b/src/x.py\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C\n c\n")


def test_new_deleted_and_empty_files(scratch: Path) -> None:
    patch = ("diff --git a/new.txt b/new.txt\nnew file mode 100755\nindex 0000000..1111111\n"
             "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1,2 @@\n+#!/bin/sh\n+echo hi\n"
             "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\n"
             "index 1111111..0000000\n--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"
             "diff --git a/empty b/empty\nnew file mode 100644\nindex 0000000..e69de29\n"
             "diff --git a/was-empty b/was-empty\ndeleted file mode 100644\n"
             "index e69de29..0000000\n")
    new, gone, empty, was_empty = assert_agrees_with_git(scratch, patch)
    assert (new.operation, new.new_mode, new.old_mode) == (Operation.ADD, "100755", None)
    assert new.added_text == ("#!/bin/sh", "echo hi")
    assert (gone.operation, gone.path, gone.old_mode, gone.removed_lines) == (
        Operation.DELETE, "gone.txt", "100644", 1)
    assert (empty.operation, empty.path, empty.added_lines) == (Operation.ADD, "empty", 0)
    assert (was_empty.operation, was_empty.path) == (Operation.DELETE, "was-empty")


def test_renames_pure_and_with_changes(scratch: Path) -> None:
    patch = ("diff --git a/a/old.py b/b/new.py\nsimilarity index 100%\nrename from a/old.py\n"
             "rename to b/new.py\n"
             "diff --git a/lib/x.py b/lib/y.py\nold mode 100644\nnew mode 100755\n"
             "similarity index 80%\nrename from lib/x.py\nrename to lib/y.py\n"
             "index 1111111..2222222\n--- a/lib/x.py\n+++ b/lib/y.py\n@@ -1 +1 @@\n-a\n+b\n")
    pure, changed = assert_agrees_with_git(scratch, patch)
    assert (pure.operation, pure.old_path, pure.path, pure.added_lines) == (
        Operation.RENAME, "a/old.py", "b/new.py", 0)
    assert (changed.operation, changed.old_path, changed.path) == (
        Operation.RENAME, "lib/x.py", "lib/y.py")
    assert (changed.old_mode, changed.new_mode, changed.added_text) == ("100644", "100755", ("b",))


def test_copy_is_an_add_with_a_source(scratch: Path) -> None:
    patch = ("diff --git a/x.py b/y.py\nsimilarity index 90%\ncopy from x.py\ncopy to y.py\n"
             "index 1111111..2222222 100644\n--- a/x.py\n+++ b/y.py\n@@ -1 +1 @@\n-a\n+b\n"
             "diff --git a/x.py b/x.py\nindex 1111111..3333333 100644\n--- a/x.py\n+++ b/x.py\n"
             "@@ -1 +1 @@\n-a\n+c\n")
    copy, source = assert_agrees_with_git(scratch, patch)
    assert (copy.operation, copy.old_path, copy.path) == (Operation.ADD, "x.py", "y.py")
    assert (source.operation, source.path) == (Operation.UPDATE, "x.py")


def test_mode_change_and_symlink(scratch: Path) -> None:
    patch = ("diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n"
             "diff --git a/link b/link\nnew file mode 120000\nindex 0000000..1111111\n"
             "--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+../../etc/passwd\n"
             "\\ No newline at end of file\n")
    mode, link = assert_agrees_with_git(scratch, patch)
    assert (mode.operation, mode.old_mode, mode.new_mode, mode.added_lines) == (
        Operation.UPDATE, "100644", "100755", 0)
    assert (link.operation, link.new_mode, link.added_text) == (
        Operation.ADD, "120000", ("../../etc/passwd",))


def test_binary_sections(scratch: Path) -> None:
    patch = ("diff --git a/img.png b/img.png\nindex 1111111..2222222 100644\nGIT binary patch\n"
             "literal 8\nPcmYew%wtF_sx$%s42c4`\n\nliteral 7\nOcmYew%wtF_sssQD(E^45\n\n"
             "diff --git a/doc.pdf b/doc.pdf\nnew file mode 100644\nindex 0000000..3333333\n"
             "Binary files /dev/null and b/doc.pdf differ\n")
    png, pdf = assert_agrees_with_git(scratch, patch)
    assert png.binary and png.operation is Operation.UPDATE and png.added_text == ()
    assert pdf.binary and pdf.operation is Operation.ADD


def test_quoted_paths_are_unquoted(scratch: Path) -> None:
    patch = ('diff --git "a/caf\\303\\251 \\"menu\\".txt" "b/caf\\303\\251 \\"menu\\".txt"\n'
             "new file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
             '+++ "b/caf\\303\\251 \\"menu\\".txt"\n@@ -0,0 +1 @@\n+x\n'
             "diff --git a/has space b/has space\nold mode 100644\nnew mode 100755\n")
    quoted, spaced = assert_agrees_with_git(scratch, patch)
    assert quoted.path == 'café "menu".txt'
    assert spaced.path == "has space"


def test_quoted_control_characters_are_path_traversal() -> None:
    error = refused('diff --git "a/x\\ty" "b/x\\ty"\nnew file mode 100644\n--- /dev/null\n'
                    '+++ "b/x\\ty"\n@@ -0,0 +1 @@\n+x\n', Code.PATH_TRAVERSAL)
    assert "\t" not in error.info.message and error.info.path == "'x\\ty'"
    refused('diff --git "a/\\377" "b/\\377"\nold mode 100644\nnew mode 100755\n',
            Code.PATH_TRAVERSAL)


def test_crlf_patch_keeps_carriage_returns_in_content(scratch: Path) -> None:
    patch = ("diff --git a/w.txt b/w.txt\r\nindex 1111111..2222222 100644\r\n--- a/w.txt\r\n"
             "+++ b/w.txt\r\n@@ -1,2 +1,2 @@\r\n one\r\n-two\r\n+2\r\n")
    f = assert_agrees_with_git(scratch, patch)[0]
    assert (f.path, f.added_text, f.old_mode) == ("w.txt", ("2\r",), "100644")


def test_crlf_mode_only_change_is_refused_like_git(scratch: Path) -> None:
    patch = "diff --git a/f b/f\r\nold mode 100644\r\nnew mode 100755\r\n"
    assert git_view(scratch, patch) is None
    refused(patch)


def test_no_newline_marker_is_not_counted(scratch: Path) -> None:
    patch = ("diff --git a/n b/n\n--- a/n\n+++ b/n\n@@ -1 +1 @@\n-x\n\\ No newline at end of "
             "file\n+y\n\\ No newline at end of file\n")
    f = assert_agrees_with_git(scratch, patch)[0]
    assert (f.added_lines, f.removed_lines, f.added_text) == (1, 1, ("y",))


def test_plain_diffs_with_timestamps_and_dev_null(scratch: Path) -> None:
    patch = ("--- a/x.c\t2024-01-01 10:00:00.000000000 +0100\n"
             "+++ b/x.c\t2024-01-02 10:00:00.000000000 +0100\n@@ -1 +1 @@\n-a\n+b\n"
             "--- a/y.c 2024-01-01 10:00:00\n+++ b/y.c 2024-01-02 10:00:00\n@@ -1 +1 @@\n"
             "-a\n+b\n"
             "--- /dev/null\n+++ b/z.c\n@@ -0,0 +1 @@\n+new\n"
             "--- a/w.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-old\n")
    x, y, z, w = assert_agrees_with_git(scratch, patch)
    assert (x.path, x.operation) == ("x.c", Operation.UPDATE)
    assert y.path == "y.c"  # a space-separated timestamp is stripped too
    assert (z.path, z.operation, z.new_mode) == ("z.c", Operation.ADD, None)
    assert (w.path, w.operation) == ("w.c", Operation.DELETE)


def test_commentary_around_and_between_sections_is_ignored_like_git(scratch: Path) -> None:
    patch = ("From 1234 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] fix\n\nSome text.\n---\n"
             " x | 2 +-\n\ndiff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
             "+this line is beyond the hunk's counts: commentary to git\n"
             "some commentary between files\n"
             "diff --git a/y b/y\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n-- \n2.39.5\n")
    x, y = assert_agrees_with_git(scratch, patch)
    assert x.added_text == ("b",) and y.path == "y"


def test_many_files_are_too_large() -> None:
    section = "diff --git a/f{0} b/f{0}\nnew file mode 100644\nindex 0000000..e69de29\n"
    patch = "".join(section.format(i) for i in range(20))
    assert len(parse_patch(patch, max_files=20)) == 20
    with pytest.raises(GateError) as info:
        parse_patch(patch, max_files=19)
    assert info.value.info.code is Code.TOO_LARGE


def binary_patch(data: bytes, *, claimed: int | None = None) -> str:
    """A "GIT binary patch" section for a new file with ``data`` (made by git itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = init_repo(Path(tmp) / "repo")
        (repo / "blob").write_bytes(data)
        git(repo, "add", "-A")
        patch = git(repo, "diff", "--cached", "--binary").stdout.decode()
    if claimed is not None:
        patch = re.sub(r"literal \d+", f"literal {claimed}", patch, count=1)
    return patch


def test_binary_edge_cases(scratch: Path) -> None:
    empty = assert_agrees_with_git(scratch, binary_patch(b"\0"))[0]
    assert empty.binary and empty.operation is Operation.ADD
    # The deflated data must inflate to exactly the stated size, as git checks.
    for claimed in (0, 1, 3):
        patch = binary_patch(b"\0\1", claimed=claimed)
        assert git_view(scratch, patch) is None
        assert "inflate" in refused(patch).info.message
    # One base85 character changed: still valid base85, no longer a zlib stream.
    patch = binary_patch(b"\0" * 100)
    data_line = patch.splitlines()[5]
    broken = patch.replace(data_line, data_line[:3] + ("0" if data_line[3] != "0" else "1")
                           + data_line[4:])
    assert git_view(scratch, broken) is None
    refused(broken)


def test_binary_bombs_are_bounded() -> None:
    bomb = binary_patch(b"\0" * (64 * 1024 * 1024))
    start = time.perf_counter()
    assert one(bomb).binary
    assert time.perf_counter() - start < 5.0
    with pytest.raises(GateError) as info:
        parse_patch(binary_patch(b"\0" * 1000, claimed=10**12))
    assert info.value.info.code is Code.TOO_LARGE


def test_git_cannot_read_some_of_its_own_diffs(tmp_path: Path) -> None:
    """A directory whose name ends in a space: `git diff` shows a mode change of a file in it
    with only a diff --git line, and `git apply` cannot take the name from that line."""
    repo = init_repo(tmp_path / "repo")
    (repo / "d ").mkdir()
    (repo / "d " / "f").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "d " / "f").chmod(0o755)
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached").stdout.decode()
    assert patch.startswith("diff --git a/d /f b/d /f\nold mode")
    assert git_view(repo, patch) is None
    assert "cannot tell the file name" in refused(patch).info.message
    # Quoted the same way on both sides, git reads it; with only the first name quoted, never.
    quoted = 'diff --git "a/d /f" "b/d /f"\nold mode 100644\nnew mode 100755\n'
    assert assert_agrees_with_git(repo, quoted)[0].path == "d /f"
    half = 'diff --git "a/d /f" b/d /f\nold mode 100644\nnew mode 100755\n'
    assert git_view(repo, half) is None
    refused(half)


# --- refusals ----------------------------------------------------------------------------------

UPDATE = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"


@pytest.mark.parametrize(("patch", "words"), [
    ("", "no file sections"),
    ("\n\n", "no file sections"),
    ("just some text\nand more\n", "no file sections"),
    ("--- a/x\n+++ b/x\n", "no file sections"),
    ("@@ -1 +1 @@\n-a\n+b\n", "no file header"),
    ("text first\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n", "no file header"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -a +b @@\n-a\n+b\n", "hunk header"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @\n-a\n+b\n", "hunk header"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1 @@\n-a\n+b\n", "counts"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1,3 @@\n-a\n+b\n", "counts"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -2,1 +2,1 @@\n a\n-b\n+c\n", "changes no"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b", "final line feed"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n a\n", "changes no lines"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n\\ x\n+b\n", "malformed"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n*b\n", "must start with"),
    ("diff --git a/x b/x\nindex 1111111..2222222 100644\n", "changes nothing"),
    ("diff --git a/x b/x\nindex 1111111..2222222 100644\nrandom\n", "changes nothing"),
    ("diff --git a/x b/x\n@@ -1 +1 @@\n-a\n+b\n", "no file header after it"),
    ("diff --git a/x b/x\ngarbage\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
     "no file header after it"),
    (UPDATE + UPDATE, "more than once"),
    (UPDATE + "diff --git a/y b/x\nrename from y\nrename to x\n", "more than once"),
    ("diff --git a/x b/y\nrename from x\nrename to y\n"
     "diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+a\n",
     "more than once"),
    ("diff --git a/zzz b/zzz\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "disagree"),
    ("diff --git a/x b/y\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "disagree"),
    ("diff --git a/x b/y\nrename from x\nrename to z\n", "disagree"),
    ("diff --git a/x b/y\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n", "silently"),
    ("diff --git a/x b/y\nrename from x\nrename to y\n--- a/x\n+++ b/z\n@@ -1 +1 @@\n-a\n+b\n",
     "differently"),
    ("diff --git a/x b/x\nnew file mode 100644\n--- a/x\n+++ b/x\n@@ -0,0 +1 @@\n+a\n",
     "/dev/null"),
    ("diff --git a/x b/x\n--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+a\n", "/dev/null"),
    ("diff --git a/x b/x\n--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n", "/dev/null"),
    ("diff --git a/x b/x\ndeleted file mode 100644\n--- a/x\n+++ b/x\n@@ -1 +0,0 @@\n-a\n",
     "/dev/null"),
    ("diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
     "old contents"),
    ("diff --git a/x b/x\ndeleted file mode 100644\n--- a/x\n+++ /dev/null\n@@ -1 +1 @@\n-a\n"
     "+b\n", "still has contents"),
    ("diff --git a/x b/x\nnew file mode 100644\ndeleted file mode 100644\n", "more than one"),
    ("diff --git a/x b/y\nnew file mode 100644\nrename from x\nrename to y\n", "mixes"),
    ("diff --git a/x b/y\nrename from x\ncopy to y\n", "mixes"),
    ("diff --git a/x b/y\nrename from x\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n", "without"),
    ("diff --git a/x b/x\nold mode 100644\n", "without the other"),
    ("diff --git a/x b/x\nold mode 100644\nnew mode 100644\n", "equal"),
    ("diff --git a/x b/x\nold mode 644\nnew mode 100755\n", "invalid"),
    ("diff --git a/x b/x\nold mode 100644 junk\nnew mode 100755\n", "invalid"),
    ("diff --git a/x b/x\nold mode 100644\nold mode 100644\nnew mode 100755\n", "two"),
    ("diff --git a/x b/x\nold mode 100644\nnew mode 100755\nindex 1111111..2222222 100644\n",
     "both"),
    ("diff --git a/x b/x\nindex zz..yy\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "index"),
    ("diff --git a/x b/x\nsimilarity index lots\nold mode 100644\nnew mode 100755\n", "percent"),
    ("diff --git a/x b/x\n--- a/x\n@@ -1 +1 @@\n-a\n+b\n", "without a '+++'"),
    ("diff --git a/x b/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "without a '---'"),
    ("diff --git a/x b/x\n--- a/x\nindex 1111111..2222222\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
     "must be followed"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\nold mode 100644\nnew mode 100755\n@@ -1 +1 @@\n-a\n"
     "+b\n", "last"),
    ("diff --git a/x\nold mode 100644\nnew mode 100755\n", "cannot tell"),
    ("diff --git a/x b/y\nold mode 100644\nnew mode 100755\n", "cannot tell"),
    ("diff --git x x\nold mode 100644\nnew mode 100755\n", "cannot tell"),
    ("diff --git a/x b/x\n--- x\n+++ x\n@@ -1 +1 @@\n-a\n+b\n", "no leading directory"),
    ('diff --git a/x b/x\n--- "a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n', "quoting"),
    ('diff --git a/x b/x\n--- "a/x"junk\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n', "after the quoted"),
    ('diff --git a/x b/x\n--- "a/\\q"\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n', "quoting"),
    ("diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 3\n!!!\n\n", "corrupt"),
    ("diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 3\n\n", "corrupt"),
    ("diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nfoo\n", "literal"),
    ("diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 3\nDcmYe\n",
     "corrupt"),
    ("--- x\n+++ x\n@@ -1 +1 @@\n-a\n+b\n", "no leading directory"),
    ("--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n", "two different files"),
    ("--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+a\n", "both sides"),
    ("--- a/x\t1970-01-01 00:00:00.000000000 +0000\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
     "1970-01-01"),
    ("--- a/x\n+++ b/x\t1969-12-31 16:00:00 -0800\n@@ -1 +1 @@\n-a\n+b\n", "1970-01-01"),
    ("--- a/x\n+++ b/x\n@@ -0,0 +1 @@\n+a\n", "guess"),
    ("--- a/x\n+++ b/x\n@@ -1 +0,0 @@\n-a\n", "guess"),
    ("--- /dev/null\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "old contents"),
    ("--- a/x\n+++ /dev/null\n@@ -1 +1 @@\n-a\n+b\n", "still has contents"),
    ("--- a/xxxxxxxxxxxxxxxxxxxx\n+++ b/xxxxxxxxxxxxxxxxxxxx\n@@ -", "no complete hunk"),
])
def test_refusals(patch: str, words: str) -> None:
    assert words in refused(patch).info.message


@pytest.mark.parametrize("name", [
    "../x", "a/../../x", ".git/config", ".GIT/hooks/post-checkout", "sub/.Git/x", "git~1/x",
    ".git./x", "/etc/passwd", "a//b", "a/./b", "a\\b",
])
def test_unsafe_paths_in_any_position_are_path_traversal(name: str) -> None:
    sections = [
        f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
        "@@ -0,0 +1 @@\n+x\n",
        f"diff --git a/{name} b/ok\nrename from {name}\nrename to ok\n",
        f"diff --git a/ok b/{name}\ncopy from ok\ncopy to {name}\n",
        f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-a\n+b\n",
        f"diff --git a/{name} b/{name}\nold mode 100644\nnew mode 100755\n",
    ]
    for patch in sections:
        with pytest.raises(GateError) as info:
            parse_patch(patch)
        assert info.value.info.code in (Code.PATH_TRAVERSAL, Code.BAD_PATCH), patch
        if info.value.info.code is Code.BAD_PATCH:
            # Only where the name cannot even be read (an empty component after the prefix).
            assert name.startswith("/") or "//" in name, patch


def test_git_itself_would_apply_what_the_strict_rules_refuse(scratch: Path) -> None:
    """The refusals above are not pedantry: git reads these patches surprisingly."""
    # Names that differ without rename headers: git renames the file.
    view = git_view(scratch, "diff --git a/x b/y\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n")
    assert view is not None and view.numstat == [("1", "1", "y")]
    # The diff --git line is ignored when ---/+++ name the file.
    view = git_view(scratch, "diff --git a/doc b/doc\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    assert view is not None and view.numstat == [("1", "1", "x")]
    # A plain diff's two names may differ: git uses the second and says nothing.
    view = git_view(scratch, "--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n")
    assert view is not None and view.numstat == [("1", "1", "y")]
    # A slash-less plain name switches git to -p0 for the rest of the patch, so a later
    # "diff --git a/x b/x" section changes "b/x".
    view = git_view(scratch, "--- z\n+++ z\n@@ -1 +1 @@\n-a\n+b\n"
                             "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    assert view is not None and [name for _, _, name in view.numstat] == ["z", "b/x"]
    # An epoch timestamp makes a creation.
    view = git_view(scratch, "--- a/x\t1970-01-01 00:00:00 +0000\n+++ b/x\n@@ -0,0 +1 @@\n+a\n")
    assert view is not None and view.summary == [" create x"]
    # Removing every line of a plain diff is summarised as a deletion.
    view = git_view(scratch, "--- a/x\n+++ b/x\n@@ -1 +0,0 @@\n-a\n")
    assert view is not None and view.summary == [" delete x"]
    # The same file twice is applied twice, in sequence.
    view = git_view(scratch, UPDATE + UPDATE)
    assert view is not None and len(view.numstat) == 2


def test_type_change_from_git_diff_is_refused(tmp_path: Path) -> None:
    """git diff shows a file turned symlink as a delete and an add of the same path."""
    repo = init_repo(tmp_path / "repo")
    (repo / "f").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "f").unlink()
    os.symlink("target", repo / "f")
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached").stdout.decode()
    assert patch.count("diff --git a/f b/f") == 2
    assert "more than once" in refused(patch).info.message


def test_non_text_and_unpaired_surrogates_are_refused() -> None:
    refused(b"diff --git a/x b/x\n")  # type: ignore[arg-type]
    refused(UPDATE.replace("+b", "+\ud800"))


def test_error_paths_name_the_file_or_the_field() -> None:
    assert refused(UPDATE + UPDATE).info.path == "x"
    assert refused("").info.path == "patch"
    error = refused("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n-a\n+b\n")
    assert error.info.path == "x"


# --- time: linear on hostile input -------------------------------------------------------------

def hostile_inputs() -> Iterator[tuple[str, str]]:
    big = 400_000
    modes = "\nold mode 100644\nnew mode 100755\n"
    yield "def-name spaces", "diff --git a/" + "x " * big + "b/x" + modes
    yield "def-name slashes", "diff --git a/" + " /" * big + modes
    yield "def-name words", "diff --git a/" + "x" * big + " b/" + "x" * big + modes
    yield "hunk-ish lines", "@@ -x\n" * big
    yield "diff lines", "diff --git \n" * big
    yield "plain headers", "--- a/x\n+++ b/x\n" * big
    yield "long hunk", (f"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,{big} +1,{big} @@\n"
                        + " c\n" * (big - 1) + "-a\n+b\n")
    yield "escapes", 'diff --git "a/' + "\\303" * big + '" "b/x"\nold mode 100644\n'
    yield "timestamp digits", "--- a/x " + "1" * big + "\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    yield "timestamp spaces", "--- a/x" + " " * big + "00-00-00\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    yield "binary", ("diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 9\n"
                     + "zcmYew%wtF_sx$%s42c4`cmYew%wtF_sx$%s42c4`cmYew%wtF_sx$%s42c4`cmYew%\n"
                     * (big // 20) + "\n")
    yield "many files", "diff --git a/f b/f\nnew file mode 100644\n" * (big // 10)
    yield "huge counts", "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1," + "9" * big + " +1 @@\n"


@pytest.mark.parametrize(("name", "patch"), list(hostile_inputs()))
def test_hostile_input_is_handled_in_linear_time(name: str, patch: str) -> None:
    start = time.perf_counter()
    with contextlib.suppress(GateError):
        parse_patch(patch)
    assert time.perf_counter() - start < 5.0, name
