"""Parse a unified diff into what it touches, the way ``git apply`` (default ``-p1``) reads it.

Both git-style diffs (``diff --git`` with extended headers: new/deleted file modes, mode
changes, renames, copies, binary patches) and plain ``---``/``+++`` diffs are read. The reading
follows git's own parser (``apply.c``) line for line where that decides *what* is touched: which
lines start a file section, which lines are ignored as commentary, how names are unquoted and
stripped, how many lines a hunk owns. Wherever git would guess, or would read a header in a way
a reviewer would not expect, this parser refuses instead (``bad_patch``), so that an accepted
patch means one thing. Examples of such refusals:

* a ``diff --git a/X b/Y`` line that disagrees with ``---``/``+++`` or ``rename from/to``
  (git ignores the ``diff --git`` names whenever others are present, and treats
  ``--- a/X`` + ``+++ b/Y`` without ``rename`` headers as a rename);
* plain diffs whose names have no leading directory (git would then switch to ``-p0`` for the
  rest of the patch), whose two names differ (git silently uses the second), or that carry an
  epoch timestamp (git reads that as a creation or deletion);
* plain diffs that only insert into an empty range or only delete everything (git decides
  creation or deletion from the working tree, not from the patch);
* the same path touched twice (git applies such patches in sequence).

Binary patches are checked as git checks them (base85 lines, then a zlib stream inflating to the
stated size), with at most :data:`MAX_BINARY_BYTES` inflated per patch (``too_large``).

The patch is parsed as its UTF-8 bytes, as ``git apply`` receives it. Every path goes through
:func:`hyperion.gate.paths.check_path`. Time is linear in the size of the patch; there is no
recursion.
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass, field
from enum import StrEnum

from hyperion.errors import Code, GateError
from hyperion.gate.paths import check_path, describe, safe_field


class Operation(StrEnum):
    ADD = "add"
    UPDATE = "update"
    DELETE = "delete"
    RENAME = "rename"


@dataclass(frozen=True)
class FilePatch:
    """One file section of a patch, as ``git apply`` will carry it out."""

    path: str
    """The path after the change (for a delete: the deleted path), ``-p1`` stripped."""
    old_path: str | None
    """The source of a rename or copy, else None."""
    operation: Operation
    """A copy is ADD with ``old_path`` set; a pure mode change is UPDATE."""
    old_mode: str | None
    """From ``old mode``/``deleted file mode``, or the mode of an ``index`` line (which then
    also gives ``new_mode``); None when the patch does not say."""
    new_mode: str | None
    """From ``new mode``/``new file mode`` or an ``index`` line; ``120000`` is a symlink and
    ``160000`` a submodule. None does not mean "a regular file": a hunk without modes on a path
    that is a symlink in the tree rewrites the link's target. Check the tree."""
    binary: bool
    """A ``GIT binary patch`` or a ``Binary files ... differ`` section."""
    added_lines: int
    removed_lines: int
    added_text: tuple[str, ...]
    """The added lines without their leading ``+`` and line feed (a ``\\r`` stays), in order."""
    added_lines_at: tuple[int, ...] = field(default=(), compare=False)
    """The new-file line number (1-based, from the hunk headers) of each entry of
    ``added_text``, same length. Empty when the section was built by hand without them (it
    does not take part in ``==``, so such sections compare as before)."""


MAX_BINARY_BYTES = 256 * 1024 * 1024
"""The most binary content (inflated) one patch may carry: beyond it, ``too_large``."""

_FIELD = "patch"
_INFLATE_CHUNK = 1 << 20

_ULONG_MAX = 2**64 - 1
_HUNK_HEADER = re.compile(rb"@@ -([0-9]+)(?:,([0-9]+))? \+([0-9]+)(?:,([0-9]+))? @@")
_MODE = re.compile(rb"[0-7]{6}")
_INDEX = re.compile(rb"[0-9a-f]{1,64}\.\.[0-9a-f]{1,64}(?: ([0-7]{6}))?")
_SCORE = re.compile(rb"[0-9]{1,3}%")
_BINARY_METHOD = re.compile(rb"(?:literal|delta) ([0-9]{1,20})\n")
_QUOTED_RUN = re.compile(rb'[^"\\\x00]*')
_EPOCH = re.compile(rb"\t(?:1969-12-31|1970-01-01) ")
_TZ_PLAIN = re.compile(rb" [+-][0-9]{4}")
_TZ_COLON = re.compile(rb" [+-][0-9]{2}:[0-9]{2}")
_TIME = re.compile(rb" [0-9]{2}:[0-9]{2}:[0-9]{2}")
_DATE = re.compile(rb"[0-9]{2}-[0-9]{2}-[0-9]{2}")
_DIGITS = b"0123456789"
_BLANK = re.compile(rb"[ \t]")
_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
            ord("v"): 11, ord("\\"): ord("\\"), ord('"'): ord('"')}

