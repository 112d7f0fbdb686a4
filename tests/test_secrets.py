"""The secret scanner: every rule against its corpus (tests/secret_corpus/), written in many
syntax contexts, with no miss and no false hit; patches, allowlists, the inline marker, failing
closed, redaction, and bounded time on hostile input.

No secret-shaped string is stored in this repository: the corpus holds recipes
("ghp_[[alnum:36]]") that are expanded here with a seeded random generator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import string
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hyperion.gate.patch import FilePatch, Operation, parse_patch
from hyperion.gate.secrets import (
    ALLOW_MARKER,
    Allowlist,
    Finding,
    fingerprint,
    load_rules,
    redact,
    rule_ids,
    scan_patch,
    scan_text,
)

CORPUS = Path(__file__).resolve().parent / "secret_corpus"
CONTEXTS: dict[str, Any] = yaml.safe_load((CORPUS / "contexts.yaml").read_text())
CASES: dict[str, Any] = yaml.safe_load((CORPUS / "cases.yaml").read_text())

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
BECH32 = "".join(c for c in string.ascii_uppercase + string.digits if c not in "1BIO")
_RECIPE = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")
_VALUE = re.compile(r"@@value(?:\|(\w+))?@@")


# --- expanding recipes ---------------------------------------------------------------------------

def armor(name: str, *lines: str) -> str:
    """A PEM block (built here, so that no key header sits in this file as text)."""
    return "\n".join([f"-----BEGIN {name}-----", *lines, f"-----END {name}-----"])


class Gen:
    """Expands the recipes of cases.yaml with a seeded generator, and remembers the random
    parts it made (the parts a redaction must remove)."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.parts: list[str] = []

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def secret(self, text: str) -> str:
        self.parts.append(text)
        return text

    def b64(self, data: bytes) -> str:
        return base64.b64encode(data).decode()

    def b64url(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    def pem(self, label: str, size: int, width: int = 64, headers: tuple[str, ...] = (),
            prefix: bytes = b"", kind: str = "PRIVATE KEY") -> str:
        body = self.b64(prefix + self.rng.randbytes(size))
        lines = [body[i:i + width] for i in range(0, len(body), width)]
        self.parts.extend(line for line in lines if len(line) >= 16)
        return armor(f"{label} {kind}" if label else kind, *headers, *lines)

    def jwt(self, alg: str = "HS256", signed: bool = True, header: dict[str, Any] | None = None
            ) -> str:
        head = self.b64url(json.dumps(header or {"alg": alg, "typ": "JWT"}).encode())
        claims = {"sub": str(self.rng.randrange(10**9, 10**10)), "role": "service",
                  "iat": self.rng.randrange(1_600_000_000, 1_800_000_000)}
        payload = self.b64url(json.dumps(claims).encode())
        signature = self.b64url(self.rng.randbytes(256 if alg.startswith("RS") else 32))
        return f"{head}.{payload}.{signature if signed else ''}"

    def one(self, name: str, arg: str | None) -> str:
        n = int(arg) if arg and arg.isdigit() else 0
        simple: dict[str, str] = {"alnum": ALNUM, "letters": string.ascii_letters,
                                  "upperalnum": string.ascii_uppercase + string.digits,
                                  "hex": "0123456789abcdef", "digits": string.digits,
                                  "b32": string.ascii_uppercase + "234567", "b64": B64,
                                  "b64url": B64URL, "bech32": BECH32}
        if name in simple:
            return self.secret(self.chars(simple[name], n))
        if name == "lower":  # names (accounts, namespaces), not secrets
            return self.chars(string.ascii_lowercase, n)
        if name == "x":
            return "x" * n
        if name == "lit":
            return arg or ""
        if name == "pw":
            return self.secret(self.chars(string.ascii_letters, 1)
                               + self.chars(ALNUM + "!^*_+.-~=", n - 1))
        if name == "pwurl":
            return self.secret(self.chars(string.ascii_letters, 1)
                               + self.chars(ALNUM + "-._~!", n - 1))
        if name == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if name in ("sha1", "sha256", "md5"):
            return hashlib.new(name, self.rng.randbytes(32)).hexdigest()
        if name == "sha512b64":
            return self.b64(hashlib.sha512(self.rng.randbytes(32)).digest())
        if name == "bcrypt":
            return "$2b$12$" + self.chars("./" + ALNUM, 53)
        if name == "jwt":
            return self.secret(self.jwt(arg or "HS256"))
        if name == "jwt_unsigned":
            return self.jwt("none", signed=False)
        if name == "jwt_badheader":
            return ("eyJ" + self.chars(B64URL, 30) + ".eyJ" + self.chars(B64URL, 40) + "."
                    + self.chars(B64URL, 43))
        if name == "basic":
            user, _, password = (arg or "ci").partition(":")
            if not password:
                password = self.chars(ALNUM, 16)
            return self.secret(self.b64(f"{user}:{password}".encode()))
        if name == "pem":
            sizes = {"RSA": 600, "EC": 121, "": 320, "ENCRYPTED": 330, "DSA": 250}
            return self.pem(arg or "", sizes.get(arg or "", 300))
        if name == "pem_legacy":
            dek = self.chars("0123456789ABCDEF", 32)
            return self.pem(arg or "RSA", 600,
                            headers=("Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{dek}", ""))
        if name == "openssh":
            return self.pem("OPENSSH", 400, width=70, prefix=b"openssh-key-v1\0")
        if name == "pgp":
            return self.pem("PGP", 500, headers=("Version: Keybase OpenPGP v2.0.76", ""),
                            kind="PRIVATE KEY BLOCK")
        if name == "pem_public":
            return self.pem("", 294, kind="PUBLIC KEY")
        if name == "pem_cert":
            return self.pem("", 800, kind="CERTIFICATE")
        if name == "pem_dots":
            return armor("RSA PRIVATE KEY", "MIIE...")
        if name == "pem_low":
            return armor("PRIVATE KEY", *(["A" * 64] * 5))
        if name == "pem_empty":
            return armor("EC PRIVATE KEY")
        if name == "ssh_public":
            key = self.b64(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + self.rng.randbytes(32))
            return f"ssh-ed25519 {key} deploy@ci"
        raise AssertionError(f"unknown recipe [[{name}]]")

    def expand(self, recipe: str) -> str:
        return _RECIPE.sub(lambda m: self.one(m.group(1), m.group(2)), recipe)


def key_forms(key: str) -> dict[str, str]:
    parts = key.split("_")
    return {"@@key@@": key, "@@KEY@@": key.upper(),
            "@@keyCamel@@": parts[0] + "".join(p.capitalize() for p in parts[1:]),
            "@@KeyPascal@@": "".join(p.capitalize() for p in parts),
            "@@key.dotted@@": key.replace("_", ".")}


def with_key(text: str, key: str) -> str:
    for token, form in key_forms(key).items():
        text = text.replace(token, form)
    return text


_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "": lambda v: v,
    "json": lambda v: json.dumps(v)[1:-1],
    "indent4": lambda v: "\n".join("    " + line for line in v.split("\n")),
    "indent2tail": lambda v: v.replace("\n", "\n  "),
    "concat": lambda v: " +\n".join(
        '  "' + line + ("\\n" if i < v.count("\n") else "") + '"'
        for i, line in enumerate(v.split("\n"))),
}


