"""Benchmark `ttc serve`: the proxy's own overhead beyond the upstream's time, on loopback.

Starts a fast fake OpenAI-compatible engine (tests/fakes/openai_upstream.py;
it answers after `--upstream-delay-ms`, default 20 ms, spent sleeping, so the
engine itself uses almost no CPU) and `ttc serve` in front of it, each in its own process, then sends a bounded
load (default 200 requests at concurrency 8, after 20 warm-up requests) with
an async httpx client, and the same load straight to the engine. It prints,
p50 and p99 in milliseconds:

- `handler_ms`: the proxy's own work inside its request handler, upstream
  wait excluded (x-ttc-proxy-ms: read and check the body, features, the
  policy's predictions and rule, the vote, the response);
- `beyond_upstream_ms`: per request, the client's end-to-end time minus the
  proxy's measured wait on the upstream (x-ttc-upstream-ms), so it also holds
  the extra loopback hop and uvicorn's HTTP work;
- `added_ms`: end-to-end p50/p99 through the proxy minus straight to the engine;
- `proxy_cpu_ms_per_request`: the proxy process's CPU time (user + system,
  /proc) over the load divided by the requests: its cost free of waiting for
  a core, which on a busy machine dominates the latencies above; beside it
  `fake_engine_cpu_ms_per_request`, the same for the fake engine (a bare
  FastAPI app under uvicorn), the floor of one HTTP hop in Python.

Target: beyond_upstream_ms p50 <= 2 ms. With `--llama-url URL/v1` it also
sends `--llama-requests` requests through a proxy in front of that real
engine (e.g. a llama.cpp server) and reports the same split. Every load is
bounded and the script stops by itself. Without `--bundle` a synthetic bundle
is trained and exported to a temp folder first (tests/policy_fixtures.py).

Beside the overhead, `reference_heldout` (benchmarks/serve_accuracy.py): a
policy trained on 60% of the reference collection, and `--accuracy-requests`
(200) of the other queries sent through `ttc serve` at the bundle's exported
default price, with the trained prompt and look-then-decide, then forced to
the most accurate arm and to the small model's greedy arm, in one run:
accuracy and predicted joules per request side by side. Its engine replays
the reference's stored samples (not a model: see that module);
`--accuracy-requests 0` skips it.

    python benchmarks/serve.py [--bundle DIR] [--requests 200] [--concurrency 8] [--llama-url URL]
                               [--accuracy-requests 200] [--accuracy-trials 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_upstream import wait_http  # noqa: E402

QUESTIONS = [
    "What is 7 + 5?",
    "Tom has 3 apples and buys 12 more. How many apples does he have?",
    "Start with 12, then plus 30, then minus 5. What is the result?",
    "Compute 1234 * 5678 - 91011.",
]
FAKE = (
    "import sys, uvicorn; from tests.fakes.openai_upstream import make_fake_upstream; "
    "app = make_fake_upstream(delay_s=float(sys.argv[2])); "
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning', access_log=False)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(health, timeout_s=90)
    except Exception:
        proc.kill()
        raise
    return proc


async def load(url: str, model: str, n_requests: int, concurrency: int, max_tokens: int | None) -> list[dict]:
    """Send `n_requests` chat completions with at most `concurrency` in flight; per-request timings."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(i: int) -> dict:
            body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            if max_tokens:
                body["max_tokens"] = max_tokens
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(f"{url}/chat/completions", json=body)
                e2e_ms = (time.perf_counter() - t0) * 1e3
            r.raise_for_status()
            h = r.headers
            return {
                "e2e_ms": e2e_ms,
                "upstream_ms": float(h.get("x-ttc-upstream-ms", "nan")),
                "handler_ms": float(h.get("x-ttc-proxy-ms", "nan")),
            }

        return await asyncio.gather(*(one(i) for i in range(n_requests)))


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3)}


