"""MLflow for a Ray collection: the collect run as the parent on the driver, one nested run per actor.

The parent is the single-process collect run (`collect.observers.Tracker`: the
config as params, running totals, per-arm accuracy and joules, the store as a
dataset input). Each actor gets a nested run, created here so that a restarted
actor (same arguments) keeps logging to the same run; the actor logs its own
units into it (`collect.ray_worker.UnitWorker._log`) through the resolved
tracking URI, which therefore must be one every node reaches: a shared
`mlflow server` (http://HOST:PORT) on a real cluster, or an absolute SQLite path
on a local one. This module never generates or writes samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collect.ray_worker import DistributedResult, WorkerInfo
    from collect.stage import Progress

from collect.config import CollectConfig


class RunTracking:
    """The parent run (opened on construction) and the actors' nested runs."""

    def __init__(self, cfg: CollectConfig) -> None:
        import mlflow
        from mlflow import MlflowClient

        from collect.observers import Tracker

        self.tracker = Tracker(cfg)  # opens the parent run and logs the config
        self.run_id = self.tracker.run_id
        self.uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.tracker.run.info.experiment_id
        self.source = ""
        self.children: list[str] = []
        mlflow.set_tags({"executor": "ray"})

    def actor_runs(self, n: int) -> list[tuple[str, str]]:
        """(tracking URI, run id) of a nested run for each of `n` actors."""
        for i in range(n):
            tags = {"mlflow.parentRunId": self.run_id, "stage": "collect", "actor": str(i)}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"actor-{i}")
            self.children.append(run.info.run_id)
        return [(self.uri, run_id) for run_id in self.children]

    def tag_actors(self, infos: list[WorkerInfo]) -> None:
        self.source = infos[0].energy_source if infos else ""
        for run_id, info in zip(self.children, infos, strict=True):
            for k, v in (("node", info.node), ("device", info.device), ("energy_meter", info.meter)):
                self.client.set_tag(run_id, k, v)
        self.tracker.mlflow.log_params({"ray_actors": len(infos)})

    def progress(self, step: int, p: Progress) -> None:
        self.tracker.log_metrics(p.metrics(self.source), step)

    def finish(self, store_uri: str, result: DistributedResult) -> None:
        """End the nested runs, log the run's outcome, and close the parent with the store's summary."""
        from pathlib import Path

        from collect.ray_store import _is_remote
        from store.shards import SampleStore, read_samples

        self._end_children("FINISHED")
        self.tracker.log_metrics(
            {"units_run": result.units_run, "units_written": result.units_written, "units_failed": len(result.failed)}
        )
        local = not _is_remote(store_uri)
        df: Any = read_samples(store_uri) if local and SampleStore(store_uri).shards() else None
        c = result.collect
        self.tracker.finish(df, Path(store_uri) if local else Path("."), c.meter, c.energy_source)

    def fail(self) -> None:
        self._end_children("KILLED")
        self.tracker.fail()

    def _end_children(self, status: str) -> None:
        for run_id in self.children:
            self.client.set_terminated(run_id, status)
