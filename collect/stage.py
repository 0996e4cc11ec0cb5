"""`ttc collect`: generate samples for every (query, model, temperature) and store them.

For each model and temperature the largest n is generated once per query,
several queries per generate call; each sample is graded at every level in
`levels` by decoding its first L tokens, so one generation serves every
(n, L) arm (see store/views.py). Each generate call is one meter window,
split among its samples by collect/energy/attribution.py.

Batch regime: every generate call of a collection has the same number of
rows, `queries_per_batch x n_samples` (a greedy call packs n_samples times
more queries), so a greedy and a sampled token cost the same decode share;
the rows and the dtype are recorded in every sample (`batch_rows`, `dtype`).
The prefill of each call also yields the probe side table (store/probes.py).

Batches are fixed by the item order and the config, and each one's seed is
derived from its position, so a rerun regenerates exactly what is missing and
skips every group already stored. Nothing is written before the config has
been validated.

`run_collection` is the work (config in, `CollectResult` out) and reports
progress to an observer; `collect.observers.collect_stage` adds the side effects: the progress
bar and the MLflow run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collect.generation import Generation

from collect.config import CollectConfig
from collect.energy import make_meter
from collect.energy.attribution import RULE, Share, attribute
from collect.engine import EngineModel, engine_meter
from collect.engine_ref import parse_engine, stored_name
from collect.tasks import Item, Task, make_task
from policy.records import EnergyMeasurement, Sample
from store.probes import ProbeRow, ProbeStore
from store.shards import SampleStore, group_key


@dataclass(frozen=True)
class CollectResult:
    store: Path
    new_samples: int
    skipped_groups: int
    total_samples: int
    output_tokens: int
    energy_j: float
    energy_source: str
    meter: str
    run_id: str | None
    duration_s: float = 0.0


@dataclass(frozen=True)
class _Batch:
    model: str
    temperature: float
    n: int
    seed: int
    items: list[tuple[Task, Item]]


@dataclass
class BatchOutput:
    """One generate call's samples and the probes its prefill produced."""

    samples: list[Sample]
    probes: list[ProbeRow]


@dataclass
class Progress:
    """Running totals of a collection, handed to the observer after every batch."""

    samples: int = 0
    output_tokens: int = 0
    energy_j: float = 0.0
    correct: int = 0
    elapsed_s: float = 0.0
    queries_done: int = 0

    def add(self, samples: list[Sample], queries: int, elapsed_s: float) -> None:
        self.samples += len(samples)
        self.output_tokens += sum(s.output_tokens for s in samples)
        self.energy_j += sum(s.energy_j for s in samples)
        self.correct += sum(s.correct for s in samples)
        self.queries_done += queries
        self.elapsed_s = elapsed_s

    def metrics(self, energy_source: str) -> dict[str, float]:
        """The totals as MLflow metrics (one set of names for the single-process and the Ray paths)."""
        return {
            "samples": self.samples,
            "output_tokens": self.output_tokens,
            f"energy_j.{energy_source}": self.energy_j,
            "sample_accuracy": self.correct / max(self.samples, 1),
            "tokens_per_s": self.output_tokens / max(self.elapsed_s, 1e-9),
        }


class Observer(Protocol):
    """What the work reports; `collect.observers.collect_stage` plugs in the progress line and MLflow."""

    run_name: str

    def start(
        self, total_queries: int, meter_source: str, idle_power_w: float | None, total_samples: int = 0
    ) -> None: ...
    def loading(self, model: str) -> None: ...
    def batch_done(self, step: int, batch: _Batch, progress: Progress) -> None: ...


class _Silent:
    run_name = ""

    def start(self, total_queries: int, meter_source: str, idle_power_w: float | None, total_samples: int = 0) -> None:
        pass

    def loading(self, model: str) -> None:
        pass

    def batch_done(self, step: int, batch: _Batch, progress: Progress) -> None:
        pass


def batch_rows(cfg: CollectConfig) -> int:
    """The collection's batch regime: sequences per generate call, the same for every arm."""
    return cfg.queries_per_batch * cfg.n_samples


def _batch_seed(base: int, model: str, temperature: float, task: str, index: int) -> int:
    h = hashlib.sha256(f"{base}:{model}:{temperature:g}:{task}:{index}".encode()).hexdigest()
    return int(h[:8], 16)