# Extended header lines of a git diff, in the order git tries them (apply.c's optable).
_HEADER_KEYS: tuple[tuple[bytes, str], ...] = (
    (b"@@ -", "@@"),
    (b"--- ", "---"),
    (b"+++ ", "+++"),
    (b"old mode ", "old mode"),
    (b"new mode ", "new mode"),
    (b"deleted file mode ", "deleted file mode"),
    (b"new file mode ", "new file mode"),
    (b"copy from ", "copy from"),
    (b"copy to ", "copy to"),
    (b"rename old ", "rename from"),
    (b"rename new ", "rename to"),
    (b"rename from ", "rename from"),
    (b"rename to ", "rename to"),
    (b"similarity index ", "similarity index"),
    (b"dissimilarity index ", "dissimilarity index"),
    (b"index ", "index"),
)


def _bad(message: str, path: str = _FIELD) -> GateError:
    return GateError(Code.BAD_PATCH, message, path=safe_field(path))


def _strip_cr(value: bytes) -> bytes:
    return value[:-1] if value.endswith(b"\r") else value


def _isdigit(byte: int) -> bool:
    return 48 <= byte <= 57


# --- names -------------------------------------------------------------------------------------

def _unquote(text: bytes) -> tuple[bytes, int] | None:
    """Undo git's C-style quoting of ``text`` (which starts with '"'): the name and the index
    just past the closing quote, or None when the quoting is broken (as git's
    ``unquote_c_style``: the escapes \\a \\b \\f \\n \\r \\t \\v \\\\ \\" and three octal
    digits, the first 0-3)."""
    out = bytearray()
    i = 1
    n = len(text)
    while True:
        run = _QUOTED_RUN.match(text, i)
        assert run is not None  # the pattern matches the empty string
        out += run.group()
        i = run.end()
        if i >= n or text[i] == 0:
            return None
        if text[i] == ord('"'):
            return bytes(out), i + 1
        # a backslash
        if i + 1 >= n:
            return None
        ch = text[i + 1]
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
            i += 2
        elif 48 <= ch <= 51:
            digits = text[i + 1:i + 4]
            if len(digits) != 3 or not all(48 <= d <= 55 for d in digits):
                return None
            out.append((digits[0] - 48) * 64 + (digits[1] - 48) * 8 + (digits[2] - 48))
            i += 4
        else:
            return None


def _strip1(name: bytes) -> bytes | None:
    """``name`` without its first component (``-p1``); None when there is no non-empty first
    component or nothing after it. (git also accepts an empty first component, as in "/x".)"""
    slash = name.find(b"/")
    if slash <= 0 or slash + 1 == len(name):
        return None
    return name[slash + 1:]


def _quoted_name(value: bytes, trailer_ok: bool) -> bytes:
    """The unquoted name of a header value that starts with '"'. git ignores whatever follows
    the closing quote; this accepts only nothing, a carriage return, or (``trailer_ok``) a tab
    and anything (a timestamp)."""
    unquoted = _unquote(value)
    if unquoted is None:
        raise _bad(f"the quoted file name {describe(value.decode('utf-8', 'replace'))} is not "
                   "valid C-style quoting; quote names as git does")
    name, end = unquoted
    rest = value[end:]
    if rest in (b"", b"\r") or (trailer_ok and rest.startswith(b"\t")):
        return name
    raise _bad(f"unexpected text after the quoted file name "
               f"{describe(value.decode('utf-8', 'replace'))}; remove it")


def _stripped(name: bytes, value: bytes) -> bytes:
    stripped = _strip1(name)
    if stripped is None:
        raise _bad(f"the file name {describe(value.decode('utf-8', 'replace'))} has no leading "
                   "directory to strip (patches are applied with -p1, as in a/file and b/file)")
    return stripped


