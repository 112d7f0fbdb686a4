"""The bundled example, end to end: a demo repository, four requests, one `hyperion run --once`.

    python3 inbox-example/demo.py        (the README's first command runs this in a venv)

It rebuilds inbox-example/work/ from scratch, then shows what happened to each request and why,
the commit that landed on main (with its Hyperion-Request trailer), the notifications (written
to a local file by an apprise custom plugin: no network), and that the demo's own working tree
is clean.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from demo_repo import build, git

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"

CONFIG = """\
state_dir: state
inbox: inbox
workers: 2
repos:
  demo:
    path: demo
    target: main
checks:
  unit:
    run: [{python}, "-m", "unittest", "discover", "-s", "tests", "-t", "."]
    timeout_s: 120
notify:
  urls: ["hyperionfile://{notifications}"]
  plugin_paths: [{plugins}]
"""

WHY = {
    "landed": "its check passed, so it landed on main",
    "failed": "it applied, but a check failed, so main was left untouched",
    "rejected": "the gate refused it before it touched any worktree",
}


def hyperion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyperion", "--config",
                           str(WORK / "hyperion.yaml"), *args], text=True, capture_output=True)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    build(WORK / "demo")
    notifications = WORK / "notifications.jsonl"
    (WORK / "hyperion.yaml").write_text(CONFIG.format(
        python=json.dumps(sys.executable), notifications=notifications,
        plugins=json.dumps(str(HERE / "notify_plugin"))))
    (WORK / "inbox").mkdir()
    for request in sorted((HERE / "requests").glob("*.json")):
        shutil.copy(request, WORK / "inbox" / request.name)
    print(f"== demo repository: {WORK / 'demo'}")
    print(f"== inbox: {', '.join(sorted(p.name for p in (WORK / 'inbox').iterdir()))}")
    print("== hyperion run --once")
    run = hyperion("run", "--once")
    if run.returncode != 0:
        print(run.stderr)
        return 1

    records = json.loads(hyperion("list", "--format", "json").stdout)
    print("\n== what happened to each request")
    for r in sorted(records, key=lambda r: r["id"]):
        print(f"- {r['id']}: {r['state']}: {WHY.get(r['state'], '')}")
        if r["error"]:
            print(f"    {r['error']['code']}: {r['error']['message']}")
        if r["landed_commit"]:
            print(f"    landed as {r['landed_commit'][:12]}")

    print("\n== main now (git log):")
    log_format = "--format=    %h %an: %s%n%w(0,8,8)%(trailers:only,unfold)"
    print(git(WORK / "demo", "log", log_format, "-3").rstrip())

    print(f"\n== notifications (apprise -> {notifications}):")
    for line in notifications.read_text().splitlines() if notifications.exists() else []:
        note = json.loads(line)
        print(f"    [{note['type']}] {note['title']}")

    status = git(WORK / "demo", "status", "--porcelain")
    print(f"\n== the demo's working tree is {'clean' if not status else 'NOT clean: ' + status}")
    landed = next((r for r in records if r["state"] == "landed"), None)
    if landed:
        print(f"\nSee the full story of one request:\n    {sys.executable} -m hyperion --config "
              f"{WORK / 'hyperion.yaml'} inspect {landed['id']}")
    states = {r["id"]: r["state"] for r in records}
    expected = {"fix-round-limit-001": "landed", "faster-clamp-002": "failed",
                "install-hook-004": "rejected"}
    ok = all(states.get(k) == v for k, v in expected.items()) and len(records) == 4 \
        and not status
    print("\nexample " + ("OK" if ok else "did NOT go as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
