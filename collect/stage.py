"""`ttc collect`: generate samples for every (query, model, temperature) and store them.

For each model and temperature the largest n is generated once per query,
several queries per generate call; each sample is graded at every level in
`levels` by decoding its first L tokens, so one generation serves every
(n, L) arm (see store/views.py). Each generate call is one meter window,
split among its samples by output tokens (collect/energy/attribution.py).

Batches are fixed by the item order and the config, and each one's seed is
derived from its position, so a rerun regenerates exactly what is missing and
skips every group already stored. Nothing is written before the config has
been validated.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from collect.config import CollectConfig
from collect.energy import make_meter
from collect.energy.attribution import RULE, attribute
from collect.tasks import Item, Task, make_task
from policy.records import Sample
from store.shards import SampleStore

GREEDY_PACKING = 2


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


@dataclass(frozen=True)
class _Batch:
    model: str
    temperature: float
    n: int
    seed: int
    items: list[tuple[Task, Item]]


def _batch_seed(base: int, model: str, temperature: float, task: str, index: int) -> int:
    h = hashlib.sha256(f"{base}:{model}:{temperature:g}:{task}:{index}".encode()).hexdigest()
    return int(h[:8], 16)


def plan_batches(cfg: CollectConfig, tasks: list[Task]) -> list[_Batch]:
    """Every generate call the config asks for, in a fixed order (independent of what is stored).

    Batches are cut per task, in item order, so raising `items_per_task` later only
    adds batches: every batch (and its seed) already planned stays the same, and a
    grown collection resumes instead of starting over.
    """
    batches = []
    for model in cfg.models:
        settings = [(t, cfg.n_samples) for t in cfg.temperatures] + ([(0.0, 1)] if cfg.greedy else [])
        for temp, n in settings:
            # greedy calls make one sequence per query: pack more queries so calls stay wider
            per = cfg.queries_per_batch * (GREEDY_PACKING if n == 1 else 1)
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


def run_batch(lm: Any, meter: Any, batch: _Batch, cfg: CollectConfig, run_name: str) -> list[Sample]:
    """Generate, meter, grade at every level, and attribute energy for one batch."""
    prompts = [lm.build_prompt(it.question, task.demos) for task, it in batch.items]
    window = f"{batch.model}:{batch.seed}"
    meter.begin_window(window)
    gen = lm.generate(prompts, batch.n, cfg.max_new_tokens, batch.temperature, batch.seed)
    m = meter.end_window(window)
    out_tokens = [len(ids) for ids in gen.output_ids]
    shares = attribute(m.energy_j, m.duration_s, gen.prefill_s, out_tokens)
    above_ratio = m.energy_above_idle_j / m.energy_j if m.energy_j > 0 else 0.0
    levels = sorted(cfg.levels)
    samples = []
    for k, ids in enumerate(gen.output_ids):
        task, item = batch.items[k // batch.n]
        text = lm.decode(ids)
        grade = task.grade(item, text)
        lv_tokens, lv_answer, lv_correct, lv_energy, lv_dur = [], [], [], [], []
        for L in levels:
            prefix_ids = ids[:L]
            g = grade if len(prefix_ids) == len(ids) else task.grade(item, lm.decode(prefix_ids))
            e, d = shares[k].prefix(len(ids), len(prefix_ids))
            lv_tokens.append(len(prefix_ids))
            lv_answer.append(g.answer)
            lv_correct.append(bool(g.correct))
            lv_energy.append(e)
            lv_dur.append(d)
        samples.append(
            Sample(
                query_id=item.query_id,
                task=item.task,
                question=item.question,
                gold=item.gold,
                model=batch.model,
                temperature=float(batch.temperature),
                max_new_tokens=cfg.max_new_tokens,
                seed=batch.seed,
                sample_index=k % batch.n,
                batch_id=window,
                prompt_tokens=gen.prompt_tokens[k],
                output_tokens=len(ids),
                finished=gen.finished[k],
                text=text,
                answer=grade.answer,
                extraction=grade.extraction,
                correct=bool(grade.correct),
                duration_s=shares[k].duration_s,
                energy_j=shares[k].energy_j,
                energy_above_idle_j=shares[k].energy_j * above_ratio,
                prefill_energy_j=shares[k].prefill_energy_j,
                window_energy_j=m.energy_j,
                window_duration_s=m.duration_s,
                window_samples=len(gen.output_ids),
                window_output_tokens=sum(out_tokens),
                meter=m.meter,
                energy_source=m.source,
                attribution=RULE,
                levels=levels,
                level_output_tokens=lv_tokens,
                level_answer=lv_answer,
                level_correct=lv_correct,
                level_energy_j=lv_energy,
                level_duration_s=lv_dur,
                collect_run=run_name,
            )
        )
    return samples


def collect_stage(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Run (or resume) a collection; returns what was added."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from collect.models import LoadedModel, resolve_model

    cfg.validate()
    tasks = [make_task(t) for t in cfg.tasks]
    specs = {m: resolve_model(m) for m in cfg.models}  # fail on a bad model before any work
    meter = make_meter(cfg.meter, **({"watts_per_core": cfg.watts_per_core} if cfg.meter == "estimate" else {}))
    store = SampleStore(cfg.store)
    store.clean_partial()
    done = store.done_groups()
    batches = plan_batches(cfg, tasks)
    todo = [b for b in batches if _pending(b, done, cfg.max_new_tokens)]
    skipped = sum(len(b.items) for b in batches) - sum(len(b.items) for b in todo)

    tracker = _Tracker(cfg) if cfg.track else None
    run_name = tracker.run_id if tracker else f"local-{int(time.time())}"
    if cfg.idle_baseline_s > 0:
        watts = meter.measure_idle(cfg.idle_baseline_s)
        if tracker:
            tracker.log_metrics({f"idle_power_w.{meter.source}": watts}, 0)
    new, tokens, joules, correct = 0, 0, 0.0, 0
    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:.1f} tok/s  {task.fields[joules]:.1f} J ({task.fields[source]})"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    t0 = time.perf_counter()
    try:
        with Progress(*cols, disable=not progress) as bar:
            job = bar.add_task(
                "collect", total=sum(len(b.items) for b in todo), tps=0.0, joules=0.0, source=meter.source
            )
            lm, lm_name = None, None
            for step, batch in enumerate(todo):
                if lm_name != batch.model:
                    bar.update(job, description=f"loading {batch.model}")
                    lm, lm_name = LoadedModel(specs[batch.model], cfg.device, cfg.threads or None), batch.model
                bar.update(job, description=f"{batch.model} t={batch.temperature:g} n={batch.n}")
                samples = run_batch(lm, meter, batch, cfg, run_name)
                store.append(samples)
                new += len(samples)
                tokens += sum(s.output_tokens for s in samples)
                joules += sum(s.energy_j for s in samples)
                correct += sum(s.correct for s in samples)
                elapsed = time.perf_counter() - t0
                bar.update(job, advance=len(batch.items), tps=tokens / elapsed, joules=joules)
                if tracker:
                    tracker.log_metrics(
                        {
                            "samples": new,
                            "output_tokens": tokens,
                            f"energy_j.{meter.source}": joules,
                            "sample_accuracy": correct / max(new, 1),
                            "tokens_per_s": tokens / elapsed,
                        },
                        step,
                    )
        stored = store.read() if store.shards() else None
        total = 0 if stored is None else len(stored)
        if tracker:
            tracker.finish(stored, store.root, meter.name, meter.source)
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    return CollectResult(
        Path(cfg.store),
        new,
        skipped,
        total,
        tokens,
        joules,
        meter.source,
        meter.name,
        tracker.run_id if tracker else None,
    )


class _Tracker:
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

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
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
            light = df.drop(columns=["text", "question"])
            dataset = mlflow.data.from_pandas(light, source=str(root.resolve()), name="samples")
            mlflow.log_input(dataset, context="collect")
        mlflow.end_run()

    def fail(self) -> None:
        self.mlflow.end_run(status="KILLED")
