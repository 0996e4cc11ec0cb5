"""Stage functions the CLI calls that are not one package's own stage: export, allocate, run.

`export_stage` turns a training output (or an MLflow artifact URI) into a
portable bundle folder + zip, and optionally logs it as a registered pyfunc.
`allocate_stage` runs a bundle over a JSONL file of queries. `run_pipeline` is
the main job: collect -> train -> export -> eval on the built-in default.
Heavy imports stay inside the functions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.errors import UsageError, unknown_name

# export and allocate live in ttc/bundle_stages.py (bundle safety, streaming); the CLI and run_pipeline import them here
from ttc.bundle_stages import _resolve_bundle_source, allocate_stage, export_stage, read_queries_jsonl

__all__ = ["_resolve_bundle_source", "allocate_stage", "export_stage", "read_queries_jsonl", "run_pipeline"]

#: the committed reference collection `ttc run` seeds its store from (v2: the pilot-chosen mix at
#: temperature 1.0, one batch regime, bf16, 877 queries x 2 models; data/reference/README.md). It may grow:
#: the run uses the longest prefix of every task's items that it holds whole (see `_whole_prefix`).
REFERENCE_STORE = Path(__file__).resolve().parents[1] / "data" / "reference"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling renamed at the end; no stray file on failure."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPreset:
    extra_items_per_task: int
    n_trials: int
    n_boot: int
    register: bool
    #: >= 2: eval cross-fits (every query held out once, a policy trained per fold); 1: train's one split
    folds: int
    fold_trials: int


PRESETS = {
    # collects nothing by default: the reference holds 877 queries, and on a 2-core CPU `--collect 1` (one more
    # query per task, both models) took 274 s of collection and the whole run 7.4 min; the default run 3.8 min
    "default": RunPreset(extra_items_per_task=0, n_trials=30, n_boot=1000, register=True, folds=5, fold_trials=5),
    "quick": RunPreset(extra_items_per_task=1, n_trials=6, n_boot=200, register=False, folds=1, fold_trials=0),
}


@dataclass(frozen=True)
class PipelineRun:
    """What `run_stages` produced: each stage's typed result, and which samples came from the reference."""

    out: Path
    store: Path
    reference: Path | None
    reference_runs: frozenset[str]
    collect: Any  # collect.stage.CollectResult
    train: Any  # train.stage.TrainResult
    export: dict[str, Any]
    eval: Any  # eval.report.EvalReport
    timings_s: dict[str, float]
    reference_items_per_task: int = 0  # the reference's whole prefix the store was seeded with


def _whole_prefix(ref: Any, cfg: Any) -> tuple[int, list[str]]:
    """K, and the ids of the first K items of every task of `cfg` that the reference holds whole.

    Whole: every model of `cfg` has its greedy sample (if `cfg.greedy`) and `n_samples` samples at each
    of its temperatures. Items are taken in the order `ttc collect` draws them (a prefix-stable order),
    so the run then collects items K, K+1, ... as new queries, and a reference grown unevenly (one task
    or one model ahead of the others) or collected with other settings (K = 0) is never half-used.
    """
    from collect.tasks import make_task

    counts = ref.groupby(["query_id", "model", "temperature"]).size().to_dict()
    need = [(m, float(t), cfg.n_samples) for m in cfg.models for t in cfg.temperatures]
    need += [(m, 0.0, 1) for m in cfg.models] if cfg.greedy else []
    held = ref.groupby("task")["query_id"].nunique().to_dict()
    prefixes, limits = [], []
    for name in cfg.tasks:
        task, n_held = make_task(name), int(held.get(name, 0))
        ids = [it.query_id for it in task.items(n_held, cfg.item_seed)]
        k = 0
        while k < len(ids) and all(counts.get((ids[k], m, t), 0) >= n for m, t, n in need):
            k += 1
        prefixes.append(ids[:k])
        # a task whose whole pool is held (no item beyond it) never limits the others' prefix
        exhausted = k == len(ids) and len(task.items(n_held + 1, cfg.item_seed)) == n_held
        limits += [] if exhausted and k > 0 else [k]
    k_all = min(limits, default=min((len(ids) for ids in prefixes), default=0))
    return k_all, [q for ids in prefixes for q in ids[:k_all]]


