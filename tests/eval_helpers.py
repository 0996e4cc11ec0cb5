"""Shared helpers of the eval tests: split, fixture bundle, context, one stage run (fixtures: eval_fixtures.py).

The reference collection (data/reference/v1: 128 real queries of 8 tasks x 2 models, smollm2-135m and the
bigger gemma3-270m, 8 samples at temperature 0.7 plus one greedy per (query, model), graded at
16/32/64 tokens, estimated joules), read once per session by conftest.py's `reference_samples`; a
LightGBM policy trained on 70% of its queries and exported with train.export.write_bundle (the other
39 queries are held out); tests/synthetic.py's table where a property needs structure the 39 real
held-out queries do not supply.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.allocators import EvalContext, Outcomes
from policy.records import ESTIMATED

LEVELS = [16, 32, 64]
#: 30% of the reference's 128 queries (39) held out, as in every fixture below.
TEST_SIZE = 0.3
SEED = 0


def _dataset(samples: pd.DataFrame):
    from train.dataset import build_dataset, make_split

    data = build_dataset(samples, feature_set="text", seed=SEED)
    return data, make_split(data, "query", test_size=TEST_SIZE, seed=SEED)


def _bundle(dataset, folder: Path) -> Path:
    """A policy trained on the training queries only, exported as a real bundle."""
    import lightgbm as lgb

    from policy.allocate import DecisionRule
    from train.export import write_bundle

    data, sp = dataset
    x, rows = data.X[sp.train], data.rows.iloc[sp.train]
    params = {"num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    success = lgb.train({**params, "objective": "cross_entropy"}, lgb.Dataset(x, rows["correct_soft"]), 60)
    energy = lgb.train({**params, "objective": "regression"}, lgb.Dataset(x, np.log(rows["energy_j"])), 60)
    n_query_cols = len(data.feature_set.names())
    return write_bundle(
        folder / "bundle",
        success,
        energy,
        data.arms,
        data.models,
        data.feature_set,
        DecisionRule(),
        {"fixture": 1},
        energy_meter="estimate",
        energy_source=ESTIMATED,
        reference_x=data.X[sp.train[:: len(data.arms) * 4], :n_query_cols],
    )


def _context(samples: pd.DataFrame, dataset, bundle: Path) -> EvalContext:
    from policy.bundle import load_bundle
    from store.views import queries

    data, sp = dataset
    policy = load_bundle(bundle)
    full = Outcomes.from_arm_rows(data.rows, policy.arm_ids, queries(samples))
    return EvalContext(
        test=full.subset(sp.test_query_ids),
        train=full.subset(sp.train_query_ids),
        samples=samples,
        policy=policy,
        big_model="gemma3-270m",
        seed=SEED,
    )


def _stage(store, dataset, bundle: Path, root: Path, n_boot: int, allocators=None) -> tuple:
    """One eval_stage run into a temporary MLflow store: (EvalReport, its JSON report)."""
    from eval.stage import eval_stage

    _, sp = dataset
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # setup_tracking puts artifacts under ./mlruns/artifacts
        report = eval_stage(
            store,
            bundle,
            root / "out",
            test_query_ids=sp.test_query_ids,
            train_query_ids=sp.train_query_ids,
            n_boot=n_boot,
            seed=SEED,
            tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            allocators=allocators,
        )
    return report, json.loads(report.json_path.read_text())


# ---------------------------------------------------------------- random outcome matrices (per_task, soft_oracle)

#: Four arms of two models for `random_outcomes`.
ARMS = ["m/n1/L16/t0", "m/n1/L64/t0", "m/n4/L64/t0.7", "big/n1/L64/t0"]


def random_outcomes(seed: int, n: int, tasks: list[str], prefix: str = "q", soft: bool = False) -> Outcomes:
    """Random outcomes with task-dependent accuracy; correct_soft = correct unless `soft` (then multiples of 1/64)."""
    rng = np.random.default_rng(seed)
    k = len(ARMS)
    task = np.asarray([tasks[i % len(tasks)] for i in range(n)], dtype=object)
    base = np.asarray([[0.2, 0.4, 0.6, 0.7], [0.6, 0.65, 0.7, 0.9], [0.1, 0.1, 0.5, 0.2]])[
        [tasks.index(t) % 3 for t in task]
    ]
    expect = np.clip(base + rng.normal(0, 0.2, (n, k)), 0, 1)
    correct = (rng.random((n, k)) < expect).astype(np.int64)
    energy = np.asarray([1.0, 2.5, 9.0, 6.0]) * rng.uniform(0.7, 1.3, (n, k))
    correct_soft = np.round(expect * 64) / 64 if soft else correct.astype(np.float64)
    ids = np.asarray([f"{prefix}{i}" for i in range(n)], dtype=object)
    return Outcomes(
        ids, task, [""] * n, ARMS, correct, energy, np.ones((n, k)), np.ones((n, k), dtype=bool), correct_soft
    )
