"""The secret scanner: credentials in what a change would land.

The rules are data (``secret_rules.yaml`` beside this module): each has an id, keywords, one or
more regular expressions whose group ``secret`` is the value, a minimum entropy, stopwords and
allowlists. They are loaded and compiled once.

How a text is scanned:

1. it is lowercased once, and each rule whose keywords do not occur in it is skipped (the
   prefilter); for the others, only the lines holding a keyword (plus ``context_lines`` after
   them) are searched, so a rule's regex never runs over text that cannot match it;
2. each match is checked: the value's Shannon entropy, stopwords and placeholders (``${X}``,
   ``{{ x }}``, ``<password>``, ``xxxx``...), a structural check for some rules (a JWT's header
   must be JSON naming its algorithm), and for assignments the name (``password_hash`` is not
   a password);
3. where two rules match the same value, a specific rule wins over a generic one, then the
   earlier in the file (so a GitHub token assigned to ``token = ...`` is reported once, as a
   GitHub token, and a value a rule recognised as a placeholder is not reported by another);
4. the caller's :class:`Allowlist` (fingerprints, path globs, regexes on the matched text) and
   the inline marker :data:`ALLOW_MARKER` on the same line drop a finding.

A finding carries the rule id, the path, the line and a fingerprint (the first 12 hex digits of
``sha256(rule_id + value)``): never the value. The same fingerprint names a value wherever it
appears, which is what the allowlist matches on.

Failing closed: a text holding unpaired surrogates (bytes that were not UTF-8) is reported as
``undecodable-text``, and a binary file section as ``undecodable-binary`` (its content cannot be
scanned as text) unless its path is allowlisted. Nothing is reported clean unread.

Every regex uses bounded repetitions, so scanning is linear in the size of the input.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import importlib.resources
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hyperion.gate.patch import FilePatch, Operation
from hyperion.gate.paths import in_scope, safe_field

__all__ = [
    "ALLOW_MARKER",
    "UNDECODABLE_BINARY",
    "UNDECODABLE_TEXT",
    "Allowlist",
    "Finding",
    "fingerprint",
    "load_rules",
    "redact",
    "rule_ids",
    "scan_patch",
    "scan_text",
]

ALLOW_MARKER = "hyperion:allow-secret"
"""A finding on a line that contains this text is ignored (write it in a comment on the line
of the value; for a PEM block, on its BEGIN line)."""

UNDECODABLE_TEXT = "undecodable-text"
UNDECODABLE_BINARY = "undecodable-binary"

_FINGERPRINT_HEX = 12
_FRAGMENT = re.compile(r"\{\{(\w+)\}\}")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PEM_ESCAPE = re.compile(r"\\[nrt]")
_PEM_NOISE = re.compile(r"[^A-Za-z0-9+/=]")
_WHOLE_TEXT_SHARE = 0.5  # search the whole text when the keyword lines are more than this
_PLACEHOLDER_PASSWORDS = frozenset({"pass", "passwd", "pwd", "secret", "changeme", "xxx", "test",
                                    "user", "admin", "guest"})


# --- the public values ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One secret found: where, by which rule, and a fingerprint of the value (never the value)."""

    rule_id: str
    path: str
    """The file path, or "title" / "body"."""
    line: int | None
    """New-file line number (1-based) for patch content; line within title/body."""
    fingerprint: str
    """The first 12 hex digits of sha256(rule_id + value): stable, and not the value."""

    def describe(self) -> str:
        where = f" line {self.line}" if self.line is not None else ""
        return (f"{self.rule_id} in {safe_field(self.path)}{where} "
                f"(fingerprint {self.fingerprint})")


