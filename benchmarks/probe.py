"""Difficulty from the model itself: text-only vs text+probe vs two-stage, cross-fitted, side by side.

    .venv/bin/python benchmarks/probe.py --store data/reference [--folds 5] [--split query|task] [--n-boot 1000]

--store may be given more than once (one store per model, collected side by side): their samples
are read together and the probe comes from the store that holds the probe model's probes.

For each policy, every query is held out once (eval/crossfit.py: K query folds,
or leave-one-task-out with --split task) and a policy per fold is trained on
the rest: "text" and "text+probe" (the probe of --probe-model, default the
cheapest model; its PCA fitted per fold) through the `learned` allocator, and
the `two_stage` allocator (first-sample signals + text) on the text folds.
Printed per method: held-out Brier and AUC of the success predictor over every
(query, arm) pair (hard labels), the energy saved at the best fixed arm's
accuracy, the accuracy gain at its joules, the share of the oracle's saving,
the saving minus each peer rule's (Adaptive-Consistency, ESC) and the accuracy
minus random arms' at the best fixed arm's joules, each with a paired
bootstrap 95% interval ("undef": the frontier never reaches that accuracy);
then the probe's joules as a share of the cheapest arm's, the decision
latency of a probe policy per query excluding the model's prefill, and the
latency of the exported stage-2 decision (`Policy.decide_after_look`, a text
policy trained on the whole store with its stage2.json) at batch 1 and 1,000.
`--stage-two-latency-only` prints only that last line (no cross-fitting).
Reads the store, writes only temporary bundles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.allocators.two_stage import stage_two_scores  # noqa: E402
from eval.headline import compute_headline  # noqa: E402
from eval.inputs import cross_fitted  # noqa: E402
from eval.report import headline_inputs  # noqa: E402
from eval.stage import EvalConfig, evaluate  # noqa: E402
from policy.errors import UsageError  # noqa: E402
from store.loader import load_samples  # noqa: E402
from train.dataset import default_probe_model, load_probes  # noqa: E402

BASE = ("fixed", "oracle", "random", "early_stopping", "adaptive_consistency", "esc")
PEERS = ("adaptive_consistency", "esc", "random")


def _iv(iv) -> str:
    """point [low, high]; "undef" where the frontier never reaches the reference accuracy (no equal-accuracy point)."""
    if iv is None or not np.isfinite(iv.point):
        return "undef"
    return f"{iv.point:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def _headline(ev, curve: str, n_boot: int, seed: int):
    """The headline of `curve` in place of the learned one, the peers being AC, ESC and random arms."""
    ctx, curves = ev.ctx, ev.curves
    x = headline_inputs(ctx, {**curves, "learned": curves[curve]}, np.arange(ctx.test.n_queries))
    x = replace(x, peers={n: curves[n].data() for n in PEERS if n in curves})
    return compute_headline(x, ev.report["energy"]["source"], n_boot, seed)


def _row(name: str, scores: dict, h) -> list[str]:
    peers = {p.peer: p.learned_minus_peer_energy_saved for p in h.peers}
    vs_random = {p.peer: p.learned_minus_peer_accuracy_at_equal_energy for p in h.peers}.get("random")
    return [
        name,
        f"{scores['success_brier']:.4f}",
        f"{scores['success_auc']:.3f}",
        f"{h.learned_top_accuracy.point:.3f}",
        _iv(h.energy_saved_at_equal_accuracy),
        _iv(h.accuracy_gain_at_equal_energy),
        _iv(h.oracle_share_of_energy_saving),
        _iv(peers.get("adaptive_consistency")),
        _iv(peers.get("esc")),
        _iv(vs_random),
    ]


def _probes(stores: list[str], model: str):
    """The probe table of `model` from the first store that holds it."""
    for i, store in enumerate(stores):
        try:
            return load_probes(store, model)
        except UsageError:
            if i == len(stores) - 1:
                raise
    raise UsageError("no store given")


def run(store: str | list[str], folds: int, split: str, n_boot: int, fold_trials: int, probe_model: str | None,
        seed: int):  # fmt: skip
    stores = [store] if isinstance(store, str) else list(store)
    samples = pd.concat([load_samples(s) for s in stores], ignore_index=True)
    probe_model = probe_model or default_probe_model(samples)
    probes = _probes(stores, probe_model)
    # queries with a probe and samples of every model (stores collected side by side may be mid-way)
    per_q = samples.groupby("query_id")["model"].nunique()
    full = set(per_q.index[per_q == samples["model"].nunique()].astype(str))
    samples = samples[samples["query_id"].astype(str).isin(full & set(probes.query_ids))]
    held = cross_fitted(samples, split, folds, seed)
    table, evs = [], {}
    for fs, extra in (("text", ("learned", "two_stage")), ("text+probe", ("learned",))):
        cfg = EvalConfig(split, n_boot, seed, allocators=(*BASE, *extra), folds=folds, fold_trials=fold_trials)
        with tempfile.TemporaryDirectory(prefix="ttc-probe-bench-") as work:
            ev = evaluate(samples, None, held, cfg, Path(work), {"store": "+".join(stores)}, probes, feature_set=fs)
        evs[fs] = ev
        pred = ev.ctx.predictions("test")
        scores = stage_two_scores(pred.p, ev.ctx.test.correct)
        table.append(_row(f"learned {fs}", scores, _headline(ev, "learned", n_boot, seed)))
        if "two_stage" in ev.curves:
            table.append(
                _row("two_stage (text)", ev.curves["two_stage"].notes, _headline(ev, "two_stage", n_boot, seed))
            )
    return samples, probes, evs, table


def _latency(ev, probes, n: int = 2000) -> float:
    """ms per query of Policy.allocate on a probe policy, given raw probes (no prefill), over n queries."""
    policy = ev.ctx.folds[0].policy
    t = ev.ctx.test
    reps = -(-n // t.n_queries)
    questions, tasks = (list(t.questions) * reps)[:n], (list(t.tasks) * reps)[:n]
    raw = np.tile(probes.rows(list(t.query_ids))[0], (reps, 1))[:n]
    policy.allocate(questions[:10], tasks[:10], probe=raw[:10])  # warm-up
    t0 = time.perf_counter()
    policy.allocate(questions, tasks, probe=raw)
    return (time.perf_counter() - t0) * 1000 / n


def _latency_one(ev, probes, n: int = 200) -> float:
    """p50 ms of Policy.allocate on one query at a time (raw probe given), over n calls."""
    policy, t = ev.ctx.folds[0].policy, ev.ctx.test
    raw = probes.rows(list(t.query_ids))[0] if policy.needs_probe else None
    times = []
    for i in range(n):
        j = i % t.n_queries
        t0 = time.perf_counter()
        policy.allocate([t.questions[j]], [t.tasks[j]], probe=None if raw is None else raw[j : j + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


#: one-query calls timed back to back before the next kind's turn (benchmark of the stage-2 latency)
BLOCK = 25


def _stage_two_latency(
    samples: pd.DataFrame, n_one: int = 300, n_batch: int = 1000
) -> tuple[str, float, list[float], list[float]]:
    """(first arms, ms/query of decide_after_look in a batch of n_batch, and p50 ms on one query, back to back
    and with caches cold, of: decide_after_look, Policy.allocate, decide_after_look with the trees walked a
    step at a time (the evaluator before the all-nodes walk))."""
    from policy import forest
    from policy.bundle import load_bundle
    from train.fit import TrainConfig, fit_policy
    from train.two_stage import stage_one_signals

    ids = sorted(samples["query_id"].astype(str).unique())
    with tempfile.TemporaryDirectory(prefix="ttc-stage2-bench-") as work:
        cfg = TrainConfig(n_trials=0, num_threads=1, two_stage="on")
        policy = load_bundle(fit_policy(samples, ids, cfg, Path(work) / "b"))
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids]
    questions, tasks = q["question"].tolist(), q["task"].tolist()
    # each query's own first look (its task's, Policy.first_arm_for), as the proxy draws it
    looks = [policy.first_arm_for(t) for t in tasks]
    sig = np.zeros((len(ids), len(policy.stage_two_signals)), dtype=np.float32)
    for arm_id in sorted(set(looks)):
        rows = [i for i, a in enumerate(looks) if a == arm_id]
        first = next(a for a in policy.arms if a.arm_id == arm_id)
        sig[rows] = stage_one_signals(samples, [ids[i] for i in rows], first)
    first = ", ".join(sorted(set(looks)))
    policy.decide_after_look(questions[:10], sig[:10], tasks[:10])  # warm-up
    all_nodes = forest.ALL_NODES_CELLS

    def stepped(question: str, row: np.ndarray, task: str) -> None:
        forest.ALL_NODES_CELLS = 0  # the same decision through the step-at-a-time walk, for the ratio
        try:
            policy.decide_after_look([question], row, [task])
        finally:
            forest.ALL_NODES_CELLS = all_nodes

    calls = (
        lambda question, row, task: policy.decide_after_look([question], row, [task]),
        lambda question, row, task: policy.allocate([question], [task]),  # the one-stage decision, for scale
        stepped,
    )
    # blocks of BLOCK calls of one kind, the kinds in turn: a noisy machine slows all three alike, and each
    # call finds its own trees in the cache as back-to-back requests do (one call of each kind in turn
    # evicts the others' node arrays: a cold-cache p50, printed too)
    warm: list[list[float]] = [[] for _ in calls]
    cold: list[list[float]] = [[] for _ in calls]
    for start in range(0, n_one, BLOCK):
        for k, call in enumerate(calls):
            for i in range(start, min(start + BLOCK, n_one)):
                j = i % len(ids)
                t0 = time.perf_counter()
                call(questions[j], sig[j : j + 1], tasks[j])
                warm[k].append(time.perf_counter() - t0)
    for i in range(n_one // 3):
        j = i % len(ids)
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            call(questions[j], sig[j : j + 1], tasks[j])
            cold[k].append(time.perf_counter() - t0)
    reps = -(-n_batch // len(ids))
    qs, ts = (questions * reps)[:n_batch], (tasks * reps)[:n_batch]
    t0 = time.perf_counter()
    policy.decide_after_look(qs, np.tile(sig, (reps, 1))[:n_batch], ts)
    batch = (time.perf_counter() - t0) * 1000 / n_batch
    return first, batch, [float(np.median(t) * 1000) for t in warm], [float(np.median(t) * 1000) for t in cold]


def _print_stage_two_latency(samples: pd.DataFrame) -> None:
    first, batch, (one, alloc, stepped), (cold, cold_alloc, cold_stepped) = _stage_two_latency(samples)
    print(
        f"stage-2 decision latency (decide_after_look, text policy + stage2.json, numpy backend, each query's "
        f"first sample given, of {first}): p50 {one:.3f} ms for one query, back to back; {batch:.4f} ms/query in "
        f"a batch of 1,000 (in turn with it, {BLOCK} calls at a time: Policy.allocate on the same policy p50 "
        f"{alloc:.3f} ms; the same decision with the trees walked a step at a time, as before the all-nodes walk, "
        f"p50 {stepped:.3f} ms, ratio {one / stepped:.2f}; one call of each in turn, caches cold: p50 {cold:.3f}, "
        f"{cold_alloc:.3f} and {cold_stepped:.3f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, action="append", help="a store folder; repeatable")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--split", default="query", choices=["query", "task"])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--fold-trials", type=int, default=0, help="Optuna trials per fold predictor (0: defaults)")
    ap.add_argument("--probe-model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage-two-latency-only", action="store_true", help="print only the stage-2 latency line")
    a = ap.parse_args()
    if a.stage_two_latency_only:
        _print_stage_two_latency(pd.concat([load_samples(s) for s in a.store], ignore_index=True))
        return
    samples, probes, evs, table = run(a.store, a.folds, a.split, a.n_boot, a.fold_trials, a.probe_model, a.seed)
    ev = evs["text+probe"]
    h = ev.report["headline"]
    print(
        f"store {' + '.join(a.store)}: {ev.ctx.test.n_queries} queries evaluated (with a probe and every arm), "
        f"{len(set(ev.ctx.test.tasks))} tasks, "
        f"{a.folds if a.split == 'query' else 'leave-one-task-out'} folds ({a.split}), probe of {probes.model} "
        f"layer {probes.layer} ({probes.vectors.shape[1]} floats -> 16), best fixed arm {h.best_fixed_arm}, "
        f"{ev.report['energy']['label']}"
    )
    print(f"best fixed arm accuracy {h.best_fixed_accuracy.point:.3f} at {h.best_fixed_energy_j.point:.4g} J/query")
    head = [
        "method",
        "Brier",
        "AUC",
        "top acc",
        "saved@eq.acc",
        "acc.gain@eq.J",
        "oracle share",
        "saved-AC",
        "saved-ESC",
        "acc-random@eq.J",
    ]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    for r in [head, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    ctx = ev.ctx
    cheapest = int(np.argmin(ctx.test.energy_j.mean(axis=0)))
    probe_j = float(np.mean(probes.rows(list(ctx.test.query_ids))[1]))
    cheap_j = float(ctx.test.energy_j[:, cheapest].mean())
    print(
        f"probe prefill {probe_j:.4g} J/query = {probe_j / cheap_j:.1%} of the cheapest arm "
        f"{ctx.arm_ids[cheapest]} ({cheap_j:.4g} J); charged only when the chosen arm runs another model"
    )
    print(
        f"decision latency (text+probe policy, raw probes given, numpy backend): {_latency(ev, probes):.3f} ms/query "
        f"in a batch of 2,000; p50 {_latency_one(ev, probes):.3f} ms for one query at a time "
        f"(text policy: p50 {_latency_one(evs['text'], probes):.3f} ms)"
    )
    _print_stage_two_latency(samples)


if __name__ == "__main__":
    main()
