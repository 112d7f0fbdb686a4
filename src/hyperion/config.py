"""The configuration (hyperion.yaml): its model, and loading with errors that name file, key, line.

Relative paths in the file resolve against the file's own folder, so a config can be moved with
its inbox and state directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CONFIG_ENV = "HYPERION_CONFIG"
DEFAULT_CONFIG_NAME = "hyperion.yaml"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` names the file, the key and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchConfig(_Strict):
    max: int = Field(ge=1, le=100, description="Most requests checked together.")
def _usable_ref_name(value: str) -> str:
    if value.startswith(("-", "/")) or value.endswith(("/", ".lock")) or ".." in value \
            or "//" in value or any(c in value for c in " ~^:?*[\\") \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} is not a usable ref name")
    return value


class GitInboxConfig(_Strict):
    """Requests by git push: files under inbox/ on a branch, and notes on pushed commits."""

    branch: str | None = Field("hyperion-inbox", description=(
        "Branch whose inbox/ folder holds request files (null: no inbox branch)."))
    notes_ref: str | None = Field("refs/notes/hyperion-inbox", description=(
        "Notes ref whose notes are change requests for the commits they annotate "
        "(null: no note requests)."))
    poll_s: float = Field(30, gt=0, le=3600, description=(
        "Fallback check of the refs, in case a file-system event was missed."))
    remote: str | None = Field(None, min_length=1, description=(
        "Remote mode, for a gate that is not on the git server: fetch the inbox branch, the "
        "request notes and the branches from this URL every `fetch_s`, and push landed "
        "commits and result notes back (atomic push). `path` is then a bare clone that "
        "hyperion keeps (created when missing)."))
    fetch_s: float = Field(15, gt=0, le=86400, description="Remote mode: seconds between "
                           "fetches (and pushes of what landed meanwhile).")

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        return None if value is None else _usable_ref_name(value.removeprefix("refs/heads/"))

    @field_validator("notes_ref")
    @classmethod
    def _notes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("refs/notes/"):
            raise ValueError("must be a ref under refs/notes/, e.g. refs/notes/hyperion-inbox")
        return _usable_ref_name(value)


class RepoConfig(_Strict):
    path: Path = Field(description="A git repository, bare or with a working tree.")
    target: str = Field("main", description="Default target branch.", min_length=1)
    land: Literal["ref", "branch", "push"] = Field("ref", description=(
        "ref: move the target branch; branch: create hyperion/<id> for a person to merge; "
        "push: push to `remote` with a lease on the tip the checks ran on."))
    batch: BatchConfig | None = Field(None, description=(
        "Opt in to batching: ready requests for the same target are applied together and "
        "checked once; a red batch is bisected to fail only the guilty."))
    remote: str | None = Field(None, min_length=1, description=(
        "With land: push, the remote (a name configured in the repository, or a URL) whose "
        "target branch is fetched before each attempt and pushed to on landing."))
    git_inbox: GitInboxConfig | None = Field(None, description=(
        "Take requests pushed to this repository (an inbox branch and/or request notes)."))
    results_ref: str | None = Field("refs/notes/hyperion", description=(
        "Notes ref for results: one JSON line per outcome on the landed commit and on the "
        "commit a git request came from (null: write no notes)."))
    policy_from_target: str | None = Field(None, min_length=1, max_length=1024, description=(
        "A policy file inside this repository (e.g. policies/hyperion.yaml), read from the tip "
        "of each request's target branch instead of the configured `policy`; never from the "
        "change under review. Missing or invalid there: the request is refused "
        "policy_denied."))

    @field_validator("policy_from_target")
    @classmethod
    def _repo_path(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or any(
                part in ("", ".", "..") for part in value.split("/"))):
            raise ValueError(f"{value!r} must be a plain path relative to the repository root")
        return value

    @field_validator("target")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        if value.startswith(("-", "/")) or ".." in value or any(c in value for c in " ~^:?*[\\"):
            raise ValueError(f"{value!r} is not a usable branch name")
        return value

    @field_validator("results_ref")
    @classmethod
    def _results(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("refs/notes/"):
            raise ValueError("must be a ref under refs/notes/, e.g. refs/notes/hyperion")
        return _usable_ref_name(value)

    @model_validator(mode="after")
    def _distinct_notes(self) -> RepoConfig:
        if self.git_inbox is not None and self.results_ref is not None \
                and self.git_inbox.notes_ref == self.results_ref:
            raise ValueError("results_ref and git_inbox.notes_ref must differ: results "
                             "would be read back as requests")
        return self

    @field_validator("remote")
    @classmethod
    def _remote_name(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("-") or any(ord(c) < 32 for c in value)):
            raise ValueError(f"{redact_url(value)!r} is not a usable remote")
        return value

    @model_validator(mode="after")
    def _push_needs_remote(self) -> RepoConfig:
        if self.land == "push" and self.remote is None:
            raise ValueError("land: push needs a `remote` to push to")
        return self


class CheckLimits(_Strict):
    """Resource limits (setrlimit) of a check's processes; each child inherits them."""

    cpu_s: int | None = Field(None, ge=1, description="CPU seconds (RLIMIT_CPU).")
    memory_mb: int | None = Field(None, ge=16, description="Address space (RLIMIT_AS), MiB.")
    file_size_mb: int | None = Field(None, ge=1, description=(
        "Largest file a check may write (RLIMIT_FSIZE), MiB."))
    processes: int | None = Field(None, ge=1, description=(
        "Processes of the user running hyperion (RLIMIT_NPROC; counts all of them)."))
    open_files: int | None = Field(None, ge=16, description="Open descriptors (RLIMIT_NOFILE).")

    def as_rlimits(self) -> dict[str, int]:
        """The limits by the names hyperion.run takes."""
        mib = 1024 * 1024
        named = {"cpu": self.cpu_s, "as": self.memory_mb and self.memory_mb * mib,
                 "fsize": self.file_size_mb and self.file_size_mb * mib,
                 "nproc": self.processes, "nofile": self.open_files}
        return {name: value for name, value in named.items() if value}