def _seed_store(store: Path, reference: Path | None, cfg: Any, say: Any) -> tuple[int, frozenset[str]]:
    """Copy the reference's whole prefix into a new `store`: (items per task seeded, the reference's run ids)."""
    from store.shards import SampleStore, read_samples

    if reference is None or not reference.is_dir():
        return 0, frozenset()
    ref = read_samples(reference)
    ref = ref[ref["task"].isin(cfg.tasks)]
    rerun = any(store.glob("shard-*.parquet"))
    if rerun:
        # a rerun: the prefix is what was seeded then, even if the reference has grown since
        runs = set(ref["collect_run"])
        seeded = read_samples(store)
        ref = seeded[seeded["collect_run"].isin(runs) & seeded["task"].isin(cfg.tasks)]
    k, ids = _whole_prefix(ref, cfg)
    if k == 0:
        say(f"[1/4] the reference collection {reference} holds no whole query of this grid; collecting all")
        return 0, frozenset()
    ref = ref[ref["query_id"].isin(ids)]
    if not rerun:
        say(f"[1/4] seeding {store} with {len(ids)} queries ({k} per task) of the reference collection {reference}")
        SampleStore(store).import_store(reference, query_ids=ids)
    return k, frozenset(ref["collect_run"])


def run_stages(
    out: Path,
    p: RunPreset,
    reference: Path | None,
    tasks: list[str] | None,
    models: list[str] | None,
    tracking_uri: str | None,
    progress: bool,
    say: Any,
) -> PipelineRun:
    """collect -> train -> export -> eval with preset `p`; `say` receives one line per step."""
    from collect.config import make_config
    from collect.observers import collect_stage
    from eval.stage import eval_stage
    from store.progress import ProgressLine
    from train.stage import train_stage

    store, timings, t0 = out / "store", {}, time.perf_counter()
    overrides: dict[str, Any] = {"store": str(store), "tracking_uri": tracking_uri}
    overrides |= ({"tasks": tasks} if tasks else {}) | ({"models": models} if models else {})
    grid = make_config(None, **overrides).validate()
    base_items, reference_runs = _seed_store(store, reference, grid, say)
    if base_items == 0 and p.extra_items_per_task == 0:
        raise UsageError("no reference collection to start from; collect some: `ttc run --collect N` (N per task)")
    cfg = make_config(grid, items_per_task=base_items + p.extra_items_per_task).validate()
    if p.extra_items_per_task:
        say(
            f"[1/4] collect: {p.extra_items_per_task} new queries per task beyond the reference's {base_items} "
            f"x {len(cfg.tasks)} tasks x {len(cfg.models)} models"
        )
    else:
        say(
            f"[1/4] collect: nothing new (the reference holds {base_items} queries per task); "
            "`ttc run --collect N` collects N more per task with every model"
        )
    c = collect_stage(cfg, progress=progress)
    timings["collect_s"] = time.perf_counter() - t0

    say("[2/4] train: LightGBM success and energy predictors, Optuna, MLflow")
    t = time.perf_counter()
    tr = train_stage(
        store, out / "train", n_trials=p.n_trials, tracking_uri=tracking_uri, progress=progress, summary=False
    )
    timings["train_s"] = time.perf_counter() - t

    say("[3/4] export: portable bundle (LightGBM text + ONNX + policy.json)")
    t = time.perf_counter()
    register_name = "ttc-policy" if p.register else None
    # force: out/policy is this pipeline's own bundle from an earlier run (never anything else: export checks)
    exp = export_stage(
        str(out / "train"), out / "policy", register_name=register_name, tracking_uri=tracking_uri, force=True
    )
    timings["export_s"] = time.perf_counter() - t
    line = ProgressLine("export", progress)
    line.t0 = t  # the line's clock: the export's time
    registered = f", registered as {register_name}" if register_name else ""
    line.finish([], note=f"{exp['bundle']} and {Path(exp['zip']).name}{registered}")

    t = time.perf_counter()
    if p.folds >= 2:
        say(f"[4/4] eval: allocators cross-fitted over {p.folds} query folds (every query held out once)")
        split_args: dict[str, Any] = {"folds": p.folds, "fold_trials": p.fold_trials}
    else:
        say("[4/4] eval: allocators on train's held-out queries")
        split_args = {"test_query_ids": tr.test_query_ids, "train_query_ids": tr.train_query_ids}
    # force: out/eval is this pipeline's own report from an earlier run (never anything else: eval checks)
    rep = eval_stage(
        store,
        exp["bundle"],
        out / "eval",
        n_boot=p.n_boot,
        tracking_uri=tracking_uri,
        force=True,
        progress=progress,
        **split_args,
    )
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    ref_used = reference if reference_runs else None
    return PipelineRun(out, store, ref_used, reference_runs, c, tr, exp, rep, timings, base_items)


