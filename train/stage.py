"""`ttc train`: tune, fit and evaluate the predictors on a sample store, logging it all to MLflow.

Flow: load the store -> (query, arm) rows -> split by query or task -> for each
predictor in `train.tune.PREDICTORS`: Optuna on the training queries (one
nested MLflow run per trial), refit of the best trial on every training query,
evaluation on the held-out queries against the per-arm baseline -> native
LightGBM text models, metrics and figures in `out_dir` and in the parent run.

The saved models are the ones the test metrics describe: they never see a test
query. Energy metrics and params name their source (`energy_estimated/...` or
`energy_measured/...`), because estimated and measured joules are not alike.
mlflow, optuna, lightgbm and matplotlib are imported inside the stage only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policy.errors import UsageError
from policy.features import get_feature_set
from store.tracking import experiment_id as tracking_experiment_id
from store.tracking import resolve_tracking_uri
from train.dataset import TrainingData, build_dataset, load_samples, make_split
from train.predictors import (
    ArmMeanBaseline,
    log_target_metrics,
    reliability_curve,
    success_metrics,
)
from train.tune import PREDICTORS, TuneResult, check_storage, tune

SUCCESS_LABEL_NOTE = "correct_soft: mean vote correctness over resampled n-of-N sample subsets"
CALIBRATION_METHODS = ("none", "isotonic")


@dataclass(frozen=True)
class TrainResult:
    """What `train_stage` produced. `model_paths` maps predictor name -> native LightGBM text file."""

    out_dir: Path
    model_paths: dict[str, Path]
    calibration_path: Path | None
    metrics: dict[str, float]
    run_id: str
    experiment_id: str
    tracking_uri: str
    train_query_ids: tuple[str, ...]
    test_query_ids: tuple[str, ...]
    holdout_tasks: tuple[str, ...]
    energy_source: str
    energy_meter: str
    n_rows: int = 0
    bundle_dir: Path | None = None
    timings_s: dict[str, float] | None = None


def _check_args(n_trials: int, num_threads: int, feature_set: str, split: str, calibration: str, cv_folds: int) -> None:
    from train.dataset import SPLITS

    get_feature_set(feature_set)
    if split not in SPLITS:
        from policy.errors import unknown_name

        raise unknown_name("split", split, SPLITS)
    if calibration not in CALIBRATION_METHODS:
        from policy.errors import unknown_name

        raise unknown_name("calibration", calibration, CALIBRATION_METHODS)
    if n_trials < 0:
        raise UsageError(f"n_trials must be >= 0 (0 = default hyperparameters), got {n_trials}")
    if num_threads < 1:
        raise UsageError(f"num_threads must be >= 1, got {num_threads}")
    if cv_folds < 1:
        raise UsageError(f"cv_folds must be >= 1 (1 = one grouped holdout), got {cv_folds}")


class _Clock:
    """Wall seconds per named phase, for the run's `time/*` metrics and the benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


