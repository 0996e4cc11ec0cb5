"""Cross-fitting: every query held out exactly once, by a policy trained on the other folds.

`query_folds` splits the queries into K folds by a hash of (seed, query id),
sorted and dealt round-robin, so the folds are balanced, deterministic, and a
query keeps its fold when other queries are added or removed only as far as
the deal allows. `task_folds` makes one fold per task (leave one task out:
the policy never saw the held-out task). `train_fold_policies` trains one
policy per fold on the other folds' queries with `train.fit.fit_policy` (the
train stage's pure work function: no MLflow, nothing printed), writes each
fold's bundle under a work folder, and loads it back through the bundle reader.

Eval then scores all folds together (eval.allocators.context.EvalContext with
one `Fold` each). Never logs; writes only the fold bundles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from policy.errors import UsageError
from policy.runtime import DEFAULT_BACKEND

#: Optuna trials per predictor when training a fold (the full train stage uses more; folds are many).
FOLD_TRIALS = 5


@dataclass(frozen=True)
class FoldSpec:
    """One fold: its name and its held-out query ids (it trains on every other query)."""

    name: str
    test_query_ids: tuple[str, ...]


def _hash(seed: int, query_id: str) -> str:
    return hashlib.sha256(f"{seed}:{query_id}".encode()).hexdigest()


def query_folds(query_ids: Sequence[str], k: int, seed: int) -> list[FoldSpec]:
    """K folds of the queries, dealt round-robin in the order of their hashed (seed, id)."""
    ids = sorted({str(q) for q in query_ids})
    if k < 2:
        raise UsageError(f"cross-fitting needs --folds >= 2, got {k}")
    if k > len(ids):
        raise UsageError(f"--folds {k} exceeds the {len(ids)} queries; use at most {len(ids)} folds")
    order = sorted(ids, key=lambda q: _hash(seed, q))
    return [FoldSpec(f"fold{j}", tuple(sorted(order[j::k]))) for j in range(k)]


def task_folds(query_ids: Sequence[str], tasks: Sequence[str]) -> list[FoldSpec]:
    """One fold per task: the task's queries held out, every other task trained on."""
    by_task: dict[str, list[str]] = {}
    for q, t in zip(query_ids, tasks, strict=True):
        by_task.setdefault(str(t), []).append(str(q))
    if len(by_task) < 2:
        raise UsageError(f"leave-one-task-out needs at least two tasks, the store has {sorted(by_task)}")
    return [FoldSpec(t, tuple(sorted(set(qs)))) for t, qs in sorted(by_task.items())]


def train_fold_policies(
    samples: pd.DataFrame,
    folds: Sequence[FoldSpec],
    work_dir: Path,
    *,
    feature_set: str = "text",
    n_trials: int = FOLD_TRIALS,
    seed: int = 0,
    num_threads: int = 2,
    rule: Any = None,
    backend: str = DEFAULT_BACKEND,
    probes: Any = None,
    on_fold: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """One loaded `Policy` per fold, trained on every query not in that fold (bundles under `work_dir`).

    `on_fold(done, total)` hears of each fold as its policy is loaded (the progress line).

    "text+probe": `probes` is the store's `store.probes.ProbeTable` (or the store folder); each
    fold's probe PCA is fitted on that fold's training queries only.
    """
    from policy.bundle import load_bundle
    from train.fit import TrainConfig, fit_policy

    # no stage-2 rule in fold bundles: eval's two_stage allocator fits its own from the fold's outcomes
    # (train.two_stage.StageTwoData, one model per first look), so fitting it here too only cost time
    cfg = TrainConfig(feature_set=feature_set, n_trials=n_trials, seed=seed, num_threads=num_threads, two_stage="off")
    all_ids = set(samples["query_id"].astype(str))
    policies = []
    for fold in folds:
        train_ids = sorted(all_ids - set(fold.test_query_ids))
        if not train_ids:
            raise UsageError(f"fold {fold.name!r} leaves no query to train on; use more folds or more queries")
        path = fit_policy(samples, train_ids, cfg, Path(work_dir) / fold.name, rule, probes)
        policies.append(load_bundle(path, backend))
        if on_fold is not None:
            on_fold(len(policies), len(folds))
    return policies