class CheckConfig(_Strict):
    run: list[str] = Field(min_length=1, description="argv list; never run through a shell.")
    timeout_s: float = Field(600, gt=0, le=24 * 3600)
    env: dict[str, str] = Field(default_factory=dict,
                                description="Extra environment for this check only.")
    limits: CheckLimits | None = None


PLACEHOLDERS = ("task_file", "instructions_file", "feedback_file", "worktree", "iteration")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HarnessConfig(_Strict):
    """An agent harness: a command that edits a worktree to carry out a task's instructions."""

    run: list[str] = Field(min_length=1, description=(
        "argv list, never run through a shell. Placeholders substituted in each item: "
        "{task_file} {instructions_file} {feedback_file} {worktree} {iteration}."))
    timeout_s: float = Field(1800, gt=0, le=7 * 24 * 3600, description=(
        "Longest one run of the harness may take (the task's timeout_s bounds it too)."))
    env: dict[str, str] = Field(default_factory=dict, description=(
        "The only variables (besides PATH, HOME, LANG, TZ, TMPDIR, LC_*) the harness sees. "
        "${VAR} in a value is taken from hyperion's own environment when the harness starts."))
    max_concurrent: int = Field(1, ge=1, le=64, description=(
        "Tasks running this harness at once; more wait (without spending attempts)."))
    max_starts_per_hour: int | None = Field(None, ge=1, description=(
        "Tasks that may start (or resume) running this harness in any 60 minutes; "
        "omit for no limit."))

    @field_validator("run")
    @classmethod
    def _placeholders(cls, value: list[str]) -> list[str]:
        for item in value:
            for name in _PLACEHOLDER.findall(item):
                if name not in PLACEHOLDERS:
                    raise ValueError(f"unknown placeholder {{{name}}} in {item!r}; known: "
                                     + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name) or name.startswith("HYPERION_"):
                raise ValueError(f"{name!r} is not a usable variable name (letters, digits, _; "
                                 "HYPERION_* are set by hyperion)")
        return value

    def env_references(self) -> set[str]:
        """The daemon variables this harness's env takes values from."""
        return {m for value in self.env.values() for m in _ENV_REFERENCE.findall(value)}


Event = Literal["landed", "failed", "rejected", "held", "stuck", "rolled_back", "cancelled",
                "verified", "notice", "system"]


class NotifyTarget(_Strict):
    url: str = Field(min_length=1, description="An apprise URL.")
    tags: list[str] = Field(default_factory=list, description="Route events here by tag.")


class Template(_Strict):
    title: str | None = Field(None, description="string.Template with $id, $title, $state...")
    body: str | None = None


class RateLimit(_Strict):
    max: int = Field(ge=1, description="Messages per window before a burst is coalesced.")
    per_s: float = Field(60, gt=0, description="The window, in seconds.")


