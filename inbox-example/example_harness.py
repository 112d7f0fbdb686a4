"""An example agent harness: builds one prompt from the task and the last feedback, then runs a
coding agent on it (or, with no agent given, shows what it would send).

    harnesses:
      wrapped-aider:
        run: ["python3", "/path/to/example_harness.py", "--",
              "aider", "--yes", "--no-auto-commits", "--no-stream", "--message-file", "@PROMPT@"]

hyperion runs it in the task's worktree with HYPERION_* set (see the README, "Tasks"). This
script substitutes ``@PROMPT@`` in the agent's argv with the path of the prompt it wrote (in
TMPDIR, outside the worktree, so the prompt never becomes part of the change). Its exit status
is the agent's: non-zero makes the iteration fail `harness_failed`, with the output as feedback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def prompt() -> str:
    task = json.loads(Path(os.environ["HYPERION_TASK_FILE"]).read_text(encoding="utf-8"))
    instructions = Path(os.environ["HYPERION_INSTRUCTIONS_FILE"]).read_text(encoding="utf-8")
    parts = [f"Task {task['id']}: {task['title']}", "", instructions, "",
             "Only change files matching: " + ", ".join(task["file_targets"]) + ".",
             "Do not commit; leave your changes in the working tree."]
    feedback_file = os.environ.get("HYPERION_FEEDBACK_FILE")
    if feedback_file:
        feedback = Path(feedback_file).read_text(encoding="utf-8", errors="replace")
        parts += ["", f"This is attempt {os.environ['HYPERION_ITERATION']}. The previous "
                  "attempt did not pass; what the checks said:", feedback]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    agent = argv[argv.index("--") + 1:] if "--" in argv else []
    text = prompt()
    if not agent:
        print(text)
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".md", prefix="hyperion-prompt-",
                                     delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        command = [item.replace("@PROMPT@", f.name) for item in agent]
        return subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    except FileNotFoundError:
        print(f"example_harness: {agent[0]} is not installed", file=sys.stderr)
        return 127
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
