"""The served policy's accuracy and predicted joules on the reference's held-out questions, through `ttc serve`.

One run, side by side: a policy is trained on a seeded 60% of the reference
collection's queries (`train.fit.fit_policy`, so the bundle carries its
default price, prompts.json and its look-then-decide rule), and 200 of the
other 40% are sent through `ttc serve` (a real subprocess, the exported
default price, the trained prompt) in four passes over the same questions:

- `policy`: the bundle's rule at its exported price, look-then-decide on;
- `policy_one_stage`: the same with `--no-look`;
- `best_arm`: every request forced (`ttc: {"arm": ...}`) to the most accurate
  arm of the bundle's training frontier;
- `greedy_small`: every request forced to the small model's greedy arm.

The engine is a replay (tests/fakes/replay_upstream.py), not a model: it
answers each request with the reference's stored samples of that question at
the requested model, temperature and cap (a sample the cap cut answers with
its graded answer at that cap, token log-probabilities cut at the cap), so accuracy is the
graded outcome of real recorded samples and every joule is the policy's
*prediction* (the reference's joules are estimated: process CPU time x 12 W
per core). `stored_accuracy` is the store's own vote of the same arm on the
same questions (store/views.py), a check on the replay; `replay_check_cut`
forces the look's first arm (a short cap that cuts many samples) for the same
check where texts are cut.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMALL_GREEDY = "smollm2-135m/n1/L64/greedy"


async def _send(url: str, items: list[tuple[str, str]], ttc: dict[str, Any], concurrency: int) -> list[dict]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(question: str, task: str) -> dict:
            body = {"model": "ttc", "messages": [{"role": "user", "content": question}], "ttc": {"task": task, **ttc}}
            async with sem:
                r = await client.post(f"{url}/chat/completions", json=body)
            r.raise_for_status()
            return r.json()["ttc"]

        return await asyncio.gather(*(one(q, t) for q, t in items))


def _serve(bundle: Path, upstream_url: str, models: list[str], extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`ttc serve` in its own process, once it answers /health."""
    from tests.fakes.openai_upstream import wait_http

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ups = [a for m in models for a in ("--upstream", f"{m}={upstream_url}")]
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle), "--port", str(port), *ups, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120)
    except Exception:
        proc.kill()
        raise RuntimeError(f"ttc serve did not start: {proc.stderr.read().decode()[-2000:]}") from None
    return proc, f"http://127.0.0.1:{port}/v1"


def _summary(replies: list[dict], items: list[tuple[str, str]], right: dict[str, set[str]]) -> dict[str, Any]:
    ok = [
        r["answer"] is not None and r["answer"] in right.get(q, set()) for r, (q, _) in zip(replies, items, strict=True)
    ]
    out = {
        "requests": len(replies),
        "accuracy": round(float(np.mean(ok)), 4),
        "mean_predicted_j": round(float(np.mean([r["predicted_j"] for r in replies])), 3),
        "mean_samples": round(float(np.mean([r["samples"] for r in replies])), 3),
        "arms_top5": dict(Counter(r["arm"] for r in replies).most_common(5)),
        "prompt_template": Counter(r["prompt"]["template"] for r in replies).most_common(1)[0][0],
    }
    looks = [r["look"]["action"] for r in replies if r.get("look")]
    if looks:
        out["look_actions"] = dict(Counter(looks))
    return out


def _stored_accuracy(samples: Any, query_ids: list[str], arm_id: str) -> float:
    from policy.arms import Arm
    from store.views import arm_outcomes

    rows = arm_outcomes(samples[samples["query_id"].isin(query_ids)], [Arm.parse(arm_id)])
    return round(float(rows["correct"].mean()), 4)


def accuracy_run(
    reference: Path, n_requests: int = 200, seed: int = 0, concurrency: int = 4, trials: int = 0
) -> dict[str, Any]:
    """Train on 60% of `reference`, then serve `n_requests` held-out questions four ways (see the module docstring)."""
    from policy.bundle import load_bundle
    from store.loader import load_samples
    from tests.fakes.openai_upstream import ThreadServer
    from tests.fakes.replay_upstream import correct_answers, make_replay_upstream
    from train.fit import TrainConfig, fit_policy

    t0 = time.perf_counter()
    samples = load_samples(reference)
    queries = np.asarray(sorted(samples["query_id"].unique()))
    order = np.random.default_rng(seed).permutation(len(queries))
    n_train = int(round(0.6 * len(queries)))
    train_ids, held = sorted(queries[order[:n_train]]), sorted(queries[order[n_train:]])
    if len(held) < n_requests:
        raise SystemExit(f"the reference holds {len(held)} held-out queries, fewer than --accuracy-requests")
    ask = sorted(np.random.default_rng(seed + 1).choice(held, size=n_requests, replace=False))
    tmp = tempfile.TemporaryDirectory()
    cfg = TrainConfig(n_trials=trials, num_threads=1, seed=seed)
    bundle = fit_policy(samples, train_ids, cfg, Path(tmp.name) / "bundle")
    policy = load_bundle(bundle)
    train_s = time.perf_counter() - t0
    f = policy.frontier
    test = samples[samples["query_id"].isin(ask)]
    first = test.drop_duplicates("query_id").set_index("query_id")
    items = [(str(first.loc[q, "question"]), str(first.loc[q, "task"])) for q in ask]
    right = correct_answers(test)
    replay = make_replay_upstream(test)
    passes: dict[str, Any] = {}
    with ThreadServer(replay) as up:
        url = f"{up.url}/v1"
        for name, extra, ttc in (
            ("policy", [], {}),
            ("policy_one_stage", ["--no-look"], {}),
            ("best_arm", [], {"arm": f.best_arm.arm_id}),
            ("greedy_small", [], {"arm": SMALL_GREEDY}),
            ("replay_check_cut", [], {"arm": policy.first_arm or SMALL_GREEDY}),
        ):
            replay.state.reset()
            proc, proxy = _serve(bundle, url, policy.models, extra)
            try:
                t = time.perf_counter()
                replies = asyncio.run(_send(proxy, items, ttc, concurrency))
                passes[name] = {**_summary(replies, items, right), "wall_s": round(time.perf_counter() - t, 1)}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            if "arm" in ttc:
                passes[name]["arm"] = ttc["arm"]
                passes[name]["stored_accuracy"] = _stored_accuracy(samples, list(ask), ttc["arm"])
    tmp.cleanup()
    return {
        "engine": "replay of the reference's stored samples (tests/fakes/replay_upstream.py), not a model",
        "joules": f"predicted by the policy ({policy.energy_source} training joules)",
        "reference": str(reference),
        "train_queries": len(train_ids),
        "held_out_queries": len(held),
        "requests": n_requests,
        "seed": seed,
        "optuna_trials": trials,
        "train_s": round(train_s, 1),
        "exported_price": {"lam": policy.rule.lam, "frontier": f.describe()},
        "stage_two_first_arm": policy.first_arm,
        "passes": passes,
        "policy_vs_best_arm": {
            "accuracy_points": round(100 * (passes["policy"]["accuracy"] - passes["best_arm"]["accuracy"]), 2),
            "joules_ratio": round(passes["policy"]["mean_predicted_j"] / passes["best_arm"]["mean_predicted_j"], 3),
        },
        "policy_vs_greedy_small": {
            "accuracy_points": round(100 * (passes["policy"]["accuracy"] - passes["greedy_small"]["accuracy"]), 2),
            "joules_ratio": round(passes["policy"]["mean_predicted_j"] / passes["greedy_small"]["mean_predicted_j"], 3),
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(accuracy_run(ROOT / "data" / "reference"), indent=2))