def _until_tab_or_cr(value: bytes) -> bytes:
    """An unquoted name ends at a tab or carriage return (git's TERM_TAB); a space does not
    end it."""
    end = len(value)
    for stop in (b"\t", b"\r"):
        at = value.find(stop)
        if 0 <= at < end:
            end = at
    return value[:end]


def _git_side_name(value: bytes) -> bytes:
    """The name in a git header's ``---``/``+++`` value, ``-p1`` stripped."""
    if value.startswith(b'"'):
        return _stripped(_quoted_name(value, trailer_ok=True), value)
    return _stripped(_until_tab_or_cr(value), value)


def _plain_name(value: bytes) -> bytes:
    """The name of a ``rename from``/``copy to``… value: the whole rest of the line, unstripped
    (git ends it at a carriage return)."""
    if value.startswith(b'"'):
        name = _quoted_name(value, trailer_ok=False)
    else:
        name = value.split(b"\r", 1)[0]
    if not name:
        raise _bad("a rename or copy header has an empty file name; name the file")
    return name


def _timestamp_len(s: bytes) -> int:
    """Length of a trailing timestamp (with the whitespace before it) on a plain ``---`` or
    ``+++`` value, 0 if none: git's ``diff_timestamp_len``."""
    n = len(s)
    if not n or not _isdigit(s[-1]):
        return 0
    end = n
    if end >= 6 and _TZ_PLAIN.fullmatch(s, end - 6, end):
        end -= 6
    elif end >= 7 and _TZ_COLON.fullmatch(s, end - 7, end):
        end -= 7
    if end >= 9 and _TIME.fullmatch(s, end - 9, end):
        end -= 9
    elif end and _isdigit(s[end - 1]):
        point = len(s[:end].rstrip(_DIGITS)) - 1
        if point >= 9 and s[point] == ord(".") and _TIME.fullmatch(s, point - 9, point):
            end = point - 9
    if end < 8 or not _DATE.fullmatch(s, end - 8, end):
        return 0
    end -= 8
    if end >= 2 and _isdigit(s[end - 1]) and _isdigit(s[end - 2]):
        end -= 2
    if end == 0:
        return 0
    if s[end - 1] == ord("\t"):
        return n - (end - 1)
    if s[end - 1] != ord(" "):
        return 0
    return n - len(s[:end].rstrip(b" "))


def _traditional_name(value: bytes) -> bytes:
    """The name of a plain diff's ``---``/``+++`` value (without the line feed), ``-p1``
    stripped, with a trailing timestamp removed as git does."""
    if value.startswith(b'"'):
        return _stripped(_quoted_name(value, trailer_ok=True), value)
    stamp = _timestamp_len(value)
    name = value[:len(value) - stamp] if stamp else _until_tab_or_cr(value)
    return _stripped(name, value)


def _is_dev_null(value: bytes) -> bool:
    """git's is_dev_null: "/dev/null" followed by whitespace (the line feed counts)."""
    return value.startswith(b"/dev/null") and value[9:10] in (b" ", b"\t", b"\n", b"\r")


def _def_name(rest: bytes) -> bytes | None:
    """The one name of a ``diff --git`` line whose two names are the same after ``-p1``
    (git's ``git_header_name``, with its quirks, and stricter: exactly one space between the
    names); None when git would find no name or this parser is unsure."""
    if rest.startswith(b'"'):
        first = _unquote(rest)
        if first is None or rest[first[1]:first[1] + 1] != b" ":
            return None
        name = _strip1(first[0])
        second_raw = rest[first[1] + 1:]
        # git never finds a name when only the first one is quoted (it compares the second
        # one's length including the line feed), so neither does this.
        second = _unquote(second_raw) if second_raw.startswith(b'"') else None
        if second is None or second[1] != len(second_raw):
            return None
        return name if name is not None and name == _strip1(second[0]) else None
    quote = rest.find(b'"')
    if quote >= 0:
        if quote == 0 or rest[quote - 1:quote] != b" ":
            return None
        second = _unquote(rest[quote:])
        if second is None or quote + second[1] != len(rest):
            return None
        name = _strip1(rest[:quote - 1])
        return name if name is not None and name == _strip1(second[0]) else None
    # Both unquoted: "P/X Q/X" with Q free of "/". git tries each space or tab in turn and gives
    # up at the first one that is last or followed by "/" (so "a/d /f b/d /f" has no name).
    # Where the first "/" after a candidate lies never moves left, and where it must lie moves
    # right to left, so at most one candidate fits and one pass finds it.
    slash = rest.find(b"/")
    if slash <= 0:
        return None
    name = rest[slash + 1:]
    m = len(name)
    next_slash = -1
    for match in _BLANK.finditer(name):
        space = match.start()
        if space + 1 == m or name[space + 1] == ord("/"):
            return None
        if next_slash < space + 1:
            next_slash = name.find(b"/", space + 1)
            if next_slash == -1:
                return None
        wanted = m - 1 - space
        if next_slash > wanted:
            return None
        if next_slash == wanted and name[:space] == name[wanted + 1:]:
            return name[:space] if match.group() == b" " else None
    return None


