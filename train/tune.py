"""Optuna tuning of one predictor: a seeded TPE search on grouped validation folds of the training queries.

The objective is a grouped validation loss on the training queries only (the
test queries are never seen here): with `cv_folds=1` one holdout of
`valid_size` of the training queries, with `cv_folds>=2` a GroupKFold over
query ids. Every fit stops early on its validation fold; the best trial's mean
stopping round becomes the refit's `n_estimators`. Lower is better for every
objective (the registry entry's `loss`: Brier score for success, RMSE of log
joules for energy, RMSE of log1p tokens for length). Trials train on at most
`MAX_TUNING_ROWS` rows of whole queries (the ranking of settings needs no
more); the refit uses every row.

Storage (`storage=`, `ttc train --storage`): None keeps the study in memory;
`sqlite:///path.db` or any SQLAlchemy RDB URL, or `journal:PATH` (Optuna's
JournalStorage on an append-only file, safe for several processes on one
machine or a shared file system with working locks). Several `ttc train`
workers tune ONE study when they share a storage and a study name
(`ttc train --storage journal:optuna.log --study-name S` in each): the study
`S-<predictor>` is loaded if it exists, every worker adds its trials to it
and refits the best trial found by any worker. Each trial records the worker
that ran it (user attribute `worker`: host and process id). A shared study
samples with a sampler seeded per worker, so workers do not propose the same
settings; trial-by-trial reproducibility is then lost, the split and the
LightGBM seeds are not.

This module never reads the store, never touches the test split, never logs
to MLflow and never writes models: callers pass `on_trial` to observe each
trial (the stage logs one nested MLflow run per trial through it).
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from policy.errors import UsageError

if TYPE_CHECKING:
    from train.registry import PredictorSpec

MAX_ROUNDS = 300
EARLY_STOPPING_ROUNDS = 20
#: rows a tuning trial trains on at most (whole queries); the refit uses every row
MAX_TUNING_ROWS = 5000
#: the prefix of an Optuna journal file storage
JOURNAL_PREFIX = "journal:"


@dataclass(frozen=True)
class TrialRecord:
    """One finished (or pruned) trial, as `tune` reports it to `on_trial`."""

    predictor: str
    number: int
    params: dict[str, Any]
    value: float
    n_estimators: int
    pruned: bool = False


@dataclass(frozen=True)
class TuneResult:
    name: str
    best_params: dict[str, Any]
    best_value: float
    best_n_estimators: int
    n_trials: int
    study_name: str


def check_storage(storage: str | None) -> str | None:
    """None (in memory), 'journal:PATH', 'sqlite:///path.db' or any SQLAlchemy RDB URL.

    Checked without opening it (nothing is created): a journal or SQLite file must be a regular file
    or a new name in a writable place, an RDB URL must parse and name a dialect SQLAlchemy has.
    """
    from store.paths import check_output_file

    if storage is None:
        return None
    if isinstance(storage, str) and storage.startswith(JOURNAL_PREFIX) and storage[len(JOURNAL_PREFIX) :].strip():
        path = Path(storage[len(JOURNAL_PREFIX) :])
        if not path.is_file():
            check_output_file(path, "--storage journal:")
        return storage
    if not isinstance(storage, str) or "://" not in storage:
        raise UsageError(
            "optuna storage must be empty (in memory), 'journal:PATH', 'sqlite:///path.db' or an RDB URL, "
            f"got {storage!r}"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(storage)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as exc:
        raise UsageError(f"--storage {storage!r} is no database URL SQLAlchemy can open here ({exc})") from exc
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).is_file():
            check_output_file(url.database, "--storage sqlite:///")
    return storage


def open_storage(storage: str | None) -> Any:
    """What `optuna.create_study(storage=...)` takes for a checked storage string."""
    storage = check_storage(storage)
    if storage is None or not storage.startswith(JOURNAL_PREFIX):
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage[len(JOURNAL_PREFIX) :]))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _query_subsample(groups: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices of randomly drawn whole queries, as many as fit in `max_rows` (sorted)."""
    ids, counts = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = ids[order[np.cumsum(counts[order]) <= max_rows]]
    return np.flatnonzero(np.isin(groups, chosen))


