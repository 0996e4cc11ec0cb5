"""`ttc collect --ray`: one collection spread over the actors of a Ray cluster, the store's guarantees kept.

The driver (this module, the one coordinator) plans the work as units, one per
generate call of the single-process plan (`collect.stage.plan_batches`: task x
batch of queries x model x temperature, each with its seed), drops the units
already in the store (so a rerun resumes), and feeds the rest to Ray actors
through `ray.util.ActorPool`: one actor per device slot (one GPU each, or
`threads` CPU slots each on a CPU-only cluster), each keeping its model loaded
and taking the next unit as soon as it finishes one (`collect.ray_worker`).

Guarantees:
- Each unit's shards are written atomically by the actor that made it, under a
  name derived from the unit, so a retried unit is never stored twice
  (`collect.ray_store`); the loader also refuses or drops duplicates at read.
- The driver holds the store's single-machine writer lock for the whole run (a
  second `ttc collect` on the store is refused); actors never take it.
- An actor killed mid-unit (`ray.kill`, SIGKILL, a lost node) is restarted by
  Ray (`max_restarts=-1`) and its unit retried (`max_task_retries`); a unit that
  raises is retried too, and after `MAX_UNIT_TRIES` tries it is reported by name
  and skipped. At the end the store, not the messages, says what is missing.

Side effects: one progress line on the driver, fed by the actors' results;
with `cfg.track`, one MLflow parent run (the single-process collect run) and a
nested run per actor, logged by the actors through a tracking URI every node
must reach (a shared `mlflow server` on real clusters). This module never
generates samples and never writes shards itself.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collect.config import CollectConfig
from collect.ray_store import UnitStore, _is_remote, unit_key
from collect.ray_worker import DistributedResult, Unit, UnitFailed, UnitResult, UnitWorker, WorkerInfo
from collect.stage import CollectResult, Progress
from policy.errors import UsageError

#: tries of one unit (the first and Ray's retries) before it is reported and skipped
MAX_UNIT_TRIES = 3
#: `--ray` values that start a local cluster for the run (anything else is an address)
LOCAL = ("", "local")


@dataclass(frozen=True)
class Plan:
    units: list[Unit]
    skipped_units: int
    skipped_queries: int


class RayObserver(Protocol):
    """Hooks for a caller (tests kill an actor from `unit_done`)."""

    def actors_ready(self, infos: list[WorkerInfo], handles: list[Any]) -> None: ...
    def unit_done(self, result: UnitResult, progress: Progress) -> None: ...


class _Quiet:
    def actors_ready(self, infos: list[WorkerInfo], handles: list[Any]) -> None:
        pass

    def unit_done(self, result: UnitResult, progress: Progress) -> None:
        pass


def _portable_task(name: str) -> str:
    """A task's config name as actors can rebuild it: `jsonl:PATH` with an absolute path (another folder)."""
    if name.startswith("jsonl:"):
        return "jsonl:" + str(Path(name[len("jsonl:") :]).resolve())
    return name


def plan_units(cfg: CollectConfig, store: UnitStore) -> Plan:
    """The units still to run, in plan order (model by model), and what is already stored."""
    from collect.stage import plan_batches
    from collect.tasks import make_task

    tasks = [make_task(t) for t in cfg.tasks]
    spec = {id(task): _portable_task(name) for task, name in zip(tasks, cfg.tasks, strict=True)}
    done_units, groups, probes = store.done_units(), store.done_groups(), store.done_probes()
    units, skipped_units, skipped_queries = [], 0, 0
    for index, b in enumerate(plan_batches(cfg, tasks)):
        qids = [it.query_id for _, it in b.items]
        key = unit_key(b.model, b.temperature, cfg.max_new_tokens, b.seed, qids)
        have = {q for q in qids if (q, b.model, float(b.temperature), cfg.max_new_tokens, b.seed) in groups}
        if key in done_units or len(have) == len(qids):
            skipped_units, skipped_queries = skipped_units + 1, skipped_queries + len(qids)
            continue
        units.append(
            Unit(
                key=key,
                index=index,
                model=b.model,
                temperature=float(b.temperature),
                n=b.n,
                seed=b.seed,
                task=spec[id(b.items[0][0])],
                items=tuple(it for _, it in b.items),
                skip_groups=frozenset(have),
                skip_probes=frozenset(q for q in qids if (q, b.model) in probes),
            )
        )
    return Plan(units, skipped_units, skipped_queries)


