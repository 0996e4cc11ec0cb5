"""Benchmark the exported policy: decision latency and the energy a decision costs.

For each backend (lightgbm, onnx) and batch size (1, 1000) this times
`Policy.allocate` end to end, text features included, and prints the latency
per query (p50, p99). It then meters the decisions with the estimating meter
(process CPU time x 12 W per busy core, the same estimate as
collect/energy/estimate.py, so the figure is labelled *estimated*) and prints a
decision's joules as a fraction of the cheapest arm's joules for the same query.

The cheapest arm's joules come from the sample store when `--store` is given
(the arm view's measured or estimated joules, whichever the store holds), else
from the policy's own predictions. Without `--bundle` a synthetic bundle is
trained and exported to a temp folder first (tests/policy_fixtures.py).
Targets: p50 <= 1 ms per query at batch 1; a decision <= 1 % of the cheapest arm.

    python benchmarks/policy.py [--bundle DIR|ZIP] [--store DIR] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collect.energy import make_meter  # noqa: E402
from policy.bundle import Policy, load_bundle  # noqa: E402
from policy.runtime import BACKENDS  # noqa: E402

BATCH_SIZES = (1, 1000)


def _queries(args: argparse.Namespace) -> tuple[list[str], list[str | None], dict[str, float] | None, str]:
    """(questions, tasks, cheapest arm joules per question or None, where the joules came from)."""
    if args.store:
        from store.shards import read_samples
        from store.views import arm_outcomes, queries

        samples = read_samples(args.store)
        q = queries(samples)
        arms = arm_outcomes(samples)
        cheapest = arms.groupby("query_id")["energy_j"].min()
        source = "/".join(sorted(set(arms["energy_source"])))
        return list(q["question"]), list(q["task"]), [float(cheapest[i]) for i in q["query_id"]], f"store ({source})"
    sys.path.insert(0, str(ROOT / "tests"))
    from policy_fixtures import synthetic_questions

    questions, tasks, _ = synthetic_questions(1000, seed=123)
    return questions, tasks, None, "policy prediction"


def _bundle(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    sys.path.insert(0, str(ROOT / "tests"))
    from policy_fixtures import build_synthetic_bundle

    out = Path(tempfile.mkdtemp(prefix="ttc-bench-")) / "policy"
    print(f"no --bundle: exporting a synthetic policy to {out}")
    return build_synthetic_bundle(out)


def _latency_ms(policy: Policy, questions: list[str], tasks: list, batch: int, repeats: int) -> np.ndarray:
    """Per-query latency in ms of each timed call."""
    n = len(questions)
    times = []
    for r in range(repeats):
        start = (r * batch) % n
        idx = [(start + k) % n for k in range(batch)]
        qs, ts = [questions[i] for i in idx], [tasks[i] for i in idx]
        t0 = time.perf_counter()
        policy.allocate(qs, ts)
        times.append((time.perf_counter() - t0) * 1e3 / batch)
    return np.asarray(times)


def _decision_energy_j(policy: Policy, questions: list[str], tasks: list, batch: int, calls: int) -> float:
    """Estimated joules per decided query, over `calls` calls of `batch` queries."""
    meter = make_meter("estimate")
    n = len(questions)
    batches = []
    for r in range(calls):
        idx = [((r * batch) + k) % n for k in range(batch)]
        batches.append(([questions[i] for i in idx], [tasks[i] for i in idx]))
    meter.begin_window("decide")
    for qs, ts in batches:
        policy.allocate(qs, ts)
    m = meter.end_window("decide")
    return m.energy_j / (batch * calls)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="policy bundle folder or .zip (default: export a synthetic one to a temp folder)")
    ap.add_argument("--store", help="sample store folder: its questions, and its cheapest arm's joules per query")
    ap.add_argument("--repeats", type=int, default=300, help="timed calls at batch 1 (batch 1000 uses repeats/30)")
    ap.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    bundle = _bundle(args)
    questions, tasks, cheapest_j, cheap_src = _queries(args)
    results: dict = {"bundle": str(bundle), "cheapest_arm_joules_from": cheap_src, "backends": {}}
    print(f"bundle {bundle}; {len(questions)} questions; decision energy: estimate meter (estimated, 12 W/core)")
    for backend in BACKENDS:
        policy = load_bundle(bundle, backend=backend)
        policy.allocate(questions[:50], tasks[:50])  # warm up
        row: dict = {"energy_source_of_policy": policy.energy_source}
        for batch in BATCH_SIZES:
            reps = args.repeats if batch == 1 else max(3, args.repeats // 30)
            lat = _latency_ms(policy, questions, tasks, batch, reps)
            row[f"batch{batch}_p50_ms"] = float(np.percentile(lat, 50))
            row[f"batch{batch}_p99_ms"] = float(np.percentile(lat, 99))
            per_j = _decision_energy_j(policy, questions, tasks, batch, reps)
            if cheapest_j is None:
                _, e = policy.predict(questions, tasks)
                cheap = float(np.median(e.min(axis=1)))
            else:
                cheap = float(np.median(cheapest_j))
            row[f"batch{batch}_decision_j_estimated"] = per_j
            row[f"batch{batch}_fraction_of_cheapest_arm"] = per_j / cheap
            row["cheapest_arm_median_j"] = cheap
            print(
                f"{backend:9s} batch {batch:5d}: p50 {row[f'batch{batch}_p50_ms']:.3f} ms/query, "
                f"p99 {row[f'batch{batch}_p99_ms']:.3f} ms/query; decision {per_j * 1e3:.3f} mJ (estimated) = "
                f"{100 * per_j / cheap:.3f} % of the cheapest arm ({cheap:.3g} J median, from {cheap_src})"
            )
        results["backends"][backend] = row
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
