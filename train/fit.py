"""The work of `ttc train`: a frozen `TrainConfig` in, typed results out; no MLflow, no printing.

    prepare(samples, cfg) -> (TrainingData, RowSplit)
    fit(data, train_idx, cfg, *, study_prefix=None, on_trial=None, clock=None) -> Fitted
    evaluate(fitted, split) -> Evaluation
    fit_policy(samples: pd.DataFrame, train_query_ids, cfg: TrainConfig, out_dir: Path, rule=None) -> Path

`fit` tunes (Optuna, on the training rows only) and refits every predictor of
`train.registry.PREDICTORS` in memory; `evaluate` scores them on the split's
held-out queries against the per-arm baselines. `fit_policy` is the function
cross-fitting calls: it trains on the given queries only and writes a policy
bundle folder at `out_dir` (the one file-writing function here, through the
bundle writer), returning its path. `train.stage` adds MLflow, the output
folder, the registry and the console on top of these.

This module never touches MLflow and never prints.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from policy.errors import UsageError, unknown_name
from policy.features import get_feature_set
from store.splits import check_seed
from train import CALIBRATIONS
from train.dataset import (
    SPLITS,
    ProbeTable,
    TrainingData,
    build_dataset,
    default_probe_model,
    load_probes,
    make_split,
)
from train.registry import PREDICTORS, PredictorSpec
from train.tune import TrialRecord, TuneResult, check_storage, tune
from train.two_stage import StageTwoData, has_signals, prepare_stage_two

if TYPE_CHECKING:
    from train.dataset import RowSplit  # the split with row indices (store.splits.Split inside)


TWO_STAGE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what `fit` produces; validated on construction.

    `n_trials` Optuna trials per predictor (0 = default hyperparameters);
    `split` "query" holds out `test_size` of the queries, "task" whole tasks
    (`holdout_tasks`, or seeded random ones); `storage` the Optuna storage
    (None = in memory, `journal:PATH`, `sqlite:///path.db`, an RDB URL);
    `study_name` names a study shared by several workers (needs `storage`).
    """

    feature_set: str = "text"
    n_trials: int = 30
    split: str = "query"
    holdout_tasks: tuple[str, ...] = ()
    test_size: float = 0.2
    seed: int = 0
    cv_folds: int = 1
    soft_labels: bool = True
    calibration: str = "none"
    num_threads: int = 2
    storage: str | None = None
    study_name: str | None = None
    #: "text+probe": the model whose prefill the probe reads (None: the cheapest model of the store)
    probe_model: str | None = None
    #: the look-then-decide rule (stage2.json): "auto" when the samples hold token log-probs, "on", "off"
    two_stage: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "holdout_tasks", tuple(self.holdout_tasks or ()))
        object.__setattr__(self, "storage", check_storage(self.storage))
        get_feature_set(self.feature_set)
        if self.split not in SPLITS:
            raise unknown_name("split", self.split, SPLITS)
        if self.calibration not in CALIBRATIONS:
            raise unknown_name("calibration", self.calibration, CALIBRATIONS)
        if self.two_stage not in TWO_STAGE_MODES:
            raise unknown_name("two_stage mode", str(self.two_stage), TWO_STAGE_MODES)
        if self.n_trials < 0:
            raise UsageError(f"n_trials must be >= 0 (0 = default hyperparameters), got {self.n_trials}")
        if self.num_threads < 1:
            raise UsageError(f"num_threads must be >= 1, got {self.num_threads}")
        check_seed(self.seed)
        if self.cv_folds < 1:
            raise UsageError(f"cv_folds must be >= 1 (1 = one grouped holdout), got {self.cv_folds}")
        if not 0 < self.test_size < 1:
            raise UsageError(f"test_size must be in (0, 1), got {self.test_size}")
        if self.study_name is not None and self.storage is None:
            raise UsageError("a shared study (--study-name) needs --storage journal:PATH or sqlite:///path.db")


