"""Optuna tuning of one predictor, with one nested MLflow run per trial.

The objective is a grouped validation loss on the training queries only (the
test queries are never seen here): with `cv_folds=1` one holdout of
`valid_size` of the training queries, with `cv_folds>=2` a GroupKFold over
query ids. Every fit stops early on its validation fold; the best trial's mean
stopping round becomes the refit's `n_estimators`. Lower is better for every
objective: Brier score for success, RMSE of log joules for energy, RMSE of
log1p tokens for length. Trials train on at most `MAX_TUNING_ROWS` rows of
whole queries (the ranking of settings needs no more); the refit uses every row.

The search space, objective and target of each predictor live in one registry,
`PREDICTORS`, which the stage walks. This module never reads the store, never
touches the test split and never writes models: the stage does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from policy.errors import UsageError
from train.predictors import EnergyPredictor, LengthPredictor, SuccessPredictor

MAX_ROUNDS = 300
EARLY_STOPPING_ROUNDS = 20
#: rows a tuning trial trains on at most (whole queries); the refit uses every row
MAX_TUNING_ROWS = 5000


def suggest_lgbm(trial) -> dict[str, Any]:
    """The LightGBM search space shared by all predictors."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.08, 0.3, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 5, 100, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.clip(p, 0, 1) - y) ** 2))


def _rmse_log(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log(pred) - np.log(y)) ** 2)))


def _rmse_log1p(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log1p(np.maximum(pred, 0)) - np.log1p(y)) ** 2)))


@dataclass(frozen=True)
class PredictorSpec:
    """How one predictor is built, what it learns and how a trial is scored.

    `target` names the `TrainingData` attribute it fits (`"label"` = the success
    label column); `loss(y_true, est.predict(X))` is the tuning objective,
    named `loss_name`.
    """

    name: str
    make: Callable[..., BaseEstimator]
    target: str
    loss: Callable[[np.ndarray, np.ndarray], float]
    loss_name: str
    suggest: Callable[[Any], dict[str, Any]] = field(default=suggest_lgbm)


PREDICTORS: dict[str, PredictorSpec] = {
    "success": PredictorSpec("success", SuccessPredictor, "y_success", _brier, "brier"),
    "energy": PredictorSpec("energy", EnergyPredictor, "energy_j", _rmse_log, "rmse_log"),
    "length": PredictorSpec("length", LengthPredictor, "output_tokens", _rmse_log1p, "rmse_log1p"),
}


@dataclass(frozen=True)
class TuneResult:
    name: str
    best_params: dict[str, Any]
    best_value: float
    best_n_estimators: int
    n_trials: int
    study_name: str
    trial_run_ids: tuple[str, ...]


def check_storage(storage: str | None) -> str | None:
    """None (in memory), 'sqlite:///path.db' or any SQLAlchemy RDB URL."""
    if storage is None:
        return None
    if not isinstance(storage, str) or "://" not in storage:
        raise UsageError(
            f"optuna storage must be empty (in memory), 'sqlite:///path.db' or an RDB URL, got {storage!r}"
        )
    return storage


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
    metric_prefix: str | None = None,
    run_tags: dict[str, str] | None = None,
    log_to_mlflow: bool = True,
    on_trial: Callable[[int, float], None] | None = None,
    max_rows: int | None = MAX_TUNING_ROWS,
) -> TuneResult:
    """Search `spec`'s space for `base` with TPE (seeded); one nested MLflow run per trial.

    With `log_to_mlflow`, an MLflow run must be active: each trial becomes a
    child of it (tag `mlflow.parentRunId`), holding the trial's params and its
    validation loss as `<metric_prefix>/valid_<loss_name>`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = check_storage(storage)
    if n_trials < 0:
        raise UsageError(f"n_trials must be >= 0, got {n_trials}")
    prefix = metric_prefix or spec.name
    groups = np.asarray(groups)
    if max_rows is not None and len(X) > max_rows:
        # Trials see whole queries drawn up to `max_rows` rows: the search's ranking of
        # settings needs far fewer rows than the refit, which always uses every row.
        keep = _query_subsample(groups, max_rows, seed)
        X, y, groups = X.iloc[keep], np.asarray(y)[keep], groups[keep]
    folds = _folds(groups, cv_folds, valid_size, seed)
    parts = [(X.iloc[tr], y[tr], X.iloc[va], y[va]) for tr, va in folds]
    run_ids: list[str] = []

    def objective(trial) -> float:
        params = spec.suggest(trial)
        losses, rounds = [], []
        for step, (Xt, yt, Xv, yv) in enumerate(parts):
            est = clone(base).set_params(**params, n_estimators=MAX_ROUNDS)
            est.fit(Xt, yt, eval_set=(Xv, yv), early_stopping_rounds=EARLY_STOPPING_ROUNDS)
            losses.append(spec.loss(yv, est.predict(Xv)))
            rounds.append(est.best_iteration_)
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        value = float(np.mean(losses))
        trial.set_user_attr("n_estimators", int(round(np.mean(rounds))))
        if log_to_mlflow:
            run_ids.append(_log_trial(spec, trial, params, value, int(round(np.mean(rounds))), prefix, run_tags))
        return value

    study_name = study_name or f"ttc-train-{spec.name}"
    if n_trials == 0:
        return TuneResult(spec.name, {}, float("nan"), int(base.get_params()["n_estimators"]), 0, study_name, ())
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if len(parts) > 1 else optuna.pruners.NopPruner()
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        storage=storage,
        study_name=study_name,
    )
    callbacks = [lambda st, tr: on_trial(tr.number, tr.value if tr.value is not None else float("nan"))]
    study.optimize(objective, n_trials=n_trials, callbacks=callbacks if on_trial else None)
    best = study.best_trial
    return TuneResult(
        name=spec.name,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_n_estimators=int(best.user_attrs["n_estimators"]),
        n_trials=len(study.trials),
        study_name=study_name,
        trial_run_ids=tuple(run_ids),
    )


def _log_trial(
    spec: PredictorSpec,
    trial,
    params: dict[str, Any],
    value: float,
    n_estimators: int,
    prefix: str,
    run_tags: dict[str, str] | None,
) -> str:
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("tune(log_to_mlflow=True) needs an active MLflow run to nest the trials under")
    tags = {"predictor": spec.name, "optuna_trial": str(trial.number), **(run_tags or {})}
    name = f"{spec.name}-trial-{trial.number:03d}"
    # The parent's experiment, explicitly: a nested run otherwise lands in the *active* experiment.
    with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags) as run:
        mlflow.log_params({**params, "n_estimators": n_estimators})
        mlflow.log_metrics({f"{prefix}/valid_{spec.loss_name}": value})
        return run.info.run_id
