"""Tasks run by agent harnesses: real script harnesses (python, in tmp dirs), real git repos,
real `hyperion run --once` processes. Each harness behaves like one kind of agent; each ends
in the state and code a user relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup, Webhook, git, make_repo, write_config

CHECK = """\
import pathlib, secrets, sys, time
text = pathlib.Path("app.py").read_text()
if "VALUE = 2" in text:
    print("ok")
    sys.exit(0)
# Noise that differs on every run: stuck detection must see through it.
print(f"check run at {time.time()} id {secrets.token_hex(8)} in {pathlib.Path.cwd()}")
print(f"AssertionError: expected VALUE = 2, found {text.strip()!r}")
sys.exit(1)
"""

PRELUDE = """\
import json, os, pathlib, subprocess, sys, time
ROOT = pathlib.Path({root!r})
iteration = int(os.environ["HYPERION_ITERATION"])
task = json.loads(pathlib.Path(os.environ["HYPERION_TASK_FILE"]).read_text())
feedback = os.environ.get("HYPERION_FEEDBACK_FILE")
"""

HARNESSES = {
    # Reads its instructions (argv[1]) and does the right thing at once.
    "first-try": """
assert "VALUE" in pathlib.Path(sys.argv[1]).read_text()
pathlib.Path("app.py").write_text("VALUE = 2\\n")
with open(ROOT / f"first-try-{task['id']}.runs", "a") as f:
    f.write(f"{iteration}\\n")
print("set VALUE to 2")
""",
    # Guesses wrong, then fixes what the feedback says.
    "learner": """
log = ROOT / f"learner-{task['id']}.log"
with open(log, "a") as f:
    f.write(json.dumps({"iteration": iteration, "feedback": feedback,
                        "text": pathlib.Path(feedback).read_text() if feedback else None})
            + "\\n")
if feedback and "expected VALUE = 2" in pathlib.Path(feedback).read_text():
    pathlib.Path("app.py").write_text("VALUE = 2\\n")
else:
    pathlib.Path("app.py").write_text("VALUE = 3\\n")
""",
    # Makes the same wrong fix whatever it is told.
    "stubborn": """
pathlib.Path("app.py").write_text("VALUE = 3\\n")
""",
    # Also edits a file outside the task's file_targets.
    "sprawler": """
pathlib.Path("app.py").write_text("VALUE = 2\\n")
pathlib.Path("check.py").write_text("import sys\\nsys.exit(0)\\n")
""",
    # Never finishes, and leaves a child of its own behind.
    "hanger": """
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(ROOT / "hanger.pids").write_text(f"{os.getpid()} {child.pid}")
time.sleep(600)
""",
    # Writes a credential into the code (and prints it).
    "leaker": """
token = "ghp_" + "k3J9xQ2mZ7pL4vN8" + "rT1wY6bC5dF0gH3jK9sA"
pathlib.Path("app.py").write_text(f"VALUE = 2\\nTOKEN = {token!r}\\n")
print(f"wrote the token {token} into app.py")
""",
    # Reports what it can see, then does the work.
    "snoop": """
(ROOT / "snoop.json").write_text(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(),
                                              "argv": sys.argv}))
pathlib.Path("app.py").write_text("VALUE = 2\\n")
""",
    # Makes a file named after its task (for WIP tests); holds its slot until the other task
    # has been turned away once (or has landed), so that the test does not depend on timing.
    "slow": """
other = {"wip-a": "wip-b", "wip-b": "wip-a"}[task["id"]]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        record = json.loads((ROOT / "state" / "records" / f"{other}.json").read_text())
    except (FileNotFoundError, ValueError):
        record = {}
    if record.get("waits", 0) >= 1 or record.get("state") == "landed":
        break
    time.sleep(0.05)
pathlib.Path(f"{task['id']}.txt").write_text("made\\n")
""",
    # Crashes on its first try; reads why on the second.
    "flaky": """
if iteration == 1:
    print("boom: the agent fell over")
    sys.exit(1)
assert "boom: the agent fell over" in pathlib.Path(feedback).read_text()
pathlib.Path("app.py").write_text("VALUE = 2\\n")
""",
    # Does nothing at all.
    "idle": """
