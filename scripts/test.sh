#!/usr/bin/env bash
# The project's checks: one lint gate (ruff check + ruff format), the documentation site
# (mkdocs build --strict: a broken link, page or generated reference fails), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
# not --quiet: it hides the warnings that --strict counts. Printed only when the build fails.
if ! docs_log="$(PATH="$PWD/.venv/bin:$PATH" NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site_dir" 2>&1)"; then
    echo "$docs_log" >&2
    exit 1
fi
.venv/bin/python -m pytest -q "$@"
