"""The predictors of (query, arm) rows, the per-arm baselines they must beat, and their metrics.

- `SuccessPredictor`: P(the arm answers the query right). LightGBM with the
  "cross_entropy" objective, which takes soft labels in [0, 1] (or "binary" for
  0/1 labels); optional isotonic calibration fitted on held-out queries and kept
  as a plain x/y table (`calibration_`) so a bundle stores it as data;
- `EnergyPredictor`: joules of the arm on the query; learns log joules;
- `LengthPredictor`: output tokens of the arm on the query; learns log1p tokens;
- `ArmMeanBaseline`: each arm's mean on the training queries, knowing nothing
  of the query: the base rate for success, the (geometric) mean for energy.

Every predictor follows the scikit-learn contract: `__init__` stores keyword
arguments only, `fit` validates and returns self, fitted attributes end in `_`,
predicting before `fit` raises `NotFittedError`. So tuning is
`clone(est).set_params(**trial.params)`. `booster_` is the fitted
`lightgbm.Booster`, which the policy bundle exports to native text and ONNX.
Training is deterministic for a given `random_state` and `num_threads`
(LightGBM `deterministic=True`, row-wise histograms).

Like LightGBM's own sklearn API, `fit` takes an optional `eval_set=(X, y)` and
`early_stopping_rounds`: tuning uses them to stop each trial where its
validation loss stops falling, and records `best_iteration_` so the refit of the
best trial uses that many trees without a validation set.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from policy.errors import unknown_name
from train import CALIBRATIONS

#: LightGBM objectives the success predictor trains with (soft labels need "cross_entropy")
SUCCESS_OBJECTIVES = ("cross_entropy", "binary")
_P_EPS = 1e-6


class _LGBMPredictor(RegressorMixin, BaseEstimator):
    """Shared LightGBM fitting; subclasses define the target transform and objective."""

    def __init__(
        self,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_alpha: float = 0.0,
        reg_lambda: float = 0.0,
        max_bin: int = 63,
        random_state: int = 0,
        num_threads: int = 2,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_alpha = reg_alpha
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.random_state = random_state
        self.num_threads = num_threads

    def _lgb_params(self, objective: str) -> dict:
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if not 0 < self.subsample <= 1 or not 0 < self.colsample_bytree <= 1:
            raise ValueError("subsample and colsample_bytree must be in (0, 1]")
        return {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0,
            "feature_fraction": self.colsample_bytree,
            "lambda_l1": self.reg_alpha,
            "lambda_l2": self.reg_lambda,
            "max_bin": self.max_bin,
            "seed": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def _train(self, X, y, objective: str, eval_set=None, early_stopping_rounds: int | None = None):
        """Fit a booster; with `eval_set` (already in the learned space), stop early on its loss."""
        import lightgbm as lgb

        names = [str(n) for n in getattr(self, "feature_names_in_", [f"f{i}" for i in range(X.shape[1])])]
        params = self._lgb_params(objective)
        train = lgb.Dataset(X, label=y, feature_name=names, params={"max_bin": self.max_bin, "verbosity": -1})
        valid_sets, callbacks = [], []
        if eval_set is not None:
            Xv = validate_data(self, eval_set[0], dtype=np.float32, ensure_all_finite="allow-nan", reset=False)
            valid_sets = [lgb.Dataset(Xv, label=eval_set[1], reference=train)]
            if early_stopping_rounds:
                callbacks = [lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)]
        booster = lgb.train(
            params, train, num_boost_round=self.n_estimators, valid_sets=valid_sets, callbacks=callbacks
        )
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        return booster

    def _validate_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        return validate_data(self, X, y, dtype=np.float32, ensure_all_finite="allow-nan", y_numeric=True)

    def _raw(self, X) -> np.ndarray:
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, ensure_all_finite="allow-nan", reset=False)
        return self.booster_.predict(X, num_threads=self.num_threads)

    @property
    def feature_importances_(self) -> np.ndarray:
        """Total gain of each feature's splits."""
        check_is_fitted(self, "booster_")
        return self.booster_.feature_importance("gain")


class SuccessPredictor(_LGBMPredictor):
    """P(success) of (query, arm) rows; `y` is the soft (or hard) correctness in [0, 1].

    `calibration="isotonic"` holds out `calibration_fraction` of the *queries*
    (pass `groups=` query ids to `fit`), trains the booster on the rest and fits
    an isotonic map from its outputs to the held-out labels. The map is
    `calibration_ = {"method": "isotonic", "x": [...], "y": [...]}`, applied as
    `np.interp(p, x, y)`: exactly the isotonic fit, storable as JSON.
    """

    def __init__(
        self,
        objective: str = "cross_entropy",
        calibration: str = "none",
        calibration_fraction: float = 0.2,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_alpha: float = 0.0,
        reg_lambda: float = 0.0,
        max_bin: int = 63,
        random_state: int = 0,
        num_threads: int = 2,
    ) -> None:
        self.objective = objective
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        super().__init__(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            max_depth=max_depth,
            min_child_samples=min_child_samples,
            subsample=subsample,
            colsample_bytree=colsample_bytree,
            reg_alpha=reg_alpha,
            reg_lambda=reg_lambda,
            max_bin=max_bin,
            random_state=random_state,
            num_threads=num_threads,
        )

    def fit(self, X, y, groups=None, eval_set=None, early_stopping_rounds: int | None = None) -> SuccessPredictor:
        if self.objective not in SUCCESS_OBJECTIVES:
            raise unknown_name("success objective", self.objective, SUCCESS_OBJECTIVES)
        if self.calibration not in CALIBRATIONS:
            raise unknown_name("calibration", self.calibration, CALIBRATIONS)
        X, y = self._validate_fit(X, y)
        y = y.astype(np.float64)
        if y.min() < 0 or y.max() > 1:
            raise ValueError("success labels must lie in [0, 1]")
        if self.objective == "binary" and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("objective 'binary' needs 0/1 labels; use 'cross_entropy' for soft labels")
        self.calibration_ = None
        if self.calibration == "none":
            self.booster_ = self._train(X, y, self.objective, eval_set, early_stopping_rounds)
            return self
        if groups is None:
            raise ValueError("isotonic calibration needs groups= (query ids) so its fold holds out whole queries")
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
        from sklearn.isotonic import IsotonicRegression
        from sklearn.model_selection import GroupShuffleSplit

        gss = GroupShuffleSplit(n_splits=1, test_size=self.calibration_fraction, random_state=self.random_state)
        fit_idx, cal_idx = next(gss.split(X, groups=np.asarray(groups)))
        self.booster_ = self._train(X[fit_idx], y[fit_idx], self.objective, eval_set, early_stopping_rounds)
        raw = self.booster_.predict(X[cal_idx], num_threads=self.num_threads)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y[cal_idx])
        self.calibration_ = {
            "method": "isotonic",
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        }
        return self

    def predict_p(self, X) -> np.ndarray:
        """P(success) per row, calibrated when a calibration was fitted."""
        p = self._raw(X)
        if self.calibration_ is not None:
            p = np.interp(p, self.calibration_["x"], self.calibration_["y"])
        return np.clip(p, 0.0, 1.0)

    def predict_raw_p(self, X) -> np.ndarray:
        """P(success) per row straight from the booster, before any calibration."""
        return np.clip(self._raw(X), 0.0, 1.0)

    def predict(self, X) -> np.ndarray:
        return self.predict_p(X)


