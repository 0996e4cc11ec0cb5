"""Benchmark the exported policy: decision latency, the energy a decision costs, and `ttc allocate` on a big file.

For each backend (numpy, lightgbm, onnx) and batch size (1, 1000) this times
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

Then it writes a JSONL file of `--allocate-queries` synthetic queries (default
100,000) and runs, each in its own process, the streamed `ttc allocate` path
(the `ttc allocate` command: chunks, numpy backend) and the old non-streaming
path kept below (`_old_allocate`: every query, feature row and decision in
memory at once, LightGBM backend, as `ttc allocate` did before), in price mode
(the stored rule) and in budget mode, reporting wall seconds (the whole
process, imports included), CPU seconds and peak RSS of each, and whether both
chose the same arms. Targets: <= 10 s and <= 500 MB.

    python benchmarks/policy.py [--bundle DIR|ZIP] [--store DIR] [--repeats 300] [--allocate-queries 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
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


def _old_allocate(bundle: str, input_path: str, output_path: str, budget_j: float | None) -> int:
    """`ttc allocate` before streaming: the whole file, every feature row and decision in memory at once."""
    from ttc.bundle_stages import read_queries_jsonl

    rows = read_queries_jsonl(input_path)
    policy = load_bundle(bundle, backend="lightgbm")
    decisions = policy.allocate(
        [r["question"] for r in rows], [r["task"] for r in rows], query_ids=[r["id"] for r in rows], budget_j=budget_j
    )
    extra = {"energy_source": policy.energy_source, "energy_meter": policy.energy_meter}
    lines = [json.dumps({**dataclasses.asdict(d), **extra}) for d in decisions]
    Path(output_path).write_text("\n".join(lines) + "\n")
    return len(lines)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork and exec,
    so a child started from this (bigger) benchmark process would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(path: str, bundle: str, input_path: str, output_path: str, budget_j: float | None) -> None:
    """Run one allocate path in this process; print its time, CPU time and peak RSS as JSON.

    "streamed" runs the `ttc allocate` command itself (its imports included in the time).
    """
    t0 = time.perf_counter()
    if path == "old":
        n = _old_allocate(bundle, input_path, output_path, budget_j)
    else:
        from ttc.cli import app

        args = ["allocate", "--bundle", bundle, "--input", input_path, "--output", output_path]
        app([*args, *(["--budget-j", str(budget_j)] if budget_j is not None else [])], standalone_mode=False)
        n = sum(1 for _ in open(output_path))
    stage_s, cpu_s = time.perf_counter() - t0, time.process_time()
    print(json.dumps({"n": n, "stage_s": stage_s, "cpu_s": cpu_s, "peak_rss_mb": _peak_rss_mb()}))


def _write_queries(path: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from policy_fixtures import synthetic_questions

    questions, tasks, _ = synthetic_questions(n, seed=321)
    with path.open("w", encoding="utf-8") as f:
        for i, (q, t) in enumerate(zip(questions, tasks, strict=True)):
            # task names of the registry, so both paths featurise them alike (allocate maps unknown ones to None)
            f.write(
                json.dumps({"id": f"q{i}", "question": q, "task": "rg.chain_sum" if t == "chain_sum" else t}) + "\n"
            )


def _allocate_file(bundle: Path, n: int) -> dict:
    """Streamed vs old `ttc allocate` on n queries, price (the stored rule) and budget mode, each in a fresh process."""
    work = Path(tempfile.mkdtemp(prefix="ttc-bench-alloc-"))
    queries = work / "queries.jsonl"
    _write_queries(queries, n)
    # a feasible budget: half way between the cheapest arms and the stored rule's choice, on a sample
    from ttc.bundle_stages import read_queries_jsonl

    sample = read_queries_jsonl(queries)[:2000]
    policy = load_bundle(bundle)
    p, e = policy.predict([r["question"] for r in sample], [r["task"] for r in sample])
    chosen = np.mean([d.energy_j for d in policy.allocate_predictions(p, e)])
    budget_j = float(round((e.min(axis=1).mean() + chosen) / 2, 3))
    out: dict = {"n_queries": n, "input_mb": queries.stat().st_size / 1e6, "budget_j": budget_j}
    out["load_avg_1min_before"] = os.getloadavg()[0]
    for mode, budget in (("price", None), ("budget", budget_j)):
        for path in ("streamed", "old"):
            args = ["--child", path, "--bundle", str(bundle), "--input", str(queries)]
            args += ["--output", str(work / f"{path}-{mode}.jsonl")]
            args += ["--child-budget-j", str(budget)] if budget is not None else []
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            child["wall_s"] = time.perf_counter() - t0
            out[f"{path}_{mode}"] = {k: child[k] for k in ("wall_s", "stage_s", "cpu_s", "peak_rss_mb")}
            # CPU seconds beside wall seconds: on a shared machine the wall time also counts waiting for a core
            print(
                f"allocate {n} queries, {mode:6s} mode, {path:8s}: {child['wall_s']:.2f} s wall (process), "
                f"{child['cpu_s']:.2f} s CPU, peak RSS {child['peak_rss_mb']:.0f} MB"
            )
        arms = [[json.loads(x)["arm_id"] for x in (work / f"{p}-{mode}.jsonl").open()] for p in ("streamed", "old")]
        out[f"same_decisions_{mode}"] = arms[0] == arms[1]
        print(f"{mode} mode: streamed and old paths chose the same arm for every query: {arms[0] == arms[1]}")
    out["load_avg_1min_after"] = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)  # 100,000 queries and 4 decision files: ~60 MB
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="policy bundle folder or .zip (default: export a synthetic one to a temp folder)")
    ap.add_argument("--store", help="sample store folder: its questions, and its cheapest arm's joules per query")
    ap.add_argument("--repeats", type=int, default=300, help="timed calls at batch 1 (batch 1000 uses repeats/30)")
    ap.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    ap.add_argument(
        "--allocate-queries", type=int, default=100_000, help="queries in the `ttc allocate` comparison (0: skip it)"
    )
    ap.add_argument("--child", choices=["streamed", "old"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--child-budget-j", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.bundle, args.input, args.output, args.child_budget_j)
        return {}

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
    if args.allocate_queries > 0:
        results["allocate_file"] = _allocate_file(bundle, args.allocate_queries)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
