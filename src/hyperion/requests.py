"""Request models (change, task), their JSON Schemas, and parsing hostile bytes into them.

Parsing is three gates in a row, each refusing with a code from the error table:
strict JSON (UTF-8, size, depth, no duplicate keys, no NaN) -> JSON Schema (for a precise
field path in the error) -> the pydantic model (the typed value the rest of hyperion uses).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from hyperion.errors import Code, GateError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
AGENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$"
ID_RE = re.compile(ID_PATTERN)

RequestId = Annotated[str, Field(pattern=ID_PATTERN)]
RefName = Annotated[str, Field(pattern=REF_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ChangeEntry(_Model):
    path: str = Field(min_length=1, max_length=4096)
    operation: Literal["add", "update", "delete", "rename"]
    from_: str | None = Field(None, alias="from", min_length=1, max_length=4096,
                              description="Source path of a rename.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Hex sha256 of the file's content after the change.")


class ChangeRequest(_Model):
    kind: Literal["change"]
    version: Literal[1]
    id: RequestId
    agent: str = Field(pattern=AGENT_PATTERN)
    repo: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    base: RefName | None = None
    target: RefName | None = None
    title: str = Field(min_length=1, max_length=200)
    body: str = Field("", max_length=65536)
    patch: str | None = Field(None, min_length=1)
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    changes: list[ChangeEntry] = Field(default_factory=list, max_length=10000)
    file_targets: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=lambda: ["**"], max_length=256)
    checks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]] = Field(
        default_factory=list, max_length=64)
    priority: int = Field(0, ge=-1000, le=1000)
    depends_on: list[RequestId] = Field(default_factory=list, max_length=64, description=(
        "Requests that must land first; if one fails or is rejected, this one fails "
        "dependency_failed."))
    task_id: RequestId | None = None
    supersedes: RequestId | None = Field(None, description=(
        "An older request this one replaces: cancelled if it is still queued or held."))
    not_before: AwareDatetime | None = Field(None, description=(
        "Do not start before this time (ISO 8601 with a time zone)."))
    dry_run: bool = Field(False, description=(
        "Apply and run the checks, but never land: the request ends `verified`."))
    signature: str | None = Field(None, min_length=1, max_length=16384,
                                  pattern=r"^-----BEGIN SSH SIGNATURE-----", description=(
        "An armored SSH signature (ssh-keygen -Y sign -n hyperion) over the request's "
        "canonical JSON: the request object without `signature`, keys sorted, separators "
        "',' and ':', no added whitespace, UTF-8 (`hyperion sign-payload FILE` prints it)."))


class TaskRequest(_Model):
    kind: Literal["task"]
    version: Literal[1]
    id: RequestId
    requested_by: str = Field(pattern=AGENT_PATTERN)
    repo: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    base: RefName | None = None
    target: RefName | None = None
    title: str = Field(min_length=1, max_length=200)
    instructions: str = Field(min_length=1, max_length=262144)
    harness: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    file_targets: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=lambda: ["**"], max_length=256)
    checks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]] = Field(
        default_factory=list, max_length=64)
    priority: int = Field(0, ge=-1000, le=1000)
    max_iterations: int = Field(3, ge=1, le=50)
    timeout_s: int = Field(1800, ge=1, le=7 * 24 * 3600)
    signature: str | None = Field(None, min_length=1, max_length=16384,
                                  pattern=r"^-----BEGIN SSH SIGNATURE-----", description=(
        "An armored SSH signature (ssh-keygen -Y sign -n hyperion) over the request's "
        "canonical JSON: the request object without `signature`, keys sorted, separators "
        "',' and ':', no added whitespace, UTF-8 (`hyperion sign-payload FILE` prints it)."))


class ApprovalRequest(_Model):
    """A decision on a held request, dropped in the inbox like any request."""

    kind: Literal["approval"]
    version: Literal[1]
    id: RequestId
    request: RequestId = Field(description="The id of the held request decided on.")
    decision: Literal["approve", "deny"]
    by: str = Field(pattern=AGENT_PATTERN, description="Who decides; the policy must allow it.")
    reason: str = Field("", max_length=4096)


Request = ChangeRequest | TaskRequest
MODELS: dict[str, type[ChangeRequest] | type[TaskRequest]] = {
    "change": ChangeRequest, "task": TaskRequest,
}


@cache
def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a request kind, as shipped under schemas/."""
    model = ApprovalRequest if kind == "approval" else MODELS[kind]
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:hyperion:schema:{kind}:1"
    return schema


# ---------------------------------------------------------------- strict JSON

