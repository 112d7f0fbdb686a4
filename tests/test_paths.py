"""Path safety (every refusal rule) and the glob language of file_targets."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion.errors import Code, GateError
from hyperion.gate.paths import (
    MAX_PATH_BYTES,
    _compile,
    _match_greedy,
    _nfa,
    check_path,
    glob_match,
    in_scope,
)


def refusal(path: str, field: str = "changes[0].path") -> GateError:
    with pytest.raises(GateError) as info:
        check_path(path, field)
    assert info.value.info.code is Code.PATH_TRAVERSAL
    return info.value


# --- check_path --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "a", "a/b/c.txt", "src/app.py", ".gitignore", ".github/workflows/ci.yml", "dir/.gitmodules",
    "x.git", ".gitx", "git", "git~2", ".git.d", "a..b", "...", "..a", ".a", "a b/c d",
    "é/ü/日本.txt", "~/x", "ab:c", "x/c:d", "*?[].txt", "x" * MAX_PATH_BYTES,
])
def test_safe_paths_pass(path: str) -> None:
    check_path(path, "changes[0].path")


@pytest.mark.parametrize(("path", "why"), [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("C:/x", "absolute"),
    ("c:x", "absolute"),
    ("a:b", "absolute"),
    ("\\\\server\\share", "backslash"),
    ("a\\b", "backslash"),
    ("..", "'..'"),
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("a/..", "'..'"),
    (".", "'.'"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    (".git", ".git"),
    (".git/config", ".git"),
    ("a/.git/hooks/pre-commit", ".git"),
    (".GIT/config", ".git"),
    (".Git/config", ".git"),
    ("sub/.gIt", ".git"),
    (".git./config", ".git"),
    (".git /config", ".git"),
    (".git . ./x", ".git"),
    ("git~1/config", ".git"),
    ("GIT~1/config", ".git"),
    ("git~1./x", ".git"),
    (".git::$INDEX_ALLOCATION/config", ".git"),
    (".g\u200cit/config", ".git"),
    ("\ufeff.git/config", ".git"),
    ("a\x00b", "control"),
    ("a\nb", "control"),
    ("a\tb", "control"),
    ("a\rb", "control"),
    ("a\x1bb", "control"),
    ("a\x7fb", "control"),
    ("a\x85b", "control"),
    ("a\x9fb", "control"),
    ("a\u2028b", "control"),
    ("a\ud800b", "surrogate"),
    ("x" * (MAX_PATH_BYTES + 1), "longer"),
    ("é" * (MAX_PATH_BYTES // 2 + 1), "longer"),
])
def test_unsafe_paths_are_refused(path: str, why: str) -> None:
    error = refusal(path)
    assert why in error.info.message
    assert error.info.path == "changes[0].path"


def test_messages_never_carry_raw_control_characters_and_are_short() -> None:
    for path in ["a\x1b[31mred\x00", "\x85" * 10_000, "x\n" * 5000, "../" * 3000]:
        message = refusal(path).info.message
        assert message.isprintable()
        assert len(message) < 400


def test_field_is_named_as_given_or_escaped_when_unprintable() -> None:
    assert refusal("../x", field="file_targets[3]").info.path == "file_targets[3]"
    shown = refusal("../x", field="evil\x1b[0m").info.path
    assert shown is not None and shown.isprintable()


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_any_string_is_accepted_or_refused_with_gate_error(path: str) -> None:
    try:
        check_path(path, path)
    except GateError as error:
        assert error.info.code is Code.PATH_TRAVERSAL
        assert error.info.message.isprintable()
        assert error.info.path is not None and error.info.path.isprintable()
    else:
        assert path and not path.startswith("/") and ".." not in path.split("/")
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in path)
        assert ".git" not in path.lower().split("/")


# --- glob_match --------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("*", "a", True),
    ("*", "a/b", False),
    ("*.py", "a.py", True),
    ("*.py", "d/a.py", False),  # anchored: no gitignore-style match at any depth
    ("src/**", "src/a", True),
    ("src/**", "src/a/b/c", True),
    ("src/**", "src", False),
    ("src/**", "srcx/a", False),
    ("src/**", "x/src/a", False),
    ("src/", "src/a/b", True),
    ("/src/*", "src/a", True),
    ("**/test_*.py", "test_a.py", True),
    ("**/test_*.py", "tests/test_a.py", True),
    ("**/test_*.py", "a/b/c/test_.py", True),
    ("**/test_*.py", "a/btest_x.py", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/b", True),
    ("a/**/b", "a/x/y/z/b", True),
    ("a/**/b", "a/xb", False),
    ("a/**/b", "a/b/c", False),
    ("a/**/**/b", "a/b", True),
    ("a/**", "a/b/**", True),
    ("a**b/c", "axyzb/c", True),  # "**" inside a segment is a plain "*"
    ("a**b/c", "ax/b/c", False),
    ("?.txt", "a.txt", True),
    ("?.txt", "ab.txt", False),
    ("?", "/", False),
    ("[abc].py", "b.py", True),
    ("[abc].py", "d.py", False),
    ("[a-c]x", "bx", True),
    ("[!a-c]x", "bx", False),
    ("[^a-c]x", "dx", True),
    ("[]]", "]", True),
    ("[!]]", "a", True),
    ("[a-]", "-", True),
    ("[", "[", True),
    ("a[b", "a[b", True),
    ("\\*", "*", True),
    ("\\*", "a", False),
    ("[\\]]", "]", True),
    ("a\\", "a", False),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/a/b.py", False),
    ("docs/**/*.md", "docs/a.md", True),
    ("docs/**/*.md", "docs/x/y/a.md", True),
    ("", "a", False),
    ("**", "", False),
    ("**", "a/", False),
    ("**", "/a", False),
    ("a/**", "a//b", False),
    ("a", "A", False),
])
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(path, pattern) is expected


def test_in_scope_is_any_pattern() -> None:
    assert in_scope("src/a.py", ["docs/**", "src/*.py"])
    assert not in_scope("src/a.py", ["docs/**", "tests/**"])
    assert not in_scope("src/a.py", [])


SEGMENT = st.text(alphabet="abcxyz._-é ", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
PATHS = st.lists(SEGMENT, min_size=1, max_size=6).map("/".join)


@given(PATHS)
def test_a_path_matches_double_star_and_itself(path: str) -> None:
    assert glob_match(path, "**")
    assert glob_match(path, path)
    assert glob_match(path, "**/" + path)
    assert glob_match(path, path.split("/", 1)[0] + "/**") == ("/" in path)


@given(st.lists(st.text(alphabet="ab*?[]!\\-x", min_size=1, max_size=4), min_size=1,
                max_size=4).map("/".join))
def test_escaping_every_character_matches_exactly_the_literal(path: str) -> None:
    escaped = "/".join("".join("\\" + c for c in segment) for segment in path.split("/"))
    assert glob_match(path, escaped)


@given(PATHS)
def test_src_double_star_never_matches_a_sibling_prefix(rest: str) -> None:
    assert not glob_match("srcx/" + rest, "src/**")
    assert not glob_match("src" + rest, "src/**")
    assert glob_match("src/" + rest, "src/**")


def reference(path: str, pattern: str) -> bool:
    """A slow, backtracking translation of the glob language without brackets and escapes."""
    pattern = pattern.removeprefix("/")
    if pattern.endswith("/"):
        pattern += "**"
    if not pattern or not path:
        return False
    segments: list[str] = []
    for segment in pattern.split("/"):
        if segment == "**" and segments and segments[-1] == "**":
            continue
        segments.append(segment)
    out = ""
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out += "[^/]+(?:/[^/]+)*" if last else "(?:[^/]+/)*"
            continue
        out += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                       for c in segment)
        if not last:
            out += "/"
    return re.fullmatch(out, path) is not None


@given(st.lists(st.sampled_from(["a", "b", "ab", "*", "?", "**", "a*", "*b", "a?b", "*a*"]),
                min_size=1, max_size=5).map("/".join),
       st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab", "x"]), min_size=1,
                max_size=6).map("/".join))
@settings(max_examples=1000)
def test_glob_agrees_with_a_backtracking_reference(pattern: str, path: str) -> None:
    assert glob_match(path, pattern) == reference(path, pattern)


def both_engines(path: str, pattern: str) -> tuple[bool, bool]:
    """The greedy matcher's and the NFA's answers (glob_match picks one by input size)."""
    if "" in path.split("/"):
        return False, False  # glob_match refuses these before either engine runs
    segments = _compile(pattern)
    nfa = _nfa(pattern)
    greedy = segments is not None and _match_greedy(path, segments)
    return greedy, nfa is not None and nfa.matches(path)


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("[abc].py", "b.py", True), ("[!a-c]x", "bx", False), ("[^a-c]x", "dx", True),
    ("[z-a]", "m", False), ("[!z-a]", "m", True), ("[a-cx-z]", "y", True), ("?", "/", False),
    ("[!a]", "/", False), ("src/**", "src", False), ("**", "a/b", True), ("a/**/b", "a/b", True),
])
def test_both_engines_on_classes_and_globstars(pattern: str, path: str, expected: bool) -> None:
    assert both_engines(path, pattern) == (expected, expected)


PATTERN_PARTS = st.sampled_from(["a", "b", "ab", "*", "?", "**", "a*", "*b", "a?b", "*a*", "[ab]",
                                 "[!a]", "[^b]*", "\\*", "[a-b]x", ""])
PATH_PARTS = st.sampled_from(["a", "b", "ab", "ba", "aab", "x", "bx", "*", ""])


@given(st.lists(PATTERN_PARTS, min_size=1, max_size=6).map("/".join),
       st.lists(PATH_PARTS, min_size=1, max_size=6).map("/".join))
@settings(max_examples=2000)
def test_the_two_engines_agree(pattern: str, path: str) -> None:
    greedy, nfa = both_engines(path, pattern)
    assert greedy == nfa


@given(st.text(max_size=60), st.text(max_size=60))
def test_glob_never_raises(path: str, pattern: str) -> None:
    assert glob_match(path, pattern) in (True, False)
    greedy, nfa = both_engines(path, pattern)
    assert greedy == nfa


def test_pathological_globs_take_linear_ish_time() -> None:
    cases = [
        ("a" * 4000, "*a" * 40 + "b"),
        ("a" * 4096, "*" + "a" * 1022 + "b"),
        ("/".join(["a"] * 2048), "**/" + "/".join(["a"] * 510) + "/b"),
        ("/".join(["a"] * 2048), "/".join(["**", "a"] * 256) + "/b"),
        ("/".join(["aaaa"] * 800), "**/*a*a*a*b/**"),
        ("a" * 4000, "[" * 2000 + "]" * 2000),
        ("\u00e9" * 2000, "".join(f"[{chr(0x100 + i)}-{chr(0x200 + i)}]" for i in range(200))),
    ]
    for path, pattern in cases:
        start = time.perf_counter()
        for _ in range(10):
            assert not glob_match(path, pattern)
        assert time.perf_counter() - start < 1.0, pattern[:40]