class Clock:
    """Wall seconds per named phase, for the run's `time/*` metrics and the benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


@dataclass(frozen=True, eq=False)
class FittedPredictor:
    spec: PredictorSpec
    estimator: Any
    tuning: TuneResult


@dataclass(frozen=True, eq=False)
class Fitted:
    """The predictors refitted on `train_idx` rows of `data`, by registry name."""

    data: TrainingData
    train_idx: np.ndarray
    predictors: dict[str, FittedPredictor]
    #: the look-then-decide rule of the training queries (None: off, or the samples hold no token log-probs)
    #: the stage-2 rule's training queries; its models are fitted where the bundle's price is known
    stage_two: StageTwoData | None = None

    @property
    def estimators(self) -> dict[str, Any]:
        return {name: f.estimator for name, f in self.predictors.items()}

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.predictors["success"].estimator.calibration_

    def tuning_metrics(self) -> dict[str, float]:
        """The best validation loss of each tuned predictor (none when trials were 0)."""
        out = {}
        for f in self.predictors.values():
            if f.tuning.n_trials:
                out[f"{f.spec.metric_prefix(self.data.energy_source)}/valid_{f.spec.loss_name}_best"] = (
                    f.tuning.best_value
                )
        return out


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics (`<prefix>/test_...`, `<prefix>/baseline_test_...`) and per-predictor details."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def resolve_probes(samples: pd.DataFrame, cfg: TrainConfig, probes: Any) -> ProbeTable | None:
    """The probe table a "text+probe" run reads: the one given, or `cfg.probe_model`'s from a store path."""
    if not get_feature_set(cfg.feature_set).probe or probes is None or isinstance(probes, ProbeTable):
        return probes
    return load_probes(probes, cfg.probe_model or default_probe_model(samples))


def prepare(samples: pd.DataFrame, cfg: TrainConfig, probes: Any = None) -> tuple[TrainingData, RowSplit]:
    """Arm rows, features and labels of `samples`, and the held-out split `cfg` asks for.

    `probes`: a `ProbeTable` or the store folder to read one from ("text+probe" only); the probe's
    PCA is then refitted on the training queries of the split, so the held-out ones never shape it.
    """
    probes = resolve_probes(samples, cfg, probes)
    kw = dict(feature_set=cfg.feature_set, soft_labels=cfg.soft_labels, seed=cfg.seed, probes=probes)
    data = build_dataset(samples, **kw)
    sp = make_split(data, cfg.split, test_size=cfg.test_size, seed=cfg.seed, holdout_tasks=cfg.holdout_tasks or None)
    if probes is not None:  # the split reads only query ids and tasks, so it is the same split of the new rows
        data = build_dataset(samples, **kw, probe_fit_ids=list(sp.train_query_ids))
    return data, sp


def fit(
    data: TrainingData,
    train_idx: np.ndarray,
    cfg: TrainConfig,
    *,
    study_prefix: str | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    clock: Clock | None = None,
    samples: pd.DataFrame | None = None,
) -> Fitted:
    """Tune, then refit on every row of `train_idx`, each predictor of the registry.

    Studies are named `<study_prefix>-<predictor>`: `cfg.study_name` when set
    (a study shared with other workers), else `study_prefix`, else a fresh id.
    With `samples`, the look-then-decide rule is fitted too (`cfg.two_stage`).
    """
    prefix = cfg.study_name or study_prefix or f"ttc-train-{uuid.uuid4().hex[:12]}"
    X = pd.DataFrame(data.X[train_idx], columns=data.feature_names)
    groups = data.groups[train_idx]
    out: dict[str, FittedPredictor] = {}
    for name, spec in PREDICTORS.items():
        base = spec.make(random_state=cfg.seed, num_threads=cfg.num_threads)
        y = getattr(data, spec.target)[train_idx]
        tuned = tune(
            spec,
            base,
            X,
            y,
            groups,
            n_trials=cfg.n_trials,
            seed=cfg.seed,
            cv_folds=cfg.cv_folds,
            storage=cfg.storage,
            study_name=f"{prefix}-{name}",
            shared=cfg.study_name is not None,
            on_trial=on_trial,
        )
        if clock:
            clock.lap(f"tune_{name}")
        est = base.set_params(**tuned.best_params, n_estimators=tuned.best_n_estimators)
        out[name] = FittedPredictor(spec, spec.refit(est, X, y, groups, cfg.calibration), tuned)
        if clock:
            clock.lap(f"refit_{name}")
    return Fitted(data, np.asarray(train_idx), out, _stage_two(samples, data, train_idx, cfg))


def _stage_two(samples: pd.DataFrame | None, data: TrainingData, train_idx: np.ndarray, cfg: TrainConfig) -> Any:
    """The stage-2 rule on the training rows when `cfg.two_stage` and the samples allow it, else None."""
    if cfg.two_stage == "off" or samples is None:
        return None
    if not has_signals(samples):
        if cfg.two_stage == "on":
            raise UsageError("two_stage='on' needs samples with token log-probs; recollect, or use two_stage='auto'")
        return None
    try:  # fitted at the bundle rule's lam when the bundle is written (write_policy_bundle, finish_bundle)
        return prepare_stage_two(samples, data.rows.iloc[train_idx], data.arms, data.models, cfg.seed)
    except UsageError:
        if cfg.two_stage == "on":
            raise
        return None  # "auto": a grid without a one-sample arm, or too few complete queries, trains without it