def actor_layout(cfg: CollectConfig, resources: dict[str, float], max_actors: int, units: int) -> tuple[int, int, bool]:
    """(actors, CPU slots per actor, one GPU each?) for a cluster's resources.

    One actor per GPU where the cluster has GPUs and the device allows CUDA;
    otherwise one per `threads` CPU slots (threads 0 counts as 1). `max_actors`
    (0: no cap) and the number of units cap the count.
    """
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and cfg.device in ("auto", "cuda")
    threads = cfg.threads or 1
    n = gpus if use_gpu else int(resources.get("CPU", 0) // threads)
    if n < 1:
        raise UsageError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and no usable GPU, fewer than the "
            f"{threads} CPU slots one actor takes; lower --threads or add nodes"
        )
    if max_actors > 0:
        n = min(n, max_actors)
    return max(min(n, units), 1), (1 if use_gpu else threads), use_gpu


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on: `ray.init` would wait minutes for its GCS."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {host}:{port}: {e.strerror or e}") from e


def connect(address: str, num_cpus: int | None = None) -> bool:
    """Join (or start) the Ray cluster; True if this call started or joined it (so it must shut it down)."""
    import ray

    if ray.is_initialized():  # the caller's cluster (tests, notebooks): used as is, left running
        return False
    env = {"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}}}
    try:
        if address.strip().lower() in LOCAL:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **env)
        else:
            _check_reachable(address)
            ray.init(address=address, **env)
    except ConnectionError as e:
        raise UsageError(
            f"no Ray cluster at {address!r} ({e}); start one with `ray start --head`, "
            "or pass --ray local to start one for this run"
        ) from e
    return True


def run_distributed(
    cfg: CollectConfig,
    address: str = "local",
    max_actors: int = 0,
    progress: bool = True,
    observer: RayObserver | None = None,
    num_cpus: int | None = None,
    loader: Callable[..., Any] | None = None,
) -> DistributedResult:
    """Run (or resume) a collection on Ray.

    `address`: "local" (start a cluster of `num_cpus` CPUs for the run), "auto"
    (the cluster `ray start` made on this node) or HOST:PORT; a cluster this
    process already joined is used as it is. `max_actors`: 0 = one per slot.
    `loader`: how actors load a model (tests pass a stand-in).
    """
    cfg.validate()
    if max_actors < 0:
        raise UsageError(f"--ray-actors must be >= 0 (0 = one per device slot), got {max_actors}")
    return _Job(cfg, address, num_cpus, max_actors, progress, observer or _Quiet(), loader).run()


