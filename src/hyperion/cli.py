"""The `hyperion` command: parse arguments, call one service function, print, set the exit code.

Exit codes: 0 success; 1 a request was rejected or failed (or a record was not found);
2 usage or configuration error. Heavy libraries are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hyperion import __version__
from hyperion.config import Config, ConfigError, load_config

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    if args.format == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        out = text()
        if out:
            sys.stdout.write(out + "\n")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _policy(config: Config) -> Any:
    from hyperion.gate.policy import load_policy

    try:
        return load_policy(config.policy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------- record views

def record_summary(record: Any) -> dict[str, Any]:
    return {
        "id": record.id, "kind": record.kind, "state": record.state.value,
        "title": record.title, "repo": record.repo, "target": record.target,
        "attempts": record.attempts,
        "error": ({"code": record.error.code.value, "message": record.error.message}
                  if record.error else None),
        "landed_commit": record.landed_commit,
        "created_at": record.created_at, "updated_at": record.updated_at,
    }


def _parse_since(text: str) -> float:
    match = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if not match:
        raise UsageError(f"--since {text!r}: use a number and s, m, h or d (e.g. 2h)")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# ---------------------------------------------------------------- commands

def cmd_init(args: argparse.Namespace) -> int:
    from hyperion.scaffold import init_dir

    created = init_dir(Path(args.dir), repo=args.repo, target=args.target)
    for path, made in created:
        print(f"{'created' if made else 'kept   '} {path}")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    _policy(config)
    if args.check:
        print(f"{config.source}: ok")
        return EXIT_OK
    data = config.model_dump(mode="json")
    data["notify"]["urls"] = [redact_url(u) for u in data["notify"]["urls"]]
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return EXIT_OK


def redact_url(url: str) -> str:
    """Hide credentials in a notification URL: user:password@ and secret-looking parameters."""
    url = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    url = re.sub(r"(//)[^/@:]+@", r"\1***@", url)
    return re.sub(r"(?i)([?&](?:pass|password|token|key|secret|apikey|api_key)=)[^&]*",
                  r"\1***", url)


def cmd_schema(args: argparse.Namespace) -> int:
    from hyperion.schemas import schema_for

    print(json.dumps(schema_for(args.name), indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from hyperion.errors import GateError
    from hyperion.gate.verdict import judge
    from hyperion.requests import claimed_id, load_json, request_from_json

    config = _config(args)
    policy = _policy(config)
    results = []
    for name in args.files:
        entry: dict[str, Any] = {"file": name, "id": None, "kind": None, "ok": True,
                                 "errors": []}
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"{name}: cannot read: {exc.strerror}") from None
        obj: Any = None
        try:
            obj = load_json(data, max_bytes=config.limits.max_request_bytes,
                            max_depth=config.limits.max_json_depth)
            entry["id"] = claimed_id(obj)
            kind = obj.get("kind") if isinstance(obj, dict) else None
            entry["kind"] = kind if kind in ("change", "task") else None
            judge(request_from_json(obj), config, policy)
        except GateError as exc:
            entry["ok"] = False
            entry["errors"].append(exc.info.model_dump(mode="json", exclude={"detail"}))
        results.append(entry)

    def text() -> str:
        lines = []
        for r in results:
            label = f"{r['file']} ({r['id'] or 'no id'})"
            if r["ok"]:
                lines.append(f"ok      {label}")
            for e in r["errors"]:
                where = f" [{e['path']}]" if e.get("path") else ""
                lines.append(f"refused {label}: {e['code']}{where}: {e['message']}")
        return "\n".join(lines)

    _emit(args, results, text)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_PROBLEM


def cmd_submit(args: argparse.Namespace) -> int:
    from hyperion.app import App
    from hyperion.intake.accept import accept
    from hyperion.records import Source, State

    app = App.open(_config(args))
    results = []
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"{name}: cannot read: {exc.strerror}") from None
        outcome = accept(app, data, Source(kind="cli", name=str(Path(name).resolve())),
                         by="cli")
        results.append({"file": name, "id": outcome.id, "state": outcome.state.value,
                        "repeated": outcome.repeated,
                        "error": outcome.error.model_dump(mode="json", exclude={"detail"})
                        if outcome.error else None})

    def text() -> str:
        lines = []
        for r in results:
            line = f"{r['id']} {r['state']}" + (" (already received)" if r["repeated"] else "")
            if r["error"]:
                line += f": {r['error']['code']}: {r['error']['message']}"
            lines.append(line)
        return "\n".join(lines)

    _emit(args, results, text)
    bad = (State.REJECTED.value, State.FAILED.value)
    return EXIT_PROBLEM if any(r["state"] in bad for r in results) else EXIT_OK


def _decide(args: argparse.Namespace, approve: bool) -> int:
    import getpass

    from hyperion.app import App
    from hyperion.intake import approval

    app = App.open(_config(args))
    by = args.by or getpass.getuser()
    try:
        if approve:
            record = approval.approve(app, args.id, by=by)
        else:
            record = approval.deny(app, args.id, by=by, reason=args.reason)
    except approval.NotHeld as exc:
        print(f"hyperion: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    _emit(args, record_summary(record), lambda: f"{record.id} {record.state.value}")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def cmd_deny(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)


def cmd_run(args: argparse.Namespace) -> int:
    from hyperion.app import App
    from hyperion.daemon import run_forever, run_once

    config = _config(args)
    app = App.open(config)
    workers = args.workers or config.workers
    if args.once:
        run_once(app, workers=workers)
    else:
        run_forever(app, workers=workers)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from hyperion.records import RecordStore, State

    config = _config(args)
    records = RecordStore(config.state_dir).all()
    if args.state:
        try:
            wanted = State(args.state)
        except ValueError:
            raise UsageError(f"--state {args.state!r}: one of "
                             f"{', '.join(s.value for s in State)}") from None
        records = [r for r in records if r.state is wanted]
    if args.since:
        from datetime import UTC, datetime

        cutoff = datetime.fromtimestamp(time.time() - _parse_since(args.since), UTC)
        stamp = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        records = [r for r in records if r.updated_at >= stamp]
    records = records[: args.limit]
    data = [record_summary(r) for r in records]

    def text() -> str:
        if not data:
            return "no records"
        rows = [("ID", "STATE", "REPO/TARGET", "TRIES", "UPDATED", "ERROR / TITLE")]
        for r in data:
            detail = f"{r['error']['code']}: {r['error']['message']}" if r["error"] \
                else r["title"]
            rows.append((r["id"], r["state"], f"{r['repo'] or '-'}/{r['target'] or '-'}",
                         str(r["attempts"]), r["updated_at"][:19].replace("T", " "),
                         detail[:100]))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True))
                         + "  " + row[5] for row in rows)

    _emit(args, data, text)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from hyperion.records import RecordStore

    config = _config(args)
    store = RecordStore(config.state_dir)
    record = store.get(args.id)
    if record is None:
        print(f"hyperion: no record with id {args.id!r}", file=sys.stderr)
        return EXIT_PROBLEM
    artifacts_dir = config.state_dir / "artifacts" / record.id
    artifacts = [{"name": "request", "path": str(store.original_path(record.id))}]
    if artifacts_dir.is_dir():
        artifacts += [{"name": p.name, "path": str(p)} for p in sorted(artifacts_dir.iterdir())]
    data = record_summary(record) | {
        "agent": record.agent, "base": record.base, "base_commit": record.base_commit,
        "applied_onto": record.applied_onto,
        "error": record.error.model_dump(mode="json") if record.error else None,
        "source": record.source.model_dump(mode="json"),
        "checks": [c.model_dump(mode="json") for c in record.checks],
        "history": [h.model_dump(mode="json", by_alias=True) for h in record.history],
        "artifacts": artifacts,
    }

    def text() -> str:
        lines = [f"{record.id}  {record.state.value}  ({record.kind})",
                 f"  title:    {record.title}",
                 f"  repo:     {record.repo or '-'} -> {record.target or '-'}",
                 f"  from:     {record.agent or '-'} via {record.source.kind} "
                 f"({record.source.name})",
                 f"  attempts: {record.attempts}"]
        if record.applied_onto:
            lines.append(f"  applied onto: {record.applied_onto}")
        if record.landed_commit:
            lines.append(f"  landed:   {record.landed_commit}")
        if record.error:
            where = f" [{record.error.path}]" if record.error.path else ""
            lines.append(f"  error:    {record.error.code.value}{where}: {record.error.message}")
        for c in record.checks:
            status = "ok" if c.ok else ("timeout" if c.timed_out else f"exit {c.exit_code}")
            lines.append(f"  check {c.name}: {status} in {c.seconds:.2f} s ({c.artifact})")
        lines.append("  history:")
        for h in record.history:
            lines.append(f"    {h.at}  {h.from_.value if h.from_ else '-':>8} -> "
                         f"{h.to.value:<8} by {h.by}: {h.reason}")
        lines.append("  artifacts:")
        lines += [f"    {a['name']}: {a['path']}" for a in artifacts]
        return "\n".join(lines)

    _emit(args, data, text)
    return EXIT_OK


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    config_help = "configuration file (default ./hyperion.yaml, then $HYPERION_CONFIG)"
    common = argparse.ArgumentParser(add_help=False)
    # Accepted before or after the subcommand; SUPPRESS keeps a value given before it.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("text", "json"), default="text")

    parser = argparse.ArgumentParser(prog="hyperion", description="Gate automated changes into "
                                     "git repositories.")
    parser.add_argument("--version", action="version", version=f"hyperion {__version__}")
    parser.add_argument("--config", metavar="PATH", help=config_help)
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create a working setup in DIR")
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--repo", help="path of the git repository to gate (default: DIR if it is "
                   "one)")
    p.add_argument("--target", default="main", help="default target branch (default: main)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("config", parents=[common, fmt], help="print the effective configuration")
    p.add_argument("--check", action="store_true", help="only validate it")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("schema", parents=[common], help="print a JSON Schema")
    p.add_argument("name", choices=("change", "task", "config"))
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("validate", parents=[common, fmt],
                       help="run parse + schema + gate on files without queueing")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", parents=[common, fmt],
                       help="submit request files (like dropping them in the inbox)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p.add_argument("--once", action="store_true",
                   help="ingest what waits, process until nothing is ready or running, exit")
    p.add_argument("--workers", type=int, help="worker threads (default: config `workers`)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("approve", parents=[common, fmt], help="let a held request proceed")
    p.add_argument("id")
    p.add_argument("--by", help="who decides (default: the current user)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("deny", parents=[common, fmt], help="reject a held request")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.add_argument("--by", help="who decides (default: the current user)")
    p.set_defaults(func=cmd_deny)

    p = sub.add_parser("list", parents=[common, fmt], help="records, newest first")
    p.add_argument("--state")
    p.add_argument("--since", help="only records updated within this long, e.g. 2h, 30m, 7d")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", parents=[common, fmt], help="one record in full")
    p.add_argument("id")
    p.set_defaults(func=cmd_inspect)
    return parser


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"hyperion: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"hyperion: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
