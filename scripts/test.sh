#!/usr/bin/env bash
# Install hyperion with its test extras into .venv (created if missing), then run the checks:
# ruff, mypy and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check src tests bench inbox-example
.venv/bin/mypy src
.venv/bin/python -m pytest -p no:cacheprovider "$@"