class EnergyPredictor(_LGBMPredictor):
    """Joules of (query, arm) rows; `fit` takes joules (> 0) and learns their log.

    `predict_j` is exp(predicted mean log joules): a geometric-mean estimate,
    a little below the arithmetic mean when the noise is large.
    """

    def fit(self, X, y, eval_set=None, early_stopping_rounds: int | None = None) -> EnergyPredictor:
        X, y = self._validate_fit(X, y)
        if not (y > 0).all():
            raise ValueError("energy labels must be > 0 joules")
        ev = None if eval_set is None else (eval_set[0], np.log(np.asarray(eval_set[1], dtype=np.float64)))
        self.booster_ = self._train(X, np.log(y.astype(np.float64)), "regression", ev, early_stopping_rounds)
        return self

    def predict_j(self, X) -> np.ndarray:
        return np.exp(self._raw(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_j(X)


class LengthPredictor(_LGBMPredictor):
    """Output tokens of (query, arm) rows, summed over the arm's votes; learns log1p tokens."""

    def fit(self, X, y, eval_set=None, early_stopping_rounds: int | None = None) -> LengthPredictor:
        X, y = self._validate_fit(X, y)
        if not (y >= 0).all():
            raise ValueError("token counts must be >= 0")
        ev = None if eval_set is None else (eval_set[0], np.log1p(np.asarray(eval_set[1], dtype=np.float64)))
        self.booster_ = self._train(X, np.log1p(y.astype(np.float64)), "regression", ev, early_stopping_rounds)
        return self

    def predict_tokens(self, X) -> np.ndarray:
        return np.expm1(self._raw(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_tokens(X)


class ArmMeanBaseline(BaseEstimator):
    """Each arm's mean target on the training rows; fit and predict take arm ids, not features.

    An arm never seen in training gets the mean over all training rows.
    """

    def fit(self, arm_ids, y) -> ArmMeanBaseline:
        arm_ids, y = np.asarray(arm_ids), np.asarray(y, dtype=np.float64)
        if len(arm_ids) != len(y) or len(y) == 0:
            raise ValueError("arm_ids and y must be non-empty and of equal length")
        self.means_ = {str(a): float(y[arm_ids == a].mean()) for a in np.unique(arm_ids)}
        self.global_mean_ = float(y.mean())
        return self

    def predict(self, arm_ids) -> np.ndarray:
        check_is_fitted(self, "means_")
        return np.array([self.means_.get(str(a), self.global_mean_) for a in np.asarray(arm_ids)])


# ---------------------------------------------------------------- metrics


def success_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Brier score, ROC AUC and log loss of probabilities `p` against 0/1 (or soft) outcomes.

    AUC is computed against `y_true >= 0.5` and is NaN when only one class occurs.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), _P_EPS, 1 - _P_EPS)
    hard = y >= 0.5
    auc = float(roc_auc_score(hard, p)) if 0 < hard.sum() < len(hard) else float("nan")
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "auc": auc,
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
    }


def log_target_metrics(y_true: np.ndarray, y_pred: np.ndarray, log: str = "log") -> dict[str, float]:
    """RMSE and R² on the log scale (`log` or `log1p`), MAPE on the original scale.

    MAPE skips rows whose true value is 0 (possible for tokens, never for joules).
    """
    f = {"log": np.log, "log1p": np.log1p}[log]
    y, yp = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    ly, lp = f(y), f(yp)
    ss_res = float(np.sum((ly - lp) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    nz = y != 0
    return {
        f"rmse_{log}": float(np.sqrt(ss_res / len(y))),
        "mape": float(np.mean(np.abs(yp[nz] - y[nz]) / y[nz])) if nz.any() else float("nan"),
        f"r2_{log}": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


def reliability_curve(y_true: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted P and observed success rate per equal-width bin of P (empty bins dropped)."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(p, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    out: dict[str, list[float]] = {"mean_p": [], "observed": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        if m.any():
            out["mean_p"].append(float(p[m].mean()))
            out["observed"].append(float(y[m].mean()))
            out["count"].append(float(m.sum()))
    return out