def summarize(run: PipelineRun) -> dict[str, Any]:
    """The run's summary (run_summary.json): every number says which data it comes from."""
    from store.shards import read_samples

    samples = read_samples(run.store)
    from_run = ~samples["collect_run"].isin(run.reference_runs)
    test = samples[samples["query_id"].isin(run.train.test_query_ids)]
    held_out_from_reference = test.loc[test["collect_run"].isin(run.reference_runs), "query_id"].nunique()
    rep = run.eval
    return {
        "data": {
            "store": str(run.store),
            "samples": len(samples),
            "queries": int(samples["query_id"].nunique()),
            "reference_collection": str(run.reference) if run.reference else None,
            "reference_items_per_task": run.reference_items_per_task,
            "queries_from_reference": int(samples.loc[~from_run, "query_id"].nunique()),
            "queries_collected_by_this_or_earlier_runs": int(samples.loc[from_run, "query_id"].nunique()),
            "new_samples_this_run": run.collect.new_samples,
            # train's own split; the eval cross-fits over every query when eval.n_folds >= 2
            "held_out_queries": len(run.train.test_query_ids),
            "eval_folds": int(run.eval.n_folds),
            "held_out_queries_from_reference": int(held_out_from_reference),
            "energy_source": run.collect.energy_source,
            "energy_meter": run.collect.meter,
        },
        "train": {
            "run_id": run.train.run_id,
            "out_dir": str(run.train.out_dir),
            "metrics": {k: v for k, v in run.train.metrics.items() if isinstance(v, float)},
        },
        "export": run.export,
        "eval": json.loads(rep.to_json()),
        "timings_s": run.timings_s,
        "mlflow_ui": f"mlflow ui --backend-store-uri {rep.tracking_uri}",
    }


def run_pipeline(
    out: str | Path = "runs/default",
    preset: str = "default",
    reference: str | Path | None = REFERENCE_STORE,
    tasks: list[str] | None = None,
    models: list[str] | None = None,
    extra_items_per_task: int | None = None,
    n_trials: int | None = None,
    n_boot: int | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """collect -> train -> export -> eval. Resumes: stored samples are reused, only new queries are generated.

    The run's store starts as a copy of the committed reference collection (real
    samples recorded with the same config) and the run itself collects
    `extra_items_per_task` further queries per task with both models (none by default). Every
    number in the summary says which data it comes from. `run_stages` does the
    work and returns typed results; this function resolves the preset, passes
    `echo` the step lines, and writes and returns the summary.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    from store.paths import check_output_folder
    from store.tracking import check_tracking_uri

    check_output_folder(out, "--out")  # before the reference is read or anything collected
    check_tracking_uri(tracking_uri)
    from dataclasses import replace

    p = PRESETS[preset]
    p = replace(
        p,
        extra_items_per_task=p.extra_items_per_task if extra_items_per_task is None else extra_items_per_task,
        n_trials=n_trials or p.n_trials,
        n_boot=n_boot or p.n_boot,
    )
    out = Path(out)
    ref = Path(reference) if reference is not None else None
    run = run_stages(out, p, ref, tasks, models, tracking_uri, progress, echo)
    summary = summarize(run)
    _atomic_write_text(out / "run_summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def collect_any(cfg: Any, ray: str | None = None, max_actors: int = 0) -> tuple[Any, tuple[str, ...]]:
    """`ttc collect`: in this process, or on Ray actors when `ray` names a cluster.

    Returns the `CollectResult` and the units that failed after their bounded tries (Ray only;
    a rerun tries them again).
    """
    if ray is None:
        from collect.observers import collect_stage

        return collect_stage(cfg), ()
    from collect.distributed import run_distributed

    d = run_distributed(cfg, ray, max_actors=max_actors)
    return d.collect, tuple(d.failed)