@dataclass
class _Job:
    """One run of the driver: the store lock, the plan, the actors, the pool, the summary."""

    cfg: CollectConfig
    address: str
    num_cpus: int | None
    max_actors: int
    progress: bool
    obs: RayObserver
    loader: Any
    tracking: Any = None
    t0: float = field(default_factory=time.perf_counter)

    @property
    def store_uri(self) -> str:
        return self.cfg.store if _is_remote(self.cfg.store) else str(Path(self.cfg.store).resolve())

    def run(self) -> DistributedResult:
        from store.shards import SampleStore

        # A folder store: the driver takes the single-machine writer lock (creating the folder), so a
        # second collector is refused before any actor starts; actors write unit shards without it.
        lock = None if _is_remote(self.cfg.store) else SampleStore(self.store_uri)
        if lock is not None:
            lock.lock()
            lock.clean_partial()
        try:
            plan = plan_units(self.cfg, UnitStore(self.store_uri))
            # the cluster is joined (or started) only when there is work, and left as it was found
            started = connect(self.address, self.num_cpus) if plan.units else False
            try:
                result = self._tracked(plan)
            finally:
                if started:
                    import ray

                    ray.shutdown()
            if lock is not None:
                lock.clean_partial()  # temporary files of attempts killed mid-write (every actor is gone now)
            return result
        finally:
            if lock is not None:
                lock.close()

    def _tracked(self, plan: Plan) -> DistributedResult:
        """The work inside the MLflow parent run (if `cfg.track`), ended as KILLED if anything escapes."""
        from collect.ray_tracking import RunTracking

        self.tracking = RunTracking(self.cfg) if self.cfg.track else None
        try:
            result = self._execute(plan) if plan.units else self._summarise(plan, [], {}, [])
        except BaseException:
            if self.tracking:
                self.tracking.fail()
            raise
        if self.tracking:
            self.tracking.finish(self.store_uri, result)
        return result

    def _execute(self, plan: Plan) -> DistributedResult:
        import ray

        from collect.observers import LineObserver

        n, threads, use_gpu = actor_layout(self.cfg, ray.cluster_resources(), self.max_actors, len(plan.units))
        run_name = self.tracking.run_id if self.tracking else f"ray-{int(time.time())}"
        runs = self.tracking.actor_runs(n) if self.tracking else [None] * n
        cls = ray.remote(UnitWorker).options(
            num_cpus=threads, num_gpus=1 if use_gpu else 0, max_restarts=-1, max_task_retries=MAX_UNIT_TRIES - 1
        )
        args = (self.cfg, self.store_uri)
        handles = [cls.remote(*args, i, run_name, threads, use_gpu, runs[i], self.loader) for i in range(n)]
        try:
            infos = ray.get([h.info.remote() for h in handles])
            if self.tracking:
                self.tracking.tag_actors(infos)
            self.obs.actors_ready(infos, handles)
            bar = LineObserver(self.progress)
            units = plan.units
            bar.start(sum(len(u.items) for u in units), infos[0].energy_source, sum(u.n * len(u.items) for u in units))
            try:
                results, errors = self._drain(handles, plan.units, bar)
            finally:
                bar.stop()
        finally:
            for h in handles:
                ray.kill(h, no_restart=True)
        return self._summarise(plan, results, errors, infos)

    def _drain(self, handles: list[Any], units: list[Unit], bar: Any) -> tuple[list[UnitResult], dict[str, str]]:
        """Every unit through the actor pool; a unit that fails every try is noted by key, not fatal."""
        import ray
        from ray.util import ActorPool

        pool, by_key = ActorPool(handles), {u.key: u for u in units}
        for u in units:
            pool.submit(lambda a, u: a.run.options(retry_exceptions=[UnitFailed]).remote(u), u)
        prog, results, errors = Progress(), [], {}
        while pool.has_next():
            try:
                r: UnitResult = pool.get_next_unordered()
            except UnitFailed as e:
                errors[e.key] = f"{e} (tried {MAX_UNIT_TRIES} times)"
                continue
            except ray.exceptions.RayActorError:  # its actor died on every try; named from the store below
                continue
            results.append(r)
            prog.samples += r.samples
            prog.output_tokens += r.output_tokens
            prog.energy_j += r.energy_j
            prog.correct += r.correct
            prog.queries_done += r.queries
            prog.elapsed_s = time.perf_counter() - self.t0
            bar.batch_done(by_key[r.key], prog)
            if self.tracking:
                self.tracking.progress(len(results), prog)
            self.obs.unit_done(r, prog)
        return results, errors

    def _summarise(
        self, plan: Plan, results: list[UnitResult], errors: dict[str, str], infos: list[WorkerInfo]
    ) -> DistributedResult:
        """The store, not the messages, says what is missing: every planned unit without its shard is failed."""
        store = UnitStore(self.store_uri)
        stored = store.done_units()
        failed = [
            errors.get(u.key, f"unit {u.index} ({u.key}): not in the store (its actor was lost on every try)")
            for u in plan.units
            if u.key not in stored
        ]
        written = [r for r in results if r.status == "written"]
        collect = CollectResult(
            store=Path(self.cfg.store) if _is_remote(self.cfg.store) else Path(self.store_uri),
            new_samples=sum(r.samples for r in written),
            skipped_groups=plan.skipped_queries,
            total_samples=store.count_samples(),
            output_tokens=sum(r.output_tokens for r in written),
            energy_j=sum(r.energy_j for r in written),
            energy_source="+".join(sorted({i.energy_source for i in infos})) or "none",
            meter="+".join(sorted({i.meter for i in infos})) or self.cfg.meter,
            run_id=self.tracking.run_id if self.tracking else None,
            duration_s=time.perf_counter() - self.t0,
        )
        return DistributedResult(
            collect=collect,
            units_run=len(plan.units),
            units_written=len(written),
            units_already_stored=plan.skipped_units,
            failed=tuple(failed),
            actors=tuple(infos),
            results=tuple(results),
        )