print("nothing to do")
""",
    # Slow and wrong: the task's own time budget runs out.
    "slowpoke": """
time.sleep(1.5)
pathlib.Path("app.py").write_text(f"VALUE = {iteration + 2}\\n")
""",
    # Iteration 1 fails; iteration 2 hangs the first time (hyperion gets killed), then works.
    "phoenix": """
if iteration == 1:
    pathlib.Path("app.py").write_text("VALUE = 3\\n")
    sys.exit(0)
marker = ROOT / "phoenix.started"
if not marker.exists():
    marker.write_text(str(os.getpid()))
    time.sleep(600)
with open(ROOT / "phoenix.runs", "a") as f:
    f.write(f"{iteration} {pathlib.Path(feedback).read_text()[:40]!r}\\n")
pathlib.Path("app.py").write_text("VALUE = 2\\n")
""",
}


def _harness_config(root: Path) -> str:
    lines = ["harnesses:"]
    for name, body in HARNESSES.items():
        script = root / f"harness_{name.replace('-', '_')}.py"
        script.write_text(PRELUDE.format(root=str(root)) + body)
        lines.append(f"  {name}:")
        lines.append(f"    run: [{json.dumps(sys.executable)}, {json.dumps(str(script))}, "
                     '"{instructions_file}"]')
        if name == "hanger":
            lines.append("    timeout_s: 2")
        if name == "snoop":
            lines.append('    env: {VISIBLE: "${HYPERION_TEST_VISIBLE}", FIXED: "plain"}')
        if name == "slow":
            lines.append("    max_concurrent: 1")
    return "\n".join(lines) + "\n"


@pytest.fixture
def tasks(tmp_path: Path, webhook: Webhook) -> Setup:
    repo = make_repo(tmp_path / "demo", {"app.py": "VALUE = 1\n", "check.py": CHECK,
                                         "docs/readme.txt": "hello\n"})
    config = write_config(tmp_path, repo, notify=[webhook.url],
                          extra=_harness_config(tmp_path))
    (tmp_path / "inbox").mkdir()
    return Setup(root=tmp_path, repo=repo, config=config, inbox=tmp_path / "inbox",
                 state=tmp_path / "state")


def task(id: str, harness: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "task", "version": 1, "id": id, "requested_by": "alice", "repo": "demo",
            "title": f"Make VALUE 2 ({id})", "harness": harness,
            "instructions": "Set VALUE in app.py to 2.", "file_targets": ["app.py"],
            "checks": ["unit"], "max_iterations": 3, "timeout_s": 120}
    body.update(fields)
    return body


def run_once(setup: Setup, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "hyperion", "--config", str(setup.config),
                           "run", "--once"], capture_output=True, text=True, timeout=180,
                          cwd=setup.root, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc


def landed_with_trailer(setup: Setup, task_id: str) -> list[str]:
    out = git(setup.repo, "log", "--format=%H %(trailers:key=Hyperion-Request,valueonly)",
              "main")
    return [line.split()[0] for line in out.splitlines() if line.split()[1:] == [task_id]]


def test_a_harness_that_fixes_it_at_once_lands_in_one_iteration(tasks: Setup) -> None:
    before = tasks.main_sha()
    tasks.drop("t.json", task("once-1", "first-try"))
    run_once(tasks)
    record = tasks.record("once-1")
    assert record["state"] == "landed", record
    assert [i["outcome"] for i in record["iterations"]] == ["green"]
    first = record["iterations"][0]
    assert (first["files"], first["added"], first["removed"]) == (1, 1, 1)
    assert landed_with_trailer(tasks, "once-1") == [record["landed_commit"]]
    assert git(tasks.repo, "rev-parse", f"{record['landed_commit']}^").strip() == before
    assert (tasks.repo / "app.py").read_text() == "VALUE = 2\n"
    author = git(tasks.repo, "log", "-1", "--format=%an <%ae>", "main").strip()
    assert author == "first-try <first-try@agents.hyperion.invalid>"
    # The transcript is an artifact, listed by inspect.
    names = {a["name"]: a["path"] for a in record["artifacts"]}
    assert "set VALUE to 2" in Path(names["iteration-1-transcript.log"]).read_text()
    assert "iteration-1.diff" in names and "iteration-1-check-unit.log" in names
    text = tasks.cli("inspect", "once-1").stdout
    assert "iteration 1: green" in text
    assert not any((tasks.state / "worktrees").iterdir())


def test_a_harness_that_reads_the_feedback_lands_on_the_second_iteration(
        tasks: Setup) -> None:
    tasks.drop("t.json", task("learn-1", "learner"))
    run_once(tasks)
    record = tasks.record("learn-1")
    assert record["state"] == "landed", record
    assert [i["outcome"] for i in record["iterations"]] == ["check_failed", "green"]
    runs = [json.loads(line) for line in
            (tasks.root / "learner-learn-1.log").read_text().splitlines()]
    assert runs[0]["iteration"] == 1 and runs[0]["feedback"] is None
    assert runs[1]["iteration"] == 2 and "expected VALUE = 2" in runs[1]["text"]
    assert "'VALUE = 3'" in runs[1]["text"]     # the check's own output, fed back
    assert len(landed_with_trailer(tasks, "learn-1")) == 1
    # Only what the last iteration made lands, as one commit on the old tip.
    assert (tasks.repo / "app.py").read_text() == "VALUE = 2\n"


MOVER_CHECK = """\
import pathlib, subprocess, sys
marker = pathlib.Path({marker!r})
if not marker.exists():
    marker.write_text("moved")
    pathlib.Path({repo!r}, "other.txt").write_text("someone else's commit\\n")
    ident = ["-c", "user.name=Someone", "-c", "user.email=someone@example.invalid"]
    subprocess.run(["git", "-C", {repo!r}, "add", "other.txt"], check=True)
    subprocess.run(["git", *ident, "-C", {repo!r}, "commit", "-q", "-m", "meanwhile"],
                   check=True)
