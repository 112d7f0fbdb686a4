"""How an iteration failed, normalised, so that two iterations failing the same way are seen as
the same (stuck) even when timings, line counts, temporary paths or object ids differ."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_HEX = re.compile(r"\b(0x)?[0-9a-fA-F]{7,}\b")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_SPACE = re.compile(r"[ \t]+")


def normalise(text: str, paths: Iterable[str] = ()) -> str:
    """``text`` with the given paths (the worktree, the state dir), timestamps, hex ids and
    numbers replaced by fixed tokens, and runs of blanks squeezed."""
    for path in sorted(paths, key=len, reverse=True):
        if path:
            text = text.replace(path, "<path>")
    text = _TIMESTAMP.sub("<time>", text)
    text = _HEX.sub("<n>", text)      # a long number may look like hex: one token for both
    text = _NUMBER.sub("<n>", text)
    lines = (_SPACE.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def failure_fingerprint(outcome: str, text: str, paths: Iterable[str] = ()) -> str:
    """A short stable name for a failure: its outcome and its normalised text."""
    digest = hashlib.sha256(f"{outcome}\n{normalise(text, paths)}".encode(errors="replace"))
    return digest.hexdigest()[:16]