def _diff_line_matches(rest: bytes, old: bytes, new: bytes) -> bool:
    """Whether a ``diff --git`` line's names are ``old`` and ``new`` after ``-p1``."""
    if rest.startswith(b'"'):
        first = _unquote(rest)
        if first is None or _strip1(first[0]) != old:
            return False
        end = first[1]
    else:
        slash = rest.find(b"/")
        end = slash + 1 + len(old)
        if slash <= 0 or rest[slash + 1:end] != old:
            return False
    if rest[end:end + 1] != b" ":
        return False
    second_raw = rest[end + 1:]
    if second_raw.startswith(b'"'):
        second = _unquote(second_raw)
        if second is None or second[1] != len(second_raw):
            return False
        return _strip1(second[0]) == new
    return _strip1(second_raw) == new


# --- the parser ----------------------------------------------------------------------------------

@dataclass
class _Hunks:
    count: int = 0
    old_total: int = 0
    new_total: int = 0
    added: int = 0
    removed: int = 0
    added_text: list[bytes] = field(default_factory=list)
    added_at: list[int] = field(default_factory=list)


def _binary_line(line: bytes, out: bytearray) -> bool:
    """Decode one base85 line of a binary hunk into ``out`` (git's parse_binary_hunk): a length
    letter (A-Z: 1-26 bytes, a-z: 27-52), then groups of five base85 characters."""
    size = len(line)
    if size < 7 or (size - 2) % 5 or not line.endswith(b"\n"):
        return False
    letter = line[0]
    if 65 <= letter <= 90:
        length = letter - 64
    elif 97 <= letter <= 122:
        length = letter - 96 + 26
    else:
        return False
    most = (size - 2) // 5 * 4
    if not most - 4 < length <= most:
        return False
    try:
        out += base64.b85decode(line[1:-1])[:length]
    except ValueError:
        return False
    return True


def _inflates_to(data: bytes, size: int) -> bool:
    """Whether ``data`` is a zlib stream of exactly ``size`` bytes (git's inflate_it). The
    output is counted and dropped, a chunk at a time, so a bomb costs no memory, and no more
    time than the (capped) size it claims."""
    inflater = zlib.decompressobj()
    produced = 0
    pending = data
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            produced += len(chunk)
            if produced > size:
                return False
            pending = inflater.unconsumed_tail
            if not chunk and not pending and not inflater.eof:
                return False
    except zlib.error:
        return False
    return produced == size


def _parse_hunk_header(line: bytes) -> tuple[int, int, int] | None:
    """The old and new line counts of a hunk header (git's parse_fragment_header) and the new
    side's first line number, or None."""
    if not line.endswith(b"\n"):
        return None
    match = _HUNK_HEADER.match(line)
    if match is None:
        return None

    def number(digits: bytes | None) -> int:
        if digits is None:
            return 1
        return _ULONG_MAX if len(digits) > 20 else min(int(digits), _ULONG_MAX)

    return number(match.group(2)), number(match.group(4)), number(match.group(3))


