"""Many globs against many paths at once: which of a fixed set of patterns each path matches.

A policy's rules hold a hundred or more globs and a patch may touch thousands of files; asking
:func:`hyperion.gate.paths.glob_match` about every pair costs seconds. :class:`GlobSet` sorts
the patterns once into shapes that a path can look up instead of scanning:

* a literal path (``Dockerfile``, ``src/app.py``): one dict lookup;
* everything under a literal folder (``deploy/**``, ``deploy/``): a lookup per ancestor folder;
* a literal name anywhere (``**/Dockerfile``) or an extension anywhere (``**/*.tf``): a lookup
  on the file name or its last extension;
* anything else: a regular expression, tried only when one combined expression of all of them
  matches, and only for paths of at most :data:`REGEX_PATH_LIMIT` characters with patterns
  whose expression cannot backtrack badly (at most one ``*`` per segment, at most one ``**``);
  longer paths and other patterns go to ``glob_match`` itself, whose time is bounded.

The answer is the same as ``glob_match`` for every path and pattern (a property test checks).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from hyperion.gate.paths import _ANY, _GLOBSTAR, _STAR, _Class, _compile, _Segment, glob_match

REGEX_PATH_LIMIT = 256
"""Longest path (characters) given to a pattern's regular expression; longer ones are matched
by ``glob_match`` (linear time), so no path can make a regular expression backtrack for long."""

_SPECIAL = frozenset("*?[\\")


def _has_invalid(text: str) -> bool:
    """Whether a "\n"-joined list holds a path no pattern matches: empty, with a leading or
    trailing "/", or an empty segment (substring searches: C speed)."""
    return (not text or text[0] in "/\n" or text[-1] in "/\n" or "//" in text
            or "\n\n" in text or "\n/" in text or "/\n" in text)


def _literal(text: str) -> bool:
    return not (_SPECIAL & set(text))


def _class_regex(token: _Class) -> str:
    """The class as a regex set that, like the glob matchers, never matches "/" (nor a line
    feed, which no valid path holds)."""
    spans = []
    for lo, hi in token.intervals():
        for cut in (0x0A, 0x2F):
            if lo <= cut <= hi:
                if lo < cut:
                    spans.append((lo, cut - 1))
                lo = cut + 1
        if lo <= hi:
            spans.append((lo, hi))
    if not spans:
        return "(?!)"
    body = "".join(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
                   for lo, hi in spans)
    return f"[{body}]"


def _segment_regex(segment: _Segment) -> str:
    out = []
    for token in segment:
        if token is _STAR:
            out.append("[^/\\n]*")
        elif token is _ANY:
            out.append("[^/\\n]")
        elif isinstance(token, _Class):
            out.append(_class_regex(token))
        else:
            assert isinstance(token, str)
            out.append(re.escape(token))
    return "".join(out)


def _regex(segments: tuple[_Segment, ...]) -> str | None:
    """A regular expression equal to the pattern on valid paths (no empty segment), or None
    when its backtracking could grow faster than about len(path) * segments."""
    globstars = sum(1 for s in segments if s is _GLOBSTAR)
    if globstars > 1 or any(s is not _GLOBSTAR and s.count(_STAR) > 1 for s in segments):
        return None
    parts: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment is _GLOBSTAR:
            if i == last:
                parts.append(".+" if i == 0 else "/.+")
            else:
                parts.append("(?:[^/\\n]+/)*")
            continue
        parts.append(_segment_regex(segment))
        if i < last and not (i + 1 == last and segments[last] is _GLOBSTAR):
            parts.append("/")
    return "".join(parts)


class GlobSet:
    """A fixed list of patterns; :meth:`matching` gives the indexes of those a path matches."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact: dict[str, list[int]] = {}
        self._under: dict[str, list[int]] = {}
        self._name: dict[str, list[int]] = {}
        self._ext: dict[str, list[tuple[int, str]]] = {}
        regexes: list[tuple[int, re.Pattern[str]]] = []
        self._slow: list[int] = []          # glob_match for every path
        for index, pattern in enumerate(self.patterns):
            segments = _compile(pattern)
            if segments is None:
                continue                    # matches nothing
            if not self._index(index, pattern, segments):
                source = _regex(segments)
                if source is None:
                    self._slow.append(index)
                else:
                    regexes.append((index, re.compile(source)))
        self._regexes = regexes
        # One expression for "any of them" first, when there are several to try.
        self._any_regex = re.compile("|".join(f"(?:{r.pattern})" for _, r in regexes),
                                     ) if len(regexes) > 1 else None
        self._under_depth = max((folder.count("/") + 1 for folder in self._under), default=0)
        self._by_name = bool(self._name or self._ext)

    def _index(self, index: int, pattern: str, segments: tuple[_Segment, ...]) -> bool:
        """File the pattern under a lookup shape; False when it has none."""
        body = pattern[1:] if pattern.startswith("/") else pattern
        if body.endswith("/"):
            body = body[:-1]
            if body and _literal(body) and "//" not in body:
                self._under.setdefault(body, []).append(index)
                return True
            return False
        if _literal(body) and all(s is not _GLOBSTAR for s in segments):
            self._exact.setdefault(body, []).append(index)
            return True
        if body.endswith("/**") and segments[-1] is _GLOBSTAR and len(segments) > 1:
            folder = body[:-3]
            if _literal(folder) and "**" not in folder.split("/") and "//" not in folder:
                self._under.setdefault(folder, []).append(index)
                return True
            return False
        if len(segments) == 2 and segments[0] is _GLOBSTAR and body.startswith("**/"):
            name = body[3:]
            if _literal(name):
                self._name.setdefault(name, []).append(index)
                return True
            if name.startswith("*") and _literal(name[1:]) and name[1:2] == ".":
                suffix = name[1:]
                key = suffix.rsplit(".", 1)[1]
                self._ext.setdefault(key, []).append((index, suffix))
                return True
        return False

    def match_all(self, paths: Sequence[str]) -> dict[int, list[int]]:
        """For many paths at once: pattern index -> indexes (into ``paths``) of the paths it
        matches, for the patterns that match any. Same answers as :meth:`matching` on each
        path, with the per-path work in a few C-level passes (sorting, set intersections)."""
        out: dict[int, list[int]] = {}
        def add(index: int, path_indexes: list[int]) -> None:
            out.setdefault(index, []).extend(path_indexes)

        text = "\n".join(paths)
        if text.count("\n") == len(paths) - 1 and not _has_invalid(text):
            valid: Sequence[int] = range(len(paths))   # the usual case, checked in C
        else:
            valid = [i for i, p in enumerate(paths)
                     if p and p[0] != "/" and p[-1] != "/" and "//" not in p]
            odd = [i for i in valid if "\n" in paths[i]]   # never from a checked path
            if odd:
                valid = [i for i in valid if "\n" not in paths[i]]
                for i in odd:
                    for index in self.matching(paths[i]):
                        add(index, [i])
        # path -> its index; the rare repeated path (two copies of one file) -> all of them.
        where = dict(zip([paths[i] for i in valid], valid, strict=True))
        repeated: dict[str, list[int]] = {}
        if len(where) != len(valid):
            for i in valid:
                repeated.setdefault(paths[i], []).append(i)
            repeated = {p: hits for p, hits in repeated.items() if len(hits) > 1}

        def at(path: str) -> list[int]:
            return repeated.get(path) or [where[path]]

        for path in self._exact.keys() & where.keys():
            for index in self._exact[path]:
                add(index, at(path))
        if self._under:
            ordered = sorted(where)
            for folder, indexes in self._under.items():
                lo = bisect.bisect_left(ordered, folder + "/")
                hi = bisect.bisect_left(ordered, folder + "0", lo)   # "0" follows "/"
                if lo < hi:
                    below = [i for path in ordered[lo:hi] for i in at(path)]
                    for index in indexes:
                        add(index, below)
        if self._by_name:
            # Per-path work in list comprehensions and set intersections; a loop only over
            # the paths whose name or extension some pattern has.
            listed = list(where)
            names = [p[p.rfind("/") + 1:] for p in listed]
            if self._name:
                hit_names = self._name.keys() & set(names)
                if hit_names:
                    for path, name in zip(listed, names, strict=True):
                        if name in hit_names:
                            for index in self._name[name]:
                                add(index, at(path))
            if self._ext:
                exts = [n.rpartition(".")[2] for n in names]
                hit_exts = self._ext.keys() & set(exts)
                if hit_exts:
                    for path, name, ext in zip(listed, names, exts, strict=True):
                        if ext in hit_exts:
                            for index, suffix in self._ext[ext]:
                                if name.endswith(suffix):
                                    add(index, at(path))
        if self._regexes:
            longest = max(map(len, where), default=0)
            short = list(where) if longest <= REGEX_PATH_LIMIT else \
                [p for p in where if len(p) <= REGEX_PATH_LIMIT]
            long = [] if longest <= REGEX_PATH_LIMIT else \
                [p for p in where if len(p) > REGEX_PATH_LIMIT]
            if self._any_regex is not None:
                short = list(filter(self._any_regex.fullmatch, short))
            for index, regex in self._regexes:
                hits = [i for p in filter(regex.fullmatch, short) for i in at(p)]
                hits += [i for p in long if glob_match(p, self.patterns[index]) for i in at(p)]
                if hits:
                    add(index, hits)
        for index in self._slow:
            hits = [i for p in where if glob_match(p, self.patterns[index]) for i in at(p)]
            if hits:
                add(index, hits)
        return out

    def matching(self, path: str) -> list[int]:
        """Indexes of the patterns ``path`` matches (each once, in no particular order)."""
        if not path or path[0] == "/" or path[-1] == "/" or "//" in path:
            return []
        if "\n" in path:   # the fast shapes assume none (a checked path never has one)
            return [i for i, pattern in enumerate(self.patterns) if glob_match(path, pattern)]
        found: list[int] = []
        hit = self._exact.get(path)
        if hit:
            found += hit
        if self._under_depth:
            # Only as many ancestors as the deepest indexed folder has segments.
            at = path.find("/")
            depth = 0
            while at != -1 and depth < self._under_depth:
                hit = self._under.get(path[:at])
                if hit:
                    found += hit
                at = path.find("/", at + 1)
                depth += 1
        if self._by_name:
            name = path[path.rfind("/") + 1:]
            hit = self._name.get(name)
            if hit:
                found += hit
            dot = name.rfind(".")
            for index, suffix in self._ext.get(name[dot + 1:] if dot != -1 else name, ()):
                if name.endswith(suffix):
                    found.append(index)
        if self._regexes:
            if len(path) > REGEX_PATH_LIMIT:
                found += [i for i, _ in self._regexes if glob_match(path, self.patterns[i])]
            elif self._any_regex is None or self._any_regex.fullmatch(path):
                found += [i for i, r in self._regexes if r.fullmatch(path)]
        for index in self._slow:
            if glob_match(path, self.patterns[index]):
                found.append(index)
        return found
