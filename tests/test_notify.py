"""Notifications through the durable outbox: routing by event to tagged targets (a real SMTP
server and real HTTP receivers on 127.0.0.1), redelivery after an outage and a restart,
templates, `notify test`, and no secret in any message."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from conftest import BASE_FILES, Setup, make_repo, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Receiver:
    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    team, oncall = Receiver(free_port()), Receiver(free_port())
    team.up()
    oncall.up()
    yield team, oncall
    team.down()
    oncall.down()


@dataclass
class Mailbox:
    port: int
    messages: list[Any] = field(default_factory=list)


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


def routed_setup(tmp_path: Path, team: Receiver, oncall_url: str, extra: str = "") -> Setup:
    repo = make_repo(tmp_path / "demo", BASE_FILES)
    config = write_config(tmp_path, repo)
    text = config.read_text().replace("notify:\n  urls: []\n", f"""notify:
  urls:
    - {{url: "{team.url}", tags: [team]}}
    - {{url: "{oncall_url}", tags: [oncall]}}
  events:
    landed: [team]
    failed: [team, oncall]
    rejected: [team, oncall]
{extra}""")
    config.write_text(text)
    (tmp_path / "inbox").mkdir()
    return Setup(root=tmp_path, repo=repo, config=config, inbox=tmp_path / "inbox",
                 state=tmp_path / "state")


def test_events_are_routed_by_tag_and_escalations_reach_oncall_by_email(
        tmp_path: Path, receivers: tuple[Receiver, Receiver], smtp: Mailbox) -> None:
    team, _ = receivers
    mail = (f"mailto://127.0.0.1:{smtp.port}?from=hyperion@example.invalid"
            "&to=oncall@example.invalid")
    s = routed_setup(tmp_path, team, mail)
    # Apart, so that bad-1 fails its check in whatever order the two workers take them (two
    # edits of app.py conflict when one is applied on top of the other).
    s.drop("ok.json", s.request("good-1", {"docs/readme.txt": "x\n"}))
    s.drop("bad.json", s.request("bad-1", {"app.py": "BROKEN\n"}))
    assert s.cli("run", "--once").returncode == 0
    assert sorted(n["title"] for n in team.received) == ["hyperion: bad-1 failed",
                                                         "hyperion: good-1 landed"]
    deadline = time.monotonic() + 10
    while not smtp.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["Subject"] for m in smtp.messages] == ["hyperion: bad-1 failed"]
    body = "".join(part.get_payload(decode=True).decode() for part in smtp.messages[0].walk()
                   if not part.is_multipart())
    assert "check_failed" in body and "hyperion inspect bad-1" in body


def test_a_dead_endpoint_gets_its_message_once_after_it_returns_across_a_restart(
        tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> None:
    team, oncall = receivers
    team.down()
    s = routed_setup(tmp_path, team, oncall.url, extra="  retry_min_s: 0.2\n"
                                                      "  retry_max_s: 0.5\n")
    s.drop("ok.json", s.request("late-1", {"app.py": "VALUE = 3\n"}))
    out = s.cli("run", "--once")
    assert out.returncode == 0
    assert s.record("late-1")["state"] == "landed"          # landing did not wait
    assert team.received == []
    team.up()
    time.sleep(0.6)                                           # past the redelivery delay
    assert s.cli("run", "--once").returncode == 0             # a new process delivers it
    assert [n["title"] for n in team.received] == ["hyperion: late-1 landed"]
    assert s.cli("run", "--once").returncode == 0             # and never again
    assert len(team.received) == 1
    assert oncall.received == []                              # landed is not an escalation


def test_templates_shape_title_and_body(tmp_path: Path,
                                        receivers: tuple[Receiver, Receiver]) -> None:
    team, oncall = receivers
    s = routed_setup(tmp_path, team, oncall.url, extra=(
        "  templates:\n    landed: {title: 'LANDED $id on $target', "
        "body: '$title by $agent -> $landed_commit'}\n"))
    s.drop("ok.json", s.request("tpl-1", {"app.py": "VALUE = 4\n"}, title="Nice change"))
    assert s.cli("run", "--once").returncode == 0
    landed = s.record("tpl-1")["landed_commit"]
    assert team.received[0]["title"] == "LANDED tpl-1 on main"
    assert team.received[0]["message"] == f"Nice change by agent-1 -> {landed}"


def test_notify_test_reports_each_target(tmp_path: Path,
                                         receivers: tuple[Receiver, Receiver]) -> None:
    team, _ = receivers
    s = routed_setup(tmp_path, team, f"json://127.0.0.1:{free_port()}/nobody")
    out = s.cli("notify", "test", "--format", "json")
    assert out.returncode == 1
    results = json.loads(out.stdout)
    assert [r["ok"] for r in results] == [True, False]
    assert team.received[0]["title"] == "hyperion: test notification"


def test_no_secret_reaches_a_notification(setup: Setup, webhook: Any) -> None:
    token = "ghp_" + "Zx9Kq2Lm8Np4Rt6Vw1Yb3Cd5Fg7Hj0Ks2Lq4"
    request = setup.request("leak-1", {"app.py": "VALUE = 1\n"},
                            title="Rotate the token",
                            body=f"old token was {token}")
    setup.drop("leak.json", request)
    assert setup.cli("run", "--once").returncode == 0
    notes = webhook.wait_for(1)
    assert notes and token not in json.dumps(notes)
    assert token not in (setup.state / "audit.jsonl").read_text()


def test_a_burst_over_the_rate_limit_is_coalesced_into_one_digest(
        tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> None:
    team, oncall = receivers
    s = routed_setup(tmp_path, team, oncall.url, extra=(
        "  rate_limit:\n    team: {max: 2, per_s: 60}\n"))
    for i in range(5):
        s.drop(f"r{i}.json", s.request(f"burst-{i}", {"app.py": f"BROKEN = {i}\n"}))
    assert s.cli("run", "--once").returncode == 0
    titles = [n["title"] for n in team.received]
    assert len(titles) == 2, titles
    digest = next(n for n in team.received if "digest" in n["title"])
    assert digest["title"] == "hyperion: 4 notifications (digest)"
    assert digest["type"] == "failure"
    assert sum(f"burst-{i} failed" in digest["message"] for i in range(5)) == 4
    # A message goes to all its event's tags at once: the team's limit coalesced it for
    # on-call too (five pages become two).
    assert [n["title"] for n in oncall.received] == titles
    outbox = json.loads(s.cli("status", "--format", "json").stdout)
    assert outbox["records"] == {"failed": 5}
