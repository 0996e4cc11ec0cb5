"""Benchmark `ttc eval`: the cross-fitted headline on the reference collection, and how long it took.

Runs `eval_stage` twice on a store (default: data/reference/v1, 128 real queries x
8 tasks x 2 models, estimated joules), each time training one policy per fold
(`--fold-trials` Optuna trials per predictor) into a temp folder with its own
SQLite MLflow database:

1. `--folds` query folds (every query held out exactly once);
2. leave one task out (each task held out once, by a policy that never saw it).

It prints the headline figures with their 95% paired bootstrap intervals
(`--n-boot` resamples over all queries): energy saved at equal accuracy vs the
best fixed arm, accuracy gained at equal energy, the share of the oracle's
saving, energy saved vs model scaling, learned minus each peer rule; the
spread over folds; the same saving per held-out task; and the wall seconds of
each run (fold training, allocators, report). Nothing printed is typed in:
every number comes from the reports these runs write.

    python benchmarks/eval.py [--store data/reference/v1] [--folds 5] [--fold-trials 5] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eval.stage import eval_stage  # noqa: E402

FIGURES = (
    ("energy_saved_at_equal_accuracy", "energy saved at equal accuracy vs best fixed arm", True),
    ("accuracy_gain_at_equal_energy", "accuracy gained at equal energy", True),
    ("oracle_share_of_energy_saving", "share of the oracle's saving", True),
    ("oracle_energy_saved_at_equal_accuracy", "oracle's saving at equal accuracy", True),
    ("energy_saved_vs_model_scaling", "energy saved vs model scaling at its accuracy", True),
    ("best_fixed_accuracy", "best fixed arm accuracy", True),
    ("learned_top_accuracy", "learned frontier's top accuracy", True),
    ("best_fixed_energy_j", "best fixed arm joules per query", False),
    ("learned_energy_at_best_fixed_accuracy_j", "learned joules at that accuracy", False),
)


def fmt(iv: dict | None, pct: bool) -> str:
    if not iv or iv.get("point") is None:
        return "undefined on this data"

    def one(v: float | None) -> str:
        return "n/a" if v is None else (f"{100 * v:+.1f}%" if pct else f"{v:.4g}")

    return f"{one(iv['point'])}  [{one(iv['low'])}, {one(iv['high'])}]  (defined in {iv['n_valid']}/{iv['n_boot']})"


def phases(rep) -> str:  # noqa: ANN001 (an EvalReport)
    """The run's time/* metrics: seconds training the folds, running the allocators, building the report."""
    from mlflow import MlflowClient

    m = MlflowClient(rep.tracking_uri).get_run(rep.run_id).data.metrics
    return ", ".join(f"{k.removeprefix('time/')} {v:.1f}" for k, v in sorted(m.items()) if k.startswith("time/"))


def show(doc: dict, wall_s: float, timing: str) -> None:
    h, sp = doc["headline"], doc["split"]
    print(f"\n== {sp['source']}: {sp['n_test_queries']} queries held out once, {sp['n_folds']} folds ==")
    print(f"best fixed arm: {h['best_fixed_arm']}; model scaling reference: {h['model_scaling_reference_arm']}")
    for key, words, pct in FIGURES:
        print(f"  {words:48s} {fmt(h.get(key), pct)}")
    for peer, c in h["peers"].items():
        print(f"  {'learned minus ' + peer + ' saving (paired)':48s} {fmt(c['learned_minus_peer_energy_saved'], True)}")
        print(f"  {'   ' + peer + ' own saving':48s} {fmt(c['peer_energy_saved_at_equal_accuracy'], True)}")
        gap = c["learned_minus_peer_accuracy_at_equal_energy"]
        print(f"  {'learned minus ' + peer + ' accuracy at equal J':48s} {fmt(gap, True)}")
    spread = doc["cross_fitting"]["spread"].get("energy_saved_at_equal_accuracy") if doc["cross_fitting"] else None
    if spread:
        lo, hi, sd = (100 * spread[k] for k in ("min", "max", "sd"))
        print(f"  saving over folds: {lo:+.1f}% .. {hi:+.1f}%, sd {sd:.1f}%")
    print("  per held-out fold (saving at equal accuracy | accuracy gain at equal energy):")
    for f in (doc["cross_fitting"] or {}).get("folds", []):
        fh = f["headline"] or {}
        print(
            f"    {f['fold']:28s} n={f['n_queries']:3d}  {fmt(fh.get('energy_saved_at_equal_accuracy'), True)}"
            f" | {fmt(fh.get('accuracy_gain_at_equal_energy'), True)}"
        )
    print(f"  wall: {wall_s:.1f} s ({timing})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=str(ROOT / "data" / "reference" / "v1"))
    ap.add_argument("--folds", type=int, default=5, help="query folds of the first run")
    ap.add_argument("--fold-trials", type=int, default=5, help="Optuna trials per predictor per fold")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-task", action="store_true", help="only the query folds, no leave-one-task-out run")
    args = ap.parse_args()
    runs = [("query", args.folds)] + ([] if args.skip_task else [("task", 2)])
    with tempfile.TemporaryDirectory(prefix="ttc-bench-eval-") as tmp:
        os.chdir(tmp)
        for split, k in runs:
            t0 = time.perf_counter()
            rep = eval_stage(
                args.store, None, Path(tmp) / f"eval-{split}", split=split, n_boot=args.n_boot, seed=args.seed,
                tracking_uri=f"sqlite:///{tmp}/mlflow.db", folds=k, fold_trials=args.fold_trials,
            )  # fmt: skip
            wall_s = time.perf_counter() - t0
            show(json.loads(rep.json_path.read_text()), wall_s, phases(rep))


if __name__ == "__main__":
    main()
