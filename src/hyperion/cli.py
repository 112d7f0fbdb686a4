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
from typing import TYPE_CHECKING, Any

from hyperion import __version__

if TYPE_CHECKING:   # pydantic and yaml cost ~130 ms: `--version` and `--help` skip them
    from hyperion.config import Config

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
    from hyperion.config import load_config

    return load_config(args.config)


def _policy(config: Config) -> Any:
    from hyperion.config import ConfigError
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
    from hyperion.config import redact_url

    data["notify"]["urls"] = [
        redact_url(u) if isinstance(u, str) else {**u, "url": redact_url(u["url"])}
        for u in data["notify"]["urls"]]
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from hyperion.schemas import schema_for

    print(json.dumps(schema_for(args.name), indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from hyperion.errors import GateError
    from hyperion.gate.policy import check_approver
    from hyperion.gate.review import review
    from hyperion.requests import ApprovalRequest, claimed_id, incoming_from_json, load_json

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
            entry["kind"] = kind if kind in ("change", "task", "approval") else None
            incoming = incoming_from_json(obj)
            if isinstance(incoming, ApprovalRequest):
                check_approver(policy, incoming.by)
            else:
                review(config, policy, incoming, obj)
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


def cmd_policy_test(args: argparse.Namespace) -> int:
    from hyperion.config import Config, ConfigError, find_config
    from hyperion.gate.policy import load_policy
    from hyperion.policytest import FixtureError, render_text, run_fixtures

    if args.policy:
        # The configuration is optional here: only its request limits are used.
        found = args.config or (str(find_config(None)) if find_config(None).exists() else None)
        config = _config(args) if found else Config()
        try:
            policy = load_policy(Path(args.policy))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        name = args.policy
    else:
        config = _config(args)
        policy = _policy(config)
        name = str(config.policy) if config.policy else "the built-in default (allow all)"
    try:
        results = run_fixtures(Path(args.dir), policy, config)
    except FixtureError as exc:
        raise UsageError(str(exc)) from None
    failed = sum(1 for r in results if not r.ok)
    data = {"policy": name, "passed": len(results) - failed, "failed": failed,
            "cases": [r.as_json() for r in results]}
    _emit(args, data, lambda: render_text(results, name))
    return EXIT_PROBLEM if failed else EXIT_OK


def cmd_sign_payload(args: argparse.Namespace) -> int:
    from hyperion.errors import GateError
    from hyperion.gate.signatures import canonical_payload
    from hyperion.requests import load_json

    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"{args.file}: cannot read: {exc.strerror}") from None
    try:
        obj = load_json(data, max_bytes=64 * 1024 * 1024, max_depth=512)
        if not isinstance(obj, dict):
            raise UsageError(f"{args.file}: a request is a JSON object")
        payload = canonical_payload(obj)
    except (GateError, ValueError) as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    sys.stdout.buffer.write(payload)
    sys.stdout.flush()
    return EXIT_OK


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


def _configure_logging(args: argparse.Namespace, config: Config) -> None:
    from hyperion.logs import setup_logging

    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format)