sys.exit(0 if "VALUE = 2" in pathlib.Path("app.py").read_text() else 1)
"""


def test_a_green_task_whose_target_moved_is_rechecked_on_the_new_tip_without_the_harness(
        tasks: Setup) -> None:
    check = tasks.root / "mover_check.py"
    check.write_text(MOVER_CHECK.format(marker=str(tasks.root / "moved"), repo=str(tasks.repo)))
    tasks.config.write_text(tasks.config.read_text().replace('"check.py"',
                                                             json.dumps(str(check))))
    tasks.drop("t.json", task("race-1", "first-try"))
    run_once(tasks)
    record = tasks.record("race-1")
    assert record["state"] == "landed", record
    assert [i["outcome"] for i in record["iterations"]] == ["green"]
    assert (tasks.root / "first-try-race-1.runs").read_text() == "1\n"   # the harness ran once
    parent = git(tasks.repo, "rev-parse", f"{record['landed_commit']}^").strip()
    assert git(tasks.repo, "log", "-1", "--format=%s", parent).strip() == "meanwhile"
    assert record["iterations"][0]["onto"] == parent
    assert (tasks.repo / "other.txt").exists()
    assert (tasks.repo / "app.py").read_text() == "VALUE = 2\n"
    assert len(landed_with_trailer(tasks, "race-1")) == 1
    assert any("land_conflict" in h["reason"] for h in record["history"])


def test_a_change_the_policy_wants_approved_is_held_then_lands_once_approved(
        tasks: Setup, webhook: Webhook) -> None:
    policy = tasks.root / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: agents-need-review\n    match: {agents: "
                      "[first-try]}\n    action: require_approval\n    reason: review it\n")
    tasks.config.write_text(tasks.config.read_text() + f"policy: {policy}\n")
    before = tasks.main_sha()
    tasks.drop("t.json", task("held-1", "first-try"))
    run_once(tasks)
    record = tasks.record("held-1")
    assert record["state"] == "held", record
    assert [i["outcome"] for i in record["iterations"]] == ["held"]
    assert tasks.main_sha() == before
    assert "hyperion approve held-1" in webhook.wait_for(1)[0]["message"]
    out = tasks.cli("approve", "held-1", "--by", "bob")
    assert out.returncode == 0, out.stderr
    run_once(tasks)
    record = tasks.record("held-1")
    assert record["state"] == "landed", record
    assert [i["outcome"] for i in record["iterations"]] == ["green"]
    assert (tasks.root / "first-try-held-1.runs").read_text() == "1\n"   # not run again
    assert len(landed_with_trailer(tasks, "held-1")) == 1


def test_the_same_wrong_fix_twice_stops_stuck_and_escalates(tasks: Setup,
                                                            webhook: Webhook) -> None:
    before = tasks.main_sha()
    tasks.drop("t.json", task("stuck-1", "stubborn", max_iterations=5))
    run_once(tasks)
    record = tasks.record("stuck-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "stuck"
    assert [i["outcome"] for i in record["iterations"]] == ["check_failed", "check_failed"]
    assert record["iterations"][0]["failure"] == record["iterations"][1]["failure"]
    assert tasks.main_sha() == before
    message = webhook.wait_for(1)[-1]
    assert message["type"] == "failure" and "stuck" in message["title"] + message["message"]
    assert "Last feedback" in message["message"]
    assert "expected VALUE = 2" in message["message"]


def test_running_out_of_iterations_fails_check_failed(tasks: Setup) -> None:
    tasks.drop("t.json", task("out-1", "learner", max_iterations=1))
    run_once(tasks)
    record = tasks.record("out-1")
    assert record["state"] == "failed" and record["error"]["code"] == "check_failed"
    assert len(record["iterations"]) == 1


def test_a_harness_that_exits_non_zero_gets_its_output_as_feedback(tasks: Setup) -> None:
    tasks.drop("t.json", task("flaky-1", "flaky"))
    run_once(tasks)
    record = tasks.record("flaky-1")
    assert record["state"] == "landed", record
    assert [i["outcome"] for i in record["iterations"]] == ["harness_failed", "green"]
    assert record["iterations"][0]["harness_exit"] == 1


def test_a_harness_that_changes_nothing_is_stuck(tasks: Setup) -> None:
    tasks.drop("t.json", task("idle-1", "idle", max_iterations=4))
    run_once(tasks)
    record = tasks.record("idle-1")
    assert record["state"] == "failed" and record["error"]["code"] == "stuck"
    assert [i["outcome"] for i in record["iterations"]] == ["no_changes", "no_changes"]


def test_the_task_time_budget_bounds_the_whole_task(tasks: Setup) -> None:
    tasks.drop("t.json", task("slow-1", "slowpoke", timeout_s=2, max_iterations=5))
    run_once(tasks)
    record = tasks.record("slow-1")
    assert record["state"] == "failed" and record["error"]["code"] == "timeout", record
    assert len(record["iterations"]) <= 2


def test_writing_outside_the_scope_fails_out_of_scope(tasks: Setup) -> None:
    before = tasks.main_sha()
    tasks.drop("t.json", task("scope-1", "sprawler"))
    run_once(tasks)
    record = tasks.record("scope-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "out_of_scope"
    assert "check.py" in record["error"]["message"]
    assert [i["outcome"] for i in record["iterations"]] == ["out_of_scope"]
    assert tasks.main_sha() == before


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"   # a zombie no one reaped yet


def test_a_hanging_harness_times_out_and_leaves_no_process(tasks: Setup) -> None:
    tasks.drop("t.json", task("hang-1", "hanger"))
    run_once(tasks)
    record = tasks.record("hang-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "timeout"
    assert [i["outcome"] for i in record["iterations"]] == ["timeout"]
    pids = [int(p) for p in (tasks.root / "hanger.pids").read_text().split()]
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)


def test_a_harness_that_writes_a_secret_fails_and_the_secret_is_nowhere(
        tasks: Setup, webhook: Webhook) -> None:
    token = "ghp_" + "k3J9xQ2mZ7pL4vN8" + "rT1wY6bC5dF0gH3jK9sA"
    tasks.drop("t.json", task("leak-1", "leaker"))
    proc = run_once(tasks)
    record = tasks.record("leak-1")
    assert record["state"] == "failed"
    assert record["error"]["code"] == "secret_detected"
    assert record["error"]["detail"]["findings"][0]["rule"] == "github-pat"
    messages = json.dumps(webhook.wait_for(1))
    assert "leak-1" in messages
    seen = [proc.stdout, proc.stderr, messages, tasks.cli("inspect", "leak-1").stdout]
    for path in tasks.state.rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode(errors="replace"))
    assert not any(token in text for text in seen)
    transcript = tasks.state / "artifacts" / "leak-1" / "iteration-1-transcript.log"
    assert "[redacted github-pat" in transcript.read_text()


def test_a_harness_sees_only_the_variables_its_config_names(tasks: Setup) -> None:
    tasks.drop("t.json", task("env-1", "snoop"))
    run_once(tasks, env={"HYPERION_TEST_DAEMON_SECRET": "do-not-pass-me",
                         "HYPERION_TEST_VISIBLE": "named-in-config"})
    assert tasks.record("env-1")["state"] == "landed"
    seen = json.loads((tasks.root / "snoop.json").read_text())
    env = seen["env"]
    assert "HYPERION_TEST_DAEMON_SECRET" not in env
    assert "do-not-pass-me" not in json.dumps(env)
    assert env["VISIBLE"] == "named-in-config" and env["FIXED"] == "plain"
    assert env["HYPERION_ITERATION"] == "1" and "HYPERION_FEEDBACK_FILE" not in env
    assert Path(env["HYPERION_TASK_FILE"]).name == "task.json"
    assert env["HYPERION_WORKTREE"] == seen["cwd"]
    assert seen["argv"][1] == env["HYPERION_INSTRUCTIONS_FILE"]
    assert Path(seen["argv"][1]).read_text() == "Set VALUE in app.py to 2."
    assert not any(k.startswith(("GIT_", "PYTHON", "VIRTUAL_ENV")) for k in env)


def test_a_task_naming_an_unknown_harness_is_refused(tasks: Setup) -> None:
    tasks.drop("t.json", task("nope-1", "no-such-agent"))
    run_once(tasks)
    record = tasks.record("nope-1")
    assert record["state"] == "rejected"
    assert record["error"]["code"] == "policy_denied"
    assert record["error"]["path"] == "harness"
    assert "no-such-agent" in record["error"]["message"]


def test_a_busy_harness_makes_the_next_task_wait_without_spending_attempts(
        tasks: Setup) -> None:
    tasks.drop("a.json", task("wip-a", "slow", checks=[], file_targets=["*.txt"]))
    tasks.drop("b.json", task("wip-b", "slow", checks=[], file_targets=["*.txt"]))
    run_once(tasks)
    records = [tasks.record("wip-a"), tasks.record("wip-b")]
    states = sorted(r["state"] for r in records)
    assert states == ["landed", "queued"], records
    waiting = next(r for r in records if r["state"] == "queued")
    assert waiting["attempts"] == 0 and waiting["waits"] >= 1
    time.sleep(5.5)         # the waiting task looks again after SLOT_POLL_S
    run_once(tasks)
    again = tasks.record(waiting["id"])
    assert again["state"] == "landed", again
    assert again["attempts"] == 1
    assert (tasks.repo / "wip-a.txt").exists() and (tasks.repo / "wip-b.txt").exists()


def test_killed_mid_iteration_resumes_at_that_iteration_and_lands_once(tasks: Setup) -> None:
    tasks.drop("t.json", task("crash-1", "phoenix"))
    daemon = subprocess.Popen([sys.executable, "-m", "hyperion", "--config", str(tasks.config),
                               "run", "--once"], cwd=tasks.root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = tasks.root / "phoenix.started"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    orphan = int(marker.read_text())
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert not _gone(orphan)          # the harness outlived the killed hyperion
    assert tasks.record("crash-1")["state"] == "running"
    run_once(tasks)
    record = tasks.record("crash-1")
    assert record["state"] == "landed", record
    assert [i["number"] for i in record["iterations"]] == [1, 2]
    assert any("process died" in h["reason"] for h in record["history"])
    runs = (tasks.root / "phoenix.runs").read_text().splitlines()
    assert len(runs) == 1 and runs[0].startswith("2 ")
    assert "Iteration 1" in runs[0]          # it got iteration 1's feedback after the restart
    assert len(landed_with_trailer(tasks, "crash-1")) == 1
    deadline = time.monotonic() + 10
    while not _gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(orphan)


def test_a_harness_that_cannot_start_is_retried_with_backoff_then_fails(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "demo", {"app.py": "VALUE = 1\n", "check.py": CHECK})
    missing = tmp_path / "no-such-agent-cli"
    config = write_config(tmp_path, repo, extra=(
        f"harnesses:\n  broken:\n    run: [{json.dumps(str(missing))}, \"{{task_file}}\"]\n"))
    (tmp_path / "inbox").mkdir()
    setup = Setup(root=tmp_path, repo=repo, config=config, inbox=tmp_path / "inbox",
                  state=tmp_path / "state")
    setup.drop("t.json", task("nostart-1", "broken"))
    run_once(setup)
    first = setup.record("nostart-1")
    assert first["state"] == "queued" and first["error"]["code"] == "internal_error"
    assert "could not start" in first["error"]["message"]
    assert "executable not found" in first["error"]["message"]
    assert first["iterations"] == []        # a harness that never ran used no iteration
    record = first
    for _ in range(10):
        if record["state"] == "failed":
            break
        time.sleep(2.1)                     # the backoff: 1 s, then 1-2 s
        run_once(setup)
        record = setup.record("nostart-1")
    assert record["state"] == "failed", record
    assert record["error"]["code"] == "internal_error"
    assert "gave up after 3 attempts" in record["error"]["message"]


def test_a_policy_rule_on_the_harness_ends_the_task_policy_denied(tasks: Setup) -> None:
    policy = tasks.root / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: no-stubborn\n    match: {agents: "
                      "[stubborn]}\n    action: deny\n    reason: it never listens\n")
    tasks.config.write_text(tasks.config.read_text() + f"policy: {policy}\n")
    tasks.drop("t.json", task("deny-1", "stubborn"))
    run_once(tasks)
    record = tasks.record("deny-1")
    assert record["state"] == "failed" and record["error"]["code"] == "policy_denied"
    assert "it never listens" in record["error"]["message"]
    # The same rule on the requester refuses the task at intake.
    policy.write_text("version: 1\nrules:\n  - name: no-bob\n    match: {agents: [bob]}\n"
                      "    action: deny\n")
    tasks.drop("u.json", task("deny-2", "first-try", requested_by="bob"))
    run_once(tasks)
    refused = tasks.record("deny-2")
    assert refused["state"] == "rejected" and refused["error"]["code"] == "policy_denied"


def test_approving_a_requeued_failure_that_the_policy_holds_queues_it_again(
        tasks: Setup) -> None:
    # Found while making approve() requeue a task held half-way: a failed request that
    # `requeue` sends to held has its spool item in dead/, where a plain put cannot reach it.
    tasks.drop("t.json", task("again-1", "stubborn", max_iterations=1))
    run_once(tasks)
    assert tasks.record("again-1")["state"] == "failed"
    policy = tasks.root / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: alice-needs-review\n    match: {agents: "
                      "[alice]}\n    action: require_approval\n")
    tasks.config.write_text(tasks.config.read_text() + f"policy: {policy}\n")
    assert tasks.cli("requeue", "again-1", "--reason", "try again").returncode == 0
    assert tasks.record("again-1")["state"] == "held"
    assert tasks.cli("approve", "again-1", "--by", "bob").returncode == 0
    run_once(tasks)
    record = tasks.record("again-1")
    assert record["state"] == "failed" and record["attempts"] == 1
    assert [i["outcome"] for i in record["iterations"]] == ["check_failed"]
    assert any(h["by"] == "bob" for h in record["history"])
    assert record["history"][-1]["from"] == "running"     # it ran again after the approval
