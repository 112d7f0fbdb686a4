#!/usr/bin/env bash
# Install hyperion into .venv (created if missing) and run the bundled example end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
.venv/bin/python inbox-example/demo.py