class Allowlist(BaseModel):
    """What a policy lets through: findings by fingerprint, whole paths by glob, and matches
    whose matched text fits a regex."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprints: list[str] = Field(
        default_factory=list, description="Fingerprints of findings to ignore (12 hex digits).")
    paths: list[str] = Field(
        default_factory=list,
        description="Globs (as in file_targets) of files that are not scanned at all.")
    regexes: list[str] = Field(
        default_factory=list,
        description="A finding whose matched text (name and value) matches one is ignored.")

    @field_validator("fingerprints")
    @classmethod
    def _hex(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            if not re.fullmatch(r"[0-9a-f]{12}", item):
                raise ValueError(f"entry {index} is not a fingerprint (12 lowercase hex digits, "
                                 "as shown in a secret_detected refusal)")
        return value

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            try:
                re.compile(item)
            except re.error as exc:  # the message names a position, never the text
                raise ValueError(f"entry {index} is not a valid regular expression "
                                 f"({exc.msg} at position {exc.pos})") from None
        return value


def fingerprint(rule_id: str, value: str) -> str:
    """The fingerprint of ``value`` as found by ``rule_id``."""
    digest = hashlib.sha256((rule_id + value).encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:_FINGERPRINT_HEX]


# --- the rules file ------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PatternSpec(_Strict):
    regex: str
    paths: list[str] = Field(default_factory=list)


class _RuleSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    description: str = ""
    keywords: list[str] = Field(min_length=1)
    regex: str | None = None
    patterns: list[_PatternSpec] = Field(default_factory=list)
    min_entropy: float = Field(0.0, ge=0.0)
    stopwords: list[str] = Field(default_factory=list)
    allowlist: list[str] = Field(default_factory=list)
    allowlist_context: list[str] = Field(default_factory=list)
    must_match: list[str] = Field(default_factory=list)
    ignore_keys: str | None = None
    validate_: Literal["jwt", "basic_auth"] | None = Field(None, alias="validate")
    normalize: Literal["pem"] | None = None
    context_lines: int = Field(0, ge=0, le=1000)
    generic: bool = False

    @field_validator("keywords", "stopwords")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or item != item.lower():
                raise ValueError(f"{item!r} must be non-empty and lowercase")
        return value


class _RulesFile(_Strict):
    version: Literal[1]
    fragments: dict[str, str] = Field(default_factory=dict)
    config_paths: list[str] = Field(default_factory=list)
    stopwords: list[str] = Field(default_factory=list)
    placeholders: list[str] = Field(default_factory=list)
    rules: list[_RuleSpec] = Field(min_length=1)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    paths: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    index: int
    id: str
    keywords: tuple[str, ...]
    patterns: tuple[_Pattern, ...]
    min_entropy: float
    stopwords: tuple[str, ...]
    allowlist: tuple[re.Pattern[str], ...]
    allowlist_context: tuple[re.Pattern[str], ...]
    must_match: tuple[re.Pattern[str], ...]
    ignore_keys: re.Pattern[str] | None
    validate: Callable[[str], bool] | None
    normalize: Callable[[str], str]
    context_lines: int
    generic: bool


@dataclass(frozen=True)
class _Ruleset:
    rules: tuple[_Rule, ...]
    keywords: tuple[str, ...]  # every keyword of every rule, each once


def _valid_jwt(value: str) -> bool:
    """A JWT's first segment is base64url JSON naming its algorithm."""
    header = value.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        parsed = json.loads(decoded)
    except (ValueError, binascii.Error):
        return False
    return isinstance(parsed, dict) and "alg" in parsed


