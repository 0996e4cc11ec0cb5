"""The collect stage's side effects: the progress line and the MLflow run, as observers of the work.

`collect.stage.run_collection` does the work and reports to one observer;
`collect_stage` builds the ones the config and the caller ask for and runs it.
This module never generates, grades or writes samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from collect.stage import CollectResult, Progress, _Batch

from collect.config import CollectConfig


class LineObserver:
    """The collect stage's live progress line (store/progress.py): queries and samples done of
    total, tokens/s, joules, elapsed time and ETA. A query counts once per model and setting
    (sampled, greedy), as the batches hold it."""

    def __init__(self, enabled: bool) -> None:
        from store.progress import ProgressLine

        self.line = ProgressLine("collect", enabled, eta_by="samples")
        self.queries = self.samples = 0
        self.source = ""
        self.counts: list[tuple[str, int, int]] = []
        self.rate = ""
        self.model = ""
        self.started = False

    def start(self, total_queries: int, meter_source: str, total_samples: int = 0) -> None:
        self.started = True
        self.queries, self.samples, self.source = total_queries, total_samples, meter_source
        self.counts = [("queries", 0, total_queries), ("samples", 0, total_samples)]
        self.line.update(self.counts, force=True)

    def loading(self, model: str) -> None:
        self.model = model
        self.line.update(self.counts, self.rate, note=f"loading {model}", force=True)

    def batch_done(self, batch: _Batch, progress: Progress) -> None:
        tps = progress.output_tokens / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        self.counts = [("queries", progress.queries_done, self.queries), ("samples", progress.samples, self.samples)]
        self.rate = f"{tps:.1f} tok/s  {progress.energy_j:.0f} J ({self.source})"
        self.line.update(self.counts, self.rate, note=batch.model)

    def stop(self) -> None:
        if not self.started:  # refused before any work (a bad model, a held lock): the error is the only line
            return
        self.line.finish(self.counts, self.rate, note="" if self.queries else "nothing new to collect")


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

    def __init__(self, bar: LineObserver, tracker: Tracker | None) -> None:
        self.bar, self.tracker = bar, tracker
        self.run_name = tracker.run_id if tracker else ""
        self.source = ""

    def start(self, total_queries: int, meter_source: str, idle_power_w: float | None, total_samples: int = 0) -> None:
        self.source = meter_source
        self.bar.start(total_queries, meter_source, total_samples)
        if self.tracker and idle_power_w is not None:
            self.tracker.log_metrics({f"idle_power_w.{meter_source}": idle_power_w}, 0)

    def loading(self, model: str) -> None:
        self.bar.loading(model)

    def batch_done(self, step: int, batch: _Batch, progress: Progress) -> None:
        self.bar.batch_done(batch, progress)
        if self.tracker:
            self.tracker.log_metrics(progress.metrics(self.source), step)


def collect_stage(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Run (or resume) a collection with its side effects: a progress line and, if `cfg.track`, an MLflow run."""
    from collect.stage import run_collection
    from store.shards import SampleStore, read_samples

    cfg.validate()  # before an MLflow run is opened
    tracker = Tracker(cfg) if cfg.track else None
    obs = _Both(LineObserver(progress), tracker)
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
