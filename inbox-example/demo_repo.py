"""The demo repository the example gates: a tiny project with an off-by-one bug and tests.

Shared by demo.py (which builds the repository) and make_requests.py (which made the request
files in requests/ from real `git diff` output against exactly this content).
"""

import subprocess
from pathlib import Path

FILES = {
    "README.md": "# rounds\n\nA tiny project that the hyperion example gates.\n",
    "src/__init__.py": "",
    "src/rounds.py": (
        "def run_rounds(max_rounds):\n"
        '    """Run rounds until max_rounds is reached; return how many ran."""\n'
        "    rounds = 0\n"
        "    while rounds < max_rounds - 1:\n"
        "        rounds += 1\n"
        "    return rounds\n"
    ),
    "src/limits.py": (
        "def clamp(value, low, high):\n"
        '    """value, kept within [low, high]."""\n'
        "    return max(low, min(value, high))\n"
    ),
    "tests/__init__.py": "",
    "tests/test_rounds.py": (
        "import unittest\n\n"
        "from src.rounds import run_rounds\n\n\n"
        "class RoundsTest(unittest.TestCase):\n"
        "    def test_no_rounds(self):\n"
        "        self.assertEqual(run_rounds(0), 0)\n"
    ),
    "tests/test_limits.py": (
        "import unittest\n\n"
        "from src.limits import clamp\n\n\n"
        "class ClampTest(unittest.TestCase):\n"
        "    def test_inside(self):\n"
        "        self.assertEqual(clamp(5, 0, 10), 5)\n\n"
        "    def test_above(self):\n"
        "        self.assertEqual(clamp(50, 0, 10), 10)\n"
    ),
}


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "Demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "Demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout


def build(repo: Path) -> None:
    """A fresh git repository with FILES committed on main, checked out."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for name, text in FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Initial commit")
