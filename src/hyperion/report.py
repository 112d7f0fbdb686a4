"""Outcomes out: one apprise notification per terminal state.

apprise is imported only when the first notification is sent (it costs ~0.5 s to load its
plugins). A failed delivery is logged and never fails the request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from hyperion.config import Config
from hyperion.metrics import METRICS
from hyperion.records import Record, State

log = logging.getLogger("hyperion.report")

NOTIFY_TYPES = {
    State.LANDED: "success",
    State.FAILED: "failure",
    State.REJECTED: "failure",
    State.HELD: "warning",
    State.ROLLED_BACK: "info",
    State.CANCELLED: "info",
}


def render(record: Record) -> tuple[str, str]:
    """Title and body of the notification for a record's current state."""
    title = f"hyperion: {record.id} {record.state.value}"
    lines = [
        f"Request: {record.id} ({record.kind})",
        f"Title: {record.title}" if record.title else "",
        f"Repo: {record.repo or '-'} -> {record.target or '-'}",
        f"From: {record.agent}" if record.agent else "",
        f"State: {record.state.value}",
    ]
    if record.landed_commit:
        lines.append(f"Landed: {record.landed_commit}")
    if record.error is not None:
        lines.append(f"Error: {record.error.code.value}: {record.error.message}")
        if record.error.path:
            lines.append(f"Where: {record.error.path}")
    if record.state is State.HELD:
        if record.policy_rules:
            lines.append(f"Policy rules: {', '.join(record.policy_rules)}")
        lines.append(f"Decide: hyperion approve {record.id} --by NAME, or "
                     f"hyperion deny {record.id} --reason TEXT")
    lines.append(f"More: hyperion inspect {record.id}")
    return title, "\n".join(line for line in lines if line)


class Reporter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._apprise: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        if self._apprise is None:
            import apprise

            asset = apprise.AppriseAsset(
                plugin_paths=[str(p) for p in self.config.notify.plugin_paths])
            client = apprise.Apprise(asset=asset)
            for url in self.config.notify.urls:
                if not client.add(url):
                    log.error("notify: cannot use the configured URL #%d (unknown scheme or "
                              "malformed); fix notify.urls", self.config.notify.urls.index(url))
            self._apprise = client
        return self._apprise

    def system(self, title: str, body: str, notify_type: str) -> bool:
        """A notification about hyperion itself (not about one request)."""
        return self._deliver("-", title, body, notify_type)

    def notice(self, record: Record, text: str) -> bool:
        """An informational notification about a record that is not (yet) an outcome."""
        _, body = render(record)
        return self._send(record, f"hyperion: {record.id} {text[:120]}", f"{text}\n\n{body}",
                          "info")

    def outcome(self, record: Record) -> bool:
        """Notify about a record's (terminal or held) state. True when delivered (or no targets)."""
        if record.state not in NOTIFY_TYPES:
            return True
        title, body = render(record)
        return self._send(record, title, body, NOTIFY_TYPES[record.state])

    def _send(self, record: Record, title: str, body: str, notify_type: str) -> bool:
        return self._deliver(record.id, title, body, notify_type)

    def _deliver(self, request_id: str, title: str, body: str, notify_type: str) -> bool:
        if not self.config.notify.urls:
            return True
        with self._lock:
            try:
                client = self._client()
                ok = bool(client.notify(title=title, body=body, notify_type=notify_type))
            except Exception as exc:  # a notifier must never take the pipeline down
                METRICS.inc("hyperion_notification_failures_total")
                log.error("notify: delivery for %s raised %s", request_id,
                          type(exc).__name__, extra={"request_id": request_id})
                return False
        if not ok:
            METRICS.inc("hyperion_notification_failures_total")
            log.error("notify: delivery for %s failed on at least one target", request_id,
                      extra={"request_id": request_id})
        return ok