class _Parser:
    def __init__(self, data: bytes, max_files: int) -> None:
        parts = data.split(b"\n")
        self.lines = [part + b"\n" for part in parts[:-1]]
        if parts[-1]:
            self.lines.append(parts[-1])
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line)
        self.total = offset
        self.max_files = max_files
        self.files: list[FilePatch] = []
        self.touched: set[str] = set()
        self.inflated = 0

    def remaining(self, k: int) -> int:
        return self.total - self.starts[k] if k < len(self.lines) else 0

    def run(self) -> list[FilePatch]:
        k = 0
        while True:
            found = self.find_header(k)
            if found is None:
                break
            kind, k = found
            if len(self.files) >= self.max_files:
                raise GateError(Code.TOO_LARGE, f"the patch touches more than {self.max_files} "
                                "files; split it into smaller changes", path=_FIELD)
            file, k = self.git_section(k) if kind == "git" else self.traditional_section(k)
            self.add(file)
        if not self.files:
            raise _bad("the patch has no file sections; send a unified diff with 'diff --git' "
                       "or '---'/'+++' headers followed by hunks")
        return self.files

    def find_header(self, k: int) -> tuple[str, int] | None:
        """The next file section at or after line ``k`` (git's find_header): everything before
        it is commentary, except a hunk header, which means a hunk lost its file header."""
        lines = self.lines
        while k < len(lines):
            line = lines[k]
            size = self.remaining(k)
            if len(line) < 6:
                k += 1
                continue
            if line.startswith(b"@@ -"):
                if _parse_hunk_header(line) is not None:
                    raise _bad(f"line {k + 1}: a hunk (@@ ... @@) has no file header before it; "
                               "start each file with 'diff --git' or '---'/'+++' lines")
                k += 1
                continue
            if size < len(line) + 6:
                return None
            if line.startswith(b"diff --git "):
                return "git", k
            if (line.startswith(b"--- ") and lines[k + 1].startswith(b"+++ ")
                    and size >= len(lines[k + 1]) + 14 and k + 2 < len(lines)
                    and lines[k + 2].startswith(b"@@ -")):
                return "plain", k
            k += 1
        return None

    # -- git-style sections --

    def git_section(self, k: int) -> tuple[FilePatch, int]:
        lines = self.lines
        number = k + 1
        rest = lines[k][len(b"diff --git "):].rstrip(b"\n")
        fields: dict[str, bytes] = {}
        j = k + 1
        while j < len(lines) and lines[j].endswith(b"\n"):
            line = lines[j]
            key = next((name for prefix, name in _HEADER_KEYS if line.startswith(prefix)), None)
            if key is None or key == "@@":
                break
            if "+++" in fields:
                raise _bad(f"line {j + 1}: a header line follows the '+++' line; put the "
                           "'---'/'+++' lines last in the file header")
            if key in fields:
                raise _bad(f"line {j + 1}: the file header starting at line {number} has two "
                           f"'{key}' lines; keep one")
            if "---" in fields and key != "+++":
                raise _bad(f"line {j + 1}: the '---' line must be followed by the '+++' line")
            if key == "+++" and "---" not in fields:
                raise _bad(f"line {j + 1}: a '+++' line without a '---' line before it")
            prefix = next(prefix for prefix, name in _HEADER_KEYS if line.startswith(prefix))
            fields[key] = line[len(prefix):-1]
            j += 1
        if not fields:
            raise _bad(f"line {number}: a 'diff --git' line with no file header after it; "
                       "regenerate the patch with git diff")
        if "---" in fields and "+++" not in fields:
            raise _bad(f"line {j}: a '---' line without a '+++' line after it")

        where = f"the file header at line {number}"
        old_mode, new_mode, mode_change = self.modes(fields, where)
        is_new = "new file mode" in fields
        is_delete = "deleted file mode" in fields
        is_rename = "rename from" in fields or "rename to" in fields
        is_copy = "copy from" in fields or "copy to" in fields
        if is_new + is_delete + is_rename + is_copy > 1:
            raise _bad(f"{where} mixes new-file, deleted-file, rename and copy lines; a file "
                       "section does one of them")
        for a, b in (("rename from", "rename to"), ("copy from", "copy to")):
            if (a in fields) != (b in fields):
                raise _bad(f"{where} has '{a}' or '{b}' without the other; give both")

        old_side = fields.get("---")
        new_side = fields.get("+++")
        old_null = old_side is not None and _is_dev_null(old_side + b"\n")
        new_null = new_side is not None and _is_dev_null(new_side + b"\n")
        if old_null != is_new and old_side is not None:
            raise _bad(f"{where}: '--- /dev/null' goes with 'new file mode', and only with it")
        if new_null != is_delete and new_side is not None:
            raise _bad(f"{where}: '+++ /dev/null' goes with 'deleted file mode', and only "
                       "with it")

        old_names = [] if old_side is None or old_null else [_git_side_name(old_side)]
        new_names = [] if new_side is None or new_null else [_git_side_name(new_side)]
        for key, names in (("rename from", old_names), ("copy from", old_names),
                           ("rename to", new_names), ("copy to", new_names)):
            if key in fields:
                names.insert(0, _plain_name(fields[key]))
        if not old_names and not new_names:
            def_name = _def_name(rest)
            if def_name is None:
                raise _bad(f"line {number}: cannot tell the file name from the 'diff --git' "
                           "line (its two names must be the same after the a/ and b/ prefixes)")
            old_names, new_names = [def_name], [def_name]
        old_name = old_names[0] if old_names else None
        new_name = new_names[0] if new_names else None
        if any(name != old_name for name in old_names) or any(
                name != new_name for name in new_names):
            raise _bad(f"{where} names the file differently in its rename/copy and '---'/'+++' "
                       "lines; make them agree")
        if is_new:
            old_name, path_name = None, new_name if new_name is not None else old_name
        elif is_delete:
            path_name = old_name if old_name is not None else new_name
            new_name = None
        else:
            path_name = new_name
        if path_name is None or (not is_new and not is_delete and (
                old_name is None or new_name is None)):
            raise _bad(f"{where} lacks a file name on one side; give both '---' and '+++' lines")
        if not (is_rename or is_copy) and old_name is not None and new_name is not None \
                and old_name != new_name:
            raise _bad(f"{where} has different '---' and '+++' names but no 'rename' or "
                       "'copy' lines; git would rename the file silently")
        line_old = old_name if old_name is not None else path_name
        line_new = new_name if new_name is not None else path_name
        if not _diff_line_matches(_strip_cr(rest), line_old, line_new):
            raise _bad(f"line {number}: the 'diff --git' names disagree with the names in the "
                       "file header; regenerate the patch with git diff")

        path = self.decode(path_name)
        source = self.decode(old_name) if (is_rename or is_copy) and old_name else None
        hunks, j, binary = self.body(j, where, path)
        if hunks.count == 0 and not binary and not (
                is_new or is_delete or is_rename or is_copy or mode_change):
            raise _bad(f"{where} changes nothing: no hunks, no binary data, no mode change, "
                       "rename or copy", path=path)
        if is_new and hunks.old_total:
            raise _bad(f"the new file {describe(path)} has hunks that need old contents; use "
                       "@@ -0,0 +1,N @@", path=path)
        if is_delete and hunks.new_total:
            raise _bad(f"the deleted file {describe(path)} still has contents after its hunks",
                       path=path)
        if is_new or is_copy:
            operation = Operation.ADD
        elif is_delete:
            operation = Operation.DELETE
        elif is_rename:
            operation = Operation.RENAME
        else:
            operation = Operation.UPDATE
        return self.make(path, source, operation, old_mode, new_mode, binary, hunks), j

    @staticmethod
    def modes(fields: dict[str, bytes], where: str) -> tuple[str | None, str | None, bool]:
        """(old_mode, new_mode, is a mode change) from the header's mode lines."""
        values: dict[str, str] = {}
        for key in ("old mode", "new mode", "new file mode", "deleted file mode"):
            if key in fields:
                value = _strip_cr(fields[key])
                if not _MODE.fullmatch(value):
                    raise _bad(f"{where} has an invalid '{key}' (six octal digits, as 100644)")
                values[key] = value.decode()
        for key in ("similarity index", "dissimilarity index"):
            if key in fields and not _SCORE.fullmatch(_strip_cr(fields[key])):
                raise _bad(f"{where} has an invalid '{key}' (a percentage, as 90%)")
        index_mode = None
        if "index" in fields:
            match = _INDEX.fullmatch(_strip_cr(fields["index"]))
            if match is None:
                raise _bad(f"{where} has an invalid 'index' line (abbreviated object names "
                           "a..b and an optional mode)")
            if match.group(1) is not None:
                index_mode = match.group(1).decode()
        if ("old mode" in values) != ("new mode" in values):
            raise _bad(f"{where} has 'old mode' or 'new mode' without the other; give both")
        if len(values) > 1 and len(values.keys() & {"new file mode", "deleted file mode"}):
            raise _bad(f"{where} has more than one of 'new file mode', 'deleted file mode' "
                       "and 'old mode'/'new mode'")
        if values and index_mode is not None:
            raise _bad(f"{where} gives a mode both on its 'index' line and on a mode line")
        if "old mode" in values:
            if values["old mode"] == values["new mode"]:
                raise _bad(f"{where} has 'old mode' equal to 'new mode'; drop both lines")
            return values["old mode"], values["new mode"], True
        if "new file mode" in values:
            return None, values["new file mode"], False
        if "deleted file mode" in values:
            return values["deleted file mode"], None, False
        return index_mode, index_mode, False

    # -- plain sections --

    def traditional_section(self, k: int) -> tuple[FilePatch, int]:
        number = k + 1
        first = self.lines[k][4:]
        second = self.lines[k + 1][4:]
        where = f"the '---'/'+++' header at line {number}"
        first_null, second_null = _is_dev_null(first), _is_dev_null(second)
        first, second = first[:-1], second[:-1]
        if first_null and second_null:
            raise _bad(f"{where} has /dev/null on both sides; name the file on one side")
        if first_null:
            operation, name = Operation.ADD, _traditional_name(second)
        elif second_null:
            operation, name = Operation.DELETE, _traditional_name(first)
        else:
            if _EPOCH.search(first) or _EPOCH.search(second):
                raise _bad(f"{where} carries a 1970-01-01 timestamp, which git reads as a file "
                           "creation or deletion; use /dev/null for added and deleted files")
            name = _traditional_name(first)
            if _traditional_name(second) != name:
                raise _bad(f"{where} names two different files; a plain diff cannot rename "
                           "(use a git-style diff with 'rename from'/'rename to')")
            operation = Operation.UPDATE
        path = self.decode(name)
        hunks, j, _ = self.body(k + 2, where, path, allow_binary=False)
        if not hunks.count:
            raise _bad(f"{where} is followed by no complete hunk; regenerate the patch",
                       path=path)
        if operation is Operation.ADD and hunks.old_total:
            raise _bad(f"the new file {describe(path)} has hunks that need old contents; use "
                       "@@ -0,0 +1,N @@", path=path)
        if operation is Operation.DELETE and hunks.new_total:
            raise _bad(f"the deleted file {describe(path)} still has contents after its hunks",
                       path=path)
        if operation is Operation.UPDATE and hunks.count == 1 and (
                hunks.old_total == 0 or hunks.new_total == 0):
            raise _bad(f"{where}: a plain diff whose only hunk starts from or ends with nothing "
                       "leaves git to guess whether the file is created or deleted; use "
                       "/dev/null on the missing side, or a git-style diff", path=path)
        return self.make(path, None, operation, None, None, False, hunks), j

    # -- hunks and binary data --

    def body(self, k: int, where: str, path: str,
             allow_binary: bool = True) -> tuple[_Hunks, int, bool]:
        """Parse the hunks (or binary data) starting at line ``k``."""
        hunks = _Hunks()
        lines = self.lines
        while k < len(lines) and self.remaining(k) > 4 and lines[k].startswith(b"@@ -"):
            k = self.hunk(k, hunks, path)
        if hunks.count or not allow_binary or k >= len(lines):
            return hunks, k, False
        line = lines[k]
        if line == b"GIT binary patch\n":
            return hunks, self.binary(k + 1, where, path), True
        if len(line) >= 8 and line.endswith(b" differ\n") and (
                line.startswith(b"Binary files ") or line.startswith(b"Files ")):
            return hunks, k + 1, True
        return hunks, k, False

    def hunk(self, k: int, hunks: _Hunks, path: str) -> int:
        """Parse the hunk whose header is line ``k`` (git's parse_fragment); the next line."""
        lines = self.lines
        counts = _parse_hunk_header(lines[k])
        if counts is None:
            raise _bad(f"line {k + 1}: the hunk header is not '@@ -a,b +c,d @@'; regenerate "
                       "the patch", path=path)
        header = k + 1
        old, new, at = counts
        hunks.count += 1
        hunks.old_total += old
        hunks.new_total += new
        added = removed = 0
        k += 1
        while k < len(lines) and (old or new):
            line = lines[k]
            if not line.endswith(b"\n"):
                raise _bad(f"line {k + 1}: the patch ends inside the hunk of line {header} "
                           "without a final line feed; end the patch with a newline", path=path)
            first = line[0]
            if first in (0x20, 0x0A):  # " " or an empty line (a context line)
                old -= 1
                new -= 1
                at += 1
            elif first == 0x2D:  # "-"
                old -= 1
                removed += 1
            elif first == 0x2B:  # "+"
                new -= 1
                added += 1
                hunks.added_text.append(line[1:-1])
                hunks.added_at.append(at)
                at += 1
            elif first == 0x5C:  # "\"
                if len(line) < 12 or not line.startswith(b"\\ "):
                    raise _bad(f"line {k + 1}: a malformed '\\ No newline at end of file' "
                               "line", path=path)
            else:
                raise _bad(f"line {k + 1}: a hunk line must start with ' ', '-', '+' or '\\' "
                           f"(the hunk at line {header} expects more lines)", path=path)
            if old < 0 or new < 0:
                break
            k += 1
        if old or new:
            raise _bad(f"line {header}: the hunk's line counts do not match its lines; fix the "
                       "@@ header or regenerate the patch", path=path)
        if not added and not removed:
            raise _bad(f"line {header}: the hunk changes no lines; drop it", path=path)
        if k < len(lines) and self.remaining(k) > 12 and lines[k].startswith(b"\\ "):
            k += 1
        hunks.added += added
        hunks.removed += removed
        return k

    def binary(self, k: int, where: str, path: str) -> int:
        """Check the data of a "GIT binary patch" (a forward hunk and an optional reverse one)
        as git does: base85 lines, then a zlib stream inflating to the stated size. The next
        line."""
        k = self.binary_hunk(k, where, path)
        if k < len(self.lines) and (self.lines[k].startswith(b"literal ")
                                    or self.lines[k].startswith(b"delta ")):
            k = self.binary_hunk(k, where, path)
        return k

    def binary_hunk(self, k: int, where: str, path: str) -> int:
        lines = self.lines
        method = _BINARY_METHOD.fullmatch(lines[k]) if k < len(lines) else None
        if method is None:
            raise _bad(f"{where}: the binary patch lacks its 'literal N' or 'delta N' line",
                       path=path)
        size = int(method.group(1))
        self.inflated += size
        if self.inflated > MAX_BINARY_BYTES:
            raise GateError(Code.TOO_LARGE, f"the binary contents of the patch exceed "
                            f"{MAX_BINARY_BYTES} bytes; commit large files another way",
                            path=safe_field(path))
        k += 1
        first = k
        data = bytearray()
        while True:
            line = lines[k] if k < len(lines) else b""
            if line == b"\n" and k > first:
                break
            if not _binary_line(line, data):
                raise _bad(f"line {k + 1}: corrupt binary patch data; regenerate it with git "
                           "diff --binary", path=path)
            k += 1
        if not _inflates_to(bytes(data), size):
            raise _bad(f"line {first}: the binary patch data does not inflate to {size} bytes; "
                       "regenerate it with git diff --binary", path=path)
        return k + 1

    # -- results --

    def decode(self, name: bytes) -> str:
        try:
            path = name.decode("utf-8")
        except UnicodeDecodeError:
            shown = describe(name.decode("utf-8", "replace"))
            raise GateError(Code.PATH_TRAVERSAL, f"the path {shown} is not valid UTF-8; use "
                            "UTF-8 file names", path=safe_field(name.decode("utf-8", "replace"))
                            ) from None
        check_path(path, path)
        return path

    @staticmethod
    def make(path: str, old_path: str | None, operation: Operation, old_mode: str | None,
             new_mode: str | None, binary: bool, hunks: _Hunks) -> FilePatch:
        text = tuple(line.decode("utf-8", "replace") for line in hunks.added_text)
        return FilePatch(path=path, old_path=old_path, operation=operation, old_mode=old_mode,
                         new_mode=new_mode, binary=binary, added_lines=hunks.added,
                         removed_lines=hunks.removed, added_text=text,
                         added_lines_at=tuple(hunks.added_at))

    def add(self, file: FilePatch) -> None:
        names = [file.path]
        if file.operation is Operation.RENAME and file.old_path is not None:
            names.append(file.old_path)
        for name in names:
            if name in self.touched:
                raise _bad(f"the patch touches {describe(name)} more than once; combine its "
                           "changes into one file section", path=name)
            self.touched.add(name)
        self.files.append(file)


def parse_patch(text: str, *, max_files: int = 10_000) -> list[FilePatch]:
    """The files a unified diff touches, in patch order, as ``git apply`` (``-p1``) reads it.

    Raises :class:`GateError`: ``bad_patch`` when the text is not a diff git would apply in one
    unambiguous way, ``path_traversal`` for an unsafe path, ``too_large`` beyond ``max_files``
    file sections.
    """
    if not isinstance(text, str):
        raise _bad("the patch must be text (a unified diff)")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("the patch contains an unpaired surrogate; send valid UTF-8 text") from None
    return _Parser(data, max_files).run()
