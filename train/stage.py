"""`ttc train`: the work of `train.fit` plus its side effects: MLflow, the output folder, the registry, the console.

Flow: load the store -> `train.fit.prepare` ((query, arm) rows, split by query
or task) -> `train.fit.fit` (Optuna on the training queries, one nested MLflow
run per trial logged here through its `on_trial` hook; refit of the best
trial on every training query) -> `train.fit.evaluate` (held-out queries
against the per-arm baseline) -> native LightGBM text models, metrics,
figures and the policy bundle in `out_dir`, and in the parent MLflow run.

The output folder appears only when it is complete: everything is written to
a temporary sibling that is renamed to `out_dir` at the end and removed on
any failure, so a crash (two `ttc train` racing on a fresh MLflow database,
say) never leaves an empty or half-written folder. An existing `out_dir` is
replaced only when it is empty or a previous `ttc train` output.

The saved models are the ones the test metrics describe: they never see a test
query. Energy metrics and params name their source (`energy_estimated/...` or
`energy_measured/...`), because estimated and measured joules are not alike.
For training without MLflow or files (cross-fitting), use
`train.fit.fit_policy(samples, train_query_ids, cfg, out_dir) -> Path`.
mlflow, optuna, lightgbm and matplotlib are imported inside the stage only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policy.errors import UsageError
from store.loader import load_samples
from store.paths import check_output_folder
from store.tracking import check_tracking_uri
from train.fit import Clock, Evaluation, Fitted, TrainConfig, evaluate, fit, fit_policy, prepare, write_policy_bundle
from train.registry import PREDICTORS
from train.report import MARKER, print_summary, write_reports
from train.track import TrialLog, log_inputs, log_models, log_params, open_tracking, register
from train.tune import TrialRecord

if TYPE_CHECKING:
    from train.dataset import RowSplit  # the split with row indices (store.splits.Split inside)

__all__ = ["TrainConfig", "TrainResult", "fit_policy", "train_stage"]


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


class _Progress:
    """The train stage's live progress line (store/progress.py): Optuna trials done of all predictors', ETA."""

    def __init__(self, enabled: bool, total: int) -> None:
        from store.progress import ProgressLine

        self.line = ProgressLine("train", enabled and total > 0, eta_by="trials")
        self.total, self.done = total, 0
        self.best: dict[str, float] = {}
        self.note = ""

    def __enter__(self) -> _Progress:
        self.line.update([("trials", 0, self.total)], force=True)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.close()
        else:  # tuning is done; the held-out metrics, the bundle and MLflow follow (`close` ends the line)
            self.line.update([("trials", self.done, self.total)], note="held-out metrics, bundle, MLflow", force=True)

    def close(self) -> None:
        self.line.finish([("trials", self.done, self.total)], note=self.note)

    def advance(self, rec: TrialRecord) -> None:
        self.done += 1
        best = self.best.get(rec.predictor, float("inf"))
        self.best[rec.predictor] = best = min(best, rec.value) if rec.value == rec.value else best
        self.note = "  ".join(f"{p} best {b:.4f}" for p, b in self.best.items())
        note = f"{rec.predictor} trial {rec.number} best {best:.4f}"
        self.line.update([("trials", self.done, self.total)], note=note)


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
    summary: bool = True,
    test_size: float = 0.2,
    cv_folds: int = 1,
    soft_labels: bool = True,
    calibration: str = "none",
    rule: Any = None,
    export_bundle: bool = True,
    study_name: str | None = None,
) -> TrainResult:
    """Train the success, energy and length predictors on `store`; see the module docstring.

    The training arguments are `train.fit.TrainConfig`'s (validated before the
    store is read). `tracking_uri` defaults to sqlite:///mlruns/mlflow.db under
    the working directory; `register_name` registers the models as
    `<name>-success`, `<name>-energy`, `<name>-length` with alias "champion";
    `rule` is the bundle's `policy.allocate.DecisionRule` (or its dict; default:
    price mode, lam 0), written to `out_dir/bundle` when `export_bundle`.
    `progress`: one live line (trials done, ETA); `summary`: then the held-out metrics table.
    Raises `UsageError` for bad input.
    """
    cfg = TrainConfig(
        feature_set=feature_set,
        n_trials=n_trials,
        split=split,
        holdout_tasks=tuple(holdout_tasks or ()),
        test_size=test_size,
        seed=seed,
        cv_folds=cv_folds,
        soft_labels=soft_labels,
        calibration=calibration,
        num_threads=num_threads,
        storage=storage,
        study_name=study_name,
    )
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    check_tracking_uri(tracking_uri, registry=register_name is not None)  # before the store is read
    clock = Clock()
    samples = load_samples(store)
    clock.lap("load")
    data, sp = prepare(samples, cfg, store)  # store: the probe side table, for text+probe
    clock.lap("dataset")
    mlflow, client, tracking_uri, experiment_id = open_tracking(tracking_uri, experiment)
    tags = {"stage": "train", "energy_source": data.energy_source, "energy_meter": data.meter}
    run_name = f"train-{cfg.feature_set}-{cfg.split}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as parent:
        log_params(mlflow, store, cfg, data, sp)
        log_inputs(mlflow, data, sp, store)
        clock.lap("mlflow_setup")
        with _Progress(progress, cfg.n_trials * len(PREDICTORS)) as bar:
            on_trial = TrialLog(mlflow, tags, data.energy_source, bar.advance)
            prefix = f"ttc-train-{parent.info.run_id}"
            fitted = fit(data, sp.train, cfg, study_prefix=prefix, on_trial=on_trial, clock=clock, samples=samples)
        ev = evaluate(fitted, sp)
        clock.lap("evaluate")
        with _staged(out_dir) as tmp:
            _save(mlflow, client, tmp, fitted, sp, ev, register_name, rule, export_bundle, clock)
    result = _result(out_dir, fitted, sp, ev, parent.info.run_id, experiment_id, tracking_uri, export_bundle, clock)
    bar.close()
    if progress and summary:
        print_summary(ev.metrics, data, result.timings_s["total"])
        if result.bundle_dir is not None:  # the default price chosen on the training frontier (train/price.py)
            from policy.bundle import load_bundle

            frontier = load_bundle(result.bundle_dir).frontier
            print(f"bundle {result.bundle_dir}: {frontier.describe()}" if frontier else "")
    return result


def _result(out_dir: Path, fitted: Fitted, sp: RowSplit, ev: Evaluation, run_id: str, experiment_id: str,
            tracking_uri: str, export_bundle: bool, clock: Clock) -> TrainResult:  # fmt: skip
    data = fitted.data
    return TrainResult(
        out_dir=out_dir,
        model_paths={name: out_dir / f"{name}.txt" for name in fitted.predictors},
        calibration_path=out_dir / "calibration.json" if fitted.calibration is not None else None,
        metrics=ev.metrics,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
        train_query_ids=sp.train_query_ids,
        test_query_ids=sp.test_query_ids,
        holdout_tasks=sp.holdout_tasks,
        energy_source=data.energy_source,
        energy_meter=data.meter,
        n_rows=len(data.rows),
        bundle_dir=out_dir / "bundle" if export_bundle else None,
        timings_s={**clock.laps, "total": sum(clock.laps.values())},
    )


def _save(mlflow: Any, client: Any, tmp: Path, fitted: Fitted, sp: RowSplit, ev: Evaluation,
          register_name: str | None, rule: Any, export_bundle: bool, clock: Clock) -> None:  # fmt: skip
    """Write every output into `tmp` and log it to the active run (metrics, artifacts, models, registry)."""
    mlflow.log_metrics({k: v for k, v in ev.metrics.items() if np.isfinite(v)})
    mlflow.log_params({f"{n}_{k}": v for n, d in ev.details.items() for k, v in d["best_params"].items()})
    _write_models(tmp, fitted)
    write_reports(tmp, fitted, sp, ev)
    mlflow.log_artifacts(str(tmp), artifact_path="train")
    clock.lap("reports")
    model_uris = log_models(mlflow, fitted, sp)
    if register_name:
        register(mlflow, client, register_name, model_uris)
    clock.lap("log_models")
    if export_bundle:
        write_policy_bundle(tmp / "bundle", fitted, ev.metrics, rule)
    clock.lap("bundle")
    mlflow.log_metrics({f"time/{k}_s": v for k, v in clock.laps.items()})
    mlflow.log_metric("train_wall_s", sum(clock.laps.values()))


# ---------------------------------------------------------------- the output folder


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an `out_dir` that is no place for a folder, or that replacing would lose someone's files."""
    check_output_folder(out_dir, "--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the training output")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise UsageError(f"--out {out_dir} holds files that are not a `ttc train` output; give a new or empty folder")


@contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of `out_dir`, renamed to it on success and removed on failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _check_out_dir(out_dir)  # again: another process may have written there meanwhile
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if old.exists():
                old.rename(out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_models(out_dir: Path, fitted: Fitted) -> None:
    import json

    for name, est in fitted.estimators.items():
        est.booster_.save_model(str(out_dir / f"{name}.txt"))
    if fitted.calibration is not None:
        (out_dir / "calibration.json").write_text(json.dumps(fitted.calibration, indent=1))
