"""What n samples cost in latency through llama.cpp's server: the proxy's sampler against a real engine.

Starts SmolLM2-135M with the command `ttc engines` prints (one thread), then for each n asks the
sampler for n samples of one arithmetic question (16 tokens, temperature 0.7), `--reps` times,
and prints the wall time of all n, the fastest single request, and their ratio: the figure the
proxy reports as `ttc.latency_ratio`. llama.cpp ignores the API's `n`, so the n samples go as
concurrent single requests, which its server runs one at a time.

    python benchmarks/serve_latency.py [--ns 1 2 4 8] [--reps 3] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

# the repository root first: this folder's serve.py would otherwise shadow the serve package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.engines import engine_commands  # noqa: E402
from serve.upstream import CHAT, Upstream, Upstreams  # noqa: E402

MESSAGES = [
    {"role": "user", "content": "Calculate 2 + 6."},
    {"role": "assistant", "content": "2 + 6 = 8. The answer is 8."},
    {"role": "user", "content": "Calculate 3 + 4."},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _measure(url: str, ns: list[int], reps: int, max_tokens: int) -> None:
    ups = Upstreams({"smollm2-135m": Upstream("smollm2-135m", url)}, timeout_s=600)
    await ups.start()
    body = {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.7}
    await ups.sample("smollm2-135m", CHAT, body, 2)  # warm-up; also learns that the engine ignores n
    print(f"{'n':>3} {'wall s (median)':>16} {'fastest request s':>18} {'ratio (median)':>15} {'requests':>9}")
    for n in ns:
        walls, fastest, ratios = [], [], []
        for _ in range(reps):
            s = await ups.sample("smollm2-135m", CHAT, body, n)
            walls.append(s.upstream_s)
            fastest.append(min(s.request_s))
            ratios.append(s.upstream_s / min(s.request_s))
        med = statistics.median
        print(f"{n:>3} {med(walls):>16.2f} {med(fastest):>18.2f} {med(ratios):>15.2f} {s.requests:>9}")
    await ups.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8], help="sample counts to measure")
    ap.add_argument("--reps", type=int, default=3, help="requests per sample count")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per sample")
    args = ap.parse_args()
    engine = replace(engine_commands(["smollm2-135m"])[0], port=_free_port())
    log = Path(tempfile.mkdtemp()) / "llama.log"
    proc = subprocess.Popen(engine.argv(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{engine.url}/models", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"llama.cpp server did not start; its log: {log}") from None
                time.sleep(0.3)
        print(f"engine: {engine.command()}")
        asyncio.run(_measure(engine.url, args.ns, args.reps, args.max_tokens))
    finally:
        proc.kill()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
