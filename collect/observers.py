"""The collect stage's side effects: the progress bar and the MLflow run, as observers of the work.

`collect.stage.run_collection` does the work and reports to one observer;
`collect_stage` builds the ones the config and the caller ask for and runs it.
This module never generates, grades or writes samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from collect.stage import CollectResult, Progress, _Batch

from collect.config import CollectConfig


class BarObserver:
    """A rich progress bar: queries done, tokens/s and joules so far."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        cols = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tps]:.1f} tok/s  {task.fields[joules]:.1f} J ({task.fields[source]})"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        self.bar = Bar(*cols, disable=not enabled)
        self.job: Any = None

    def start(self, total_queries: int, meter_source: str) -> None:
        self.bar.start()
        self.job = self.bar.add_task("collect", total=total_queries, tps=0.0, joules=0.0, source=meter_source)

    def loading(self, model: str) -> None:
        self.bar.update(self.job, description=f"loading {model}")

    def batch_done(self, batch: _Batch, progress: Progress) -> None:
        tps = progress.output_tokens / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        self.bar.update(
            self.job,
            completed=progress.queries_done,
            tps=tps,
            joules=progress.energy_j,
            description=f"{batch.model} t={batch.temperature:g} n={batch.n}",
        )

    def stop(self) -> None:
        self.bar.stop()


class Tracker:
    """The collect run's MLflow side: params, running metrics, per-arm accuracy, the store as a dataset."""

    def __init__(self, cfg: CollectConfig) -> None:
        import mlflow

        from store.tracking import setup_tracking

        self.mlflow = mlflow
        setup_tracking(cfg.tracking_uri, cfg.experiment)
        self.run = mlflow.start_run(run_name="collect")
        self.run_id = self.run.info.run_id
        params = {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()}
        mlflow.log_params(params)
        mlflow.log_dict(cfg.to_dict(), "collect_config.json")
        mlflow.set_tags({"stage": "collect", "energy_meter": cfg.meter})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self, df: pd.DataFrame | None, root: Path, meter: str, source: str) -> None:
        """Per-arm accuracy and joules of the whole store, and the store as a dataset input."""
        from store.views import arm_outcomes

        mlflow = self.mlflow
        mlflow.set_tags({"energy_source": source, "energy_meter": meter})
        if df is not None:
            arms = arm_outcomes(df)
            summary = arms.groupby("arm_id").agg(accuracy=("correct", "mean"), energy_j=("energy_j", "mean"))
            metrics: dict[str, float] = {}
            for arm_id, row in summary.iterrows():
                key = arm_id.replace("/", ".")
                metrics[f"arm_accuracy.{key}"] = float(row["accuracy"])
                metrics[f"arm_energy_j.{source}.{key}"] = float(row["energy_j"])
            mlflow.log_metrics(metrics)
            import json

            from mlflow.data.dataset_source_registry import get_dataset_source_from_json

            # No library warning on the console: one explicit source (a bare path matches two registered
            # local source types) and float numbers (MLflow warns that an int column cannot hold a NaN).
            source = get_dataset_source_from_json(json.dumps({"uri": root.resolve().as_uri()}), source_type="local")
            light = df.drop(columns=["text", "question"])
            light = light.astype({c: "float64" for c in light.select_dtypes("integer").columns})
            dataset = mlflow.data.from_pandas(light, source=source, name="samples")
            mlflow.log_input(dataset, context="collect")
        mlflow.end_run()

    def fail(self) -> None:
        self.mlflow.end_run(status="KILLED")


class _Both:
    """The observer `run_collection` sees: forwards to the bar and, if any, the tracker."""

    def __init__(self, bar: BarObserver, tracker: Tracker | None) -> None:
        self.bar, self.tracker = bar, tracker
        self.run_name = tracker.run_id if tracker else ""
        self.source = ""

    def start(self, total_queries: int, meter_source: str, idle_power_w: float | None) -> None:
        self.source = meter_source
        self.bar.start(total_queries, meter_source)
        if self.tracker and idle_power_w is not None:
            self.tracker.log_metrics({f"idle_power_w.{meter_source}": idle_power_w}, 0)

    def loading(self, model: str) -> None:
        self.bar.loading(model)

    def batch_done(self, step: int, batch: _Batch, progress: Progress) -> None:
        self.bar.batch_done(batch, progress)
        if self.tracker:
            self.tracker.log_metrics(progress.metrics(self.source), step)


def collect_stage(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Run (or resume) a collection with its side effects: a progress bar and, if `cfg.track`, an MLflow run."""
    from collect.stage import run_collection
    from store.shards import SampleStore, read_samples

    cfg.validate()  # before an MLflow run is opened
    tracker = Tracker(cfg) if cfg.track else None
    obs = _Both(BarObserver(progress), tracker)
    try:
        try:
            result = run_collection(cfg, obs)
        finally:
            obs.bar.stop()
        if tracker:
            stored = read_samples(cfg.store) if SampleStore(cfg.store).shards() else None
            tracker.finish(stored, Path(cfg.store), result.meter, result.energy_source)
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    return result
