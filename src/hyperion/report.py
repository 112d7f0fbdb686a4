"""Outcomes out: notifications, written to a durable outbox and delivered through apprise.

Every notification is first a message in state_dir/outbox/, which is a :class:`Spool` like the
request queue (one storage contract): its key makes it one message per record state, and
delivery uses lease, ack, retry (jittered backoff) and bury (expired). A slow or dead endpoint
therefore never delays landing, and a message survives restarts until delivered or expired.
Every title and body passes the secret scanner's redaction before it is stored.

apprise is imported only when a message is delivered (it costs ~0.5 s to load its plugins).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import string
import threading
import time
from typing import Any

from pydantic import BaseModel

from hyperion.config import Config, NotifyConfig, redact_url
from hyperion.errors import Code
from hyperion.gate.secrets import redact
from hyperion.metrics import METRICS
from hyperion.records import Record, State
from hyperion.result_notes import ResultNotes
from hyperion.spool import Lease, LeaseLost, Spool, lease_parsed

log = logging.getLogger("hyperion.report")

NOTIFY_TYPES = {
    State.LANDED: "success",
    State.FAILED: "failure",
    State.REJECTED: "failure",
    State.HELD: "warning",
    State.ROLLED_BACK: "info",
    State.CANCELLED: "info",
    State.VERIFIED: "success",
}
# Plain URLs carry this tag so that routed events (tag=[...]) still reach them.
EVERY_EVENT_TAG = "hyperion-every-event"
TAIL_LINES = 20
BATCH = 200   # messages taken from the outbox at once


class Message(BaseModel):
    key: str
    event: str
    title: str
    body: str
    notify_type: str
    tags: list[str]
    request_id: str | None
    created_at: float


def fields(record: Record) -> dict[str, str]:
    """What a template may use: $id, $title, $state, ... (all strings)."""
    error = record.error
    tail = ""
    failed_check = next((c for c in reversed(record.checks) if not c.ok), None)
    if failed_check is not None and failed_check.tail:
        tail = "\n".join(failed_check.tail.rstrip().splitlines()[-TAIL_LINES:])
    return {
        "id": record.id, "kind": record.kind, "title": record.title, "state": record.state.value,
        "repo": record.repo or "-", "target": record.target or "-", "agent": record.agent or "-",
        "attempts": str(record.attempts),
        "error_code": error.code.value if error else "", "error_message":
        error.message if error else "", "error_path": (error.path or "") if error else "",
        "landed_commit": record.landed_commit or "", "check_tail": tail,
        "policy_rules": ", ".join(record.policy_rules),
        "inspect": f"hyperion inspect {record.id}",
        "iterations": str(len(record.iterations)),
        "feedback": record.iterations[-1].feedback_tail.rstrip() if record.iterations else "",
    }


def render(record: Record) -> tuple[str, str]:
    """The default title and body for a record's current state."""
    f = fields(record)
    title = f"hyperion: {record.id} {record.state.value}"
    lines = [
        f"Request: {f['id']} ({f['kind']})",
        f"Title: {f['title']}" if record.title else "",
        f"Repo: {f['repo']} -> {f['target']}",
        f"From: {f['agent']}" if record.agent else "",
        f"State: {f['state']}",
    ]
    if record.landed_commit:
        lines.append(f"Landed: {record.landed_commit}")
    if record.error is not None:
        lines.append(f"Error: {f['error_code']}: {f['error_message']}")
        if record.error.path:
            lines.append(f"Where: {record.error.path}")
    if f["feedback"] and record.state is State.FAILED:
        # A task that failed or got stuck escalates with what its harness was last told.
        lines.append(f"Iterations: {f['iterations']}")
        lines.append(f"Last feedback to the harness:\n{f['feedback']}")
    elif f["check_tail"]:
        lines.append(f"Check output (last lines):\n{f['check_tail']}")
    if record.state is State.HELD:
        if record.policy_rules:
            lines.append(f"Policy rules: {f['policy_rules']}")
        lines.append(f"Decide: hyperion approve {record.id} --by NAME, or "
                     f"hyperion deny {record.id} --reason TEXT")
    lines.append(f"More: {f['inspect']}")
    return title, "\n".join(line for line in lines if line)


def _key(record_id: str, *parts: str) -> str:
    # Spool ids are at most 128 characters: long record ids are shortened with a hash.
    rid = record_id if len(record_id) <= 80 else \
        f"{record_id[:60]}-{hashlib.sha256(record_id.encode()).hexdigest()[:12]}"
    return ".".join((rid, *parts))