class NotifyConfig(_Strict):
    urls: list[str | NotifyTarget] = Field(
        default_factory=list, description="apprise URLs, plain (every event) or with tags.")
    config: Path | None = Field(None, description="An apprise config file (YAML or TEXT).")
    plugin_paths: list[Path] = Field(
        default_factory=list,
        description="Folders or files with apprise custom notification plugins (@notify).")
    events: dict[Event, list[str]] = Field(
        default_factory=dict, description="Tags each event goes to; default: every target.")
    templates: dict[Event, Template] = Field(default_factory=dict)
    rate_limit: dict[str, RateLimit] = Field(default_factory=dict, description=(
        "Per tag (\"*\" for targets without tags): over `max` messages in `per_s` seconds, "
        "the rest of a burst is sent as one digest when the window ends."))
    retry_min_s: float = Field(5, gt=0, description="First redelivery delay (jittered).")
    retry_max_s: float = Field(600, gt=0, description="Longest redelivery delay.")
    expire_h: float = Field(24, gt=0, description="Give up on a message after this long.")

    def targets(self) -> list[NotifyTarget]:
        return [NotifyTarget(url=u) if isinstance(u, str) else u for u in self.urls]


class LimitsConfig(_Strict):
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0,
                                   description="Largest request file accepted.")
    max_json_depth: int = Field(32, gt=1, le=512, description="Deepest JSON nesting accepted.")


class LogConfig(_Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MetricsConfig(_Strict):
    listen: str = Field(description="host:port for Prometheus text, e.g. 127.0.0.1:9108",
                        pattern=r"^[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}$")


class IntakeConfig(_Strict):
    process: bool = Field(True, description=(
        "`hyperion run` takes the inbox directory in a process of its own, so a burst of "
        "requests does not slow the workers beside it; false: in a thread of the daemon."))
    nice: int = Field(10, ge=0, le=19, description=(
        "How much the intake process lowers its CPU priority (nice), so that landing and "
        "checks come first when the CPUs are busy."))


class Config(_Strict):
    state_dir: Path = Path(".hyperion")
    inbox: Path = Path("inbox")
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    workers: int = Field(2, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=100,
                              description="Attempts for transient failures before `failed`.")
    max_crashes: int = Field(5, ge=1, le=100, description=(
        "Attempts that may end with hyperion's process dying (kill -9, OOM, power loss) "
        "before the request fails internal_error: a request that kills its worker every "
        "time must not loop forever."))
    repos: dict[str, RepoConfig] = Field(default_factory=dict)
    checks: dict[str, CheckConfig] = Field(default_factory=dict)
    harnesses: dict[str, HarnessConfig] = Field(default_factory=dict, description=(
        "Agent harnesses tasks may name: commands run in a worktree to carry out a task."))
    policy: Path | None = None
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig | None = None
    retention_days: float = Field(30, gt=0, description=(
        "Finished spool and outbox items older than this are pruned (records are kept)."))
    drain_timeout_s: float = Field(600, ge=0, le=24 * 3600, description=(
        "On SIGTERM, how long in-flight requests may take to finish before their checks are "
        "stopped and they are requeued."))

    # Set by load_config; not part of the file.
    source: SkipJsonSchema[Path | None] = Field(None, exclude=True)

    @field_validator("repos", "checks", "harnesses")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"name {name!r} must match {NAME_PATTERN}")
        return value

    def resolved(self, base: Path) -> Config:
        """A copy with every relative path made absolute against ``base``."""
        def fix(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p).resolve()

        repos = {n: r.model_copy(update={"path": fix(r.path)}) for n, r in self.repos.items()}
        notify = self.notify.model_copy(update={
            "plugin_paths": [fix(p) for p in self.notify.plugin_paths],
            "config": fix(self.notify.config) if self.notify.config else None})
        return self.model_copy(update={
            "state_dir": fix(self.state_dir), "inbox": fix(self.inbox), "repos": repos,
            "policy": fix(self.policy) if self.policy else None, "notify": notify,
        })


def redact_url(url: str) -> str:
    """Hide credentials in a notification URL: user:password@ and secret-looking parameters."""
    url = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    url = re.sub(r"(//)[^/@:]+@", r"\1***@", url)
    return re.sub(r"(?i)([?&](?:pass|password|token|key|secret|apikey|api_key)=)[^&]*",
                  r"\1***", url)


def find_config(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    local = Path(DEFAULT_CONFIG_NAME)
    if local.exists():
        return local
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return local


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) of the YAML node at ``loc``, or of its deepest existing parent."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node = value
                    line = key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(text: str, source: Path) -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: line 1: the configuration must be a mapping of keys")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
            line = _node_line(node, loc)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (misspelled?)"
            where = f"line {line}: " if line else ""
            lines.append(f"{source}: {where}{_format_loc(loc)}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    return config.resolved(source.resolve().parent).model_copy(update={"source": source.resolve()})


def load_config(explicit: str | None = None) -> Config:
    path = find_config(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no configuration file (create one with `hyperion init`, or pass --config)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, path)
