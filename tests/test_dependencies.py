"""depends_on (wait, then land in order; cascade dependency_failed without spending attempts),
cycles, not_before and supersedes, through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Setup, git


def submit(setup: Setup, request: dict[str, Any]) -> list[str]:
    """[id, state] or [id, state, error code] as `hyperion submit` answers."""
    path = setup.root / f"{request['id']}.json"
    path.write_text(json.dumps(request))
    result = json.loads(setup.cli("submit", "--format", "json", str(path)).stdout)[0]
    error = [result["error"]["code"]] if result["error"] else []
    return [result["id"], result["state"], *error]


def test_dependent_waits_and_lands_on_top_of_its_dependency(setup: Setup) -> None:
    first = setup.request("dep-a", {"app.py": "VALUE = 'a'\n"})
    second = setup.request("dep-b", {"docs/readme.txt": "after a\n"}, depends_on=["dep-a"])
    # Submitted first, but it must wait for dep-a.
    assert submit(setup, second) == ["dep-b", "queued"]
    assert setup.record("dep-b")["history"][0]["reason"].endswith("waiting for dep-a to land")
    assert submit(setup, first) == ["dep-a", "queued"]
    assert setup.cli("run", "--once").returncode == 0
    a, b = setup.record("dep-a"), setup.record("dep-b")
    assert a["state"] == "landed" and b["state"] == "landed"
    assert git(setup.repo, "rev-parse", f"{b['landed_commit']}^").strip() == a["landed_commit"]
    assert b["attempts"] == 1


def test_failure_cascades_without_spending_attempts(setup: Setup) -> None:
    submit(setup, setup.request("c-a", {"app.py": "BROKEN = 1\n"}))
    submit(setup, setup.request("c-b", {"docs/readme.txt": "b\n"}, depends_on=["c-a"]))
    submit(setup, setup.request("c-c", {"docs/new.txt": "c\n"}, depends_on=["c-b"]))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("c-a")["error"]["code"] == "check_failed"
    for rid, dep in (("c-b", "c-a"), ("c-c", "c-b")):
        record = setup.record(rid)
        assert record["state"] == "failed"
        assert record["error"]["code"] == "dependency_failed"
        assert dep in record["error"]["message"]
        assert record["attempts"] == 0
    # A dependency that already failed refuses a new dependent at once.
    out = submit(setup, setup.request("c-d", {"docs/d.txt": "d\n"}, depends_on=["c-a"]))
    assert out == ["c-d", "rejected", "dependency_failed"]


def test_dependency_cycles_are_refused(setup: Setup) -> None:
    assert submit(setup, setup.request("cy-a", {"app.py": "V = 1\n"},
                                       depends_on=["cy-b"]))[:2] == ["cy-a", "queued"]
    out = submit(setup, setup.request("cy-b", {"docs/x.txt": "x\n"}, depends_on=["cy-a"]))
    assert out == ["cy-b", "rejected", "dependency_failed"]
    out = submit(setup, setup.request("cy-c", {"docs/y.txt": "y\n"}, depends_on=["cy-c"]))
    assert out == ["cy-c", "rejected", "dependency_failed"]
    # The rejection of cy-b fails cy-a, which waited for it.
    assert setup.record("cy-a")["error"]["code"] == "dependency_failed"


def test_not_before_defers_a_request(setup: Setup) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    submit(setup, setup.request("nb-1", {"app.py": "V = 2\n"}, not_before=later))
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    submit(setup, setup.request("nb-2", {"docs/readme.txt": "now\n"}, not_before=past))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("nb-1")["state"] == "queued"
    assert setup.record("nb-2")["state"] == "landed"
    naive = setup.request("nb-3", {"docs/z.txt": "z\n"}, not_before="2030-01-01T00:00:00")
    out = submit(setup, naive)
    assert out == ["nb-3", "rejected", "schema_violation"]


def test_supersedes_cancels_a_waiting_or_held_request(setup: Setup) -> None:
    submit(setup, setup.request("old-1", {"app.py": "V = 'old'\n"}, depends_on=["never"]))
    submit(setup, setup.request("new-1", {"app.py": "V = 'new'\n"}, supersedes="old-1"))
    old = setup.record("old-1")
    assert old["state"] == "cancelled"
    assert old["history"][-1]["reason"] == "superseded by new-1"
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("new-1")["state"] == "landed"
    # A request that already ran is not cancelled by a late superseder.
    submit(setup, setup.request("new-2", {"docs/readme.txt": "n\n"}, supersedes="new-1"))
    assert setup.record("new-1")["state"] == "landed"


def test_supersedes_cancels_a_queued_request(setup: Setup) -> None:
    submit(setup, setup.request("q-old", {"app.py": "V = 'q'\n"}))
    submit(setup, setup.request("q-new", {"docs/readme.txt": "q\n"}, supersedes="q-old"))
    assert setup.record("q-old")["state"] == "cancelled"
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("q-old")["state"] == "cancelled"
    assert setup.record("q-new")["state"] == "landed"


def test_requeue_sends_failed_and_rejected_records_back_through_the_gate(setup: Setup) -> None:
    submit(setup, setup.request("rq-1", {"app.py": "V = 'BROKEN'\n"}))
    submit(setup, setup.request("rq-2", {"docs/readme.txt": "2\n"}, checks=["lint"]))
    assert setup.cli("run", "--once").returncode == 0
    assert setup.record("rq-1")["error"]["code"] == "check_failed"
    assert setup.record("rq-2")["error"]["code"] == "check_not_allowed"
    # Still refused: the gate runs again and says so.
    out = setup.cli("requeue", "rq-2", "--reason", "try again", "--by", "carol")
    assert out.returncode == 1 and "check_not_allowed" in out.stdout
    # Fix what made them fail (a lenient check, a lint check), then requeue both.
    text = setup.config.read_text().replace('"check.py"', '"-c", "pass"')
    setup.config.write_text(text.replace("checks:\n", "checks:\n  lint:\n    run: "
                                         '["true"]\n'))
    for rid in ("rq-1", "rq-2"):
        out = setup.cli("requeue", rid, "--reason", "check fixed", "--by", "carol")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [rid, "queued"]
    assert setup.cli("run", "--once").returncode == 0
    for rid in ("rq-1", "rq-2"):
        record = setup.record(rid)
        assert record["state"] == "landed", record
        assert any(h["by"] == "carol" and "requeued by carol: check fixed" in h["reason"]
                   for h in record["history"])
    out = setup.cli("requeue", "rq-1", "--reason", "again")
    assert out.returncode == 1 and "only failed or rejected" in out.stderr
