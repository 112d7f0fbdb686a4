"""Error codes of the public contract (shared/design/requests.md) and the value that carries one.

Every rejection or failure a user sees is an :class:`ErrorInfo`: a code from :class:`Code`,
one sentence a person can act on, and optionally the JSON field or file path it is about.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class Code(StrEnum):
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    BAD_PATCH = "bad_patch"
    MANIFEST_MISMATCH = "manifest_mismatch"
    PATH_TRAVERSAL = "path_traversal"
    OUT_OF_SCOPE = "out_of_scope"
    POLICY_DENIED = "policy_denied"
    SECRET_DETECTED = "secret_detected"
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    HASH_MISMATCH = "hash_mismatch"
    CHECK_NOT_ALLOWED = "check_not_allowed"
    DUPLICATE = "duplicate"
    DEPENDENCY_FAILED = "dependency_failed"
    APPLY_CONFLICT = "apply_conflict"
    CHECK_FAILED = "check_failed"
    TIMEOUT = "timeout"
    LAND_CONFLICT = "land_conflict"
    STUCK = "stuck"
    INTERNAL_ERROR = "internal_error"


class ErrorInfo(BaseModel):
    """A structured error: what went wrong, where, and (in ``message``) what to do about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: Code
    message: str
    path: str | None = None
    detail: dict[str, Any] | None = None

    def summary(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"{self.code.value}{where}: {self.message}"


class GateError(Exception):
    """Raised inside parsing and gate code; carries the :class:`ErrorInfo` to record."""

    def __init__(self, code: Code, message: str, path: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, path=path, detail=detail)
