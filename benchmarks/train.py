"""Benchmark `ttc train`: wall time and peak memory of one full `train_stage`.

Builds a store of about `--rows` (query, arm) rows, then runs `train_stage`
with `--trials` Optuna trials per predictor into a temp folder (its own SQLite
MLflow database) and prints the wall time, the time per phase, and the peak
memory: `ru_maxrss` of this process (KiB on Linux), plus the peak of Python
allocations when `--tracemalloc` is given (that slows the run a lot; numpy and
LightGBM buffers allocated in C are not seen by it).

The store: queries of the reference store (data/reference/v1) resampled with
replacement under new query ids when it holds at least `--min-reference-queries`
queries, else the synthetic generator of tests/synthetic.py. Resampled copies
share features with their originals, so the model metrics of a resampled run
mean nothing; only the timings do.
Target: under 2 minutes on a 2-core machine for 20,000 rows and 30 trials.

    python benchmarks/train.py [--rows 20000] [--trials 30] [--num-threads 2] [--source auto]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.loader import load_samples  # noqa: E402
from train.stage import train_stage  # noqa: E402


def _arms_per_query(samples: pd.DataFrame) -> int:
    from store.views import available_arms

    return len(available_arms(samples))


def reference_store(path: Path, rows: int, seed: int) -> pd.DataFrame:
    """Queries of the reference store drawn with replacement until about `rows` arm rows."""
    samples = load_samples(path)
    per_query = _arms_per_query(samples)
    ids = samples["query_id"].unique()
    n = int(np.ceil(rows / per_query))
    draw = np.random.default_rng(seed).choice(ids, size=n, replace=True)
    by_id = dict(tuple(samples.groupby("query_id")))
    parts = [by_id[q].assign(query_id=f"{q}#{i}") for i, q in enumerate(draw)]
    return pd.concat(parts, ignore_index=True)


def synthetic_store(rows: int, seed: int) -> pd.DataFrame:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import synthetic_samples

    per_query = _arms_per_query(synthetic_samples(n_queries=3, seed=seed))
    return synthetic_samples(n_queries=int(np.ceil(rows / per_query)), seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000, help="(query, arm) rows to train on (about)")
    ap.add_argument("--trials", type=int, default=30, help="Optuna trials per predictor")
    ap.add_argument("--num-threads", type=int, default=2, help="LightGBM threads")
    ap.add_argument(
        "--source", choices=("auto", "reference", "synthetic"), default="auto", help="where queries come from"
    )
    ap.add_argument("--reference", type=Path, default=ROOT / "data" / "reference" / "v1", help="reference store folder")
    ap.add_argument("--min-reference-queries", type=int, default=100, help="fewer: use synthetic (auto)")
    ap.add_argument("--tracemalloc", action="store_true", help="also report peak Python allocations (slow)")
    ap.add_argument("--no-bundle", action="store_true", help="skip writing the policy bundle (ONNX export)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    source = args.source
    if source == "auto":
        enough = args.reference.is_dir() and any(args.reference.rglob("*.parquet"))
        if enough:
            enough = load_samples(args.reference)["query_id"].nunique() >= args.min_reference_queries
        source = "reference" if enough else "synthetic"
    samples = (
        reference_store(args.reference, args.rows, args.seed)
        if source == "reference"
        else synthetic_store(args.rows, args.seed)
    )
    if args.tracemalloc:
        tracemalloc.start()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        samples.to_parquet(store / "part-00000.parquet", index=False)
        t = time.perf_counter()
        result = train_stage(
            store,
            Path(tmp) / "out",
            n_trials=args.trials,
            seed=args.seed,
            tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
            num_threads=args.num_threads,
            progress=True,
            export_bundle=not args.no_bundle,
        )
        wall_s = time.perf_counter() - t
    n_queries = len(result.train_query_ids) + len(result.test_query_ids)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"source: {source}; {result.n_rows} arm rows of {n_queries} queries")
    print(f"{args.trials} Optuna trials per predictor, {args.num_threads} LightGBM threads")
    print(f"wall time: {wall_s:.1f} s (target < 120 s)")
    for phase, s in (result.timings_s or {}).items():
        print(f"  {phase:<22} {s:7.1f} s")
    print(f"peak RSS: {peak_rss_mib:.0f} MiB")
    if args.tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        print(f"peak Python allocations (tracemalloc): {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
