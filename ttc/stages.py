"""Stage functions the CLI calls that are not one package's own stage: export, allocate, run.

`export_stage` turns a training output (or an MLflow artifact URI) into a
portable bundle folder + zip, and optionally logs it as a registered pyfunc.
`allocate_stage` runs a bundle over a JSONL file of queries. `run_pipeline` is
the main job: collect -> train -> export -> eval on the built-in default.
Heavy imports stay inside the functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.errors import UsageError, unknown_name

REFERENCE_STORE = Path(__file__).resolve().parents[1] / "data" / "reference"
#: queries per task in the committed reference collection (data/reference/README.md)
REFERENCE_ITEMS_PER_TASK = 16


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _resolve_bundle_source(source: str, tracking_uri: str | None = None) -> Path:
    """A local bundle folder/zip, a training output folder holding bundle/, or an MLflow artifact URI."""
    if source.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        import mlflow

        from store.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
        local = Path(mlflow.artifacts.download_artifacts(source))
        # a registered pyfunc keeps the bundle among its artifacts: find its policy.json
        found = sorted(local.rglob("policy.json")) if local.is_dir() else []
        if (local / "policy.json").is_file() or not found:
            return local
        return found[0].parent
    p = Path(source)
    if (p / "bundle" / "policy.json").is_file():
        return p / "bundle"
    if (p / "policy.json").is_file() or (p.is_file() and p.suffix == ".zip"):
        return p
    raise UsageError(
        f"no policy bundle at {source!r}: give a `ttc train` output folder, a bundle folder or .zip, "
        "or an MLflow artifact URI (runs:/<run_id>/bundle)"
    )


def export_stage(
    source: str,
    out: str | Path,
    mode: str | None = None,
    lam: float | None = None,
    budget_j: float | None = None,
    register_name: str | None = None,
    alias: str | None = "champion",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Copy a verified bundle to `out` (folder and `out`.zip), optionally with a new decision rule, and register it."""
    from policy.allocate import DecisionRule
    from policy.bundle import load_bundle, zip_bundle

    src = _resolve_bundle_source(source, tracking_uri)
    policy = load_bundle(src)  # verifies hashes and features before anything is written
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    if src.is_file():
        import zipfile

        with zipfile.ZipFile(src) as z:
            names = [n for n in z.namelist() if "/" not in n and not n.startswith(".")]
            out.mkdir(parents=True)
            for n in names:
                (out / n).write_bytes(z.read(n))
    else:
        shutil.copytree(src, out)
    if mode or lam is not None or budget_j is not None:
        manifest = json.loads((out / "policy.json").read_text())
        rule = dataclasses.replace(
            policy.rule,
            **{k: v for k, v in {"mode": mode, "lam": lam, "budget_j": budget_j}.items() if v is not None},
        )
        if rule.mode == "budget" and rule.budget_j is None:
            raise UsageError("budget mode needs --budget-j (target mean joules per query)")
        manifest["rule"] = DecisionRule.to_dict(rule)
        _atomic_write_text(out / "policy.json", json.dumps(manifest, indent=2, sort_keys=True))
    load_bundle(out)
    zipped = zip_bundle(out)
    result: dict[str, Any] = {"bundle": str(out), "zip": str(zipped), "energy_source": policy.energy_source}
    if register_name:
        import mlflow

        from policy.mlflow_log import log_policy_model
        from store.tracking import setup_tracking

        setup_tracking(tracking_uri, "ttc-export")
        with mlflow.start_run(run_name="export"):
            mlflow.set_tags({"stage": "export", "energy_source": policy.energy_source})
            result["model_uri"] = log_policy_model(out, registered_name=register_name, alias=alias)
    return result


def read_queries_jsonl(path: str | Path) -> list[dict[str, Any]]:
    from store.jsonl import read_jsonl

    p = Path(path)
    rows = []
    for i, row in read_jsonl(p, '{"question", "task"?, "id"?}'):
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise UsageError(f'{p} line {i} has no "question" string; each line needs {{"question": "..."}}')
        rows.append({"id": str(row.get("id", i)), "question": row["question"], "task": row.get("task")})
    if not rows:
        raise UsageError(f"{p} holds no queries")
    return rows