class Reporter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.notify: NotifyConfig = config.notify
        self.outbox = Spool(config.state_dir / "outbox")
        self.notes = ResultNotes(config)
        self._client: Any = None
        self._lock = threading.Lock()
        self._sent: dict[str, list[float]] = {}   # per rate-limited tag: recent send times

    # ---------------------------------------------------------------- writing messages
    def outcome(self, record: Record) -> bool:
        """Queue the one notification for a record's current (terminal or held) state.
        False when there is nothing to send or it was queued before. A terminal state also
        queues its result note (result_notes)."""
        noted = self.notes.queue(record)
        if record.state not in NOTIFY_TYPES:
            return noted
        event = record.state.value
        if record.state is State.FAILED and record.error is not None and \
                record.error.code is Code.STUCK:
            event = "stuck"      # routed and templated on its own; sent as a failure
        title, body = self._render(event, record)
        key = _key(record.id, str(len(record.history)), event)
        return self._queue(key, event, title, body, NOTIFY_TYPES[record.state],
                           record.id) or noted

    def notice(self, record: Record, text: str) -> bool:
        """An informational notification about a record that is not (yet) an outcome."""
        _, body = render(record)
        return self._queue(_key(record.id, str(len(record.history)), "notice"), "notice",
                           f"hyperion: {record.id}: {text[:120]}", f"{text}\n\n{body}", "info",
                           record.id)

    def system(self, title: str, body: str, notify_type: str) -> bool:
        """A notification about hyperion itself (not about one request)."""
        key = f"system.{time.time_ns()}.{secrets.token_hex(4)}"
        return self._queue(key, "system", title, body, notify_type, None)

    def _render(self, event: str, record: Record) -> tuple[str, str]:
        title, body = render(record)
        template = self.notify.templates.get(event)  # type: ignore[call-overload]
        if template is not None:
            values = fields(record)
            if template.title:
                title = string.Template(template.title).safe_substitute(values)
            if template.body:
                body = string.Template(template.body).safe_substitute(values)
        return title, body

    def _queue(self, key: str, event: str, title: str, body: str, notify_type: str,
               request_id: str | None) -> bool:
        if not self.notify.urls and self.notify.config is None:
            return False
        tags = list(self.notify.events.get(event, []))  # type: ignore[call-overload]
        message = Message(key=key, event=event, title=redact(title), body=redact(body),
                          notify_type=notify_type, tags=tags, request_id=request_id,
                          created_at=time.time())
        return self.outbox.put(key, message.model_dump_json().encode())

    # ---------------------------------------------------------------- delivering
    def deliver_ready(self, owner: str, *, stop: threading.Event | None = None) -> int:
        """Deliver every message that is due now; returns how many were delivered.

        All ready messages are taken at once, so that a burst over a tag's rate limit can go
        out as one digest."""
        delivered = self.notes.deliver_ready(owner)
        while stop is None or not stop.is_set():
            batch = lease_parsed(self.outbox, owner, BATCH, Message.model_validate_json,
                                 lambda lease: self.outbox.bury(lease, "unreadable message"))
            if not batch:
                return delivered
            groups: dict[tuple[str, ...], list[tuple[Lease, Message]]] = {}
            for item in batch:
                groups.setdefault(tuple(item[1].tags), []).append(item)
            for tags, items in groups.items():
                delivered += self._deliver_group(tags, items)
        return delivered

    def _deliver_group(self, tags: tuple[str, ...],
                       items: list[tuple[Lease, Message]]) -> int:
        limit, window_ends = self._allowance(tags)
        if limit is None or len(items) <= limit:
            return sum(self._deliver_one(lease, message) for lease, message in items)
        singles, rest = items[:max(0, limit - 1)], items[max(0, limit - 1):]
        delivered = sum(self._deliver_one(lease, message) for lease, message in singles)
        if limit == 0:
            # The window is used up: hold the burst, durably, until it ends.
            for lease, message in rest:
                self._release(lease, message, max(0.1, window_ends - time.time()), "rate")
            return delivered
        digest = _digest(tags, [m for _, m in rest])
        if self.send(digest):
            self._count(tags)
            for lease, _ in rest:
                self._close(lease, ok=True)
            return delivered + len(rest)
        for lease, message in rest:
            self._failed(lease, message)
        return delivered

    def _allowance(self, tags: tuple[str, ...]) -> tuple[int | None, float]:
        """How many messages for these tags may go out now (None: no limit), and when the
        current window of the tightest limit ends."""
        now = time.time()
        allowed: int | None = None
        ends = now
        for tag in tags or ("*",):
            limit = self.notify.rate_limit.get(tag)
            if limit is None:
                continue
            sent = [t for t in self._sent.get(tag, []) if t > now - limit.per_s]
            self._sent[tag] = sent
            left = max(0, limit.max - len(sent))
            if allowed is None or left < allowed:
                allowed = left
                ends = (sent[0] + limit.per_s) if sent else now
        return allowed, ends

    def _count(self, tags: tuple[str, ...]) -> None:
        now = time.time()
        for tag in tags or ("*",):
            if tag in self.notify.rate_limit:
                self._sent.setdefault(tag, []).append(now)

    def _deliver_one(self, lease: Lease, message: Message) -> int:
        if self.send(message):
            self._count(tuple(message.tags))
            self._close(lease, ok=True)
            return 1
        self._failed(lease, message)
        return 0

    def _failed(self, lease: Lease, message: Message) -> None:
        METRICS.inc("hyperion_notification_failures_total")
        age = time.time() - message.created_at
        if age > self.notify.expire_h * 3600:
            log.error("notify: giving up on %s after %.0f h", message.key, age / 3600,
                      extra={"request_id": message.request_id or "-"})
            self._close(lease, ok=False)
            return
        delay = min(self.notify.retry_max_s, self.notify.retry_min_s * 2 ** lease.attempts)
        self._release(lease, message, delay * random.uniform(0.5, 1.0), "delivery failed")

    def _release(self, lease: Lease, message: Message, delay_s: float, why: str) -> None:
        try:
            self.outbox.retry(lease, delay_s, why)
        except LeaseLost:
            log.warning("notify: lost the lease of %s", message.key)

    def _close(self, lease: Lease, *, ok: bool) -> None:
        try:
            if ok:
                self.outbox.ack(lease)
            else:
                self.outbox.bury(lease, "expired")
        except LeaseLost:
            log.warning("notify: lost the lease of %s", lease.id)

    def send(self, message: Message) -> bool:
        """One delivery attempt through apprise; True when every matching target took it."""
        with self._lock:
            try:
                client = self._apprise()
                from apprise.common import MATCH_ALL_TAG

                # An explicit tag=None would mean "untagged targets only" to apprise.
                tags = [*message.tags, EVERY_EVENT_TAG] if message.tags else MATCH_ALL_TAG
                result = client.notify(title=message.title, body=message.body,
                                       notify_type=message.notify_type, tag=tags)
                ok = bool(result)
            except Exception as exc:  # a notifier must never take the pipeline down
                log.error("notify: delivery of %s raised %s", message.key, type(exc).__name__,
                          extra={"request_id": message.request_id or "-"})
                return False
        if not ok:
            log.warning("notify: delivery of %s failed; it will be retried", message.key,
                        extra={"request_id": message.request_id or "-"})
        return ok

    def _apprise(self) -> Any:
        if self._client is None:
            self._client = build_client(self.notify)
        return self._client


