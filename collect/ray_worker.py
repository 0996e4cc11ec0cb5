"""The actor of a Ray collection: one per device slot, its model kept loaded, one unit per call.

`collect.distributed` makes `UnitWorker` a Ray actor (one GPU each, or a few CPU
slots each) and feeds it `Unit`s through an actor pool. For every unit the
actor runs the single-process code (`collect.stage.run_batch`: the same batch,
the same seed, so the same samples), meters its own device, stamps each sample
with its node and device, and writes the unit's probe and sample shards itself
(`collect.ray_store`: named after the unit, refused if already there). It hands
back only a small `UnitResult` for the driver's progress line; the samples never
travel through Ray.

Energy: the meter is opened inside the actor process, after Ray has set
`CUDA_VISIBLE_DEVICES` to the actor's GPU, so `nvml` reads that GPU alone (the
whole board: one actor per GPU keeps the reading its own); on CPU the
`estimate` meter counts this process's CPU time.

A unit that raises is re-raised as `UnitFailed` naming it, so the driver can
report it once Ray's bounded retries are spent. This module never plans units,
never takes the store's writer lock and never writes outside its units' shards.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collect.config import CollectConfig
from collect.ray_store import PROBE_PREFIX, SAMPLE_PREFIX, UnitStore
from collect.tasks import Item

if TYPE_CHECKING:
    from collect.stage import CollectResult

#: `(model name, torch device, threads, dtype) -> a loaded model`; tests pass a stand-in
ModelLoader = Callable[[str, str, int, str], Any]


class UnitFailed(RuntimeError):
    """A unit raised in its actor; carries the unit's key so the driver can name it."""

    def __init__(self, key: str, index: int, reason: str) -> None:
        super().__init__(key, index, reason)
        self.key, self.index, self.reason = key, index, reason

    def __str__(self) -> str:
        return f"unit {self.index} ({self.key}): {self.reason}"


@dataclass(frozen=True)
class Unit:
    """One generate call of the plan: a batch of one task's queries x model x temperature, with its seed.

    `skip_groups` / `skip_probes`: query ids whose samples / probe a shard not named
    by a unit already holds (a store begun by a single-process run); they are
    generated again with the batch (the seed covers the whole call) but not written.
    """

    key: str
    index: int
    model: str
    temperature: float
    n: int
    seed: int
    task: str
    items: tuple[Item, ...]
    skip_groups: frozenset[str] = frozenset()
    skip_probes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class UnitResult:
    """What the driver hears of one unit: "written" by this attempt, or "stored" by an earlier one."""

    key: str
    index: int
    status: str
    samples: int
    queries: int
    output_tokens: int
    energy_j: float
    correct: int
    duration_s: float  # the whole call, a model load included
    load_s: float  # of which loading the model (the actor's first unit of each model)
    started_at: float  # wall clock (epoch s) when the call began, for spans across actors of one node
    node: str
    device: str
    pid: int
    actor: int


@dataclass(frozen=True)
class WorkerInfo:
    actor: int
    node: str
    device: str
    pid: int
    meter: str
    energy_source: str


@dataclass(frozen=True)
class DistributedResult:
    """A Ray collection: the usual `CollectResult` plus what the cluster did."""

    collect: CollectResult
    units_run: int  # units planned for this run (not stored before it)
    units_written: int  # of those, stored by this run
    units_already_stored: int  # skipped at planning: their shard was there
    failed: tuple[str, ...]  # one line per unit not in the store at the end
    actors: tuple[WorkerInfo, ...]
    results: tuple[UnitResult, ...] = field(default=())  # what each unit's actor reported, in arrival order


def load_model(name: str, device: str, threads: int, dtype: str) -> Any:
    """The real model, as the single-process path loads it."""
    from collect.models import LoadedModel, resolve_model

    return LoadedModel(resolve_model(name), device, threads or None, dtype=dtype)


