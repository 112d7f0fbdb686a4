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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CONFIG_ENV = "HYPERION_CONFIG"
DEFAULT_CONFIG_NAME = "hyperion.yaml"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` names the file, the key and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepoConfig(_Strict):
    path: Path = Field(description="A git repository, bare or with a working tree.")
    target: str = Field("main", description="Default target branch.", min_length=1)
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


class CheckConfig(_Strict):
    run: list[str] = Field(min_length=1, description="argv list; never run through a shell.")
    timeout_s: float = Field(600, gt=0, le=24 * 3600)
    env: dict[str, str] = Field(default_factory=dict,
                                description="Extra environment for this check only.")


Event = Literal["landed", "failed", "rejected", "held", "stuck", "rolled_back", "cancelled",
                "notice", "system"]


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


class Config(_Strict):
    state_dir: Path = Path(".hyperion")
    inbox: Path = Path("inbox")
    workers: int = Field(2, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=100,
                              description="Attempts for transient failures before `failed`.")
    max_crashes: int = Field(5, ge=1, le=100, description=(
        "Attempts that may end with hyperion's process dying (kill -9, OOM, power loss) "
        "before the request fails internal_error: a request that kills its worker every "
        "time must not loop forever."))
    repos: dict[str, RepoConfig] = Field(default_factory=dict)
    checks: dict[str, CheckConfig] = Field(default_factory=dict)
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

    @field_validator("repos", "checks")
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