def cmd_requeue(args: argparse.Namespace) -> int:
    import getpass

    from hyperion.app import App
    from hyperion.intake.requeue import CannotRequeue, requeue

    app = App.open(_config(args))
    try:
        record = requeue(app, args.id, by=args.by or getpass.getuser(), reason=args.reason)
    except CannotRequeue as exc:
        print(f"hyperion: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    _emit(args, record_summary(record), lambda: f"{record.id} {record.state.value}" + (
        f": {record.error.code.value}: {record.error.message}" if record.error else ""))
    return EXIT_PROBLEM if record.state.value in ("rejected", "failed") else EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    import getpass

    from hyperion.app import App
    from hyperion.intake.accept import accept
    from hyperion.records import State
    from hyperion.rollback import RollbackRefused, rollback_request, source_for

    app = App.open(_config(args))
    by = args.by or getpass.getuser()
    try:
        _, data = rollback_request(app, args.id, by=by, reason=args.reason)
    except RollbackRefused as exc:
        print(f"hyperion: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    outcome = accept(app, data, source_for(args.id), by=by)
    result = {"id": outcome.id, "rollback_of": args.id, "state": outcome.state.value,
              "error": outcome.error.model_dump(mode="json", exclude={"detail"})
              if outcome.error else None}

    def text() -> str:
        line = f"{outcome.id} {outcome.state.value} (reverts {args.id})"
        if outcome.error:
            line += f": {outcome.error.code.value}: {outcome.error.message}"
        return line

    _emit(args, result, text)
    return EXIT_PROBLEM if outcome.state in (State.REJECTED, State.FAILED) else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from hyperion.app import App
    from hyperion.daemon import run_forever, run_once

    config = _config(args)
    _configure_logging(args, config)
    app = App.open(config)
    app.dry_run = args.dry_run
    workers = args.workers or config.workers
    if args.once:
        run_once(app, workers=workers)
    else:
        run_forever(app, workers=workers)
    return EXIT_OK


def _pidfile(config: Config) -> Path:
    return config.state_dir / "hyperion.pid"


def cmd_start(args: argparse.Namespace) -> int:
    """Detach with python-daemon; answer only when the daemon is ready (or failed to start)."""
    import os

    from hyperion.app import App
    from hyperion.instances import held_pid

    config = _config(args)
    App.open(config)                      # a bad config or policy exits 2 here, attached
    running = held_pid(_pidfile(config))
    if running is not None:
        print(f"hyperion: already running (pid {running}) on {config.state_dir}",
              file=sys.stderr)
        return EXIT_PROBLEM
    read_end, write_end = os.pipe()
    if os.fork() == 0:                    # the child becomes the daemon
        os.close(read_end)
        code = _detached(args, config, write_end)
        os._exit(code)
    os.close(write_end)
    answer = _read_answer(read_end, timeout=60)
    if answer.startswith("ready"):
        print(f"hyperion: started (pid {answer.split()[1]}); log: "
              f"{config.state_dir / 'hyperion.log'}")
        return EXIT_OK
    print(f"hyperion: did not start: {answer or 'no answer from the daemon (see its log)'}",
          file=sys.stderr)
    return EXIT_PROBLEM


def _read_answer(fd: int, timeout: float) -> str:
    import os
    import select

    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                break
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _detached(args: argparse.Namespace, config: Config, answer_fd: int) -> int:
    import os

    import daemon as python_daemon  # python-daemon

    from hyperion.app import App
    from hyperion.daemon import Daemon
    from hyperion.instances import AlreadyRunning, PidFile

    log_path = config.state_dir / "hyperion.log"
    log_file = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def answer(text: str) -> None:
        try:
            os.write(answer_fd, (text + "\n").encode())
            os.close(answer_fd)
        except OSError:
            pass

    context = python_daemon.DaemonContext(
        working_directory="/", umask=0o022, files_preserve=[answer_fd, log_file],
        stdout=log_file, stderr=log_file, signal_map={})
    with context:
        pidfile = PidFile(_pidfile(config))
        try:
            pidfile.acquire()
        except AlreadyRunning as exc:
            answer(f"error: {exc}")
            return EXIT_PROBLEM
        try:
            _configure_logging(args, config)
            app = App.open(config)
            instance = Daemon(app, workers=args.workers or config.workers,
                              on_ready=lambda: answer(f"ready {os.getpid()}"))
            instance.install_signals()
            instance.run()
        except Exception as exc:
            logging.getLogger("hyperion").exception("the daemon failed")
            answer(f"error: {type(exc).__name__}: {exc}")
            return EXIT_PROBLEM
        finally:
            pidfile.release()
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    import os
    import signal

    from hyperion.instances import held_pid

    config = _config(args)
    pid = held_pid(_pidfile(config))
    if pid is None:
        print("hyperion: not running")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    timeout = args.timeout if args.timeout is not None else config.drain_timeout_s + 60
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if held_pid(_pidfile(config)) is None:
            print(f"hyperion: stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.1)
    print(f"hyperion: pid {pid} is still draining after {timeout:g} s", file=sys.stderr)
    return EXIT_PROBLEM


def cmd_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from hyperion.instances import held_pid, live
    from hyperion.records import RecordStore
    from hyperion.spool import Spool

    config = _config(args)
    state = config.state_dir
    daemons = live(state) if state.is_dir() else []
    records = RecordStore(state).all() if state.is_dir() else []
    by_state = Counter(r.state.value for r in records)
    events: list[dict[str, Any]] = []
    audit = state / "audit.jsonl"
    if audit.exists():
        for line in audit.read_text(encoding="utf-8").splitlines()[-10:]:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    queue = Spool(state / "spool").counts() if state.is_dir() else {}
    recent = list(reversed(events))
    first = daemons[0] if daemons else {}
    detached = held_pid(_pidfile(config)) if state.is_dir() else None
    data: dict[str, Any] = {
        "pid": detached or first.get("pid"),
        "running": bool(daemons),
        "uptime_s": first.get("uptime_s"),
        "state_dir": str(state),
        "detached_pid": detached,
        "daemons": daemons,
        "queue": queue,
        "records": dict(sorted(by_state.items())),
        "recent": recent,
    }

    def text() -> str:
        lines = [f"state_dir: {state}"]
        if not daemons:
            lines.append("daemon:    not running")
        for d in daemons:
            lines.append(f"daemon:    pid {d.get('pid')} on {d.get('host')}, up "
                         f"{d.get('uptime_s', 0):.0f} s, {d.get('workers_busy', 0)}/"
                         f"{d.get('workers')} workers busy")
        lines.append("queue:     " + ", ".join(f"{k} {v}" for k, v in queue.items()))
        lines.append("records:   " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items()))
                                      or "none"))
        if events:
            lines.append("recent:")
            lines += [f"  {e.get('at')}  {e.get('id')}  {e.get('from') or '-'} -> "
                      f"{e.get('to')}  {e.get('reason', '')[:80]}" for e in recent]
        return "\n".join(lines)

    _emit(args, data, text)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from hyperion.doctor import diagnose

    findings = diagnose(_config(args), send_test=args.notify)
    healthy = all(f.ok for f in findings)
    data = {"ok": healthy, "checks": [{"name": f.name, "ok": f.ok, "message": f.message}
                                      for f in findings]}
    _emit(args, data, lambda: "\n".join(
        f"{'ok  ' if f.ok else 'FAIL'}  {f.name}: {f.message}" for f in findings))
    return EXIT_OK if healthy else EXIT_PROBLEM