def _max_depth(text: str, limit: int) -> int:
    """Nesting depth of a JSON text, in one linear pass, stopping early past ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise GateError(Code.INVALID_JSON, f"the key {_quote(key)} appears twice in one "
                            "object; keep one")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise GateError(Code.INVALID_JSON, f"{name} is not valid JSON; use a number or null")


def _quote(value: str, limit: int = 60) -> str:
    shown = value if len(value) <= limit else value[:limit] + "..."
    return json.dumps(shown)


def load_json(data: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Decode hostile bytes into a JSON value, or raise GateError (invalid_json / too_large)."""
    if len(data) > max_bytes:
        raise GateError(Code.TOO_LARGE, f"the request is {len(data)} bytes, over the limit of "
                        f"{max_bytes}; split the change")
    if data.startswith(b"\xef\xbb\xbf"):
        raise GateError(Code.INVALID_JSON, "the file starts with a byte-order mark; save it as "
                        "UTF-8 without BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GateError(Code.INVALID_JSON, f"the file is not UTF-8 (bad byte at offset "
                        f"{exc.start}); save it as UTF-8") from None
    if not text.strip():
        raise GateError(Code.INVALID_JSON, "the file is empty; write one JSON object")
    depth = _max_depth(text, max_depth)
    if depth > max_depth:
        raise GateError(Code.INVALID_JSON, f"JSON nests deeper than {max_depth} levels; "
                        "flatten it")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise GateError(Code.INVALID_JSON, f"not valid JSON: {exc.msg} (line {exc.lineno}, "
                        f"column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer with too many digits
        raise GateError(Code.INVALID_JSON, f"not usable JSON: {str(exc)[:120]}") from None


# ---------------------------------------------------------------- schema

def format_path(parts: Any) -> str | None:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _schema_message(error: Any) -> tuple[str, str | None]:
    """A message for a jsonschema error that never echoes the value (it may be a secret)."""
    path = list(error.absolute_path)
    v, expected = error.validator, error.validator_value
    if v == "required":
        missing = [p for p in expected if isinstance(error.instance, dict)
                   and p not in error.instance]
        name = missing[0] if missing else "?"
        return f"the required field {_quote(name)} is missing", format_path([*path, name])
    if v == "additionalProperties":
        extra = sorted(k for k in error.instance if k not in error.schema.get("properties", {}))
        shown = ", ".join(_quote(k, 40) for k in extra[:5])
        return f"unknown field(s) {shown}; remove them (or check the spelling)", \
            format_path([*path, extra[0]]) if extra else format_path(path)
    if v == "type":
        return f"must be of type {expected}", format_path(path)
    if v in ("const", "enum"):
        allowed = [expected] if v == "const" else expected
        return "must be one of " + ", ".join(json.dumps(a) for a in allowed), format_path(path)
    if v == "pattern":
        return f"does not match the required pattern {expected}", format_path(path)
    if v in ("minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum"):
        words = {"minLength": "be at least {} characters long", "maxLength":
                 "be at most {} characters long", "minItems": "have at least {} items",
                 "maxItems": "have at most {} items", "minimum": "be at least {}",
                 "maximum": "be at most {}"}
        return "must " + words[v].format(expected), format_path(path)
    if v in ("anyOf", "oneOf"):
        return "does not have an accepted type or shape", format_path(path)
    return f"fails the schema rule {v!r}", format_path(path)


def incoming_from_json(obj: Any) -> Request | ApprovalRequest:
    """What an inbox file may be: a request, or an approval file."""
    if isinstance(obj, dict) and obj.get("kind") == "approval":
        if obj.get("version") != 1 or isinstance(obj.get("version"), bool):
            raise GateError(Code.SCHEMA_VIOLATION, "unsupported version for kind 'approval'; "
                            "this hyperion reads version 1", path="version")
        return ApprovalRequest.model_validate(_schema_checked("approval", obj))
    return request_from_json(obj)


def _schema_checked(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(_validator(kind).iter_errors(obj),
                    key=lambda e: (list(e.absolute_path), e.validator))
    if errors:
        from jsonschema.exceptions import best_match

        message, path = _schema_message(best_match(errors))
        raise GateError(Code.SCHEMA_VIOLATION, message, path=path)
    return obj


def load_validators() -> None:
    """Build the JSON Schema validators now (a daemon's start-up), not on the first request."""
    for kind in MODELS:
        _validator(kind)


@cache
def _validator(kind: str) -> Any:
    import jsonschema  # ~135 ms: only paid by code paths that validate

    return jsonschema.Draft202012Validator(json_schema(kind))


def parse_request(data: bytes, *, max_bytes: int = 4 * 1024 * 1024,
                  max_depth: int = 32) -> Request:
    """Bytes -> a typed request, or GateError with a code from the error table."""
    obj = load_json(data, max_bytes=max_bytes, max_depth=max_depth)
    return request_from_json(obj)


def request_from_json(obj: Any) -> Request:
    if not isinstance(obj, dict):
        raise GateError(Code.SCHEMA_VIOLATION, "a request must be a JSON object")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in MODELS:
        raise GateError(Code.SCHEMA_VIOLATION, "\"kind\" must be \"change\" or \"task\"",
                        path="kind")
    if obj.get("version") != 1 or isinstance(obj.get("version"), bool):
        raise GateError(Code.SCHEMA_VIOLATION, f"unsupported version for kind {kind!r}; "
                        "this hyperion reads version 1", path="version")
    _schema_checked(kind, obj)
    try:
        return MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GateError(Code.SCHEMA_VIOLATION, first["msg"],
                        path=format_path(first["loc"])) from None


def claimed_id(obj: Any) -> str | None:
    """The id a (possibly invalid) request claims, when it is usable as a record id."""
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str) and ID_RE.match(value):
            return value
    return None
