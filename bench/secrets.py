"""Secret scanning: hyperion.gate.secrets beside detect-secrets 1.5.0, measured in one run.

Usage: .venv/bin/python bench/secrets.py [--stdlib DIR] [--repeat N] [--no-detect-secrets]

Prints one JSON document (bench/README.md says how to read it):

- recall on a synthetic corpus of 53 credentials in the formats the scanner covers, each in a
  small file of its own syntax, scanned as files and as one patch that adds them all;
- hard negatives: 25 files holding values that look random but are not credentials (AWS's
  documented EXAMPLE keys, placeholders, environment and template references, hashes, UUIDs,
  public keys);
- the time to scan a 25 KB patch;
- throughput (MB per CPU-second) and findings on the Python standard library outside its test
  directories.

The corpus is generated at run time from a fixed seed: no credential-shaped string is stored in
this file. detect-secrets runs with its default plugins and filters (as `detect-secrets scan`),
and needs `unidiff` for its patch mode: `.venv/bin/pip install detect-secrets==1.5.0 unidiff`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named secrets.py: keep its folder off sys.path so the stdlib `secrets` module
# (which the libraries import) is not shadowed by it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import string  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from hyperion.gate.patch import parse_patch  # noqa: E402
from hyperion.gate.secrets import scan_patch, scan_text  # noqa: E402

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
SEED = 20261121


# --- the corpus ----------------------------------------------------------------------------------

class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def alnum(self, n: int) -> str:
        return self.chars(ALNUM, n)

    def hex(self, n: int) -> str:
        return self.chars("0123456789abcdef", n)

    def digits(self, n: int) -> str:
        return self.chars(string.digits, n)

    def b64(self, n: int) -> str:
        return self.chars(B64, n)

    def b64url(self, n: int) -> str:
        return self.chars(B64URL, n)

    def b32(self, n: int) -> str:
        return self.chars(string.ascii_uppercase + "234567", n)

    def password(self, n: int = 16) -> str:
        return self.chars(string.ascii_letters, 1) + self.chars(ALNUM + "!^*_+.-~", n - 1)

    def url_password(self, n: int = 16) -> str:
        return self.chars(string.ascii_letters, 1) + self.chars(ALNUM + "-._~", n - 1)

    def b64url_of(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    def jwt(self) -> str:
        head = self.b64url_of(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = self.b64url_of(json.dumps({"sub": self.digits(10), "scope": "deploy",
                                          "exp": 1_900_000_000}).encode())
        return f"{head}.{body}.{self.b64url_of(self.rng.randbytes(32))}"

    def pem(self, label: str, size: int, width: int = 64, kind: str = "PRIVATE KEY",
            prefix: bytes = b"") -> str:
        body = base64.b64encode(prefix + self.rng.randbytes(size)).decode()
        name = f"{label} {kind}" if label else kind
        lines = [body[i:i + width] for i in range(0, len(body), width)]
        return "\n".join([f"-----BEGIN {name}-----", *lines, f"-----END {name}-----"])

    def sha256(self) -> str:
        return hashlib.sha256(self.rng.randbytes(16)).hexdigest()


@dataclass
class Sample:
    name: str
    path: str
    text: str
    first: int   # the lines the credential (or the hard negative) is on, 1-based
    last: int


def sample(name: str, path: str, before: str, value: str, after: str = "\n") -> Sample:
    first = before.count("\n") + 1
    return Sample(name, path, before + value + after, first, first + value.count("\n"))


def positives(g: Gen) -> list[Sample]:
    akia, asia = "AKIA", "ASIA"
    pem_json = json.dumps(g.pem("", 320))[1:-1]
    rsa_js = g.pem("RSA", 600).split("\n")
    rsa_concat = " +\n".join(f'  "{line}\\n"' for line in rsa_js)
    mongo, redis, amqp = g.url_password(20), g.url_password(24), g.url_password(12)
    made: list[Sample] = [
        sample("aws-access-key-id", ".aws/credentials", "[default]\naws_access_key_id = ",
               akia + g.b32(16)),
        sample("aws-secret-access-key", "deploy/.aws/credentials",
               "[default]\nregion = eu-west-1\naws_secret_access_key = ", g.b64(40)),
        sample("aws-secret-in-json", "sts/credentials.json",
               '{\n  "Credentials": {\n    "AccessKeyId": "' + asia + g.b32(16)
               + '",\n    "SecretAccessKey": "', g.b64(40), '"\n  }\n}\n'),
        sample("github-pat", ".github/workflows/release.yml",
               "jobs:\n  release:\n    env:\n      GH_TOKEN: ", "ghp_" + g.alnum(36)),
        sample("github-fine-grained", ".env", "GITHUB_TOKEN=",
               "github_pat_" + g.alnum(22) + "_" + g.alnum(59)),
        sample("github-oauth", "config/oauth.json", '{"access_token": "', "gho_" + g.alnum(36),
               '", "scope": "repo"}\n'),
        sample("github-app-installation", "scripts/release.sh", "#!/bin/sh\nexport GH_APP_TOKEN=",
               "ghs_" + g.alnum(36)),
        sample("github-app-user", "app/github_client.py", "client = Github(auth=Auth.Token(\"",
               "ghu_" + g.alnum(36), "\"))\n"),
        sample("gitlab", ".gitlab-ci.yml", "variables:\n  GITLAB_TOKEN: ",
               "glpat-" + g.b64url(20)),
        sample("slack-bot", "app/slack.py", "SLACK_BOT_TOKEN = \"",
               f"xoxb-{g.digits(12)}-{g.digits(13)}-{g.alnum(24)}", "\"\n"),
        sample("slack-user", "web/slack.js", "const userToken = '",
               f"xoxp-{g.digits(12)}-{g.digits(12)}-{g.digits(13)}-{g.hex(32)}", "';\n"),
        sample("slack-webhook", "alerts/config.yaml", "receivers:\n  - webhook_url: ",
               f"https://hooks.slack.com/services/T{g.b32(8)}/B{g.b32(10)}/{g.alnum(24)}"),
        sample("stripe-live", "payments/stripe.go", "func init() {\n\tstripe.Key = \"",
               "sk_live_" + g.alnum(24), "\"\n}\n"),
        sample("stripe-restricted", ".env.production", "STRIPE_RESTRICTED_KEY=",
               "rk_live_" + g.alnum(24)),
        sample("pem-rsa-file", "certs/server.key", "", g.pem("RSA", 1190)),
        sample("pem-ec-python", "app/keys.py", 'SIGNING_KEY = """', g.pem("EC", 121), '"""\n'),
        sample("pem-pkcs8-json", "gcp/service-account.json",
               '{"type": "service_account", "private_key": "', pem_json,
               '", "client_email": "svc@example.invalid"}\n'),
        sample("pem-openssh", "home/.ssh/id_ed25519", "",
               g.pem("OPENSSH", 300, width=70, prefix=b"openssh-key-v1\0")),
        sample("pem-rsa-js-concat", "web/sign.js", "const key =\n", rsa_concat, ";\n"),
        sample("jwt-bearer-curl", "scripts/api.sh",
               "curl -s https://api.example.invalid/v1 \\\n  -H \"Authorization: Bearer ",
               g.jwt(), "\"\n"),
        sample("jwt-json", "fixtures/session.json", '{"user": "svc", "id_token": "', g.jwt(),
               '"}\n'),
        sample("google-api-key", "android/res/values/keys.xml",
               "<resources>\n  <string name=\"maps_key\">", "AIza" + g.b64url(35),
               "</string>\n</resources>\n"),
        sample("google-oauth-secret", "client_secret.json",
               '{"installed": {"client_id": "1234.apps.example.invalid", "client_secret": "',
               "GOCSPX-" + g.b64url(28), '"}}\n'),
        sample("openai-project", "ai/client.py", "openai.api_key = \"",
               "sk-proj-" + g.b64url(74) + "T3BlbkFJ" + g.b64url(74), "\"\n"),
        sample("openai-legacy", ".env.local", "OPENAI_API_KEY=",
               "sk-" + g.alnum(20) + "T3BlbkFJ" + g.alnum(20)),
        sample("anthropic", "services/.env", "ANTHROPIC_API_KEY=",
               "sk-ant-api03-" + g.b64url(93) + "AA"),
        sample("huggingface", "ml/train.py", "from huggingface_hub import login\nlogin(token=\"",
               "hf_" + g.chars(string.ascii_letters, 34), "\")\n"),
        sample("npm", ".npmrc", "//npm.example.invalid/:_authToken=", "npm_" + g.alnum(36)),
        sample("pypi", ".pypirc", "[pypi]\nusername = __token__\npassword = ",
               "pypi-AgE" + g.b64url(150)),
        sample("sendgrid", "mail/send.js", "sgMail.setApiKey('",
               "SG." + g.b64url(22) + "." + g.b64url(43), "');\n"),
        sample("twilio-api-key", "sms/twilio.py", "TWILIO_API_KEY = \"", "SK" + g.hex(32),
               "\"\n"),
        sample("twilio-auth-token", "sms/config.yaml",
               "twilio:\n  account_sid: AC" + g.hex(32) + "\n  twilio_auth_token: ", g.hex(32)),
        sample("mailchimp", "mail/mailchimp.php", "<?php\n$apiKey = '",
               g.hex(32) + "-us" + g.digits(2), "';\n"),
        sample("telegram", "bot/main.py", "TELEGRAM_TOKEN = \"",
               g.digits(10) + ":AA" + g.b64url(33), "\"\n"),
        sample("azure-json", "appsettings.json",
               '{\n  "ConnectionStrings": {\n    "Storage": "',
               "DefaultEndpointsProtocol=https;AccountName=stprod"
               f"{g.digits(4)};AccountKey={g.b64(86)}==;EndpointSuffix=core.windows.net",
               '"\n  }\n}\n'),
        sample("azure-webconfig", "Web.config",
               "<configuration>\n  <connectionStrings>\n    <add name=\"Storage\" "
               "connectionString=\"",
               f"DefaultEndpointsProtocol=https;AccountName=stweb;AccountKey={g.b64(86)}==",
               "\" />\n  </connectionStrings>\n</configuration>\n"),
        sample("datadog-api", "datadog.yaml", "site: datadoghq.eu\napi_key: ", g.hex(32)),
        sample("datadog-app", "ops/.env", "DD_API_KEY=${DD_API_KEY}\nDD_APP_KEY=", g.hex(40)),
        sample("square-access", "payments/square.rb", "SQUARE_ACCESS_TOKEN = \"",
               "EAAA" + g.b64url(60), "\"\n"),
        sample("square-oauth", "payments/square.properties", "square.oauth.secret=",
               "sq0csp-" + g.b64url(43)),
        sample("password-python", "app/db.py", "DB_HOST = \"db.internal\"\nDB_PASSWORD = \"",
               g.password(), "\"\n"),
        sample("password-compose", "docker-compose.yml",
               "services:\n  db:\n    image: postgres:16\n    environment:\n"
               "      POSTGRES_PASSWORD: ", g.password()),
        sample("password-xml", "conf/server.xml",
               "<datasource>\n  <user>app</user>\n  <password>", g.password(),
               "</password>\n</datasource>\n"),
        sample("password-env", "mysql/.env", "MYSQL_USER=app\nMYSQL_ROOT_PASSWORD=",
               g.password()),
        sample("password-toml", "config/db.toml", "[database]\nuser = \"app\"\npassword = \"",
               g.password(), "\"\n"),
        sample("password-properties", "src/main/resources/application.properties",
               "spring.datasource.username=app\nspring.datasource.password=", g.password()),
        sample("url-postgres", "web/.env", "DATABASE_URL=",
               f"postgres://app:{g.url_password()}@db.internal:5432/app"),
        sample("url-mongodb", "config/mongo.js", "const uri = \"",
               f"mongodb+srv://svc:{mongo}@cluster0.example.invalid/orders", "\";\n"),
        sample("url-redis", "site/settings.py",
               "CACHES = {\"default\": {\"LOCATION\": \"", f"redis://:{redis}@cache:6379/0",
               "\"}}\n"),
        sample("url-amqp", "k8s/worker.yaml",
               "env:\n  - name: BROKER_URL\n    value: ", f"amqp://worker:{amqp}@mq:5672/"),
        sample("generic-django-secret", "site/settings.py", "DEBUG = False\nSECRET_KEY = \"",
               g.alnum(50), "\"\n"),
        sample("generic-api-token", "config/api.json", '{"endpoint": "/v1", "api_token": "',
               g.b64url(40), '"}\n'),
        sample("generic-go-secret", "cmd/server/main.go", "const clientSecret = \"", g.hex(40),
               "\"\n"),
    ]
    return made


def hard_negatives(g: Gen) -> list[Sample]:
    doc_key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    aws_doc_value = "wJalrXUtn" + "FEMI/K7MDENG/" + "bPxRfiCY" + "EXAMPLE" + "KEY"
    integrity = base64.b64encode(hashlib.sha512(g.rng.randbytes(8)).digest()).decode()
    ssh = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
                           + g.rng.randbytes(32)).decode()
    made = [
        sample("aws-example-id", ".aws/credentials", "[default]\naws_access_key_id = ",
               doc_key_id),
        sample("aws-example-secret", ".env", "AWS_SECRET_ACCESS_KEY=", aws_doc_value),
        sample("aws-example-json", "docs/aws.json", "{\n",
               f'  "AccessKeyId": "{doc_key_id}",\n  "SecretAccessKey": "{aws_doc_value}"',
               "\n}\n"),
        sample("placeholder-api-key", "app/settings.py", "API_KEY = \"", "your-api-key-here",
               "\"\n"),
        sample("placeholder-password", "chart/values.yaml", "db:\n  password: ",
               "\"<password>\""),
        sample("placeholder-ghp", ".env.example", "GITHUB_TOKEN=", "ghp_" + "x" * 36),
        sample("placeholder-stripe", "config/payments.toml", "stripe_key = \"",
               "sk_live_" + "X" * 24, "\"\n"),
        sample("env-python", "app/db.py", "import os\n\n",
               "password = os.environ[\"DB_PASSWORD\"]"),
        sample("env-url", "web/.env", "DATABASE_URL=",
               "postgres://app:${DB_PASSWORD}@db:5432/app"),
        sample("env-js", "web/slack.js", "", "const token = process.env.SLACK_BOT_TOKEN;"),
        sample("template-helm", "chart/templates/secret.yaml",
               "apiVersion: v1\nkind: Secret\ndata:\n",
               "  password: {{ .Values.db.password | b64enc }}"),
        sample("template-actions", ".github/workflows/ci.yml", "env:\n",
               "  GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}"),
        sample("template-ini", "conf/app.ini", "[db]\n", "password = %(db_password)s"),
        sample("sha256-lock", "deps/requirements.lock", "[[package]]\nname = \"requests\"\n",
               f"hash = \"sha256:{g.sha256()}\""),
        sample("git-sha", "release.json", "{\n", f"  \"commit\": \"{g.hex(40)}\"", "\n}\n"),
        sample("npm-integrity", "web/package-lock.json",
               "{\n  \"packages\": {\n    \"node_modules/left-pad\": {\n",
               f"      \"integrity\": \"sha512-{integrity}\"", "\n    }\n  }\n}\n"),
        sample("pip-hash", "requirements.txt", "",
               f"requests==2.31.0 --hash=sha256:{g.sha256()}"),
        sample("uuid-python", "app/tenants.py", "",
               f"DEFAULT_TENANT_ID = \"{uuid.UUID(int=g.rng.getrandbits(128), version=4)}\""),
        sample("uuid-json", "fixtures/users.json", "[\n",
               f"  {{\"id\": \"{uuid.UUID(int=g.rng.getrandbits(128), version=4)}\", "
               f"\"session\": \"{uuid.UUID(int=g.rng.getrandbits(128), version=4)}\"}}",
               "\n]\n"),
        sample("public-key", "keys/server.pub", "", g.pem("", 294, kind="PUBLIC KEY")),
        sample("ssh-public-key", "home/.ssh/authorized_keys", "", f"ssh-ed25519 {ssh} ops@ci"),
        sample("certificate", "certs/ca.crt", "", g.pem("", 900, kind="CERTIFICATE")),
        sample("go-sum", "go.sum", "",
               f"golang.org/x/text v0.14.0 h1:{g.b64(43)}=\n"
               f"golang.org/x/text v0.14.0/go.mod h1:{g.b64(43)}="),
        sample("data-uri", "web/logo.css", ".logo {\n",
               f"  background: url(data:image/png;base64,{g.b64(240)}=);", "\n}\n"),
        sample("image-digest", "Dockerfile", "", f"FROM python:3.11-slim@sha256:{g.sha256()}"),
    ]
    return made


def corpus() -> tuple[list[Sample], list[Sample]]:
    g = Gen(SEED)
    pos, neg = positives(g), hard_negatives(g)
    # One folder per sample, so that every file has a path of its own.
    for i, s in enumerate(pos):
        s.path = f"p{i:02d}/{s.path}"
    for i, s in enumerate(neg):
        s.path = f"n{i:02d}/{s.path}"
    return pos, neg


def as_patch(items: list[Sample]) -> str:
    out = []
    for s in items:
        lines = s.text.split("\n")
        if lines[-1] == "":
            lines.pop()
        out.append(f"diff --git a/{s.path} b/{s.path}\nnew file mode 100644\n"
                   f"--- /dev/null\n+++ b/{s.path}\n@@ -0,0 +1,{len(lines)} @@\n")
        out.extend(f"+{line}\n" for line in lines)
    return "".join(out)


def write_tree(root: Path, items: list[Sample]) -> None:
    for s in items:
        target = root / s.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(s.text)


# --- the scanners --------------------------------------------------------------------------------

Hits = dict[str, set[int]]  # path -> lines with a finding


class Scanner:
    name = ""

    def files(self, root: Path, paths: list[str]) -> Hits:
        raise NotImplementedError

    def patch(self, patch: str, cwd: Path) -> Hits:
        raise NotImplementedError

    def stdlib(self, root: Path, files: list[Path]) -> tuple[float, list[tuple[str, str, int]]]:
        """(CPU seconds, unique findings as (path, kind, line))."""
        raise NotImplementedError


class Hyperion(Scanner):
    name = "hyperion.gate.secrets"

    def files(self, root: Path, paths: list[str]) -> Hits:
        hits: Hits = {}
        for path in paths:
            text = (root / path).read_bytes().decode("utf-8", "surrogateescape")
            for f in scan_text(text, path=path):
                hits.setdefault(path, set()).add(f.line or 0)
        return hits

    def patch(self, patch: str, cwd: Path) -> Hits:
        hits: Hits = {}
        for f in scan_patch(parse_patch(patch), title="Add configuration", body=""):
            hits.setdefault(f.path, set()).add(f.line or 0)
        return hits

    def stdlib(self, root: Path, files: list[Path]) -> tuple[float, list[tuple[str, str, int]]]:
        texts = [(str(p.relative_to(root)), p.read_bytes()) for p in files]
        found: set[tuple[str, str, str, int]] = set()
        start = time.process_time()
        for rel, data in texts:
            for f in scan_text(data.decode("utf-8", "surrogateescape"), path=rel):
                found.add((rel, f.rule_id, f.fingerprint, f.line or 0))
        cpu = time.process_time() - start
        return cpu, sorted((path, rule, line) for path, rule, _, line in found)


class DetectSecrets(Scanner):
    """detect-secrets with every plugin and its default filters, as `detect-secrets scan`."""

    def __init__(self) -> None:
        from detect_secrets.__version__ import VERSION

        self.name = f"detect-secrets {VERSION}"

    @contextlib.contextmanager
    def settings(self, cwd: Path) -> Iterator[None]:
        from detect_secrets.settings import default_settings

        old = Path.cwd()
        os.chdir(cwd)
        try:
            with default_settings():
                yield
        finally:
            os.chdir(old)

    def files(self, root: Path, paths: list[str]) -> Hits:
        from detect_secrets.core.scan import scan_file

        hits: Hits = {}
        with self.settings(root):
            for path in paths:
                for secret in scan_file(path):
                    hits.setdefault(path, set()).add(secret.line_number)
        return hits

    def patch(self, patch: str, cwd: Path) -> Hits:
        from detect_secrets.core.scan import scan_diff

        hits: Hits = {}
        with self.settings(cwd):
            for secret in scan_diff(patch):
                hits.setdefault(secret.filename, set()).add(secret.line_number)
        return hits

    def stdlib(self, root: Path, files: list[Path]) -> tuple[float, list[tuple[str, str, int]]]:
        from detect_secrets.core.scan import scan_file

        found: set[tuple[str, str, str, int]] = set()
        rels = [str(p.relative_to(root)) for p in files]
        with self.settings(root):
            start = time.process_time()
            for rel in rels:
                for s in scan_file(rel):
                    found.add((rel, s.type, s.secret_hash, s.line_number))
            cpu = time.process_time() - start
        return cpu, sorted((path, kind, line) for path, kind, _, line in found)


# --- measuring -----------------------------------------------------------------------------------

def score(items: list[Sample], hits: Hits) -> tuple[int, list[str]]:
    """(samples with a finding on their lines, names of the others)."""
    found, missed = 0, []
    for s in items:
        lines = hits.get(s.path, set())
        if any(s.first <= line <= s.last for line in lines):
            found += 1
        else:
            missed.append(s.name)
    return found, missed


def flagged(items: list[Sample], hits: Hits) -> list[str]:
    return [s.name for s in items if hits.get(s.path)]


def names(items: list[str]) -> list[str] | str:
    """The names, or how many when there are too many to read."""
    return items if len(items) <= 12 else f"{len(items)} samples"


def patch_of_25kb(stdlib: Path) -> tuple[str, list[Sample]]:
    """About 25 KB of ordinary change: parts of three stdlib modules as new code, a config
    file and a README, with one modified file (context lines)."""
    parts: list[Sample] = []
    budget = 23_000
    for name in ("textwrap.py", "shlex.py", "configparser.py"):
        text = (stdlib / name).read_text()
        take = text[:budget // 3]
        take = take[:take.rfind("\n") + 1]
        parts.append(Sample(name, f"src/vendored/{name}", take, 0, 0))
    parts.append(Sample("config", "deploy/values.yaml",
                        "app:\n  replicas: 3\n  image: app:1.4.2\n  db:\n    host: db.internal\n"
                        "    user: app\n    password: ${DB_PASSWORD}\n" * 5, 0, 0))
    parts.append(Sample("readme", "README.md",
                        "# Service\n\nRun `make deploy` with DATABASE_URL set; the token comes "
                        "from the vault.\n" * 8, 0, 0))
    patch = as_patch(parts)
    modified = ("diff --git a/src/app.py b/src/app.py\n--- a/src/app.py\n+++ b/src/app.py\n"
                "@@ -10,4 +10,6 @@ def main():\n     config = load()\n-    run(config)\n"
                "+    token = os.environ[\"API_TOKEN\"]\n+    client = Client(token=token)\n"
                "+    run(config, client)\n     return 0\n \n")
    return patch + modified, parts


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p90_ms": round(times[int(len(times) * 0.9) - 1], 3), "runs": repeat}


def stdlib_files(root: Path) -> list[Path]:
    skip = {"test", "tests", "idle_test"}
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] == "site-packages" or "__pycache__" in rel or skip & set(rel[:-1]):
            continue
        out.append(path)
    return out


def run(scanner: Scanner, tmp: Path, pos: list[Sample], neg: list[Sample], stdlib: Path,
        repeat: int) -> dict[str, Any]:
    tree = tmp / "tree"
    empty = tmp / "empty"
    both = pos + neg
    result: dict[str, Any] = {}
    hits = scanner.files(tree, [s.path for s in both])
    found, missed = score(pos, hits)
    result["recall_files"] = f"{found}/{len(pos)}"
    result["missed_files"] = names(missed)
    bad = flagged(neg, hits)
    result["hard_negatives_flagged"] = f"{len(bad)}/{len(neg)}"
    result["flagged"] = names(bad)
    patch = as_patch(both)
    patch_hits = scanner.patch(patch, empty)
    found, missed = score(pos, patch_hits)
    result["recall_patch_files_absent"] = f"{found}/{len(pos)}"
    result["missed_patch_files_absent"] = names(missed)
    result["hard_negatives_flagged_patch"] = f"{len(flagged(neg, patch_hits))}/{len(neg)}"
    if isinstance(scanner, DetectSecrets):
        found, _ = score(pos, scanner.patch(patch, tree))
        result["recall_patch_files_present"] = f"{found}/{len(pos)}"

    small, _ = patch_of_25kb(stdlib)
    result["patch_25kb_bytes"] = len(small.encode())
    if isinstance(scanner, Hyperion):
        files = parse_patch(small)
        result["patch_25kb_scan"] = timed(
            lambda: scan_patch(files, title="Vendor three modules", body="And a config."),
            repeat)
        result["patch_25kb_parse_and_scan"] = timed(
            lambda: scan_patch(parse_patch(small), title="Vendor three modules",
                               body="And a config."), repeat)
    else:
        write_tree(tmp / "small", patch_of_25kb(stdlib)[1])
        result["patch_25kb_scan"] = timed(lambda: scanner.patch(small, tmp / "small"),
                                          max(5, repeat // 10))
        result["patch_25kb_scan_files_absent"] = timed(lambda: scanner.patch(small, empty),
                                                       max(5, repeat // 10))

    files = stdlib_files(stdlib)
    size = sum(p.stat().st_size for p in files)
    cpu, findings = scanner.stdlib(stdlib, files)
    result["stdlib"] = {
        "files": len(files), "bytes": size, "cpu_s": round(cpu, 3),
        "mb_per_cpu_s": round(size / 1e6 / cpu, 3),
        "findings": len(findings),
        "by_kind": dict(Counter(kind for _, kind, _ in findings).most_common()),
    }
    if isinstance(scanner, Hyperion):
        result["stdlib"]["list"] = [f"{kind} {path}:{line}" for path, kind, line in findings]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="the standard library to scan (default: this Python's)")
    parser.add_argument("--repeat", type=int, default=200, help="runs of the patch timing")
    parser.add_argument("--no-detect-secrets", action="store_true",
                        help="measure hyperion alone")
    args = parser.parse_args()

    pos, neg = corpus()
    scanners: list[Scanner] = [Hyperion()]
    skipped: dict[str, str] = {}
    if not args.no_detect_secrets:
        try:
            scanners.append(DetectSecrets())
            import unidiff  # noqa: F401  (detect-secrets' patch mode needs it)
        except ImportError as exc:
            skipped["detect-secrets"] = f"not installed ({exc.name}): pip install " \
                                        "detect-secrets==1.5.0 unidiff"
            scanners = scanners[:1]
    report: dict[str, Any] = {
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "corpus": {"seed": SEED, "positives": len(pos), "hard_negatives": len(neg)},
        "stdlib": str(args.stdlib),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="secrets-bench-") as name:
        tmp = Path(name)
        write_tree(tmp / "tree", pos + neg)
        (tmp / "empty").mkdir()
        for scanner in scanners:
            report["results"][scanner.name] = run(scanner, tmp, pos, neg, args.stdlib,
                                                  args.repeat)
    report["results"].update({k: {"skipped": v} for k, v in skipped.items()})
    if len(scanners) == 2:
        ours, theirs = (report["results"][s.name] for s in scanners)
        report["ratios"] = {
            "throughput": round(ours["stdlib"]["mb_per_cpu_s"]
                                / theirs["stdlib"]["mb_per_cpu_s"], 1),
            "patch_25kb_time": round(theirs["patch_25kb_scan"]["median_ms"]
                                     / ours["patch_25kb_scan"]["median_ms"], 1),
        }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