def cmd_notify_test(args: argparse.Namespace) -> int:
    from hyperion.doctor import test_targets

    config = _config(args)
    results = test_targets(config, send=True)
    data = [{"target": r.target, "ok": r.ok, "message": r.message} for r in results]
    _emit(args, data, lambda: "\n".join(
        f"{'ok  ' if r.ok else 'FAIL'}  {r.target}: {r.message}" for r in results)
        or "no notification targets configured")
    return EXIT_OK if all(r.ok for r in results) else EXIT_PROBLEM


def cmd_top(args: argparse.Namespace) -> int:
    from hyperion.top import run_top

    return run_top(_config(args), state_filter=args.state)


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
        "applied_onto": record.applied_onto, "apply_method": record.apply_method,
        "landed_ref": record.landed_ref, "result_commit": record.result_commit,
        "rolled_back_by": record.rolled_back_by, "timings": record.timings,
        "error": record.error.model_dump(mode="json") if record.error else None,
        "source": record.source.model_dump(mode="json"),
        "checks": [c.model_dump(mode="json") for c in record.checks],
        "iterations": [i.model_dump(mode="json") for i in record.iterations],
        "waits": record.waits,
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
            how = f" ({record.apply_method})" if record.apply_method else ""
            lines.append(f"  applied onto: {record.applied_onto}{how}")
        if record.landed_commit:
            where = f" on {record.landed_ref}" if record.landed_ref else ""
            lines.append(f"  landed:   {record.landed_commit}{where}")
        if record.result_commit:
            lines.append(f"  verified: {record.result_commit} (dry run, not landed)")
        if record.rolled_back_by:
            lines.append(f"  rolled back by: {record.rolled_back_by}")
        if record.timings:
            steps = ", ".join(f"{k} {v:.2f} s" for k, v in record.timings.items())
            lines.append(f"  timings:  {steps}")
        if record.error:
            where = f" [{record.error.path}]" if record.error.path else ""
            lines.append(f"  error:    {record.error.code.value}{where}: {record.error.message}")
        for c in record.checks:
            status = "ok" if c.ok else ("timeout" if c.timed_out else f"exit {c.exit_code}")
            lines.append(f"  check {c.name}: {status} in {c.seconds:.2f} s ({c.artifact})")
        for i in record.iterations:
            lines.append(f"  iteration {i.number}: {i.outcome} in {i.seconds:.2f} s, "
                         f"{i.files} file(s) +{i.added} -{i.removed} ({i.transcript})")
        lines.append("  history:")
        for h in record.history:
            lines.append(f"    {h.at}  {h.from_.value if h.from_ else '-':>8} -> "
                         f"{h.to.value:<8} by {h.by}: {h.reason}")
        lines.append("  artifacts:")
        lines += [f"    {a['name']}: {a['path']}" for a in artifacts]
        return "\n".join(lines)

    _emit(args, data, text)
    return EXIT_OK


