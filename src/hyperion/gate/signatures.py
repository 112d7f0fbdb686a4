"""SSH signatures on requests: the canonical bytes a client signs, and their verification.

A client signs the request's canonical JSON (:func:`canonical_payload`) with
``ssh-keygen -Y sign -n hyperion -f KEY FILE`` and puts the armored signature in the request's
``signature`` field. hyperion verifies it with ``ssh-keygen -Y verify`` against the policy's
allowed_signers file, the agent name as the principal and ``hyperion`` as the namespace.
ssh-keygen runs as argv (never a shell), with a timeout, on files in a private temporary
folder. Refusals are ``bad_signature``: a signature missing where the policy requires one, a
signature that does not verify, or one made by a key allowed_signers gives to someone else.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from hyperion.errors import Code, GateError
from hyperion.gate.policy import Policy
from hyperion.run import find_program

NAMESPACE = "hyperion"
TIMEOUT_S = 10.0


def canonical_payload(obj: dict[str, Any]) -> bytes:
    """The bytes a request's signature covers: the JSON object without ``signature``, keys
    sorted at every level, separators "," and ":" without spaces, non-ASCII characters as
    themselves, encoded as UTF-8. ValueError when it has no such encoding (a lone surrogate)
    or holds a NaN or infinity."""
    body = {key: value for key, value in obj.items() if key != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the request holds a string that is not valid Unicode") from None


def _ssh_keygen(args: list[str], payload: bytes | None) -> subprocess.CompletedProcess[bytes]:
    program = find_program("ssh-keygen")
    try:
        if program is None:
            raise FileNotFoundError("ssh-keygen")
        return subprocess.run([program, *args], input=payload if payload is not None
                              else b"", capture_output=True, timeout=TIMEOUT_S, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "LC_ALL": "C"})
    except FileNotFoundError:
        raise GateError(Code.INTERNAL_ERROR, "cannot verify the request's signature: "
                        "ssh-keygen is not installed (install OpenSSH's client tools); the "
                        "request is refused until then", path="signature") from None
    except subprocess.TimeoutExpired:
        raise GateError(Code.INTERNAL_ERROR, f"ssh-keygen took more than {TIMEOUT_S:g} s to "
                        "verify the signature; submit the request again", path="signature"
                        ) from None


def check_signature(obj: dict[str, Any], agent: str, policy: Policy) -> None:
    """Raise GateError (``bad_signature``) unless the request's signature is as the policy
    wants: present when its agent matches ``require_for``, and valid whenever present. Without
    ``signatures`` in the policy, signatures are not looked at."""
    settings = policy.signatures
    if settings is None:
        return
    signature = obj.get("signature")
    if not isinstance(signature, str):
        if any(fnmatchcase(agent, pattern) for pattern in settings.require_for):
            raise GateError(Code.BAD_SIGNATURE, f"the policy requires requests from {agent!r} "
                            "to be signed; sign the output of `hyperion sign-payload FILE` "
                            "with `ssh-keygen -Y sign -n hyperion -f KEY` and put the "
                            "signature in the `signature` field", path="signature")
        return
    try:
        payload = canonical_payload(obj)
    except ValueError as exc:
        raise GateError(Code.BAD_SIGNATURE, f"the request cannot be signed: {exc}",
                        path="signature") from None
    with tempfile.TemporaryDirectory(prefix="hyperion-sig-") as folder:
        signers = Path(folder) / "allowed_signers"
        signers.write_text(policy.allowed_signers_text(), encoding="utf-8")
        sig = Path(folder) / "request.sig"
        sig.write_text(signature if signature.endswith("\n") else signature + "\n",
                       encoding="utf-8")
        verified = _ssh_keygen(["-Y", "verify", "-f", str(signers), "-I", agent, "-n",
                                NAMESPACE, "-s", str(sig)], payload)
        if verified.returncode == 0:
            return
        found = _ssh_keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(signers)],
                            None)
        principals = found.stdout.decode("utf-8", "replace").split() \
            if found.returncode == 0 else []
        if principals:
            if not any(fnmatchcase(agent, p) for entry in principals for p in entry.split(",")):
                raise GateError(Code.BAD_SIGNATURE, f"the request was signed with a key that "
                                "allowed_signers gives to "
                                f"{', '.join(repr(p) for p in principals[:5])}, not to "
                                f"{agent!r}; sign with the key of {agent!r}, or add this key for "
                                f"{agent!r} to allowed_signers", path="signature")
            raise GateError(Code.BAD_SIGNATURE, "the signature does not verify: the request "
                            "was changed after it was signed, or was signed in another "
                            "namespace than 'hyperion'; sign the output of `hyperion "
                            "sign-payload FILE` again", path="signature")
        raise GateError(Code.BAD_SIGNATURE, "the signature does not verify: it is malformed, "
                        "or its key is not in the policy's allowed_signers; sign with a key "
                        f"listed there for {agent!r}", path="signature")
