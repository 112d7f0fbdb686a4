"""SSH signatures on requests, with real keys made by ssh-keygen and verified by it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup

from hyperion.errors import Code, GateError
from hyperion.gate.policy import Policy, load_policy
from hyperion.gate.signatures import canonical_payload, check_signature

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                reason="ssh-keygen is not installed")


def make_key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True, capture_output=True)
    return key


def sign(key: Path, payload: bytes, folder: Path, namespace: str = "hyperion") -> str:
    message = folder / "payload"
    message.write_bytes(payload)
    sig = folder / "payload.sig"
    sig.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key),
                    str(message)], check=True, capture_output=True)
    return sig.read_text()


def signed(request: dict[str, Any], key: Path, folder: Path, **kw: str) -> dict[str, Any]:
    return dict(request, signature=sign(key, canonical_payload(request), folder, **kw))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    alice, bob, eve = (make_key(tmp_path, n) for n in ("alice", "bob", "eve"))
    (tmp_path / "allowed_signers").write_text(
        f"alice-bot {(tmp_path / 'alice.pub').read_text()}"
        f'bob-*,ci@example.com namespaces="hyperion" {(tmp_path / "bob.pub").read_text()}')
    return {"alice": alice, "bob": bob, "eve": eve}


def policy_with(tmp_path: Path, require: list[str]) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nsignatures:\n  allowed_signers: allowed_signers\n"
                    f"  require_for: {json.dumps(require)}\n")
    return load_policy(path)


REQUEST = {"kind": "change", "version": 1, "id": "sig-1", "agent": "alice-bot",
           "title": "Ünïcode title", "patch": "diff", "changes": [], "priority": 3,
           "not_before": "2026-01-01T00:00:00+00:00"}


def refusal(obj: dict[str, Any], agent: str, policy: Policy) -> str:
    with pytest.raises(GateError) as info:
        check_signature(obj, agent, policy)
    assert info.value.info.code is Code.BAD_SIGNATURE
    assert info.value.info.path == "signature"
    return info.value.info.message


def test_canonical_payload_is_sorted_compact_utf8_without_the_signature() -> None:
    payload = canonical_payload({"b": 1, "a": {"z": [1, "é"], "y": None}, "signature": "x"})
    assert payload == '{"a":{"y":null,"z":[1,"é"]},"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_payload({"a": "\ud800"})


def test_a_valid_signature_passes(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = policy_with(tmp_path, ["alice-*"])
    check_signature(signed(REQUEST, keys["alice"], tmp_path), "alice-bot", policy)
    # Key order and whitespace of the file do not matter: the canonical form does.
    reordered = dict(reversed(list(signed(REQUEST, keys["alice"], tmp_path).items())))
    check_signature(reordered, "alice-bot", policy)


def test_missing_signature_only_refused_when_required(tmp_path: Path,
                                                      keys: dict[str, Path]) -> None:
    assert "requires requests from 'alice-bot'" in refusal(
        REQUEST, "alice-bot", policy_with(tmp_path, ["alice-*"]))
    check_signature(REQUEST, "alice-bot", policy_with(tmp_path, ["bob-*"]))
    check_signature(REQUEST, "alice-bot", Policy())


def test_a_changed_request_does_not_verify(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = policy_with(tmp_path, [])
    tampered = dict(signed(REQUEST, keys["alice"], tmp_path), title="Something else")
    assert "changed after it was signed" in refusal(tampered, "alice-bot", policy)
    other_namespace = signed(REQUEST, keys["alice"], tmp_path, namespace="git")
    assert "does not verify" in refusal(other_namespace, "alice-bot", policy)


def test_a_key_of_another_agent_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = policy_with(tmp_path, ["*"])
    message = refusal(signed(REQUEST, keys["bob"], tmp_path), "alice-bot", policy)
    assert "gives to 'bob-*', 'ci@example.com', not to 'alice-bot'" in message
    bobs = dict(REQUEST, agent="bob-7")
    check_signature(signed(bobs, keys["bob"], tmp_path), "bob-7", policy)


def test_unknown_keys_and_garbage_are_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = policy_with(tmp_path, [])
    assert "not in the policy's allowed_signers" in refusal(
        signed(REQUEST, keys["eve"], tmp_path), "alice-bot", policy)
    garbage = dict(REQUEST, signature="-----BEGIN SSH SIGNATURE-----\nAAAA\n"
                   "-----END SSH SIGNATURE-----\n")
    assert "malformed" in refusal(garbage, "alice-bot", policy)


def test_a_missing_allowed_signers_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nsignatures: {allowed_signers: nowhere}\n")
    with pytest.raises(ValueError, match="allowed_signers: cannot read"):
        load_policy(path)


def test_signed_requests_through_the_cli_and_the_inbox(setup: Setup, tmp_path: Path,
                                                       keys: dict[str, Path]) -> None:
    (setup.root / "policy.yaml").write_text(
        "version: 1\nsignatures:\n  allowed_signers: allowed_signers\n"
        "  require_for: [alice-*]\n")
    assert setup.root == tmp_path     # the keys' allowed_signers is beside the config
    setup.config.write_text(setup.config.read_text() + "policy: policy.yaml\n")
    request = setup.request("signed-1", {"app.py": "VALUE = 2\n"}, agent="alice-bot")
    path = setup.root / "signed-1.json"
    path.write_text(json.dumps(request, indent=4))
    # A client gets the bytes to sign from the CLI, whatever the file's layout.
    payload = subprocess.run([sys.executable, "-m", "hyperion", "sign-payload", str(path)],
                             capture_output=True, check=True).stdout
    assert payload == canonical_payload(request)
    request["signature"] = sign(keys["alice"], payload, tmp_path)
    setup.drop("signed-1.json", request)
    unsigned = setup.request("unsigned-1", {"app.py": "VALUE = 3\n"}, agent="alice-bot")
    setup.drop("unsigned-1.json", unsigned)
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("signed-1")["state"] == "landed"
    record = setup.record("unsigned-1")
    assert record["state"] == "rejected" and record["error"]["code"] == "bad_signature"


def test_ssh_keygen_only_through_a_relative_path_entry_counts_as_missing(
        tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh-keygen is looked for as every program hyperion starts (run.find_program): in PATH's
    absolute folders. Reachable only through "." it is missing, and the request is refused
    with a reason, not verified by whatever "./ssh-keygen" is."""
    policy = policy_with(tmp_path, ["alice-*"])
    request = signed(REQUEST, keys["alice"], tmp_path)
    fake = tmp_path / "ssh-keygen"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'fake-ran'}\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", ".")
    with pytest.raises(GateError) as info:
        check_signature(request, "alice-bot", policy)
    assert info.value.info.code is Code.INTERNAL_ERROR
    assert "ssh-keygen is not installed" in info.value.info.message
    assert not (tmp_path / "fake-ran").exists()
