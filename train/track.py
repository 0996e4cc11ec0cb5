"""The MLflow side of `ttc train`: the tracking set-up, params, datasets, nested trial runs, models, registry.

Called by `train.stage` only; the work (`train.fit`) never sees MLflow. Every
input is logged without library warnings: datasets get one explicit source and
a digest computed here, and numeric columns are float64 (an integer schema
column makes MLflow warn that it cannot hold a missing value).
mlflow is imported inside the functions (or passed in), never at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from store.tracking import experiment_id as tracking_experiment_id
from store.tracking import resolve_tracking_uri
from train.dataset import TrainingData
from train.fit import Fitted, TrainConfig
from train.registry import PREDICTORS
from train.tune import TrialRecord

if TYPE_CHECKING:
    from train.dataset import RowSplit  # the split with row indices (store.splits.Split inside)

SUCCESS_LABEL_NOTE = "correct_soft: mean vote correctness over resampled n-of-N sample subsets"


def open_tracking(tracking_uri: str | None, experiment: str) -> tuple[Any, Any, str, str]:
    """(mlflow, MlflowClient, resolved URI, experiment id), with `experiment` created if missing."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    return mlflow, client, uri, tracking_experiment_id(client, experiment, uri)


class TrialLog:
    """`on_trial` hook of `train.fit.fit`: one nested MLflow run per finished trial; `on_progress` sees every trial."""

    def __init__(
        self, mlflow: Any, tags: dict[str, str], energy_source: str, on_progress: Callable[[TrialRecord], None]
    ) -> None:
        self.mlflow, self.tags, self.energy_source, self.on_progress = mlflow, tags, energy_source, on_progress

    def __call__(self, rec: TrialRecord) -> None:
        self.on_progress(rec)
        if rec.pruned:
            return
        spec = PREDICTORS[rec.predictor]
        parent = self.mlflow.active_run()
        tags = {"predictor": rec.predictor, "optuna_trial": str(rec.number), **self.tags}
        # The parent's experiment, explicitly: a nested run otherwise lands in the *active* experiment.
        with self.mlflow.start_run(
            experiment_id=parent.info.experiment_id,
            run_name=f"{rec.predictor}-trial-{rec.number:03d}",
            nested=True,
            tags=tags,
        ):
            self.mlflow.log_params({**rec.params, "n_estimators": rec.n_estimators})
            self.mlflow.log_metrics({f"{spec.metric_prefix(self.energy_source)}/valid_{spec.loss_name}": rec.value})


def _redact(url: str) -> str:
    # An RDB URL may carry a password; never log it.
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def log_params(mlflow: Any, store: str | Path, cfg: TrainConfig, data: TrainingData, sp: RowSplit) -> None:
    mlflow.log_params(
        {
            "store": str(store),
            "feature_set": data.feature_set.name,
            "feature_set_version": data.feature_set.version,
            "n_features": len(data.feature_names),
            "success_label": data.label,
            "success_label_note": SUCCESS_LABEL_NOTE if data.label == "correct_soft" else "correct: majority vote",
            "calibration": cfg.calibration,
            "split": cfg.split,
            "test_size": cfg.test_size,
            "holdout_tasks": ",".join(sp.holdout_tasks) or "-",
            "seed": cfg.seed,
            "n_trials": cfg.n_trials,
            "cv_folds": cfg.cv_folds,
            "num_threads": cfg.num_threads,
            "optuna_storage": _redact(cfg.storage) if cfg.storage else "memory",
            "optuna_study": cfg.study_name or "-",
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


#: arm-row columns logged as the run's datasets, all as float64 or strings
_INPUT_COLUMNS = ("query_id", "task", "arm_id", "correct", "correct_soft", "energy_j", "output_tokens")
_NUMERIC_INPUT_COLUMNS = ("correct", "correct_soft", "energy_j", "output_tokens")


def log_inputs(mlflow: Any, data: TrainingData, sp: RowSplit, store: str | Path) -> None:
    # The arm rows and labels, not the feature matrix: features are a pure function of
    # the question text (feature set name + version), and a 100-column frame makes
    # MLflow's schema and digest cost seconds.
    import hashlib
    import json

    import pandas as pd
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    # One explicit source: a bare path matches two registered local source types (and warns).
    source = get_dataset_source_from_json(json.dumps({"uri": Path(store).resolve().as_uri()}), source_type="local")
    for context, idx in (("training", sp.train), ("testing", sp.test)):
        frame = data.rows[list(_INPUT_COLUMNS)].iloc[idx].reset_index(drop=True)
        # Floats, not ints: MLflow warns that an integer schema column cannot hold a missing value.
        frame = frame.astype({c: "float64" for c in _NUMERIC_INPUT_COLUMNS})
        digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:8]
        ds = mlflow.data.from_pandas(
            frame, source=source, name=f"arm-rows-{context}", targets=data.label, digest=digest
        )
        mlflow.log_input(ds, context=context)


def log_models(mlflow: Any, fitted: Fitted, sp: RowSplit) -> dict[str, str]:
    import lightgbm
    import pandas as pd
    from mlflow.models import infer_signature

    data = fitted.data
    example = pd.DataFrame(data.X[sp.test[:5]], columns=data.feature_names)
    uris = {}
    for name, est in fitted.estimators.items():
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


def register(mlflow: Any, client: Any, register_name: str, model_uris: dict[str, str]) -> None:
    for name, uri in model_uris.items():
        version = mlflow.register_model(uri, f"{register_name}-{name}")
        client.set_registered_model_alias(f"{register_name}-{name}", "champion", version.version)
