"""Tasks: agent harnesses run in worktrees, their changes judged, checked and landed."""