def _valid_basic_auth(value: str) -> bool:
    """HTTP basic credentials are base64 of printable "user:password" with a password."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        text = decoded.decode("utf-8")
    except (ValueError, binascii.Error):
        return False
    user, colon, password = text.partition(":")
    if not (colon and user and len(password) >= 3 and text.isprintable()):
        return False
    lowered = password.lower()
    return not (lowered in _PLACEHOLDER_PASSWORDS or "password" in lowered
                or "example" in lowered or password[0] in "$<{%*")


def _normalize_pem(value: str) -> str:
    """The base64 body of a PEM block, whatever string syntax wraps it."""
    return _PEM_NOISE.sub("", _PEM_ESCAPE.sub("", value))


def _same(value: str) -> str:
    return value


_VALIDATORS: dict[str, Callable[[str], bool]] = {"jwt": _valid_jwt,
                                                 "basic_auth": _valid_basic_auth}


def _expand(regex: str, fragments: dict[str, str], where: str) -> str:
    for _ in range(8):
        if "{{" not in regex:
            return regex

        def fragment(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in fragments:
                raise ValueError(f"{where}: unknown fragment {{{{{name}}}}}")
            return fragments[name]

        regex = _FRAGMENT.sub(fragment, regex)
    raise ValueError(f"{where}: fragments nest too deeply")


def _compile(regex: str, where: str, fragments: dict[str, str] | None = None) -> re.Pattern[str]:
    if fragments is not None:
        regex = _expand(regex, fragments, where)
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regex: {exc}") from None


def load_rules(text: str) -> _Ruleset:
    """Parse and compile a rules file (the YAML format of ``secret_rules.yaml``).

    ValueError names the rule and what is wrong."""
    # libyaml's loader when PyYAML has it: the pure-Python one takes 50-90 ms on this 22 KB
    # file, paid by every process that scans or redacts (each `submit`, each `run`).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = _RulesFile.model_validate(yaml.load(text, Loader=loader))
    frags = spec.fragments
    global_allow = tuple(_compile(p, "placeholders", frags) for p in spec.placeholders)
    rules: list[_Rule] = []
    seen: set[str] = set()
    for index, rule in enumerate(spec.rules):
        where = f"rule {rule.id}"
        if rule.id in seen:
            raise ValueError(f"{where}: the id is used twice")
        seen.add(rule.id)
        if (rule.regex is None) == (not rule.patterns):
            raise ValueError(f"{where}: give either regex or patterns")
        specs = rule.patterns or [_PatternSpec(regex=rule.regex or "")]
        patterns = []
        for spec_pattern in specs:
            compiled = _compile(spec_pattern.regex, where, frags)
            if "secret" not in compiled.groupindex:
                raise ValueError(f"{where}: a regex has no group named 'secret'")
            patterns.append(_Pattern(compiled, tuple(spec_pattern.paths)))
        rules.append(_Rule(
            index=index,
            id=rule.id,
            keywords=tuple(rule.keywords),
            patterns=tuple(patterns),
            min_entropy=rule.min_entropy,
            stopwords=tuple(dict.fromkeys([*spec.stopwords, *rule.stopwords])),
            allowlist=(*(_compile(p, where, frags) for p in rule.allowlist), *global_allow),
            allowlist_context=tuple(_compile(p, where, frags) for p in rule.allowlist_context),
            must_match=tuple(_compile(p, where, frags) for p in rule.must_match),
            ignore_keys=_compile(rule.ignore_keys, where, frags) if rule.ignore_keys else None,
            validate=_VALIDATORS[rule.validate_] if rule.validate_ else None,
            normalize=_normalize_pem if rule.normalize == "pem" else _same,
            context_lines=rule.context_lines,
            generic=rule.generic,
        ))
    keywords = tuple(dict.fromkeys(k for rule in rules for k in rule.keywords))
    return _Ruleset(tuple(rules), keywords)


@functools.lru_cache(maxsize=1)
def _ruleset() -> _Ruleset:
    text = importlib.resources.files("hyperion.gate").joinpath(
        "secret_rules.yaml").read_text(encoding="utf-8")
    return load_rules(text)


def rule_ids() -> tuple[str, ...]:
    """The ids of the shipped rules, in the order they are tried."""
    return tuple(rule.id for rule in _ruleset().rules)


# --- scanning ------------------------------------------------------------------------------------

def _entropy(value: str) -> float:
    size = len(value)
    if not size:
        return 0.0
    return -sum(n / size * math.log2(n / size) for n in Counter(value).values())


@dataclass(frozen=True)
class _Hit:
    rule: _Rule
    start: int          # of the whole match
    secret_start: int
    secret_end: int
    fingerprint: str
    matched: str        # the whole match, for the caller's regexes
    reportable: bool    # False: recognised, but a placeholder or allowed by the rule


def _keyword_windows(text: str, lowered: str, keyword: str,
                     context_lines: int) -> list[tuple[int, int]]:
    """The spans of the lines containing ``keyword`` (plus ``context_lines`` after each)."""
    spans: list[tuple[int, int]] = []
    size = len(text)
    at = lowered.find(keyword)
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        end = at
        for _ in range(context_lines + 1):
            end = text.find("\n", end)
            if end < 0:
                end = size
                break
            end += 1
        spans.append((start, end))
        if end >= size:
            break
        at = lowered.find(keyword, end)
    return spans


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _judge(rule: _Rule, match: re.Match[str]) -> _Hit | None:
    """A hit for ``match`` (reportable or a recognised placeholder), or None when the match is
    not this kind of secret at all."""
    raw = match.group("secret")
    if raw is None:
        return None
    key = match.groupdict().get("key")
    if rule.ignore_keys is not None and key is not None and rule.ignore_keys.search(
            _CAMEL.sub("_", key).lower()):
        return None
    value = rule.normalize(raw)
    if any(pattern.search(value) is None for pattern in rule.must_match):
        return None
    if rule.validate is not None and not rule.validate(value):
        return None
    lowered = value.lower()
    placeholder = (
        _entropy(value) < rule.min_entropy
        or any(word in lowered for word in rule.stopwords)
        or any(pattern.search(value) for pattern in rule.allowlist)
        or any(pattern.search(match.group()) for pattern in rule.allowlist_context))
    return _Hit(rule, match.start(), match.start("secret"), match.end("secret"),
                fingerprint(rule.id, value), match.group(), not placeholder)


def _scan(text: str, path: str | None) -> list[_Hit]:
    """Every hit in ``text``, overlaps resolved (see :func:`_resolve`), in text order.
    ``path`` None: every pattern applies, whatever its ``paths``."""
    ruleset = _ruleset()
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lowercase to two: keep offsets exact
        lowered = "".join(ch if len(low := ch.lower()) != 1 else low for ch in text)
    present = {kw for kw in ruleset.keywords if kw in lowered}
    if not present:
        return []
    windows: dict[tuple[str, int], list[tuple[int, int]]] = {}
    hits: list[_Hit] = []
    size = len(text)
    for rule in ruleset.rules:
        found = [kw for kw in rule.keywords if kw in present]
        if not found:
            continue
        patterns = [p for p in rule.patterns
                    if not p.paths or path is None or in_scope(path, p.paths)]
        if not patterns:
            continue
        spans: list[tuple[int, int]] = []
        for kw in found:
            cached = windows.get((kw, rule.context_lines))
            if cached is None:
                cached = _keyword_windows(text, lowered, kw, rule.context_lines)
                windows[(kw, rule.context_lines)] = cached
            spans.extend(cached)
        merged = _merge(spans)
        if sum(end - start for start, end in merged) > size * _WHOLE_TEXT_SHARE:
            merged = [(0, size)]
        for pattern in patterns:
            for start, end in merged:
                for match in pattern.regex.finditer(text, start, end):
                    hit = _judge(rule, match)
                    if hit is not None:
                        hits.append(hit)
    return _resolve(hits)


def _resolve(hits: list[_Hit]) -> list[_Hit]:
    """Keep, among hits whose values overlap, the one of a specific rule before a generic one,
    then of the earliest rule in the file, then the earliest and longest match."""
    if len(hits) < 2:
        return hits
    kept: list[_Hit] = []
    starts: list[int] = []  # the kept values' spans, sorted and disjoint
    ends: list[int] = []
    for hit in sorted(hits, key=lambda h: (h.rule.generic, h.rule.index, h.secret_start,
                                           -h.secret_end)):
        at = bisect.bisect_right(starts, hit.secret_start)
        if at and ends[at - 1] > hit.secret_start:
            continue  # overlaps the span that starts at or before it
        if at < len(starts) and starts[at] < hit.secret_end:
            continue  # overlaps the span that starts after it
        starts.insert(at, hit.secret_start)
        ends.insert(at, hit.secret_end)
        kept.append(hit)
    kept.sort(key=lambda h: (h.secret_start, h.rule.index))
    return kept


class _Lines:
    """Offsets to 1-based line numbers within one text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: list[int] | None = None

    def index(self, offset: int) -> int:
        """0-based index of the line holding ``offset``."""
        if self.starts is None:
            starts = [0]
            at = self.text.find("\n")
            while at >= 0:
                starts.append(at + 1)
                at = self.text.find("\n", at + 1)
            self.starts = starts
        return bisect.bisect_right(self.starts, offset) - 1

    def line(self, offset: int) -> str:
        start = self.text.rfind("\n", 0, offset) + 1
        end = self.text.find("\n", offset)
        return self.text[start:end if end >= 0 else len(self.text)]