class UnitWorker:
    """Made a Ray actor by `collect.distributed`; plain Python, so it can be tested without Ray too."""

    def __init__(
        self,
        cfg: CollectConfig,
        store_uri: str,
        actor: int,
        run_name: str,
        threads: int,
        use_gpu: bool,
        tracking: tuple[str, str] | None = None,
        loader: ModelLoader | None = None,
    ) -> None:
        gpus = _gpu_ids() if use_gpu else []
        self.cfg, self.actor, self.run_name, self.threads = cfg, actor, run_name, threads
        self.store = UnitStore(store_uri)
        self.torch_device = "cuda" if gpus else "cpu"
        self.device = f"gpu{gpus[0]}" if gpus else "cpu"
        self.node = socket.gethostname()
        self.meter = self._open_meter()
        self.tracking = tracking
        self.loader = loader or load_model
        self._lm: Any = None
        self._lm_name = ""
        self._load_s = 0.0
        self._tasks: dict[str, Any] = {}

    def _open_meter(self) -> Any:
        from collect.energy import make_meter

        kwargs = {"watts_per_core": self.cfg.watts_per_core} if self.cfg.meter == "estimate" else {}
        self._idle_measured = self.cfg.idle_baseline_s <= 0
        return make_meter(self.cfg.meter, **kwargs)

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.actor, self.node, self.device, os.getpid(), self.meter.name, self.meter.source)

    def run(self, unit: Unit) -> UnitResult:
        """Generate, meter, grade and store one unit (nothing if an earlier attempt stored it)."""
        t0, self._load_s, self._started_at = time.perf_counter(), 0.0, time.time()
        try:
            if self.store.has(SAMPLE_PREFIX, unit.key):
                return self._result(unit, "stored", [], t0)
            written, samples = self._generate_and_write(unit)
        except Exception as e:  # noqa: BLE001 (re-raised with the unit's name; Ray retries it)
            self.meter = self._open_meter()  # the failed call may have left a meter window open
            raise UnitFailed(unit.key, unit.index, f"{type(e).__name__}: {e}") from e
        result = self._result(unit, "written" if written else "stored", samples if written else [], t0)
        self._log(result)
        return result

    def _generate_and_write(self, unit: Unit) -> tuple[bool, list[Any]]:
        import pyarrow as pa

        from collect.stage import _Batch, run_batch
        from store.probes import _table as probe_table

        task = self._task(unit.task)
        batch = _Batch(unit.model, unit.temperature, unit.n, unit.seed, [(task, it) for it in unit.items])
        lm = self._model(unit.model)
        if not self._idle_measured:
            self.meter.measure_idle(self.cfg.idle_baseline_s)
            self._idle_measured = True
        out = run_batch(lm, self.meter, batch, self.cfg, self.run_name)
        probes = [p for p in out.probes if p.query_id not in unit.skip_probes]
        if probes:  # before the samples, as in run_collection: a resumed unit finds its probe there
            self.store.write(PROBE_PREFIX, unit.key, probe_table(probes))
        samples = [
            dataclasses.replace(s, node=self.node, device=self.device)
            for s in out.samples
            if s.query_id not in unit.skip_groups
        ]
        table = pa.Table.from_pylist([s.to_dict() for s in samples])
        return self.store.write(SAMPLE_PREFIX, unit.key, table), samples

    def _task(self, name: str) -> Any:
        from collect.tasks import make_task

        if name not in self._tasks:
            self._tasks[name] = make_task(name)
        return self._tasks[name]

    def _model(self, name: str) -> Any:
        """The unit's model: loaded once per actor and kept (the plan is ordered model by model)."""
        if self._lm_name != name:
            self._lm = None  # free the previous model before loading the next
            t0 = time.perf_counter()
            self._lm = self.loader(name, self.torch_device, self.threads, self.cfg.dtype)
            self._lm_name, self._load_s = name, time.perf_counter() - t0
        return self._lm

    def _result(self, unit: Unit, status: str, samples: list[Any], t0: float) -> UnitResult:
        return UnitResult(
            key=unit.key,
            index=unit.index,
            status=status,
            samples=len(samples),
            queries=len(unit.items),
            output_tokens=sum(s.output_tokens for s in samples),
            energy_j=sum(s.energy_j for s in samples),
            correct=sum(s.correct for s in samples),
            duration_s=time.perf_counter() - t0,
            load_s=self._load_s,
            started_at=self._started_at,
            node=self.node,
            device=self.device,
            pid=os.getpid(),
            actor=self.actor,
        )

    def _log(self, r: UnitResult) -> None:
        """This unit's figures in the actor's nested MLflow run (step = the unit's place in the plan)."""
        if self.tracking is None or r.status != "written":
            return
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            uri, run_id = self.tracking
            now = int(time.time() * 1000)
            values = {
                "unit_samples": r.samples,
                "unit_output_tokens": r.output_tokens,
                f"unit_energy_j.{self.meter.source}": r.energy_j,
                "unit_tokens_per_s": r.output_tokens / max(r.duration_s, 1e-9),
            }
            metrics = [Metric(k, float(v), now, r.index) for k, v in values.items()]
            MlflowClient(uri).log_batch(run_id, metrics=metrics)
        except Exception as e:  # noqa: BLE001 (a tracking outage must not cost a stored unit)
            print(f"warning: actor {self.actor} could not log unit {r.index} to MLflow: {e}", file=sys.stderr)


def _gpu_ids() -> list[int]:
    import ray

    return [int(i) for i in ray.get_gpu_ids()]