@dataclass
class Sample:
    context: str
    path: str
    text: str
    line: int        # where the value starts
    parts: list[str] = field(default_factory=list)


def render(context: str, key: str, value: str) -> Sample:
    spec = CONTEXTS["contexts"][context]
    template = with_key(spec["text"], key)
    match = _VALUE.search(template)
    assert match is not None, context
    before = template[:match.start()]
    text = before + _TRANSFORMS[match.group(1) or ""](value) + template[match.end():]
    return Sample(context, spec["path"], text, before.count("\n") + 1)


def context_names(name: str) -> list[str]:
    sets = CONTEXTS["sets"]
    if name == "all":
        return [*sets["keyed"], *sets["free"]]
    return list(sets[name])


def samples(rule: str, recipe: str, key: str, contexts: str) -> list[Sample]:
    out = []
    for context in context_names(contexts):
        gen = Gen(f"{rule}|{recipe}|{key}|{context}")
        sample = render(context, key, with_key(gen.expand(recipe), key))
        sample.parts = gen.parts
        out.append(sample)
    return out


def negative(item: str | dict[str, str], key: str) -> tuple[str, str]:
    if isinstance(item, dict):
        return item["value"], item["key"]
    return item, key


def scan(sample: Sample) -> list[tuple[str, int | None]]:
    return [(f.rule_id, f.line) for f in scan_text(sample.text, path=sample.path)]


