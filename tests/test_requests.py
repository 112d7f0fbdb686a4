"""The request parser on hostile bytes: every input is a typed request or a GateError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion.errors import Code, GateError
from hyperion.requests import ChangeRequest, TaskRequest, parse_request

VALID: dict[str, Any] = {
    "kind": "change", "version": 1, "id": "fix-1", "agent": "codex-7", "repo": "demo",
    "title": "Fix it", "patch": "diff --git a/x b/x\n",
    "changes": [{"path": "x", "operation": "update"}], "checks": ["unit"],
}


def code_of(data: bytes) -> Code:
    with pytest.raises(GateError) as info:
        parse_request(data)
    return info.value.info.code


def test_valid_change_and_task_parse() -> None:
    req = parse_request(json.dumps(VALID).encode())
    assert isinstance(req, ChangeRequest)
    assert req.file_targets == ["**"] and req.priority == 0
    task = parse_request(json.dumps({
        "kind": "task", "version": 1, "id": "task-42", "requested_by": "alice",
        "title": "t", "instructions": "do it", "harness": "script"}).encode())
    assert isinstance(task, TaskRequest) and task.max_iterations == 3


@pytest.mark.parametrize(("data", "code"), [
    (b"", Code.INVALID_JSON),
    (b"\xff\xfe{}", Code.INVALID_JSON),
    (b"\xef\xbb\xbf{}", Code.INVALID_JSON),
    (b'{"a": NaN}', Code.INVALID_JSON),
    (b'{"a": Infinity}', Code.INVALID_JSON),
    (b'{"id": 1, "id": 2}', Code.INVALID_JSON),
    (b"[" * 100_000 + b"]" * 100_000, Code.INVALID_JSON),
    (b'{"a": ' + b"9" * 10_000 + b"}", Code.INVALID_JSON),
    (b"[]", Code.SCHEMA_VIOLATION),
    (b'{"kind": "merge", "version": 1}', Code.SCHEMA_VIOLATION),
    (b'{"kind": "change", "version": 2}', Code.SCHEMA_VIOLATION),
    (b'{"kind": "change", "version": true}', Code.SCHEMA_VIOLATION),
])
def test_refusals(data: bytes, code: Code) -> None:
    assert code_of(data) is code


def test_too_large_is_refused_before_parsing() -> None:
    with pytest.raises(GateError) as info:
        parse_request(b" " * 100 + b"{}", max_bytes=50)
    assert info.value.info.code is Code.TOO_LARGE


@pytest.mark.parametrize(("change", "path"), [
    ({"id": "../etc"}, "id"),
    ({"id": None}, "id"),
    ({"title": ""}, "title"),
    ({"priority": 10**6}, "priority"),
    ({"changes": [{"path": "x", "operation": "move"}]}, "changes[0].operation"),
    ({"changes": [{"path": "x", "operation": "add", "sha256": "zz"}]}, "changes[0].sha256"),
    ({"surprise": 1}, "surprise"),
])
def test_schema_errors_name_the_field(change: dict[str, Any], path: str) -> None:
    with pytest.raises(GateError) as info:
        parse_request(json.dumps({**VALID, **change}).encode())
    assert info.value.info.code is Code.SCHEMA_VIOLATION
    assert info.value.info.path == path


def test_missing_field_is_named() -> None:
    data = {k: v for k, v in VALID.items() if k != "title"}
    with pytest.raises(GateError) as info:
        parse_request(json.dumps(data).encode())
    assert info.value.info.path == "title"
    assert "missing" in info.value.info.message


def test_messages_never_echo_field_values() -> None:
    secret = "ghp_" + "A1b2C3d4" * 5
    for field in ("id", "agent", "repo", "base"):
        with pytest.raises(GateError) as info:
            parse_request(json.dumps({**VALID, field: secret + " !"}).encode())
        assert secret not in info.value.info.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_refuse(data: bytes) -> None:
    with contextlib.suppress(GateError):
        parse_request(data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(VALID), "body", "target", "depends_on"]),
                       json_values))
def test_any_mutation_of_a_request_parses_or_refuses(overrides: dict[str, Any]) -> None:
    try:
        req = parse_request(json.dumps({**VALID, **overrides}).encode())
    except GateError as exc:
        assert exc.info.code in (Code.SCHEMA_VIOLATION, Code.INVALID_JSON)
    else:
        # What parses round-trips through the canonical form the spool stores.
        again = ChangeRequest.model_validate_json(req.model_dump_json(by_alias=True))
        assert again == req