def _folds(groups: np.ndarray, cv_folds: int, valid_size: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupShuffleSplit

    from train.dataset import group_folds

    if cv_folds == 1:
        gss = GroupShuffleSplit(n_splits=1, test_size=valid_size, random_state=seed)
        return [next(gss.split(np.zeros(len(groups)), groups=groups))]
    if cv_folds < 1:
        raise UsageError(f"cv_folds must be >= 1 (1 = one grouped holdout), got {cv_folds}")
    n_groups = len(np.unique(groups))
    if cv_folds > n_groups:
        raise UsageError(f"cv_folds={cv_folds} exceeds the {n_groups} training queries; lower it")
    return group_folds(groups, cv_folds)


def _objective(spec: PredictorSpec, base: BaseEstimator, parts: list, on_trial: Callable | None) -> Callable:
    """The Optuna objective: the mean validation loss over `parts`, pruned between folds."""
    import optuna

    def objective(trial) -> float:  # noqa: ANN001 (an optuna.Trial)
        params = spec.suggest(trial)
        trial.set_user_attr("worker", worker_id())
        losses, rounds = [], []
        for step, (Xt, yt, Xv, yv) in enumerate(parts):
            est = clone(base).set_params(**params, n_estimators=MAX_ROUNDS)
            est.fit(Xt, yt, eval_set=(Xv, yv), early_stopping_rounds=EARLY_STOPPING_ROUNDS)
            losses.append(spec.loss(yv, est.predict(Xv)))
            rounds.append(est.best_iteration_)
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                if on_trial:
                    on_trial(TrialRecord(spec.name, trial.number, params, float("nan"), 0, pruned=True))
                raise optuna.TrialPruned()
        value, n_estimators = float(np.mean(losses)), int(round(np.mean(rounds)))
        trial.set_user_attr("n_estimators", n_estimators)
        if on_trial:
            on_trial(TrialRecord(spec.name, trial.number, params, value, n_estimators))
        return value

    return objective


def tune(
    spec: PredictorSpec,
    base: BaseEstimator,
    X: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    n_trials: int,
    seed: int = 0,
    cv_folds: int = 1,
    valid_size: float = 0.2,
    storage: str | None = None,
    study_name: str | None = None,
    shared: bool = False,
    on_trial: Callable[[TrialRecord], None] | None = None,
    max_rows: int | None = MAX_TUNING_ROWS,
) -> TuneResult:
    """Search `spec`'s space for `base` with TPE (seeded) on the training rows; see the module docstring.

    `shared=True` loads the study `study_name` from `storage` if another worker
    created it and seeds the sampler per worker. `on_trial` is called with a
    `TrialRecord` after every trial, in the trial's process.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_obj = open_storage(storage)
    if n_trials < 0:
        raise UsageError(f"n_trials must be >= 0, got {n_trials}")
    if shared and storage_obj is None:
        raise UsageError("a shared Optuna study needs a storage: pass --storage journal:PATH or sqlite:///path.db")
    study_name = study_name or f"ttc-train-{spec.name}"
    if n_trials == 0:
        return TuneResult(spec.name, {}, float("nan"), int(base.get_params()["n_estimators"]), 0, study_name)
    groups = np.asarray(groups)
    if max_rows is not None and len(X) > max_rows:
        # Trials see whole queries drawn up to `max_rows` rows: the search's ranking of
        # settings needs far fewer rows than the refit, which always uses every row.
        keep = _query_subsample(groups, max_rows, seed)
        X, y, groups = X.iloc[keep], np.asarray(y)[keep], groups[keep]
    folds = _folds(groups, cv_folds, valid_size, seed)
    parts = [(X.iloc[tr], y[tr], X.iloc[va], y[va]) for tr, va in folds]
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if len(parts) > 1 else optuna.pruners.NopPruner()
    # Workers of one shared study would otherwise all propose the same first settings.
    sampler_seed = zlib.crc32(f"{seed}:{worker_id()}".encode()) if shared else seed
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=pruner,
        storage=storage_obj,
        study_name=study_name,
        load_if_exists=shared,
    )
    study.optimize(_objective(spec, base, parts, on_trial), n_trials=n_trials)
    best = study.best_trial
    return TuneResult(
        name=spec.name,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_n_estimators=int(best.user_attrs["n_estimators"]),
        n_trials=len(study.trials),
        study_name=study_name,
    )
