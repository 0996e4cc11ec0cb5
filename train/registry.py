"""The predictor registry: one entry per predictor kind, holding everything that differs between them.

An entry (`PredictorSpec`) says how the predictor is built (`make`), which
`TrainingData` attribute it learns (`target`), on which scale it is learned and
scored (`transform`: None, "log" or "log1p"), the tuning objective (`loss`,
`loss_name`) and search space (`suggest`), how the best trial is refitted
(`refit`: the success predictor's calibration hook) and how it is scored on the
held-out queries against the per-arm baseline (`evaluate`). The stage, the
tuner and `ttc train`'s choices walk `PREDICTORS`; nothing else branches on a
predictor's name.

This module never reads the store, never logs and never writes files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from train.dataset import TrainingData
from train.discrimination import within_task_auc
from train.predictors import (
    ArmMeanBaseline,
    EnergyPredictor,
    LengthPredictor,
    SuccessPredictor,
    log_target_metrics,
    reliability_curve,
    success_metrics,
)

if TYPE_CHECKING:
    from train.dataset import RowSplit  # the split with row indices (store.splits.Split inside)


def suggest_lgbm(trial) -> dict[str, Any]:  # noqa: ANN001 (an optuna.Trial)
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


#: forward and inverse of each learned scale
TRANSFORMS: dict[str | None, tuple[Callable, Callable]] = {
    None: (lambda v: v, lambda v: v),
    "log": (np.log, np.exp),
    "log1p": (np.log1p, np.expm1),
}


def _refit_plain(est: BaseEstimator, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, calibration: str):
    return est.fit(X, y)


def _refit_calibrated(est: BaseEstimator, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, calibration: str):
    # The calibration fold holds out whole queries, hence the groups.
    return est.set_params(calibration=calibration).fit(X, y, groups=groups)


Evaluation = tuple[dict[str, float], dict[str, Any]]


def _evaluate_success(spec: PredictorSpec, est, data: TrainingData, sp: RowSplit, Xte: pd.DataFrame) -> Evaluation:
    """Brier, AUC and log loss against the hard outcomes, overall and per arm, beside the arm base rate."""
    arms_tr, arms_te = data.arm_ids[sp.train], data.arm_ids[sp.test]
    y_fit, y_true = getattr(data, spec.target)[sp.train], data.y_correct[sp.test]
    p = est.predict_p(Xte)
    base = ArmMeanBaseline().fit(arms_tr, y_fit).predict(arms_te)
    ours, theirs = success_metrics(y_true, p), success_metrics(y_true, base)
    m = {f"test_{k}": v for k, v in ours.items()}
    m.update({f"baseline_test_{k}": v for k, v in theirs.items()})
    m["test_brier_soft"] = float(np.mean((p - getattr(data, spec.target)[sp.test]) ** 2))
    m["improvement_brier"] = theirs["brier"] - ours["brier"]
    m["improvement_auc"] = ours["auc"] - theirs["auc"]
    # inside each task (train.discrimination): the per-arm base rate scores 0.5 there by construction
    tasks_te = data.rows["task"].to_numpy()[sp.test]
    cheapest = pd.Series(data.energy_j[sp.train]).groupby(arms_tr).mean().idxmin()
    for prefix, scores in (("test", p), ("baseline_test", base)):
        w = within_task_auc(y_true, scores, tasks_te, arms_te, cheapest)
        m[f"{prefix}_within_task_auc_cheapest_arm"] = w["macro_auc_cheapest_arm"]
        m[f"{prefix}_within_task_auc_all_arms"] = w["macro_auc_all_arms"]
    per_arm = {}
    for a in np.unique(arms_te):
        k = arms_te == a
        per_arm[str(a)] = {
            "brier": float(np.mean((p[k] - y_true[k]) ** 2)),
            "baseline_brier": float(np.mean((base[k] - y_true[k]) ** 2)),
            "auc": success_metrics(y_true[k], p[k])["auc"],
        }
    m["arms_beating_baseline_brier"] = float(np.mean([v["brier"] < v["baseline_brier"] for v in per_arm.values()]))
    details = {
        "per_arm": per_arm,
        "reliability": reliability_curve(y_true, p),
        "baseline_reliability": reliability_curve(y_true, base),
    }
    return m, details


def _evaluate_log_target(spec: PredictorSpec, est, data: TrainingData, sp: RowSplit, Xte: pd.DataFrame) -> Evaluation:
    """RMSE and R² on the learned scale, MAPE on joules or tokens, beside each arm's (geometric) mean."""
    f, finv = TRANSFORMS[spec.transform]
    y = getattr(data, spec.target)
    y_tr, y_te = y[sp.train], y[sp.test]
    pred = est.predict(Xte)
    base = finv(ArmMeanBaseline().fit(data.arm_ids[sp.train], f(y_tr)).predict(data.arm_ids[sp.test]))
    ours, theirs = log_target_metrics(y_te, pred, spec.transform), log_target_metrics(y_te, base, spec.transform)
    m = {f"test_{k}": v for k, v in ours.items()}
    m.update({f"baseline_test_{k}": v for k, v in theirs.items()})
    rmse = f"rmse_{spec.transform}"
    m[f"improvement_{rmse}"] = theirs[rmse] - ours[rmse]
    return m, {}


@dataclass(frozen=True)
class PredictorSpec:
    """How one predictor is built, what it learns, how a trial is scored, refitted and evaluated.

    `make(random_state=, num_threads=)` builds the estimator; `loss(y_true,
    est.predict(X))` is the tuning objective, named `loss_name`; with
    `energy_metrics` its metric names carry the energy source
    (`energy_estimated/...`), because estimated and measured joules are not alike.
    """

    name: str
    make: Callable[..., BaseEstimator]
    target: str
    transform: str | None
    loss: Callable[[np.ndarray, np.ndarray], float]
    loss_name: str
    evaluate: Callable[[PredictorSpec, Any, TrainingData, RowSplit, pd.DataFrame], Evaluation]
    refit: Callable[[BaseEstimator, pd.DataFrame, np.ndarray, np.ndarray, str], BaseEstimator] = _refit_plain
    energy_metrics: bool = False
    suggest: Callable[[Any], dict[str, Any]] = field(default=suggest_lgbm)

    def metric_prefix(self, energy_source: str) -> str:
        return f"{self.name}_{energy_source}" if self.energy_metrics else self.name


PREDICTORS: dict[str, PredictorSpec] = {
    "success": PredictorSpec(
        "success", SuccessPredictor, "y_success", None, _brier, "brier", _evaluate_success, _refit_calibrated
    ),
    "energy": PredictorSpec(
        "energy", EnergyPredictor, "energy_j", "log", _rmse_log, "rmse_log", _evaluate_log_target, energy_metrics=True
    ),
    "length": PredictorSpec(
        "length", LengthPredictor, "output_tokens", "log1p", _rmse_log1p, "rmse_log1p", _evaluate_log_target
    ),
}