def _digest(tags: tuple[str, ...], messages: list[Message]) -> Message:
    """One message standing for a burst of them."""
    worst = "failure" if any(m.notify_type == "failure" for m in messages) else (
        "warning" if any(m.notify_type == "warning" for m in messages) else "info")
    parts = [f"- {m.title}" for m in messages]
    parts.append("")
    parts += [f"== {m.title}\n{m.body}\n" for m in messages]
    return Message(key="digest", event="digest", notify_type=worst, tags=list(tags),
                   title=f"hyperion: {len(messages)} notifications (digest)",
                   body="\n".join(parts)[:60000], request_id=None, created_at=time.time())


def build_client(notify: NotifyConfig, *, only: int | None = None) -> Any:
    """An apprise client for the configured targets (or just target number ``only``)."""
    import apprise

    asset = apprise.AppriseAsset(plugin_paths=[str(p) for p in notify.plugin_paths])
    client = apprise.Apprise(asset=asset)
    for i, target in enumerate(notify.targets()):
        if only is not None and i != only:
            continue
        tags = target.tags or [EVERY_EVENT_TAG]
        if not client.add(target.url, tag=tags):
            log.error("notify: cannot use target #%d %s (unknown scheme or malformed); fix "
                      "notify.urls", i, redact_url(target.url))
    if notify.config is not None and only is None:
        config = apprise.AppriseConfig(asset=asset)
        if not config.add(os.fspath(notify.config)):
            log.error("notify: cannot read the apprise config %s", notify.config)
        client.add(config)
    return client
