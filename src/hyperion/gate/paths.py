"""Path safety for repository-relative paths, and the glob language of ``file_targets``.

:func:`check_path` refuses every path that could leave the working tree, reach into ``.git``
(including the spellings NTFS and HFS+ treat as ``.git``), or smuggle control characters into a
log. :func:`glob_match` and :func:`in_scope` decide whether a path lies inside a set of
gitignore-like globs. Both run in time bounded by the product of path and pattern lengths, with
no regular-expression backtracking and no recursion, whatever the input.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from hyperion.errors import Code, GateError

MAX_PATH_BYTES = 4096
"""The longest path accepted, in UTF-8 bytes (Linux's PATH_MAX)."""

_SHOW_CHARS = 200

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators (which end a log
# line as surely as "\n" does).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DRIVE = re.compile("[A-Za-z]:")

# Code points HFS+ ignores when it compares names, so ".g\u200cit" is ".git" on a Mac.
_HFS_IGNORED = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])

_GIT_ALIASES = frozenset({".git", "git~1"})


def describe(text: str) -> str:
    """``text`` as a Python literal, cut to about 200 characters: safe to put in a message."""
    shown = repr(text)
    if len(shown) > _SHOW_CHARS:
        shown = shown[:_SHOW_CHARS] + "...(truncated)"
    return shown


def safe_field(text: str) -> str:
    """``text`` itself when it is short and printable, else :func:`describe` of it."""
    if len(text) <= _SHOW_CHARS and text.isprintable():
        return text
    return describe(text)


def _is_git_alias(component: str) -> bool:
    """True for ``.git`` and every name git, NTFS or HFS+ would treat as it (any letter case,
    trailing dots and spaces, the 8.3 short name ``git~1``, an NTFS stream suffix ``:...``,
    and HFS+ ignorable code points)."""
    name = component.translate(_HFS_IGNORED).split(":", 1)[0].rstrip(". ")
    return name.casefold() in _GIT_ALIASES


def _refuse(path: str, field: str, why: str) -> GateError:
    return GateError(Code.PATH_TRAVERSAL, f"the path {describe(path)} {why}; use a plain path "
                     "relative to the repository root", path=safe_field(field))


