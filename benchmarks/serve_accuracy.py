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


def _gold_answers(samples: Any, kind_of: dict[str, str]) -> dict[str, str | None]:
    """Per question, its gold answer as the proxy's extraction normalises it (so a live engine can be graded)."""
    from serve.decide import EXTRACTORS

    first = samples.drop_duplicates("question")
    triples = zip(first["question"], first["task"], first["gold"], strict=True)
    return {q: EXTRACTORS[kind_of[t]](f"The answer is {g}.")[0] for q, t, g in triples}


def llama_run(reference: Path, n_requests: int = 40, seed: int = 0, trials: int = 0) -> dict[str, Any]:
    """The same split and bundle, `n_requests` held-out questions through `ttc serve` in front of the *real*
    llama.cpp servers of both models (Q4 GGUFs, one thread each): the policy and the small model's greedy arm.

    Accuracy is graded against each question's gold answer; `stored_accuracy` is the reference's own
    (bf16, in-process) figure for the same arm on the same questions, so the difference is what serving
    the Q4 engine costs. Joules are still predictions.
    """
    from collect.models import resolve_model
    from policy.bundle import load_bundle
    from serve.decide import TTCOptions, answer_kind
    from store.loader import load_samples
    from tests.fakes.openai_upstream import wait_http
    from train.fit import TrainConfig, fit_policy

    samples = load_samples(reference)
    queries = np.asarray(sorted(samples["query_id"].unique()))
    order = np.random.default_rng(seed).permutation(len(queries))
    n_train = int(round(0.6 * len(queries)))
    train_ids, held = sorted(queries[order[:n_train]]), sorted(queries[order[n_train:]])
    ask = sorted(np.random.default_rng(seed + 1).choice(held, size=n_requests, replace=False))
    tmp = tempfile.TemporaryDirectory()
    bundle = fit_policy(
        samples, train_ids, TrainConfig(n_trials=trials, num_threads=1, seed=seed), Path(tmp.name) / "b"
    )
    policy = load_bundle(bundle)
    test = samples[samples["query_id"].isin(ask)]
    first = test.drop_duplicates("query_id").set_index("query_id")
    items = [(str(first.loc[q, "question"]), str(first.loc[q, "task"])) for q in ask]
    kind_of = {t: answer_kind(TTCOptions(task=t)) for t in set(test["task"])}
    gold = _gold_answers(test, kind_of)
    engines, urls = [], {}
    try:
        for m in policy.models:
            spec = resolve_model(m)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(Path(spec.location) / spec.gguf_file)]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
            cmd += ["--n_threads_batch", "1"]
            engines.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls[m] = f"http://127.0.0.1:{port}/v1"
            wait_http(f"{urls[m]}/models", timeout_s=180)
        passes: dict[str, Any] = {}
        for name, ttc in (("policy", {}), ("greedy_small", {"arm": SMALL_GREEDY})):
            ups = [a for m in policy.models for a in ("--upstream", f"{m}={urls[m]}")]
            proc, proxy = _serve_to(bundle, ups)
            try:
                t = time.perf_counter()
                replies = asyncio.run(_send(proxy, items, ttc, 2))
                ok = [
                    r["answer"] is not None and r["answer"] == gold[q] for r, (q, _) in zip(replies, items, strict=True)
                ]
                passes[name] = {
                    "requests": len(replies),
                    "accuracy": round(float(np.mean(ok)), 4),
                    "mean_predicted_j": round(float(np.mean([r["predicted_j"] for r in replies])), 3),
                    "mean_samples": round(float(np.mean([r["samples"] for r in replies])), 3),
                    "wall_s": round(time.perf_counter() - t, 1),
                }
                looks = [r["look"]["action"] for r in replies if r.get("look")]
                if looks:
                    passes[name]["look_actions"] = dict(Counter(looks))
                arms = [r["arm"] for r in replies]
                passes[name]["stored_accuracy_same_arms"] = round(float(np.mean(
                    _stored_correct(samples, ask, arms))), 4)  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        for e in engines:
            e.terminate()
        tmp.cleanup()
    return {
        "engine": "llama.cpp servers (llama-cpp-python) with the packaged Q4 GGUFs, one thread each",
        "joules": f"predicted by the policy ({policy.energy_source} training joules)",
        "requests": n_requests,
        "exported_price": policy.rule.lam,
        "passes": passes,
    }


def _stored_correct(samples: Any, query_ids: list[str], arm_ids: list[str]) -> list[bool]:
    """The reference's own outcome (store/views.py vote) of each question's arm: what the bf16 collector got."""
    from policy.arms import Arm
    from store.views import arm_outcomes

    out = []
    for q, a in zip(query_ids, arm_ids, strict=True):
        rows = arm_outcomes(samples[samples["query_id"] == q], [Arm.parse(a)])
        out.append(bool(rows["correct"].iloc[0]))
    return out


def _serve_to(bundle: Path, ups: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tests.fakes.openai_upstream import wait_http

    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle), "--port", str(port), *ups]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120)
    return proc, f"http://127.0.0.1:{port}/v1"


if __name__ == "__main__":
    import json

    if "--llama" in sys.argv:
        print(json.dumps(llama_run(ROOT / "data" / "reference"), indent=2))
    else:
        print(json.dumps(accuracy_run(ROOT / "data" / "reference"), indent=2))