def show(sample: Sample) -> str:
    return f"[{sample.context}] {sample.path}: {sample.text[:300]!r}"


CASE_IDS = [f"{i:02d}-{case['rule']}-{case['key']}" for i, case in enumerate(CASES["cases"])]


# --- the corpus ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_every_positive_is_found_once_on_its_line(case: dict[str, Any]) -> None:
    misses = []
    for recipe in case["positives"]:
        for sample in samples(case["rule"], recipe, case["key"], case["contexts"]):
            got = scan(sample)
            if got != [(case["rule"], sample.line)]:
                misses.append(f"{recipe}: got {got}, want line {sample.line}: {show(sample)}")
            sample.text = sample.text.replace("\n", "\r\n")  # the same with CRLF line ends
            got = scan(sample)
            if got != [(case["rule"], sample.line)]:
                misses.append(f"{recipe} (CRLF): got {got}, want line {sample.line}: "
                              f"{show(sample)}")
    assert not misses, "\n".join(misses)


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_no_negative_is_found(case: dict[str, Any]) -> None:
    hits = []
    for item in [*case["negatives"], *CASES["common_negatives"]]:
        recipe, key = negative(item, case["key"])
        for sample in samples(case["rule"], recipe, key, case["contexts"]):
            got = scan(sample)
            if got:
                hits.append(f"{recipe}: got {got}: {show(sample)}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("item", CASES["hard_negatives"],
                         ids=[f"{x['key']}" for x in CASES["hard_negatives"]])
def test_hard_negatives_stay_clean(item: dict[str, str]) -> None:
    hits = []
    for sample in samples("hard", item["value"], item["key"], item["contexts"]):
        got = scan(sample)
        if got:
            hits.append(f"got {got}: {show(sample)}")
    assert not hits, "\n".join(hits)


def test_every_rule_has_positives_and_negatives_in_ten_contexts() -> None:
    covered: dict[str, set[str]] = {}
    negatives: dict[str, set[str]] = {}
    for case in CASES["cases"]:
        contexts = set(context_names(case["contexts"]))
        assert case["positives"] and case["negatives"], case["rule"]
        covered.setdefault(case["rule"], set()).update(contexts)
        negatives.setdefault(case["rule"], set()).update(contexts)
    for rule in rule_ids():
        assert len(covered.get(rule, ())) >= 10, f"{rule} has positives in < 10 contexts"
        assert len(negatives.get(rule, ())) >= 10, f"{rule} has negatives in < 10 contexts"
    assert set(covered) <= set(rule_ids())
    for name in ("keyed", "free", "pem", "header", "npmrc"):
        assert len(context_names(name)) >= 6


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_redaction_removes_every_value_and_no_finding_shows_one(case: dict[str, Any]) -> None:
    leaks = []
    for recipe in case["positives"]:
        for sample in samples(case["rule"], recipe, case["key"], case["contexts"]):
            redacted = redact(sample.text)
            if f"[redacted {case['rule']} " not in redacted:
                leaks.append(f"not redacted: {show(sample)}")
            for part in sample.parts:
                if len(part) >= 8 and part in redacted:
                    leaks.append(f"{part[:6]}... left in {redacted[:200]!r}")
            for finding in scan_text(sample.text, path=sample.path):
                shown = repr(finding) + finding.describe()
                if any(len(part) >= 8 and part in shown for part in sample.parts):
                    leaks.append(f"value shown in {finding.describe()}")
    assert not leaks, "\n".join(leaks)


# --- patches -------------------------------------------------------------------------------------

