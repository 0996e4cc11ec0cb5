#!/usr/bin/env bash
# GPU check: NVML-measured joules per output token of a small random Llama at
# batch sizes 1, 8, 32, beside the idle power and the estimate meter's figure.
# Needs only torch, transformers and nvidia-ml-py; the repository need not be
# installed. Extra arguments go to scripts/gpu_check.py (see --help).
# Must never download anything; stops after 180 s whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,uuid,power.draw,power.limit --format=csv || true
fi
"$PYTHON" -c 'import torch, transformers, pynvml; print(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}")'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 180 "$PYTHON" scripts/gpu_check.py "$@"