def evaluate(fitted: Fitted, sp: RowSplit) -> Evaluation:
    """Every predictor on the held-out rows of `sp`, beside its per-arm baseline; plus the tuning losses."""
    data = fitted.data
    Xte = pd.DataFrame(data.X[sp.test], columns=data.feature_names)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name, f in fitted.predictors.items():
        m, d = f.spec.evaluate(f.spec, f.estimator, data, sp, Xte)
        metrics.update({f"{f.spec.metric_prefix(data.energy_source)}/{k}": v for k, v in m.items()})
        details[name] = {**d, "best_params": f.tuning.best_params, "n_estimators": f.tuning.best_n_estimators}
    metrics.update(fitted.tuning_metrics())
    return Evaluation(metrics, details)


def train_query_rows(data: TrainingData, train_query_ids: Iterable[str]) -> np.ndarray:
    """Row indices of `data` whose query is one of `train_query_ids`; refuses unknown or no ids."""
    ids = {str(q) for q in train_query_ids}
    if not ids:
        raise UsageError("no training query ids given; pass the queries to train on")
    unknown = ids - set(data.groups)
    if unknown:
        raise UsageError(
            f"{len(unknown)} training query ids are not in the samples (e.g. {sorted(unknown)[0]!r}); "
            "pass ids of this store"
        )
    return np.flatnonzero(np.isin(data.groups, sorted(ids)))


def write_policy_bundle(out_dir: Path, fitted: Fitted, metrics: dict[str, float], rule: Any = None) -> Path:
    """Write `fitted`'s success and energy models as a policy bundle folder at `out_dir`; returns it.

    A fitted stage-2 rule goes in as stage2.json, priced at the rule's lam. Without a `rule`, both
    are priced at the default price chosen on the training frontier (train/price.py: frontier.json,
    prompts.json).
    """
    from policy.allocate import DecisionRule
    from train.adapt import training_task_table
    from train.export import write_bundle
    from train.price import finish_bundle

    data = fitted.data
    # tasks.json: the trained tasks' columns and the global table that answers for any other task
    train_rows = data.rows.iloc[fitted.train_idx]
    arm_ids = [a.arm_id for a in data.arms]
    tasks = (
        None if data.task_columns is None else training_task_table(train_rows, arm_ids, data.task_columns, data.label)
    )
    rule_given = rule is not None
    rule = rule if rule is not None else DecisionRule()
    # Parity reference: query features (not rows) of up to 64 training queries.
    n_query_cols = len(data.feature_set.names())
    first_rows = pd.Series(fitted.train_idx).groupby(data.groups[fitted.train_idx]).first().to_numpy()
    pick = np.random.default_rng(0).choice(first_rows, size=min(64, len(first_rows)), replace=False)
    write_bundle(
        out_dir,
        fitted.estimators["success"].booster_,
        fitted.estimators["energy"].booster_,
        data.arms,
        data.models,
        data.feature_set,
        rule,
        {k: v for k, v in metrics.items() if np.isfinite(v)},
        data.meter,
        data.energy_source,
        calibration=fitted.calibration,
        reference_x=data.X[np.sort(pick), :n_query_cols],
        probe_reduction=data.probe_reduction,
        # without a rule the stage-2 rule is fitted once, at the default price (train.price.finish_bundle)
        stage_two=None if fitted.stage_two is None or not rule_given else fitted.stage_two.fit_at(_lam(rule)),
        task_table=tasks,
    )
    finish_bundle(Path(out_dir), fitted, rule_given=rule_given)
    return Path(out_dir)


def _lam(rule: Any) -> float:
    lam = rule.lam if hasattr(rule, "lam") else dict(rule).get("lam", 0.0)
    return float(lam)


def fit_policy(
    samples: pd.DataFrame,
    train_query_ids: Sequence[str],
    cfg: TrainConfig,
    out_dir: Path,
    rule: Any = None,
    probes: Any = None,
) -> Path:
    """Train on the samples of `train_query_ids` only and write a policy bundle folder at `out_dir`.

    No MLflow, no test split, nothing printed: the cross-fitting building block.
    The bundle's metrics are the tuning losses (validation folds of these queries).
    """
    data = build_dataset(
        samples,
        feature_set=cfg.feature_set,
        soft_labels=cfg.soft_labels,
        seed=cfg.seed,
        probes=resolve_probes(samples, cfg, probes),
        probe_fit_ids=list(train_query_ids) if get_feature_set(cfg.feature_set).probe else None,
    )
    fitted = fit(data, train_query_rows(data, train_query_ids), cfg, samples=samples)
    return write_policy_bundle(Path(out_dir), fitted, fitted.tuning_metrics(), rule)