def _allowed(hit: _Hit, allow: Allowlist | None, lines: _Lines) -> bool:
    if ALLOW_MARKER in lines.line(hit.start) or ALLOW_MARKER in lines.line(hit.secret_start):
        return True
    if allow is None:
        return False
    if hit.fingerprint in allow.fingerprints:
        return True
    return any(_allow_regex(pattern).search(hit.matched) for pattern in allow.regexes)


@functools.lru_cache(maxsize=256)
def _allow_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _undecodable(text: str) -> int | None:
    """The offset of the first unpaired surrogate (a byte that was not UTF-8), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _findings(text: str, path: str, allow: Allowlist | None,
              line_of: Callable[[int], int | None]) -> list[Finding]:
    if allow is not None and allow.paths and in_scope(path, allow.paths):
        return []
    lines = _Lines(text)
    found: list[Finding] = []
    bad = _undecodable(text)
    if bad is not None:
        value = text[bad:bad + 1].encode("utf-8", "surrogatepass").hex()
        finding = Finding(UNDECODABLE_TEXT, path, line_of(lines.index(bad)),
                          fingerprint(UNDECODABLE_TEXT, path + "\0" + value))
        if allow is None or finding.fingerprint not in allow.fingerprints:
            found.append(finding)
    for hit in _scan(text, path):
        if not hit.reportable or _allowed(hit, allow, lines):
            continue
        found.append(Finding(hit.rule.id, path, line_of(lines.index(hit.secret_start)),
                             hit.fingerprint))
    return found


def scan_text(text: str, *, path: str, allow: Allowlist | None = None,
              first_line: int = 1) -> list[Finding]:
    """The secrets in ``text`` (the content of ``path``, whose first line is ``first_line``),
    in text order. A text holding unpaired surrogates also yields an ``undecodable-text``
    finding: it was not valid UTF-8, so what it said cannot be known."""
    return _findings(text, path, allow, lambda index: first_line + index)


def scan_patch(files: Sequence[FilePatch], *, title: str, body: str,
               allow: Allowlist | None = None) -> list[Finding]:
    """The secrets a change would land: the added lines of every file section (line numbers of
    the new file), then the title and the body (which become the commit message).

    Removed lines are not scanned. A binary section that adds content cannot be read as text:
    it yields ``undecodable-binary`` unless its path (or that finding's fingerprint) is
    allowlisted."""
    found: list[Finding] = []
    for file in files:
        if allow is not None and allow.paths and in_scope(file.path, allow.paths):
            continue
        if file.binary and file.operation is not Operation.DELETE:
            finding = Finding(UNDECODABLE_BINARY, file.path, None,
                              fingerprint(UNDECODABLE_BINARY, file.path))
            if allow is None or finding.fingerprint not in allow.fingerprints:
                found.append(finding)
        if not file.added_text:
            continue
        at = file.added_lines_at
        if len(at) == len(file.added_text):
            def line_of(index: int, at: tuple[int, ...] = at) -> int | None:
                return at[index]
        else:
            def line_of(index: int, at: tuple[int, ...] = at) -> int | None:
                return None
        found.extend(_findings("\n".join(file.added_text), file.path, allow, line_of))
    found.extend(scan_text(title, path="title", allow=allow))
    found.extend(scan_text(body, path="body", allow=allow))
    return found


def redact(text: str) -> str:
    """``text`` with every value the rules recognise replaced by
    ``[redacted <rule_id> <fingerprint>]``.

    Stricter than scanning, because too much redaction costs nothing: every pattern applies,
    whatever file type it is limited to when scanning; values a rule sets aside as placeholders
    or documented examples (``user:pass@``, ``hunter``, an EXAMPLE key) are replaced too; and
    neither allowlists nor the inline marker spare a value. What leaves in a notification or a
    log line never carries one."""
    hits = _scan(text, None)
    if not hits:
        return text
    out: list[str] = []
    at = 0
    for hit in hits:  # in text order, overlaps already removed
        out.append(text[at:hit.secret_start])
        out.append(f"[redacted {hit.rule.id} {hit.fingerprint}]")
        at = hit.secret_end
    out.append(text[at:])
    return "".join(out)