class _Progress:
    """A rich progress bar over every trial of every predictor, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]train[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            self.task = self.bar.add_task("tuning", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def callback(self, name: str):
        best = [float("inf")]

        def on_trial(number: int, value: float) -> None:
            if self.bar is not None:
                best[0] = min(best[0], value) if value == value else best[0]
                self.bar.update(self.task, advance=1, description=f"{name} trial {number} best {best[0]:.4f}")

        return on_trial


def train_stage(
    store: str | Path,
    out_dir: str | Path,
    feature_set: str = "text",
    n_trials: int = 30,
    split: str = "query",
    holdout_tasks: Sequence[str] | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "ttc-train",
    register_name: str | None = None,
    storage: str | None = None,
    num_threads: int = 2,
    progress: bool = True,
    *,
    test_size: float = 0.2,
    cv_folds: int = 1,
    soft_labels: bool = True,
    calibration: str = "none",
    rule: Any = None,
    export_bundle: bool = True,
) -> TrainResult:
    """Train the success, energy and length predictors on `store`; see the module docstring.

    `n_trials` Optuna trials per predictor (0 = default hyperparameters);
    `split` "query" holds out `test_size` of the queries, "task" holds out whole
    tasks (`holdout_tasks`, or seeded random ones); `storage` is the Optuna
    study storage (None = in memory); `tracking_uri` defaults to
    sqlite:///mlruns/mlflow.db under the working directory; `register_name`
    registers the models as `<name>-success`, `<name>-energy`, `<name>-length`
    with alias "champion"; `rule` is the bundle's `policy.allocate.DecisionRule`
    (or its dict; default: price mode, lam 0), written to `out_dir/bundle` when
    policy.bundle exists and `export_bundle` is true.
    Raises `UsageError` for bad input.
    """
    _check_args(n_trials, num_threads, feature_set, split, calibration, cv_folds)
    storage = check_storage(storage)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    clock = _Clock()
    samples = load_samples(store)
    clock.lap("load")
    data = build_dataset(samples, feature_set=feature_set, soft_labels=soft_labels, seed=seed)
    clock.lap("dataset")
    sp = make_split(data, split, test_size=test_size, seed=seed, holdout_tasks=holdout_tasks)
    out_dir.mkdir(parents=True, exist_ok=True)

    import mlflow
    from mlflow import MlflowClient

    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking_experiment_id(client, experiment, tracking_uri)
    energy_prefix = f"energy_{data.energy_source}"
    tags = {"stage": "train", "energy_source": data.energy_source, "energy_meter": data.meter}

    X = pd.DataFrame(data.X, columns=data.feature_names)
    Xtr, Xte = X.iloc[sp.train].reset_index(drop=True), X.iloc[sp.test].reset_index(drop=True)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    model_paths: dict[str, Path] = {}

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{feature_set}-{split}", tags=tags) as parent:
        mlflow.log_params(
            {
                "store": str(store),
                "feature_set": data.feature_set.name,
                "feature_set_version": data.feature_set.version,
                "n_features": len(data.feature_names),
                "success_label": data.label,
                "success_label_note": SUCCESS_LABEL_NOTE if data.label == "correct_soft" else "correct: majority vote",
                "calibration": calibration,
                "split": split,
                "test_size": test_size,
                "holdout_tasks": ",".join(sp.holdout_tasks) or "-",
                "seed": seed,
                "n_trials": n_trials,
                "cv_folds": cv_folds,
                "num_threads": num_threads,
                "optuna_storage": _redact(storage) if storage else "memory",
                "n_rows": len(data.rows),
                "n_queries": data.n_queries,
                "n_train_queries": len(sp.train_query_ids),
                "n_test_queries": len(sp.test_query_ids),
                "n_arms": len(data.arms),
                "models": ",".join(data.models),
                "energy_source": data.energy_source,
                "energy_meter": data.meter,
            }
        )
        _log_inputs(mlflow, data, sp, store)
        clock.lap("mlflow_setup")
        with _Progress(progress, n_trials * len(PREDICTORS)) as bar:
            for name, spec in PREDICTORS.items():
                prefix = energy_prefix if name == "energy" else name
                base = spec.make(random_state=seed, num_threads=num_threads)
                y_all = getattr(data, spec.target)
                tuned = tune(
                    spec,
                    base,
                    Xtr,
                    y_all[sp.train],
                    data.groups[sp.train],
                    n_trials=n_trials,
                    seed=seed,
                    cv_folds=cv_folds,
                    storage=storage,
                    study_name=f"ttc-train-{name}-{parent.info.run_id}",
                    metric_prefix=prefix,
                    run_tags=tags,
                    on_trial=bar.callback(name),
                )
                clock.lap(f"tune_{name}")
                est = _refit(spec.name, base, tuned, Xtr, y_all[sp.train], data.groups[sp.train], calibration)
                fitted[name] = est
                m, d = _evaluate(name, est, data, sp, Xte)
                metrics.update({f"{prefix}/{k}": v for k, v in m.items()})
                if tuned.n_trials:
                    metrics[f"{prefix}/valid_{spec.loss_name}_best"] = tuned.best_value
                details[name] = {**d, "best_params": tuned.best_params, "n_estimators": tuned.best_n_estimators}
                path = out_dir / f"{name}.txt"
                est.booster_.save_model(str(path))
                model_paths[name] = path
                clock.lap(f"refit_eval_{name}")
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_params({f"{n}_{k}": v for n, d in details.items() for k, v in d["best_params"].items()})

        calibration_path = None
        if fitted["success"].calibration_ is not None:
            calibration_path = out_dir / "calibration.json"
            calibration_path.write_text(json.dumps(fitted["success"].calibration_, indent=1))
        _write_reports(out_dir, data, sp, fitted, metrics, details)
        mlflow.log_artifacts(str(out_dir), artifact_path="train")
        clock.lap("reports")
        model_uris = _log_models(mlflow, fitted, Xte, data)
        if register_name:
            _register(mlflow, client, register_name, model_uris)
        clock.lap("log_models")
        bundle_dir = _maybe_bundle(out_dir, fitted, data, metrics, sp, rule) if export_bundle else None
        clock.lap("bundle")
        mlflow.log_metrics({f"time/{k}_s": v for k, v in clock.laps.items()})
        mlflow.log_metric("train_wall_s", time.perf_counter() - t0)
        run_id = parent.info.run_id

    if progress:
        _print_summary(metrics, data, time.perf_counter() - t0)
    return TrainResult(
        out_dir=out_dir,
        model_paths=model_paths,
        calibration_path=calibration_path,
        metrics=metrics,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
        train_query_ids=sp.train_query_ids,
        test_query_ids=sp.test_query_ids,
        holdout_tasks=sp.holdout_tasks,
        energy_source=data.energy_source,
        energy_meter=data.meter,
        n_rows=len(data.rows),
        bundle_dir=bundle_dir,
        timings_s={**clock.laps, "total": time.perf_counter() - t0},
    )


def _redact(url: str) -> str:
    # An RDB URL may carry a password; never log it.
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _refit(name: str, base, tuned: TuneResult, X, y, groups, calibration: str):
    est = base.set_params(**tuned.best_params, n_estimators=tuned.best_n_estimators)
    if name == "success":
        return est.set_params(calibration=calibration).fit(X, y, groups=groups)
    return est.fit(X, y)


def _evaluate(name: str, est, data: TrainingData, sp, Xte) -> tuple[dict[str, float], dict[str, Any]]:
    """Test metrics of the model and of the per-arm baseline, overall and per arm."""
    arms_tr, arms_te = data.arm_ids[sp.train], data.arm_ids[sp.test]
    m: dict[str, float] = {}
    if name == "success":
        y_fit, y_true = data.y_success[sp.train], data.y_correct[sp.test]
        p = est.predict_p(Xte)
        base = ArmMeanBaseline().fit(arms_tr, y_fit).predict(arms_te)
        ours, theirs = success_metrics(y_true, p), success_metrics(y_true, base)
        m.update({f"test_{k}": v for k, v in ours.items()})
        m.update({f"baseline_test_{k}": v for k, v in theirs.items()})
        m["test_brier_soft"] = float(np.mean((p - data.y_success[sp.test]) ** 2))
        m["improvement_brier"] = theirs["brier"] - ours["brier"]
        m["improvement_auc"] = ours["auc"] - theirs["auc"]
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
    log = "log" if name == "energy" else "log1p"
    f, finv = (np.log, np.exp) if log == "log" else (np.log1p, np.expm1)
    y_tr = data.energy_j[sp.train] if name == "energy" else data.output_tokens[sp.train]
    y_te = data.energy_j[sp.test] if name == "energy" else data.output_tokens[sp.test]
    pred = est.predict(Xte)
    base = finv(ArmMeanBaseline().fit(arms_tr, f(y_tr)).predict(arms_te))
    ours, theirs = log_target_metrics(y_te, pred, log), log_target_metrics(y_te, base, log)
    m.update({f"test_{k}": v for k, v in ours.items()})
    m.update({f"baseline_test_{k}": v for k, v in theirs.items()})
    m[f"improvement_rmse_{log}"] = theirs[f"rmse_{log}"] - ours[f"rmse_{log}"]
    return m, {}


def _log_inputs(mlflow, data: TrainingData, sp, store) -> None:
    # The arm rows and labels, not the feature matrix: features are a pure function of
    # the question text (feature set name + version), and a 100-column frame makes
    # MLflow's schema and digest cost seconds.
    cols = ["query_id", "task", "arm_id", "correct", "correct_soft", "energy_j", "output_tokens"]
    for context, idx in (("training", sp.train), ("testing", sp.test)):
        frame = data.rows[cols].iloc[idx].reset_index(drop=True)
        ds = mlflow.data.from_pandas(frame, source=str(store), name=f"arm-rows-{context}", targets=data.label)
        mlflow.log_input(ds, context=context)


def _write_reports(out_dir: Path, data: TrainingData, sp, fitted, metrics, details) -> None:
    from matplotlib.figure import Figure

    importance = pd.DataFrame({"feature": data.feature_names})
    for name, est in fitted.items():
        importance[f"{name}_gain"] = est.feature_importances_
    importance.to_csv(out_dir / "feature_importance.csv", index=False)
    (out_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "details": details}, indent=1, default=str))
    (out_dir / "split.json").write_text(
        json.dumps(
            {
                "kind": sp.kind,
                "holdout_tasks": list(sp.holdout_tasks),
                "train_query_ids": list(sp.train_query_ids),
                "test_query_ids": list(sp.test_query_ids),
            },
            indent=1,
        )
    )
    (out_dir / "train_meta.json").write_text(
        json.dumps(
            {
                "feature_set": data.feature_set.name,
                "feature_set_version": data.feature_set.version,
                "feature_names": data.feature_names,
                "arms": [a.arm_id for a in data.arms],
                "models": data.models,
                "success_label": data.label,
                "energy_source": data.energy_source,
                "energy_meter": data.meter,
            },
            indent=1,
        )
    )

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, label in (("reliability", "success predictor"), ("baseline_reliability", "arm base rate")):
        r = details["success"][key]
        ax.plot(r["mean_p"], r["observed"], marker="o", label=label)
    ax.set(xlabel="predicted P(success)", ylabel="observed success rate (test queries)", title="Reliability")
    ax.legend()
    fig.savefig(out_dir / "reliability.png", dpi=100, bbox_inches="tight")

    fig = Figure(figsize=(10, 6))
    for i, name in enumerate(fitted):
        ax = fig.add_subplot(1, len(fitted), i + 1)
        top = importance.nlargest(15, f"{name}_gain")
        ax.barh(top["feature"][::-1], top[f"{name}_gain"][::-1])
        ax.set_title(f"{name}: gain")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "feature_importance.png", dpi=100)


def _log_models(mlflow, fitted, Xte: pd.DataFrame, data: TrainingData) -> dict[str, str]:
    import lightgbm
    from mlflow.models import infer_signature

    example = Xte.head(5)
    uris = {}
    for name, est in fitted.items():
        info = mlflow.lightgbm.log_model(
            est.booster_,
            name=f"{name}_model",
            signature=infer_signature(example, est.booster_.predict(example.to_numpy())),
            input_example=example,
            # Explicit requirements: inferring them loads the model in a subprocess (seconds per model).
            pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"numpy=={np.__version__}"],
            tags={"predictor": name, "energy_source": data.energy_source},
        )
        uris[name] = info.model_uri
    return uris


def _register(mlflow, client, register_name: str, model_uris: dict[str, str]) -> None:
    for name, uri in model_uris.items():
        version = mlflow.register_model(uri, f"{register_name}-{name}")
        client.set_registered_model_alias(f"{register_name}-{name}", "champion", version.version)


def _maybe_bundle(out_dir: Path, fitted, data: TrainingData, metrics, sp, rule) -> Path | None:
    """Write the policy bundle when policy.bundle exists; otherwise `ttc export` does it later."""
    try:
        from policy.bundle import write_bundle
    except ModuleNotFoundError as e:
        if e.name != "policy.bundle":
            raise
        return None
    from policy.allocate import DecisionRule

    # Parity reference: query features (not rows) of up to 64 training queries.
    n_query_cols = len(data.feature_set.names())
    first_rows = pd.Series(sp.train).groupby(data.groups[sp.train]).first().to_numpy()
    rng = np.random.default_rng(0)
    pick = rng.choice(first_rows, size=min(64, len(first_rows)), replace=False)
    bundle_dir = out_dir / "bundle"
    write_bundle(
        bundle_dir,
        fitted["success"].booster_,
        fitted["energy"].booster_,
        data.arms,
        data.models,
        data.feature_set,
        rule if rule is not None else DecisionRule(),
        {k: v for k, v in metrics.items() if np.isfinite(v)},
        data.meter,
        data.energy_source,
        calibration=fitted["success"].calibration_,
        reference_x=data.X[np.sort(pick), :n_query_cols],
    )
    return bundle_dir


def _print_summary(metrics: dict[str, float], data: TrainingData, wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ttc train: {data.n_queries} queries, {len(data.rows)} arm rows, {wall_s:.1f} s")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("per-arm baseline", justify="right")
    for key in sorted(metrics):
        head, _, tail = key.partition("/")
        if tail.startswith("test_") and f"{head}/baseline_{tail}" in metrics:
            table.add_row(key, f"{metrics[key]:.4f}", f"{metrics[f'{head}/baseline_{tail}']:.4f}")
    Console().print(table)