def proxy_run(bundle: Path, upstream_url: str, models: list[str], warmup: int, n: int, conc: int, tokens) -> dict:
    port = free_port()
    ups = [a for m in models for a in ("--upstream", f"{m}={upstream_url}")]
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle), "--port", str(port), *ups]
    proc = start(cmd, f"http://127.0.0.1:{port}/health")
    try:
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(load(url, "ttc", warmup, conc, tokens))
        cpu0 = cpu_s(proc.pid)
        rows = asyncio.run(load(url, "ttc", n, conc, tokens))
        cpu_ms = (cpu_s(proc.pid) - cpu0) * 1e3 / n
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "requests": n,
        "concurrency": conc,
        "e2e_ms": pct([r["e2e_ms"] for r in rows]),
        "upstream_ms": pct([r["upstream_ms"] for r in rows]),
        "handler_ms": pct([r["handler_ms"] for r in rows]),
        "beyond_upstream_ms": pct([r["e2e_ms"] - r["upstream_ms"] for r in rows]),
        "proxy_cpu_ms_per_request": round(cpu_ms, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder or .zip (default: a synthetic one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--upstream-delay-ms",
        type=float,
        default=20.0,
        help="the fake engine's answer time (a sleep, no CPU); 0 makes the load CPU-bound on small machines",
    )
    ap.add_argument("--llama-url", help="base URL (ending in /v1) of a running llama.cpp or other engine")
    ap.add_argument("--llama-requests", type=int, default=12)
    ap.add_argument("--llama-max-tokens", type=int, default=32, help="client cap on tokens per sample")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    ap.add_argument(
        "--accuracy-requests", type=int, default=200, help="held-out reference questions served (0: skip that run)"
    )
    ap.add_argument("--accuracy-trials", type=int, default=0, help="Optuna trials of that run's policy (0: defaults)")
    args = ap.parse_args()

    from policy.bundle import load_bundle

    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle
    if bundle is None:
        from tests.policy_fixtures import build_synthetic_bundle

        bundle = build_synthetic_bundle(Path(tmp.name) / "bundle")
    models = load_bundle(bundle).models

    fake_port = free_port()
    delay_s = str(args.upstream_delay_ms / 1e3)
    fake = start([sys.executable, "-c", FAKE, str(fake_port), delay_s], f"http://127.0.0.1:{fake_port}/")
    try:
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        asyncio.run(load(fake_url, models[0], args.warmup, args.concurrency, None))
        cpu0 = cpu_s(fake.pid)
        direct = asyncio.run(load(fake_url, models[0], args.requests, args.concurrency, None))
        engine_cpu_ms = (cpu_s(fake.pid) - cpu0) * 1e3 / args.requests
        via = proxy_run(bundle, fake_url, models, args.warmup, args.requests, args.concurrency, None)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
    direct_e2e = pct([r["e2e_ms"] for r in direct])
    via["direct_e2e_ms"] = direct_e2e
    via["fake_engine_cpu_ms_per_request"] = round(engine_cpu_ms, 3)
    via["added_ms"] = {k: round(via["e2e_ms"][k] - direct_e2e[k], 3) for k in ("p50", "p99")}
    # the machine's load when measured: latencies on shared cores include waiting for a core
    via["upstream_delay_ms"] = args.upstream_delay_ms
    report = {"fake_upstream": via, "target_beyond_upstream_p50_ms": 2.0, "loadavg_1min": os.getloadavg()[0]}
    if args.llama_url:
        n, tok = args.llama_requests, args.llama_max_tokens
        report["llama_cpp"] = proxy_run(bundle, args.llama_url.rstrip("/"), models, 2, n, 2, tok)
    if args.accuracy_requests > 0:
        from benchmarks.serve_accuracy import accuracy_run

        reference = ROOT / "data" / "reference"
        report["reference_heldout"] = accuracy_run(reference, args.accuracy_requests, trials=args.accuracy_trials)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
