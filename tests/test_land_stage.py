"""The landing stage (land_stage.py), in-process on a real repository: the next request is
applied and checked on top of a commit still being checked or landed, by the same worker or
another, and a commit that does not land takes the ones built on it back to the real tip."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup, git

from hyperion import land_stage, landing
from hyperion.app import App
from hyperion.config import load_config
from hyperion.intake.inbox import Inbox
from hyperion.land_stage import LandStage, Place
from hyperion.records import Record
from hyperion.worker import Worker

#: A check that says it started, waits for the test's word, and fails on a bad.txt.
GATED_CHECK = """\
import os, pathlib, sys, time
pathlib.Path({markers!r}, str(os.getpid())).write_text("")
deadline = time.time() + 60
while not pathlib.Path({release!r}).exists() and time.time() < deadline:
    time.sleep(0.02)
sys.exit(1 if pathlib.Path("bad.txt").exists() else 0)
"""


def _gated(setup: Setup) -> tuple[Path, Path]:
    """Use GATED_CHECK; returns its markers folder and the release file."""
    markers, release = setup.root / "markers", setup.root / "release"
    markers.mkdir()
    script = setup.root / "gated_check.py"
    script.write_text(GATED_CHECK.format(markers=str(markers), release=str(release)))
    setup.config.write_text(setup.config.read_text().replace('"check.py"',
                                                             json.dumps(str(script))))
    return markers, release


def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _queued(setup: Setup, *ids: str, edits: dict[str, dict[str, str]] | None = None) -> App:
    setup.config.write_text(setup.config.read_text().replace("workers: 2", "workers: 1"))
    for n, rid in enumerate(ids):
        files = (edits or {}).get(rid, {f"file-{rid}.txt": f"{rid}\n"})
        setup.drop(f"{n}.json", setup.request(rid, files))
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
    stage = LandStage()
    worker = Worker(app, "w0", stage=stage)
    try:
        assert worker.run_one() and worker.run_one()
        # Both were applied and checked, and the first has not landed yet.
        assert setup.main_sha() == before
        assert setup.record("first-1")["state"] == "running"
        release.set()
        assert worker.settle()
    finally:
        release.set()
        stage.close()
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
    stage = LandStage()
    worker = Worker(app, "w0", stage=stage)
    try:
        assert worker.run_one() and worker.run_one()     # the second on top of the first
        release.set()
        # As run --once does: what the stage finishes queues the lost races again.
        while worker.run_one() or worker.settle():
            pass
    finally:
        release.set()
        stage.close()
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


def _made(stage: LandStage, commit: str, base: str) -> Place:
    place = stage.claim("demo", "main")
    stage.made(place, commit, base)
    return place


def test_places_are_claimed_on_top_of_the_last_commit_that_can_still_land() -> None:
    stage = LandStage()
    first = _made(stage, "c1", "T")
    assert first.parent is None                 # nothing pending: the real tip
    second = _made(stage, "c2", "c1")
    assert second.parent is first               # on top of c1, still being checked
    third = stage.claim("demo", "main")
    assert third.parent is second
    stage.abandon(third)                        # e.g. its patch did not apply
    stage.abandon(first)                        # its checks failed
    assert not stage.outcome(first)
    # c2 was built on c1, so it cannot land: the next place starts from the real tip.
    fourth = _made(stage, "c4", "T")
    assert fourth.parent is None
    stage.abandon(second)
    stage.hand(fourth, lambda: True)
    assert stage.outcome(fourth)
    assert not stage.wait_empty()
    # main is at c4 now: a commit still made on T cannot land, and is not built on.
    stale = _made(stage, "s1", "T")
    probe = stage.claim("demo", "main")
    assert probe.parent is None
    stage.abandon(probe)
    stage.abandon(stale)
    stage.close()


def test_a_claim_waits_until_the_place_before_it_has_its_commit() -> None:
    # Two workers must never apply onto the same commit: the second waits for the first's
    # apply (milliseconds), then builds on it.
    stage = LandStage()
    first = stage.claim("demo", "main")
    claimed: list[Place] = []
    waiter = threading.Thread(target=lambda: claimed.append(stage.claim("demo", "main")),
                              daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    other = stage.claim("demo", "other")        # another target does not wait
    assert other.parent is None
    stage.made(first, "c1", "T")
    waiter.join(30)
    assert claimed and claimed[0].parent is first
    for place in (claimed[0], first, other):
        stage.abandon(place)
    stage.close()


def test_a_commit_lands_only_after_the_ones_claimed_before_it_on_its_target() -> None:
    stage = LandStage()
    order: list[str] = []
    first = _made(stage, "c1", "T")
    second = _made(stage, "c2", "c1")
    other = stage.claim("demo", "other")
    stage.made(other, "o1", "O")
    stage.hand(second, lambda: order.append("c2") is None)
    stage.hand(other, lambda: order.append("o1") is None)
    assert stage.outcome(other)                 # another target does not wait
    assert order == ["o1"] and not second.done  # c2 waits for c1, still being checked
    stage.hand(first, lambda: order.append("c1") is None)
    assert stage.outcome(second)
    assert order == ["o1", "c1", "c2"]
    stage.close()


def test_the_worker_waits_when_too_many_commits_are_still_to_land(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(land_stage, "MAX_AHEAD", 2)
    stage = LandStage()
    gate = threading.Event()
    for n in range(2):
        stage.hand(_made(stage, f"c{n}", "T"), lambda: gate.wait(30))
    third = threading.Thread(target=stage.hand,
                             args=(_made(stage, "c2", "c1"), lambda: True), daemon=True)
    third.start()
    third.join(0.5)
    assert third.is_alive()                  # held back until a land finishes
    gate.set()
    third.join(30)
    assert not third.is_alive()
    stage.close()


def test_a_closed_stage_lands_what_is_handed_to_it_later() -> None:
    # run --once drains again when retries come due, with the same workers.
    stage = LandStage()
    landed: list[str] = []
    stage.hand(_made(stage, "c1", "T"), lambda: landed.append("c1") is None)
    stage.close()
    stage.hand(_made(stage, "c2", "c1"), lambda: landed.append("c2") is None)
    stage.wait_empty()
    stage.close()
    assert landed == ["c1", "c2"]


def test_two_workers_check_in_parallel_the_second_on_top_of_the_first(setup: Setup) -> None:
    markers, release = _gated(setup)
    app = _queued(setup, "first-3", "second-3")
    before = setup.main_sha()
    stage = LandStage()
    workers = [Worker(app, name, stage=stage) for name in ("wa", "wb")]
    threads = [threading.Thread(target=w.run_one, daemon=True) for w in workers]
    try:
        threads[0].start()
        _wait_for(lambda: len(list(markers.iterdir())) == 1)   # first-3 is being checked
        threads[1].start()
        # second-3's check runs while first-3's does: applied on top of its commit.
        _wait_for(lambda: len(list(markers.iterdir())) == 2)
        assert setup.main_sha() == before
    finally:
        release.touch()
        for t in threads:
            t.join(60)
        stage.wait_empty()
        stage.close()
    one, two = setup.record("first-3"), setup.record("second-3")
    assert one["state"] == "landed" and two["state"] == "landed", (one, two)
    assert two["applied_onto"] == one["landed_commit"]
    assert setup.main_sha() == two["landed_commit"]
    stored = [app.records.get(rid) for rid in ("first-3", "second-3")]
    assert all(r is not None and r.races == 0 and r.attempts == 1 for r in stored)


def test_a_request_checked_on_top_of_one_that_fails_goes_round_again(setup: Setup) -> None:
    markers, release = _gated(setup)
    app = _queued(setup, "bad-4", "good-4",
                  edits={"bad-4": {"bad.txt": "fails the check\n"}})
    before = setup.main_sha()
    stage = LandStage()
    first, second = (Worker(app, name, stage=stage) for name in ("wa", "wb"))
    thread = threading.Thread(target=first.run_one, daemon=True)
    try:
        thread.start()
        _wait_for(lambda: len(list(markers.iterdir())) == 1)
        second_thread = threading.Thread(target=second.run_one, daemon=True)
        second_thread.start()
        # good-4 is checked on top of bad-4, so it sees bad.txt: its red check is bad-4's
        # doing, and counts for nothing once bad-4 fails.
        _wait_for(lambda: len(list(markers.iterdir())) == 2)
        release.touch()
        thread.join(60)
        second_thread.join(60)
        while second.run_one() or second.settle():
            pass
    finally:
        release.touch()
        stage.close()
    bad, good = setup.record("bad-4"), setup.record("good-4")
    assert bad["state"] == "failed" and bad["error"]["code"] == "check_failed", bad
    assert good["state"] == "landed", good
    assert good["applied_onto"] == before
    stored = app.records.get("good-4")
    assert stored is not None and stored.races == 1
    reasons = [h["reason"] for h in good["history"]]
    assert any("check_failed on top of" in r and "did not land" in r for r in reasons), reasons


def test_waiting_for_one_target_does_not_wait_for_another() -> None:
    # A batch or a task waits for its own target's commits, not for a busy other target.
    stage = LandStage()
    checking = _made(stage, "c1", "T")
    assert not stage.wait_empty("demo", "other")
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (stage.wait_empty("demo", "main"), done.set()),
                              daemon=True)
    waiter.start()
    assert not done.wait(0.2)
    stage.abandon(checking)
    assert done.wait(30)
    stage.close()


def test_the_ref_does_not_move_when_where_the_change_applied_could_not_be_written(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker writes where a change applied (the start of the exactly-once search after
    a crash) behind, while the landing stage lands the one before; the stage waits for that
    write, and when it failed the change does not land then: it is tried again."""
    app = _queued(setup, "first-3")
    before = setup.main_sha()
    real_update = app.records._update
    failed: list[str] = []

    def failing_update(record_id: str, updates: dict[str, Any]) -> Record:
        if "applied_onto" in updates and not failed:
            failed.append(record_id)
            raise OSError(28, "No space left on device")
        return real_update(record_id, updates)

    monkeypatch.setattr(app.records, "_update", failing_update)
    stage = LandStage()
    worker = Worker(app, "w0", stage=stage)
    try:
        assert worker.run_one()
        assert worker.settle()
        assert failed == ["first-3"]
        assert setup.main_sha() == before                 # nothing landed without it
        record = app.records.get("first-3")
        assert record is not None and record.state.value == "queued", record
        assert record.error is not None and "No space left" in record.error.message
        # Tried again (after its backoff), it lands, with where it applied on record.
        _wait_for(lambda: (worker.run_one() and worker.settle()) or
                  (app.records.get("first-3") or record).state.value == "landed")
    finally:
        stage.close()
    landed = setup.record("first-3")
    assert landed["state"] == "landed" and landed["applied_onto"] == before
    assert setup.main_sha() == landed["landed_commit"]