def check_path(path: str, field: str) -> None:
    """Raise :class:`GateError` (``path_traversal``, ``path=field``) unless ``path`` is a safe
    relative path of a file inside the working tree and outside ``.git``."""
    if not path:
        raise _refuse(path, field, "is empty")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse(path, field, "is not valid Unicode (it has an unpaired surrogate)") from None
    if size > MAX_PATH_BYTES:
        raise _refuse(path, field, f"is longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise _refuse(path, field, "contains a control character")
    if "\\" in path:
        raise _refuse(path, field, "contains a backslash")
    if path.startswith("/") or _DRIVE.match(path):
        raise _refuse(path, field, "is absolute")
    for component in path.split("/"):
        if component == "":
            raise _refuse(path, field, "has an empty component (a doubled or trailing '/')")
        if component in (".", ".."):
            raise _refuse(path, field, f"has a {component!r} component")
        if _is_git_alias(component):
            raise _refuse(path, field, "reaches into .git (or a name that aliases it)")


# --- globs -------------------------------------------------------------------------------------
#
# Two matchers share one parse of the pattern. Small inputs go to a greedy wildcard matcher
# (fast, at worst proportional to len(path) * len(pattern)); large ones to a bit-parallel NFA
# (one pass over the path, a few big-integer operations per character). Neither backtracks
# more than that, and neither recurses.

# A segment is a tuple of tokens. A token is one of:
#   _STAR                      any run of characters (within the segment)
#   str of length 1            that character
#   _Class                     one character from a bracket expression (or "?": any one)
_STAR = None

_GREEDY_LIMIT = 10_000  # len(path) * len(pattern) up to which the greedy matcher is used


@dataclass(frozen=True)
class _Class:
    negated: bool
    singles: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def matches(self, ch: str) -> bool:
        hit = ch in self.singles or any(lo <= ch <= hi for lo, hi in self.ranges)
        return hit != self.negated

    def intervals(self) -> list[tuple[int, int]]:
        """The code points this class matches, as disjoint, non-adjacent, sorted intervals."""
        spans = sorted([(ord(c), ord(c)) for c in self.singles]
                       + [(ord(lo), ord(hi)) for lo, hi in self.ranges if lo <= hi])
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        if not self.negated:
            return merged
        complement: list[tuple[int, int]] = []
        start = 0
        for lo, hi in merged:
            if lo > start:
                complement.append((start, lo - 1))
            start = hi + 1
        if start <= sys.maxunicode:
            complement.append((start, sys.maxunicode))
        return complement


_ANY = _Class(negated=True, singles=frozenset(), ranges=())  # "?": any one character

_Token: TypeAlias = _Class | str | None
_Segment: TypeAlias = tuple[_Token, ...]
_GLOBSTAR: _Segment = ("**",)  # a whole "**" segment (a marker, compared by identity)


def _parse_class(pattern: str, start: int) -> tuple[_Class, int] | None:
    """Parse a bracket expression whose "[" is at ``start``; None if it is not closed."""
    i = start + 1
    negated = i < len(pattern) and pattern[i] in "!^"
    if negated:
        i += 1
    singles: set[str] = set()
    ranges: list[tuple[str, str]] = []
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            return _Class(negated, frozenset(singles), tuple(ranges)), i + 1
        first = False
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            ch = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            hi_at = i + 2
            if pattern[hi_at] == "\\" and hi_at + 1 < len(pattern):
                hi_at += 1
            ranges.append((ch, pattern[hi_at]))
            i = hi_at + 1
        else:
            singles.add(ch)
            i += 1
    return None


def _compile_segment(text: str) -> _Segment | None:
    """Tokens of one pattern segment; None when the segment can match nothing (a dangling
    backslash)."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
            i += 1
        elif ch == "?":
            tokens.append(_ANY)
            i += 1
        elif ch == "[":
            parsed = _parse_class(text, i)
            if parsed is None:
                tokens.append("[")
                i += 1
            else:
                tokens.append(parsed[0])
                i = parsed[1]
        elif ch == "\\":
            if i + 1 >= len(text):
                return None
            tokens.append(text[i + 1])
            i += 2
        else:
            tokens.append(ch)
            i += 1
    return tuple(tokens)


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> tuple[_Segment, ...] | None:
    """The pattern as a sequence of segments (``_GLOBSTAR`` for "**", runs collapsed); None if
    it matches nothing. A leading "/" is ignored (patterns are anchored anyway); a trailing "/"
    means "everything below", like "/**"."""
    if pattern.startswith("/"):
        pattern = pattern[1:]
    if pattern.endswith("/"):
        pattern += "**"
    if not pattern:
        return None
    segments: list[_Segment] = []
    for text in pattern.split("/"):
        if text == "**":
            if not segments or segments[-1] is not _GLOBSTAR:
                segments.append(_GLOBSTAR)
            continue
        compiled = _compile_segment(text)
        if compiled is None:
            return None
        segments.append(compiled)
    return tuple(segments)


# -- the greedy matcher --

def _token_matches(token: _Token, ch: str) -> bool:
    if isinstance(token, _Class):
        return token.matches(ch)
    return token == ch


_I = TypeVar("_I")
_P = TypeVar("_P")


def _wildcard(items: Sequence[_I], pattern: Sequence[_P], star: _P,
              matches: Callable[[_I, _P], bool]) -> bool:
    """Whether ``items`` match ``pattern``, where ``star`` (compared by identity) stands for
    any run of items: greedy with backtracking to the last star only, so
    O(len(items) * len(pattern)) at worst, never exponential."""
    n, m = len(items), len(pattern)
    i = j = 0
    star_j = -1
    star_i = 0
    while i < n:
        if j < m and pattern[j] is not star and matches(items[i], pattern[j]):
            i += 1
            j += 1
        elif j < m and pattern[j] is star:
            star_j, star_i = j, i
            j += 1
        elif star_j >= 0:
            star_i += 1
            i, j = star_i, star_j + 1
        else:
            return False
    while j < m and pattern[j] is star:
        j += 1
    return j == m


def _match_segment(name: str, tokens: _Segment) -> bool:
    """One path segment against its tokens; ``_STAR`` is any run of characters."""
    return _wildcard(name, tokens, _STAR, lambda ch, token: _token_matches(token, ch))


def _match_greedy(path: str, segments: tuple[_Segment, ...]) -> bool:
    """The same scheme one level up: "**" is the star, every other segment matches exactly
    one path segment. A final "**" needs at least one segment (gitignore: "src/**" matches
    files inside src, not a file named src), so it reads as "*/**"."""
    if segments[-1] is _GLOBSTAR:
        segments = (*segments[:-1], (_STAR,), _GLOBSTAR)
    return _wildcard(path.split("/"), segments, _GLOBSTAR, _match_segment)


# -- the bit-parallel NFA --

@dataclass(frozen=True)
class _Nfa:
    """Bit j of a state set: the pattern's first j tokens have matched. Tokens are literals,
    "?"/classes, "*" (a loop on anything but "/"), "(.*/)?" for a "**/" (an entry that may skip
    the loop after it, and a loop on anything that is left only after a "/"), and ".+" for a
    final "/**"."""

    size: int
    literal: dict[str, int]  # tokens that consume exactly this character
    any_char: int            # consume any character
    non_slash: int           # consume any character but "/" ("?")
    slash: int               # consume "/" (and leave a "**/" loop)
    loop_any: int            # stay on any character
    loop_non_slash: int      # stay on any character but "/" ("*")
    skippable: int           # may match nothing
    skip_two: int            # may match nothing together with the token after it
    class_bounds: tuple[int, ...]  # sorted code points where class membership changes
    class_masks: tuple[int, ...]   # classes matching from the bound of the same index on

    def advance(self, ch: str) -> tuple[int, int]:
        """(tokens consuming ``ch`` and moving on, tokens consuming it and staying)."""
        if ch == "/":
            return self.slash | self.any_char, self.loop_any
        consume = self.literal.get(ch, 0) | self.any_char | self.non_slash
        at = bisect.bisect_right(self.class_bounds, ord(ch)) - 1
        if at >= 0:
            consume |= self.class_masks[at]
        return consume, self.loop_any | self.loop_non_slash

    def close(self, state: int) -> int:
        """Add the states reachable by skipping tokens that may match nothing (chains of such
        skips are at most three long: a "**/" entry, then "*")."""
        while True:
            wider = state | ((state & self.skippable) << 1) | ((state & self.skip_two) << 2)
            if wider == state:
                return state
            state = wider

    def matches(self, path: str) -> bool:
        state = self.close(1)
        for ch in path:
            consume, stay = self.advance(ch)
            state = self.close(((state & consume) << 1) | (state & stay))
            if not state:
                return False
        return bool(state >> self.size & 1)


@functools.lru_cache(maxsize=1024)
def _nfa(pattern: str) -> _Nfa | None:
    segments = _compile(pattern)
    if segments is None:
        return None
    literal: dict[str, int] = {}
    masks = {"any_char": 0, "non_slash": 0, "slash": 0, "loop_any": 0, "loop_non_slash": 0,
             "skippable": 0, "skip_two": 0}
    classes: list[tuple[int, _Class]] = []
    bit = 1

    def add(*kinds: str) -> None:
        nonlocal bit
        for kind in kinds:
            masks[kind] |= bit
        bit <<= 1

    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment is _GLOBSTAR:
            if last:
                add("any_char")  # ".+": at least one more character, then anything
                add("loop_any", "skippable")
            else:
                add("skippable", "skip_two")  # "(.*/)?": enter the loop, or skip it
                add("slash", "loop_any")  # the loop, left after a "/"
            continue
        for token in segment:
            if token is _STAR:
                add("loop_non_slash", "skippable")
            elif token is _ANY:
                add("non_slash")
            elif isinstance(token, _Class):
                classes.append((bit, token))
                add()
            else:
                assert isinstance(token, str)
                literal[token] = literal.get(token, 0) | bit
                add()
        if not last:
            literal["/"] = literal.get("/", 0) | bit
            masks["slash"] |= bit
            add()
    # Class membership by code point: toggle each class's bit at the ends of its intervals.
    events: dict[int, int] = {}
    for class_bit, token in classes:
        for lo, hi in token.intervals():
            events[lo] = events.get(lo, 0) ^ class_bit
            events[hi + 1] = events.get(hi + 1, 0) ^ class_bit
    bounds = sorted(events)
    class_masks = []
    current = 0
    for bound in bounds:
        current ^= events[bound]
        class_masks.append(current)
    return _Nfa(size=bit.bit_length() - 1, literal=literal, class_bounds=tuple(bounds),
                class_masks=tuple(class_masks), **masks)


def glob_match(path: str, pattern: str) -> bool:
    """True when the whole of ``path`` ("/"-separated, relative) matches ``pattern``.

    ``*`` matches any run of characters within one segment, ``?`` one character, ``[...]`` one
    character of a set (``[!...]`` or ``[^...]`` negates; ``a-z`` ranges), ``\\`` makes the next
    character literal; a whole ``**`` segment matches zero or more segments (``**/x``,
    ``a/**/b``), or one or more at the end (``src/**``, like gitignore); a trailing ``/`` is
    short for ``/**``. The match is anchored at the start: ``*.py`` does not match ``d/a.py``.
    A path with an empty segment (empty, or a leading, trailing or doubled "/") matches nothing.
    """
    if not path or path.startswith("/") or path.endswith("/") or "//" in path:
        return False
    if len(path) * len(pattern) <= _GREEDY_LIMIT:
        segments = _compile(pattern)
        return segments is not None and _match_greedy(path, segments)
    nfa = _nfa(pattern)
    return nfa is not None and nfa.matches(path)


def in_scope(path: str, patterns: Sequence[str]) -> bool:
    """True when ``path`` matches at least one of ``patterns``."""
    return any(glob_match(path, pattern) for pattern in patterns)
