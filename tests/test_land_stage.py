"""The worker's landing stage (land_stage.py), in-process on a real repository: the next
request is applied and checked on top of a commit that is still landing, and a commit that
does not land takes the ones built on it back to the real tip."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup, git

from hyperion import land_stage, landing
from hyperion.app import App
from hyperion.config import load_config
from hyperion.intake.inbox import Inbox
from hyperion.land_stage import Handed, LandStage
from hyperion.records import Record
from hyperion.worker import Worker


def _queued(setup: Setup, *ids: str) -> App:
    setup.config.write_text(setup.config.read_text().replace("workers: 2", "workers: 1"))
    for n, rid in enumerate(ids):
        setup.drop(f"{n}.json", setup.request(rid, {f"file-{rid}.txt": f"{rid}\n"}))
    app = App.open(load_config(str(setup.config)))
    Inbox(app).scan(wait=True)
    return app


def _trailers(repo: Path) -> list[str]:
    log = git(repo, "log", "--format=%(trailers:key=Hyperion-Request,valueonly)")
    return [line.strip() for line in log.splitlines() if line.strip()]


def test_the_next_request_is_checked_on_top_of_a_commit_still_landing(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _queued(setup, "first-1", "second-1")
    before = setup.main_sha()
    release = threading.Event()
    real_land = landing.RefLander.land

    def held_land(self: landing.RefLander, record: Record, *args: Any) -> None:
        if record.id == "first-1":
            assert release.wait(30)
        real_land(self, record, *args)

    monkeypatch.setattr(landing.RefLander, "land", held_land)
    worker = Worker(app, "w0", land_behind=True)
    try:
        assert worker.run_one() and worker.run_one()
        # Both were applied and checked, and the first has not landed yet.
        assert setup.main_sha() == before
        assert setup.record("first-1")["state"] == "running"
        release.set()
        assert worker.settle()
    finally:
        release.set()
        worker.close()
    one, two = setup.record("first-1"), setup.record("second-1")
    assert one["state"] == "landed" and two["state"] == "landed", (one, two)
    assert one["applied_onto"] == before
    assert two["applied_onto"] == one["landed_commit"]
    assert setup.main_sha() == two["landed_commit"]
    assert _trailers(setup.repo)[:2] == ["second-1", "first-1"]
    stored = app.records.get("second-1")
    assert stored is not None and stored.attempts == 1 and stored.races == 0


def test_when_a_commit_does_not_land_those_built_on_it_go_back_to_the_real_tip(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _queued(setup, "first-2", "second-2", "third-2")
    before = setup.main_sha()
    release = threading.Event()
    real_land = landing.RefLander.land
    refused: list[str] = []

    def refusing_land(self: landing.RefLander, record: Record, target: str,
                      *args: Any) -> None:
        if record.id == "first-2" and not refused:
            assert release.wait(30)
            refused.append(record.id)
            raise landing._moved(target)         # as if someone pushed meanwhile
        real_land(self, record, target, *args)

    monkeypatch.setattr(landing.RefLander, "land", refusing_land)
    worker = Worker(app, "w0", land_behind=True)
    try:
        assert worker.run_one() and worker.run_one()     # the second on top of the first
        release.set()
        # As run --once does: what the stage finishes queues the lost races again.
        while worker.run_one() or worker.settle():
            pass
    finally:
        release.set()
        worker.close()
    records = {rid: setup.record(rid) for rid in ("first-2", "second-2", "third-2")}
    assert all(r["state"] == "landed" for r in records.values()), records
    races = {rid: stored.races for rid in records if (stored := app.records.get(rid))}
    # The first lost its race; the second, built on it, lost its compare-and-swap and was
    # applied again on the real tip (the third too when it was built on the second before
    # the first's failure was known). Each landed once, on exactly what its checks saw.
    assert races["first-2"] == 1 and races["second-2"] == 1 and races["third-2"] <= 1
    trailers = _trailers(setup.repo)
    assert sorted(trailers[:3]) == ["first-2", "second-2", "third-2"]
    assert len(trailers) == len(set(trailers))
    chain = git(setup.repo, "rev-list", f"{before}..main").split()
    assert len(chain) == 3
    for record in records.values():
        parent = git(setup.repo, "rev-parse", f"{record['landed_commit']}^").strip()
        assert record["applied_onto"] == parent


def test_the_stage_lands_in_order_and_offers_the_last_pending_commit_as_the_tip() -> None:
    stage = LandStage("unit")
    gate, order = threading.Event(), []

    def land(name: str, ok: bool = True) -> Callable[[], bool]:
        def run() -> bool:
            assert gate.wait(30)
            order.append(name)
            return ok
        return run

    first = Handed("demo", "main", "c1")
    stage.hand(first, land("c1", ok=False))
    second = Handed("demo", "main", "c2", parent=first)
    stage.hand(second, land("c2"))
    stage.hand(Handed("demo", "other", "o1"), land("o1"))
    tip = stage.tip("demo", "main")
    assert tip is not None and tip.commit == "c2"
    gate.set()
    stage.wait_empty()
    stage.close()
    assert order == ["c1", "c2", "o1"]
    # Done: c1 failed, c2's link to it is dropped (a stream must not chain every commit).
    assert first.failed and not second.failed and second.parent is None
    assert stage.tip("demo", "main") is None and not stage.wait_empty()


def test_a_doomed_commit_is_not_offered_as_the_tip() -> None:
    stage = LandStage("unit")
    gate = threading.Event()
    failed = Handed("demo", "main", "c1")
    stage.hand(failed, lambda: False)
    assert stage.wait_empty()
    built_on_it = Handed("demo", "main", "c2", parent=failed)
    stage.hand(built_on_it, lambda: gate.wait(30))
    try:
        assert stage.tip("demo", "main") is None       # use the real tip instead
    finally:
        gate.set()
        stage.close()


def test_the_worker_waits_when_too_many_commits_are_still_to_land(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(land_stage, "MAX_AHEAD", 2)
    stage = LandStage("unit")
    gate = threading.Event()
    for n in range(2):
        stage.hand(Handed("demo", "main", f"c{n}"), lambda: gate.wait(30))
    third = threading.Thread(target=stage.hand,
                             args=(Handed("demo", "main", "c2"), lambda: True), daemon=True)
    third.start()
    third.join(0.5)
    assert third.is_alive()                  # held back until a land finishes
    gate.set()
    third.join(30)
    assert not third.is_alive()
    stage.close()


def test_a_closed_stage_lands_what_is_handed_to_it_later() -> None:
    # run --once drains again when retries come due, with the same workers.
    stage = LandStage("unit")
    landed: list[str] = []
    stage.hand(Handed("demo", "main", "c1"), lambda: landed.append("c1") is None)
    stage.close()
    stage.hand(Handed("demo", "main", "c2"), lambda: landed.append("c2") is None)
    stage.wait_empty()
    stage.close()
    assert landed == ["c1", "c2"]