def plan_batches(cfg: CollectConfig, tasks: list[Task]) -> list[_Batch]:
    """Every generate call the config asks for, in a fixed order (independent of what is stored).

    Batches are cut per task, in item order, so raising `items_per_task` later only
    adds batches: every batch (and its seed) already planned stays the same, and a
    grown collection resumes instead of starting over. Every call has `batch_rows`
    rows (the last of a task may have fewer): `batch_rows // n` queries.
    """
    batches = []
    rows = batch_rows(cfg)
    for model in map(stored_name, cfg.models):
        settings = [(t, cfg.n_samples) for t in cfg.temperatures] + ([(0.0, 1)] if cfg.greedy else [])
        for temp, n in settings:
            per = max(rows // n, 1)
            for task in tasks:
                items = task.items(cfg.items_per_task, cfg.item_seed)
                for i in range(0, len(items), per):
                    seed = _batch_seed(cfg.seed, model, temp, task.name, i // per)
                    batches.append(_Batch(model, temp, n, seed, [(task, it) for it in items[i : i + per]]))
    return batches


def _pending(batch: _Batch, done: set[tuple], max_new_tokens: int) -> bool:
    return any(
        (it.query_id, batch.model, float(batch.temperature), max_new_tokens, batch.seed) not in done
        for _, it in batch.items
    )


def _levels(lm: Any, task: Task, item: Item, ids: list[int], grade: Any, share: Share, levels: list[int]) -> dict:
    """The sample graded and charged at each cap L: its first L tokens, decoded and graded for real."""
    out: dict[str, list] = {k: [] for k in ("tokens", "answer", "correct", "energy", "duration")}
    for L in levels:
        prefix = ids[:L]
        g = grade if len(prefix) == len(ids) else task.grade(item, lm.decode(prefix))
        e, d = share.prefix(len(ids), len(prefix))
        for k, v in zip(out, (len(prefix), g.answer, bool(g.correct), e, d), strict=True):
            out[k].append(v)
    return out


def _confidence(values: list[float]) -> tuple[float | None, float | None]:
    return (sum(values) / len(values), min(values)) if values else (None, None)


def _sample(lm: Any, gen: Generation, k: int, ctx: dict[str, Any]) -> Sample:
    """Sequence k of a generate call as a graded, charged `Sample`."""
    batch, m, share, cfg = ctx["batch"], ctx["measurement"], ctx["shares"][k], ctx["cfg"]
    task, item = batch.items[k // batch.n]
    ids = gen.output_ids[k]
    text = lm.decode(ids)
    grade = task.grade(item, text)
    lv = _levels(lm, task, item, ids, grade, share, ctx["levels"])
    mean_lp, min_lp = _confidence(gen.token_logprob[k])
    ent = gen.token_entropy[k]
    return Sample(
        query_id=item.query_id,
        task=item.task,
        question=item.question,
        gold=item.gold,
        model=batch.model,
        temperature=float(batch.temperature),
        max_new_tokens=cfg.max_new_tokens,
        seed=batch.seed,
        sample_index=k % batch.n,
        batch_id=ctx["window"],
        prompt_tokens=gen.prompt_tokens[k],
        output_tokens=len(ids),
        finished=gen.finished[k],
        text=text,
        answer=grade.answer,
        extraction=grade.extraction,
        correct=bool(grade.correct),
        duration_s=share.duration_s,
        energy_j=share.energy_j,
        energy_above_idle_j=share.energy_j * ctx["above_ratio"],
        prefill_energy_j=share.prefill_energy_j,
        window_energy_j=m.energy_j,
        window_duration_s=m.duration_s,
        window_samples=len(gen.output_ids),
        window_output_tokens=ctx["window_tokens"],
        meter=m.meter,
        energy_source=m.source,
        attribution=RULE,
        levels=ctx["levels"],
        level_output_tokens=lv["tokens"],
        level_answer=lv["answer"],
        level_correct=lv["correct"],
        level_energy_j=lv["energy"],
        level_duration_s=lv["duration"],
        collect_run=ctx["run_name"],
        dtype=lm.dtype,
        batch_rows=batch_rows(cfg),
        token_logprob=gen.token_logprob[k],
        token_top1_logprob=gen.token_top1_logprob[k],
        token_entropy=ent,
        mean_logprob=mean_lp,
        min_logprob=min_lp,
        mean_entropy=sum(ent) / len(ent) if ent else None,
    )


def _probes(lm: Any, gen: Generation, batch: _Batch, m: EnergyMeasurement, shares: list[Share], run: str) -> list:
    rows = []
    for i, (_, item) in enumerate(batch.items):
        rows.append(
            ProbeRow(
                query_id=item.query_id,
                task=item.task,
                model=batch.model,
                layer=lm.probe_layer,
                dtype=lm.dtype,
                prompt_tokens=gen.prompt_tokens[i * batch.n],
                probe_last=gen.probe_last[i],
                probe_mean=gen.probe_mean[i],
                prefill_energy_j=shares[i * batch.n].prefill_energy_j,
                meter=m.meter,
                energy_source=m.source,
                collect_run=run,
            )
        )
    return rows


def run_batch(lm: Any, meter: Any, batch: _Batch, cfg: CollectConfig, run_name: str) -> BatchOutput:
    """Generate, meter, grade at every level, and attribute energy for one batch."""
    prompts = [lm.build_prompt(it.question, task.demos) for task, it in batch.items]
    window = f"{batch.model}:{batch.seed}"
    meter.begin_window(window)
    gen = lm.generate(prompts, batch.n, cfg.max_new_tokens, batch.temperature, batch.seed, meter=meter)
    m = meter.end_window(window)
    out_tokens = [len(ids) for ids in gen.output_ids]
    shares = attribute(m.energy_j, m.duration_s, gen.prefill_s, out_tokens, batch.n, gen.prefill_energy_j)
    ctx = {
        "batch": batch,
        "measurement": m,
        "shares": shares,
        "cfg": cfg,
        "levels": sorted(cfg.levels),
        "window": window,
        "window_tokens": sum(out_tokens),
        "above_ratio": m.energy_above_idle_j / m.energy_j if m.energy_j > 0 else 0.0,
        "run_name": run_name,
    }
    samples = [_sample(lm, gen, k, ctx) for k in range(len(gen.output_ids))]
    # an engine gives no hidden states, hence no probe rows
    probes = _probes(lm, gen, batch, m, shares, run_name) if gen.probe_last is not None else []
    return BatchOutput(samples, probes)


def run_collection(cfg: CollectConfig, observer: Observer | None = None) -> CollectResult:
    """Run (or resume) a collection: the work only; progress goes to `observer`."""
    from collect.models import LoadedModel, resolve_model

    obs = observer or _Silent()
    cfg.validate()
    tasks = [make_task(t) for t in cfg.tasks]
    specs = {stored_name(m): resolve_model(m) for m in cfg.models}  # fail on a bad model before any work
    wpc = {"watts_per_core": cfg.watts_per_core} if cfg.meter.startswith("estimate") else {}
    engines = {r.label: r for m in cfg.models if (r := parse_engine(m))}
    meter = engine_meter(cfg.meter, cfg.watts_per_core, list(engines.values())) or make_meter(cfg.meter, **wpc)
    store, probes = SampleStore(cfg.store), ProbeStore(cfg.store)
    store.clean_partial()
    probes.clean_partial()
    batches = plan_batches(cfg, tasks)
    todo = [b for b in batches if _pending(b, store.done_groups(), cfg.max_new_tokens)]
    skipped = sum(len(b.items) for b in batches) - sum(len(b.items) for b in todo)
    idle = meter.measure_idle(cfg.idle_baseline_s) if cfg.idle_baseline_s > 0 else None
    obs.start(sum(len(b.items) for b in todo), meter.source, idle, sum(b.n * len(b.items) for b in todo))
    run_name = obs.run_name or f"local-{int(time.time())}"
    prog, t0, lm, lm_name = Progress(), time.perf_counter(), None, None
    written = 0  # a batch with one new query regenerates its stored ones (one batch regime); they are not rewritten
    for step, batch in enumerate(todo):
        if lm_name != batch.model:
            obs.loading(batch.model)
            lm = None  # free the previous model before loading the next
            if batch.model in engines:  # an engine serves it (collect/engine.py)
                lm = EngineModel(engines[batch.model], cfg.levels)
            else:
                lm = LoadedModel(specs[batch.model], cfg.device, cfg.threads or None, dtype=cfg.dtype)
            lm_name = batch.model
            _warm_up(lm, batch)
        out = run_batch(lm, meter, batch, cfg, run_name)
        probes.append(out.probes)  # before the samples: a resumed run regenerates samples, never probes
        fresh = [x for x in out.samples if group_key(x) not in store.done_groups()]
        written += len(fresh)
        store.append(fresh)
        prog.add(out.samples, len(batch.items), time.perf_counter() - t0)
        obs.batch_done(step, batch, prog)
    total = _count(store)
    return CollectResult(
        Path(cfg.store),
        written,
        skipped,
        total,
        prog.output_tokens,
        prog.energy_j,
        meter.source,
        meter.name,
        obs.run_name or None,
        prog.elapsed_s,
    )


def _warm_up(lm: Any, batch: _Batch) -> None:
    """One short unmetered call on a fresh model: first-touch page faults and allocator growth would
    otherwise be charged to the first metered calls (and to whichever arm the plan puts first)."""
    task, item = batch.items[0]
    prompt = lm.build_prompt(item.question, task.demos)
    lm.generate([prompt, prompt], 4, 8, 0.7, seed=0)


def _count(store: SampleStore) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in store.shards())
