#!/usr/bin/env bash
# The project's checks: one lint gate (ruff check + ruff format), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