def cmd_hook_pre_receive(args: argparse.Namespace) -> int:
    from hyperion.hook import hook_git_dir, pre_receive
    from hyperion.intake.git_objects import quarantine_env

    config = _config(args)
    try:
        refusals = pre_receive(config, hook_git_dir(), sys.stdin.read().splitlines(),
                               quarantine_env())
    except Exception as exc:  # a gate that cannot judge refuses rather than lets through
        print(f"hyperion: the push could not be checked ({type(exc).__name__}: "
              f"{str(exc)[:300]}); refused", file=sys.stderr)
        return EXIT_PROBLEM
    for refusal in refusals:
        print(str(refusal), file=sys.stderr)
    return EXIT_PROBLEM if refusals else EXIT_OK


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
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="default: the config's log.level (INFO)")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="default: the config's log.format (text)")
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
    p.add_argument("name", choices=("change", "task", "approval", "config", "policy"))
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("validate", parents=[common, fmt],
                       help="run parse + schema + gate on files without queueing")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("policy", help="policy tools")
    policy_sub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    q = policy_sub.add_parser("test", parents=[common, fmt],
                              help="run fixture requests in DIR against the policy and compare "
                              "with their expected decisions")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--policy", metavar="FILE",
                   help="the policy to test (default: the configuration's `policy`)")
    q.set_defaults(func=cmd_policy_test)

    p = sub.add_parser("sign-payload", parents=[common],
                       help="print the canonical JSON of a request: the bytes to sign with "
                       "ssh-keygen -Y sign -n hyperion")
    p.add_argument("file", metavar="FILE", help="a request file, or - for standard input")
    p.set_defaults(func=cmd_sign_payload)

    p = sub.add_parser("submit", parents=[common, fmt],
                       help="submit request files (like dropping them in the inbox)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p.add_argument("--once", action="store_true",
                   help="ingest what waits, process until nothing is ready or running, exit")
    p.add_argument("--workers", type=int, help="worker threads (default: config `workers`)")
    p.add_argument("--dry-run", action="store_true",
                   help="apply and check every request, land none (they end `verified`)")
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

    p = sub.add_parser("start", parents=[common], help="run the daemon detached")
    p.add_argument("--workers", type=int, help="worker threads (default: config `workers`)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", parents=[common], help="stop the detached daemon (drains)")
    p.add_argument("--timeout", type=float, help="seconds to wait for the drain "
                   "(default: drain_timeout_s + 60)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", parents=[common, fmt],
                       help="daemons, queue depths and recent events")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("doctor", parents=[common, fmt],
                       help="check git, repos, state dir, inotify, policy, notifications")
    p.add_argument("--notify", action="store_true", help="also send a test notification")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("notify", help="notification tools")
    notify_sub = p.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    q = notify_sub.add_parser("test", parents=[common, fmt],
                              help="send a test message through every target; print each result")
    q.set_defaults(func=cmd_notify_test)

    p = sub.add_parser("hook", help="git hooks for the git inbox")
    hook_sub = p.add_subparsers(dest="hook_command", required=True, metavar="HOOK")
    q = hook_sub.add_parser("pre-receive", parents=[common], help="refuse pushed requests the "
                            "gate refuses (install as a repository's pre-receive hook)")
    q.set_defaults(func=cmd_hook_pre_receive)

    p = sub.add_parser("top", parents=[common], help="a live view of the queue and events")
    p.add_argument("--state", help="show only records in this state (f cycles while running)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("requeue", parents=[common, fmt],
                       help="send a failed or rejected record back through the gate")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.add_argument("--by", help="who requeues (default: the current user)")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("rollback", parents=[common, fmt],
                       help="revert a landed request on its target, through the pipeline")
    p.add_argument("id")
    p.add_argument("--reason", default="rolled back by hand", help="why (goes in the commit)")
    p.add_argument("--by", help="who rolls back (default: the current user)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("list", parents=[common, fmt], help="records, newest first")
    p.add_argument("--state")
    p.add_argument("--since", help="only records updated within this long, e.g. 2h, 30m, 7d")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", parents=[common, fmt], help="one record in full")
    p.add_argument("id")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from hyperion.config import ConfigError
    from hyperion.logs import setup_logging

    setup_logging(args.log_level or "INFO", args.log_format or "text")
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