def allocate_stage(
    bundle: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    lam: float | None = None,
    budget_j: float | None = None,
    backend: str = "lightgbm",
) -> int:
    """Decide an arm for every query of a JSONL file; writes one Decision per line. Returns the count."""
    from policy.bundle import load_bundle

    rows = read_queries_jsonl(input_path)
    policy = load_bundle(bundle, backend=backend)
    if policy.needs_probe:
        raise UsageError("this policy needs probe features from the answering model; use the Python API with probe=")
    decisions = policy.allocate(
        [r["question"] for r in rows],
        [r["task"] for r in rows],
        query_ids=[r["id"] for r in rows],
        lam=lam,
        budget_j=budget_j,
    )
    lines = [
        json.dumps(
            {**dataclasses.asdict(d), "energy_source": policy.energy_source, "energy_meter": policy.energy_meter}
        )
        for d in decisions
    ]
    _atomic_write_text(Path(output_path), "\n".join(lines) + "\n")
    return len(lines)


@dataclass(frozen=True)
class RunPreset:
    extra_items_per_task: int
    n_trials: int
    n_boot: int
    register: bool


PRESETS = {
    "default": RunPreset(extra_items_per_task=2, n_trials=30, n_boot=1000, register=True),
    "quick": RunPreset(extra_items_per_task=1, n_trials=6, n_boot=200, register=False),
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


def _seed_store(store: Path, reference: Path | None, tasks: list[str] | None, say: Any) -> frozenset[str]:
    """Copy the reference collection into a new `store`; returns the reference's collect-run ids."""
    from store.shards import SampleStore, read_samples

    if reference is None or not reference.is_dir():
        return frozenset()
    ref = read_samples(reference)
    if tasks:
        ref = ref[ref["task"].isin(tasks)]
    if not store.exists():
        say(f"[1/4] seeding {store} with the reference collection {reference} ({len(ref)} samples)")
        SampleStore(store).import_store(reference, tasks=tasks)
    return frozenset(ref["collect_run"])


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
    from collect.stage import collect_stage
    from eval.stage import eval_stage
    from train.stage import train_stage

    store, timings, t0 = out / "store", {}, time.perf_counter()
    reference_runs = _seed_store(store, reference, tasks, say)
    base_items = REFERENCE_ITEMS_PER_TASK if reference_runs else 0
    overrides: dict[str, Any] = {"store": str(store), "items_per_task": base_items + p.extra_items_per_task}
    overrides["tracking_uri"] = tracking_uri
    overrides |= ({"tasks": tasks} if tasks else {}) | ({"models": models} if models else {})
    cfg = make_config(None, **overrides).validate()
    say(f"[1/4] collect: {cfg.items_per_task} queries per task x {len(cfg.tasks)} tasks x {len(cfg.models)} models")
    c = collect_stage(cfg, progress=progress)
    timings["collect_s"] = time.perf_counter() - t0

    say("[2/4] train: LightGBM success and energy predictors, Optuna, MLflow")
    t = time.perf_counter()
    tr = train_stage(store, out / "train", n_trials=p.n_trials, tracking_uri=tracking_uri, progress=progress)
    timings["train_s"] = time.perf_counter() - t

    say("[3/4] export: portable bundle (LightGBM text + ONNX + policy.json)")
    t = time.perf_counter()
    register_name = "ttc-policy" if p.register else None
    exp = export_stage(str(out / "train"), out / "policy", register_name=register_name, tracking_uri=tracking_uri)
    timings["export_s"] = time.perf_counter() - t

    say("[4/4] eval: allocators on held-out queries")
    t = time.perf_counter()
    rep = eval_stage(
        store,
        exp["bundle"],
        out / "eval",
        test_query_ids=tr.test_query_ids,
        train_query_ids=tr.train_query_ids,
        n_boot=p.n_boot,
        tracking_uri=tracking_uri,
    )
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return PipelineRun(out, store, reference if reference_runs else None, reference_runs, c, tr, exp, rep, timings)


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
            "queries_from_reference": int(samples.loc[~from_run, "query_id"].nunique()),
            "queries_collected_by_this_or_earlier_runs": int(samples.loc[from_run, "query_id"].nunique()),
            "new_samples_this_run": run.collect.new_samples,
            "held_out_queries": len(run.train.test_query_ids),
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
    `extra_items_per_task` further queries per task with both models. Every
    number in the summary says which data it comes from. `run_stages` does the
    work and returns typed results; this function resolves the preset, passes
    `echo` the step lines, and writes and returns the summary.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
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