def update_patch(path: str, text: str, before: int = 2) -> str:
    """A patch that keeps ``before`` existing lines and adds ``text`` after them."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    old = [f"existing line {i}" for i in range(1, before + 1)]
    head = (f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
            f"@@ -1,{before} +1,{before + len(lines)} @@\n")
    return head + "".join(f" {line}\n" for line in old) + "".join(f"+{line}\n" for line in lines)


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_patches_report_new_file_line_numbers(case: dict[str, Any]) -> None:
    wrong = []
    for sample in samples(case["rule"], case["positives"][0], case["key"], case["contexts"]):
        if sample.path in ("title", "body"):
            got = [(f.rule_id, f.path, f.line) for f in scan_patch(
                [], title=sample.text if sample.path == "title" else "ok",
                body=sample.text if sample.path == "body" else "")]
            want = [(case["rule"], sample.path, sample.line)]
        else:
            files = parse_patch(update_patch(sample.path, sample.text))
            got = [(f.rule_id, f.path, f.line) for f in scan_patch(files, title="t", body="")]
            want = [(case["rule"], sample.path, sample.line + 2)]
        if got != want:
            wrong.append(f"got {got}, want {want}: {show(sample)}")
    assert not wrong, "\n".join(wrong)


def token() -> str:
    return "ghp_" + Gen("token").chars(ALNUM, 36)


def test_added_lines_at_follows_the_hunk_headers() -> None:
    patch = ("diff --git a/x.txt b/x.txt\n--- a/x.txt\n+++ b/x.txt\n"
             "@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C\n c\n"
             "@@ -10,2 +11,3 @@\n j\n+K\n k\n"
             "diff --git a/new.txt b/new.txt\nnew file mode 100644\n--- /dev/null\n"
             "+++ b/new.txt\n@@ -0,0 +1,2 @@\n+one\n+two\n")
    first, second = parse_patch(patch)
    assert first.added_text == ("B", "C", "K") and first.added_lines_at == (2, 3, 12)
    assert second.added_lines_at == (1, 2)
    # Built by hand without positions, a section still compares equal and still scans.
    bare = FilePatch(path="x.txt", old_path=None, operation=Operation.UPDATE, old_mode=None,
                     new_mode=None, binary=False, added_lines=1, removed_lines=0,
                     added_text=(f"t = '{token()}'",))
    assert [(f.rule_id, f.line) for f in scan_patch([bare], title="t", body="")] == [
        ("github-pat", None)]


def test_added_lines_at_matches_the_new_file_as_git_writes_it(tmp_path: Path) -> None:
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(tmp_path),
           "PATH": os.environ.get("PATH", "")}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                               *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=True).stdout

    git("init", "-q")
    rng = random.Random(7)
    for round_ in range(25):
        old = [f"line {i} {rng.randrange(1000)}" for i in range(rng.randrange(0, 60))]
        (tmp_path / "f.txt").write_text("".join(x + "\n" for x in old))
        git("add", "f.txt")
        git("commit", "-q", "--allow-empty", "-m", f"round {round_}")
        new = list(old)
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(0, len(new) + 1)
            if new and rng.random() < 0.3:
                del new[min(at, len(new) - 1)]
            else:
                new[at:at] = [f"added {rng.randrange(10**6)}" for _ in range(rng.randrange(1, 4))]
        (tmp_path / "f.txt").write_text("".join(x + "\n" for x in new))
        patch = git("diff", "-U" + str(rng.randrange(0, 4)))
        if not patch:
            continue
        (section,) = parse_patch(patch)
        assert len(section.added_lines_at) == len(section.added_text)
        for text, line in zip(section.added_text, section.added_lines_at, strict=True):
            assert new[line - 1] == text


def test_only_what_lands_is_scanned() -> None:
    secret = token()
    removed = ("diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n"
               f"-TOKEN = '{secret}'\n+TOKEN = os.environ['TOKEN']\n keep\n")
    assert scan_patch(parse_patch(removed), title="Drop the token", body="") == []
    deleted = ("diff --git a/k.py b/k.py\ndeleted file mode 100644\n--- a/k.py\n+++ /dev/null\n"
               f"@@ -1 +0,0 @@\n-TOKEN = '{secret}'\n")
    assert scan_patch(parse_patch(deleted), title="t", body="") == []
    found = scan_patch([], title=f"Use {secret}", body=f"line one\nand {secret} again")
    assert [(f.rule_id, f.path, f.line) for f in found] == [
        ("github-pat", "title", 1), ("github-pat", "body", 2)]
    assert found[0].fingerprint == found[1].fingerprint == fingerprint("github-pat", secret)


def test_binary_sections_fail_closed_unless_allowlisted() -> None:
    patch = ("diff --git a/logo.png b/logo.png\nnew file mode 100644\nindex 0000000..1111111\n"
             "Binary files /dev/null and b/logo.png differ\n")
    files = parse_patch(patch)
    assert files[0].binary
    found = scan_patch(files, title="Add the logo", body="")
    assert [(f.rule_id, f.path, f.line) for f in found] == [("undecodable-binary", "logo.png",
                                                            None)]
    assert scan_patch(files, title="t", body="", allow=Allowlist(paths=["*.png"])) == []
    assert scan_patch(files, title="t", body="",
                      allow=Allowlist(fingerprints=[found[0].fingerprint])) == []
    gone = parse_patch("diff --git a/old.png b/old.png\ndeleted file mode 100644\n"
                       "index 1111111..0000000\nBinary files a/old.png and /dev/null differ\n")
    assert scan_patch(gone, title="t", body="") == []


def test_undecodable_text_is_never_clean() -> None:
    text = "ok = 1\nname = 'caf\udce9'\n"  # a byte that was not UTF-8, kept as a surrogate
    found = scan_text(text, path="a.py")
    assert [(f.rule_id, f.line) for f in found] == [("undecodable-text", 2)]
    body = scan_patch([], title="t", body="\ud800")
    assert [(f.rule_id, f.path) for f in body] == [("undecodable-text", "body")]
    assert scan_text("naïve café ünïcode ✓", path="a.txt") == []


# --- allowlists and the marker -------------------------------------------------------------------

def test_allowlist_by_fingerprint_path_and_regex() -> None:
    secret = token()
    text = f"A = '{secret}'\n"
    (finding,) = scan_text(text, path="src/a.py")
    assert finding.fingerprint == fingerprint("github-pat", secret)
    assert finding.fingerprint == hashlib.sha256(
        ("github-pat" + secret).encode()).hexdigest()[:12]
    assert scan_text(text, path="src/a.py", allow=Allowlist(fingerprints=[finding.fingerprint])
                     ) == []
    assert scan_text(text, path="src/a.py", allow=Allowlist(paths=["src/**"])) == []
    assert scan_text(text, path="lib/a.py", allow=Allowlist(paths=["src/**"])) == [
        Finding("github-pat", "lib/a.py", 1, finding.fingerprint)]
    assert scan_text(text, path="src/a.py", allow=Allowlist(regexes=["^ghp_"])) == []
    assert len(scan_text(text, path="src/a.py", allow=Allowlist(regexes=["^gho_"]))) == 1
    # The allowed value does not turn into a finding of another rule.
    keyed = f"github_token = '{secret}'\n"
    assert scan_text(keyed, path="a.py", allow=Allowlist(fingerprints=[finding.fingerprint])
                     ) == []


def test_allowlist_model_is_strict() -> None:
    with pytest.raises(ValidationError):
        Allowlist.model_validate({"fingerprint": ["abc"]})
    with pytest.raises(ValidationError):
        Allowlist(fingerprints=["not-hex"])
    with pytest.raises(ValidationError):
        Allowlist(regexes=["(unclosed"])
    assert Allowlist().fingerprints == []


def test_inline_marker_allows_its_line_only() -> None:
    secret = token()
    text = (f"A = '{secret}'  # {ALLOW_MARKER}: a revoked token kept for the test\n"
            f"B = '{secret}'\n")
    assert [(f.rule_id, f.line) for f in scan_text(text, path="a.py")] == [("github-pat", 2)]
    # redact() spares nothing.
    assert secret not in redact(text)


def test_finding_describe_names_rule_path_line_and_fingerprint() -> None:
    finding = Finding("aws-access-key-id", "src/x.py", 12, "3fa2c1d0e9b8")
    assert finding.describe() == (
        "aws-access-key-id in src/x.py line 12 (fingerprint 3fa2c1d0e9b8)")
    assert Finding("jwt", "logo\n.png", None, "0" * 12).describe() == (
        "jwt in 'logo\\n.png' (fingerprint 000000000000)")


def test_redact_keeps_the_text_around_and_is_idempotent() -> None:
    secret = token()
    url_pw = Gen("pw").chars(ALNUM, 16)
    text = (f"failed: GITHUB_TOKEN={secret} and postgres://app:{url_pw}@db/app; "
            "see the log\n")
    once = redact(text)
    fp = fingerprint("github-pat", secret)
    assert once == (f"failed: GITHUB_TOKEN=[redacted github-pat {fp}] and postgres://app:"
                    f"[redacted url-password {fingerprint('url-password', url_pw)}]@db/app; "
                    "see the log\n")
    assert redact(once) == once
    assert redact("nothing to see here") == "nothing to see here"
    # Stricter than a scan: a word that a scan would take for a placeholder is still removed.
    assert scan_text("mailto://bob:hunter@smtp.example.invalid", path="body") == []
    assert "hunter" not in redact("mailto://bob:hunter@smtp.example.invalid")


# --- fingerprints, rules file, time --------------------------------------------------------------

def test_pem_fingerprint_ignores_the_string_syntax_around_it() -> None:
    pem = Gen("pem-fp").one("pem", "RSA")
    as_file = scan_text(pem + "\n", path="k.pem")
    as_json = scan_text(json.dumps({"private_key": pem}), path="sa.json")
    as_yaml = scan_text("key: |\n" + "\n".join("  " + x for x in pem.split("\n")), path="k.yaml")
    assert len({f.fingerprint for f in as_file + as_json + as_yaml}) == 1
    assert len(as_file + as_json + as_yaml) == 3


def test_rules_file_errors_name_the_rule() -> None:
    base = {"version": 1,
            "rules": [{"id": "rule-a", "keywords": ["k"], "regex": "k(?P<secret>x+)"}]}
    assert len(load_rules(yaml.safe_dump(base)).rules) == 1
    broken: list[tuple[dict[str, Any], str]] = [
        ({"id": "rule-a", "keywords": ["k"], "regex": "kx+"}, "no group named 'secret'"),
        ({"id": "rule-a", "keywords": ["k"], "regex": "{{nope}}(?P<secret>x)"}, "unknown fragment"),
        ({"id": "rule-a", "keywords": ["K"], "regex": "(?P<secret>x)"}, "lowercase"),
        ({"id": "rule-a", "keywords": ["k"], "regex": "(?P<secret>x"}, "invalid regex"),
        ({"id": "rule-a", "keywords": ["k"]}, "either regex or patterns"),
        ({"id": "rule-a", "keywords": ["k"], "regex": "(?P<secret>x)", "typo": 1}, "typo"),
    ]
    for rule, message in broken:
        with pytest.raises(ValueError, match=message):
            load_rules(yaml.safe_dump({"version": 1, "rules": [rule]}))
    with pytest.raises(ValueError, match="used twice"):
        load_rules(yaml.safe_dump({"version": 1, "rules": [base["rules"][0]] * 2}))


HOSTILE = [
    "password=" * 20000,
    "a" * 200_000,
    armor("RSA PRIVATE KEY").split("\n")[0] + "A" * 200_000,
    (armor("PRIVATE KEY").split("\n")[0] + "\n" + "ab cd " * 30000) * 2,
    "eyJ" + "a" * 100_000 + "." + "b" * 100_000,
    "eyJa." * 40000,
    "x://" + "a" * 100_000 + ":" + "b" * 100_000,
    "://a:" * 40000,
    "api_key" + " " * 100_000 + "=",
    ("secret_token_" * 5000) + '= "' + "a1" * 1000,
    "Authorization: Basic " + "QUJD" * 50000,
    "Bearer " * 30000,
    "\n".join(["password = 'x'"] * 20000),
    "AKIA" * 50000,
    ";Password=" * 30000,
    "xoxb-" + "1" * 100_000,
    "password = 'abcdef12'\n" * 8000,
    ("token = 'ghp_" + "aB3" * 12 + "'\n") * 8000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_scans_in_bounded_time(text: str) -> None:
    start = time.process_time()
    scan_text(text, path="config/x.yaml")
    redact(text)
    assert time.process_time() - start < 2.0


def test_rules_load_once_and_scanning_is_fast() -> None:
    text = Path(__file__).read_text() * 3
    scan_text(text, path="warm.py")
    start = time.process_time()
    for _ in range(3):
        scan_text(text, path="t.py")
    per_mb = (time.process_time() - start) / (3 * len(text) / 1e6)
    assert per_mb < 1.0, f"{per_mb:.3f} CPU seconds per MB"
