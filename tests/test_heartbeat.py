"""Leases in hand are kept alive by one thread per process (heartbeat.py), whatever their
number; a stopped heartbeat renews nothing more, and a lease lost meanwhile is let go."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import hyperion.heartbeat as heartbeat_module
from hyperion.heartbeat import Heartbeat
from hyperion.spool import Spool


def _held(tmp_path: Path, count: int) -> tuple[SimpleNamespace, list[Heartbeat]]:
    spool = Spool(tmp_path / "spool")
    app = SimpleNamespace(spool=spool)
    beats = []
    for n in range(count):
        spool.put(f"r-{n}", b"{}")
        lease = spool.lease("w0", ttl_s=0.6)
        assert lease is not None
        beats.append(Heartbeat(app, lease).__enter__())  # type: ignore[arg-type]
    return app, beats


def test_many_leases_are_renewed_by_one_thread_until_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat_module, "LEASE_TTL_S", 0.6)     # renewed every 0.2 s
    before = {t.name for t in threading.enumerate()}
    app, beats = _held(tmp_path, 20)
    started = [t for t in threading.enumerate() if t.name not in before]
    assert [t.name for t in started] in ([], ["heartbeats"])   # at most the one keeper
    first = [b.lease.expires_at for b in beats]
    time.sleep(1.0)                                # past the TTL they were leased with
    assert all(b.lease.expires_at > f for b, f in zip(beats, first, strict=True))
    assert app.spool.sweep() == 0                  # none expired: all still held
    stopped = [b.stop() for b in beats]
    time.sleep(0.5)
    # Nothing renewed after stop(): the lease stop() returned is still the one to close.
    for lease in stopped:
        app.spool.ack(lease)
    assert [t.name for t in threading.enumerate() if t.name == "heartbeats"] == ["heartbeats"]


def test_a_lease_lost_meanwhile_is_logged_and_let_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(heartbeat_module, "LEASE_TTL_S", 0.3)
    app, (beat,) = _held(tmp_path, 1)
    app.spool.ack(beat.lease)                      # closed behind the heartbeat's back
    with caplog.at_level(logging.ERROR, logger="hyperion.worker"):
        deadline = time.monotonic() + 5
        while not any("was lost" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert beat.stop() is beat.lease
