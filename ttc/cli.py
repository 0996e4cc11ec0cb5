"""The `ttc` command: parse arguments, call one stage function, report.

Thin on purpose: every command maps its flags onto a stage function and turns a
`TTCError` into a one-line message with exit code 2. Heavy imports happen
inside each command so `ttc --help` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ttc import console

# `train` first: importing it sets OMP_WAIT_POLICY=PASSIVE (its one definition, in
# train/__init__.py) before LightGBM or torch load OpenMP. The choice lists below are
# read from the registries, so help and validation never disagree.
from train import CALIBRATIONS  # isort: skip
from collect.energy import METERS
from policy.errors import TTCError
from policy.features import FEATURE_SETS
from policy.runtime import BACKENDS
from store.schema import SPLIT_KINDS as SPLITS  # the split registry's names, without pandas
from ttc.options import check_ray, eval_inputs, read_key

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learn how much test-time compute each query needs.")


def _fail(e: TTCError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code=2)


@app.command()
def collect(
    config: Annotated[
        Path | None, typer.Option(help="TOML config file (keys of CollectConfig); default: built-in")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="model name, folder, .gguf file, hub id, or openai:MODEL@URL (an engine); repeatable"),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option(help="task name (see `ttc tasks`) or jsonl:PATH; repeatable")
    ] = None,
    items_per_task: Annotated[int | None, typer.Option(help="queries drawn from each task")] = None,
    n_samples: Annotated[int | None, typer.Option(help="samples per query (the largest vote n)")] = None,
    level: Annotated[
        list[int] | None, typer.Option(help="max_new_tokens caps graded; the largest is generated")
    ] = None,
    temperature: Annotated[
        list[float] | None, typer.Option(help="sampling temperatures (finite, > 0); greedy is separate")
    ] = None,
    greedy: Annotated[bool | None, typer.Option(help="also collect one greedy sample per query")] = None,
    queries_per_batch: Annotated[int | None, typer.Option(help="queries per generate call")] = None,
    meter: Annotated[str | None, typer.Option(help=f"energy meter: {', '.join(METERS)}")] = None,
    watts_per_core: Annotated[
        float | None, typer.Option(help="W per busy core for the estimate meter (finite, > 0)")
    ] = None,
    idle_baseline_s: Annotated[
        float | None, typer.Option(help="seconds of idle sampling before work (>= 0); 0 = none")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="sample store folder (resumes if it exists; one writer at a time)")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
    track: Annotated[bool | None, typer.Option(help="log the run to MLflow")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps; checked before any model loads")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (>= 0); 0 = torch's default")] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="run on Ray actors: 'local' (a cluster started for this run), 'auto' (the `ray start` cluster "
            "of this node) or HOST:PORT; one actor per GPU, or per --threads CPU slots"
        ),
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="with --ray: at most this many actors (>= 0); 0 = one per slot")] = 0,
) -> None:
    """Generate samples over the (query, budget) grid into a crash-safe store."""
    from collect.config import load_config
    from ttc.stages import collect_any

    try:
        check_ray(ray, ray_actors)
        cfg = load_config(
            config,
            models=model or None,
            tasks=task or None,
            items_per_task=items_per_task,
            n_samples=n_samples,
            levels=level or None,
            temperatures=temperature or None,
            greedy=greedy,
            queries_per_batch=queries_per_batch,
            meter=meter,
            watts_per_core=watts_per_core,
            idle_baseline_s=idle_baseline_s,
            store=store,
            tracking_uri=tracking_uri,
            track=track,
            device=device,
            threads=threads,
        ).validate()
        r, failed = collect_any(cfg, ray, ray_actors)
    except TTCError as e:
        _fail(e)
    console.collected(r, failed)
    if failed:
        raise typer.Exit(code=1)


@app.command()
def train(
    store: Annotated[str, typer.Option(help="sample store folder written by `ttc collect`")] = "runs/default/store",
    out: Annotated[str, typer.Option(help="output folder: models, metrics, figures, bundle/")] = "runs/default/train",
    feature_set: Annotated[str, typer.Option(help=f"query feature set: {', '.join(FEATURE_SETS)}")] = "text",
    trials: Annotated[int, typer.Option(help="Optuna trials per predictor")] = 30,
    split: Annotated[str, typer.Option(help=f"held-out split: {', '.join(SPLITS)}")] = "query",
    holdout_task: Annotated[list[str] | None, typer.Option(help="task held out with --split task; repeatable")] = None,
    seed: Annotated[int, typer.Option(help="seed of the split, Optuna and LightGBM")] = 0,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage: journal:PATH (a file), sqlite:///path.db or an RDB URL; default in memory"),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(help="Optuna study shared by several `ttc train` workers (needs --storage); default: one per run"),
    ] = None,
    register_name: Annotated[
        str | None, typer.Option(help="register the models under this name (alias champion)")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
    threads: Annotated[int, typer.Option(help="LightGBM threads")] = 2,
    calibration: Annotated[
        str, typer.Option(help=f"success calibration: {', '.join(CALIBRATIONS)} (fitted on held-out training queries)")
    ] = "none",
) -> None:
    """Fit LightGBM predictors of success and joules per (query, arm), tuned with Optuna, logged to MLflow."""
    from train.stage import train_stage

    try:
        r = train_stage(
            store,
            out,
            feature_set=feature_set,
            n_trials=trials,
            split=split,
            holdout_tasks=holdout_task or None,
            seed=seed,
            tracking_uri=tracking_uri,
            register_name=register_name,
            storage=storage,
            num_threads=threads,
            calibration=calibration,
            study_name=study_name,
        )
    except TTCError as e:
        _fail(e)
    console.trained(r)


KEY_FILE_HELP = "file holding the HMAC key: sign the bundle / require its signature (default: env TTC_BUNDLE_KEY)"


@app.command()
def export(
    source: Annotated[
        str, typer.Option("--from", help="`ttc train` output folder, bundle folder/zip, or runs:/ID/bundle")
    ] = "runs/default/train",
    out: Annotated[
        str, typer.Option(help="bundle folder to write (a .zip is written beside it); must be new, empty or --force")
    ] = "runs/default/policy",
    mode: Annotated[str | None, typer.Option(help="decision rule: price or budget")] = None,
    lam: Annotated[float | None, typer.Option(help="joule price λ for price mode (accuracy per J, >= 0)")] = None,
    budget_j: Annotated[
        float | None, typer.Option(help="target mean joules per query for budget mode (> 0; implies --mode budget)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an earlier bundle at --out (never other files)")] = False,
    key_file: Annotated[Path | None, typer.Option(help=KEY_FILE_HELP)] = None,
    register_name: Annotated[
        str | None, typer.Option(help="log as an MLflow pyfunc and register under this name")
    ] = None,
    alias: Annotated[str, typer.Option(help="alias set on the registered version")] = "champion",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
) -> None:
    """Write the policy as a portable bundle (policy.json + plain-data trees + LightGBM text + ONNX)."""
    from ttc.stages import export_stage

    try:
        r = export_stage(
            source, out, mode, lam, budget_j, register_name, alias, tracking_uri, force=force, key=read_key(key_file)
        )
    except TTCError as e:
        _fail(e)
    console.exported(r)


@app.command()
def adapt(
    bundle: Annotated[str, typer.Option(help="bundle folder or .zip to adapt (it is not changed)")],
    store: Annotated[
        str, typer.Option(help="store of the new task's labelled queries (`ttc collect --task jsonl:...`)")
    ],
    out: Annotated[str, typer.Option(help="new bundle folder (a .zip is written beside it); new, empty or --force")],
    task: Annotated[
        list[str] | None, typer.Option(help="task of the store to adapt to; repeatable (default: every new task)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an earlier bundle at --out (never other files)")] = False,
    key_file: Annotated[Path | None, typer.Option(help=KEY_FILE_HELP)] = None,
) -> None:
    """Adapt a policy to a new task from a few labelled queries: no retraining, a new verified bundle."""
    import time

    from ttc.bundle_stages import adapt_stage

    t0 = time.perf_counter()
    try:
        r = adapt_stage(bundle, store, out, task or None, force=force, key=read_key(key_file))
    except TTCError as e:
        _fail(e)
    console.adapted(r, time.perf_counter() - t0)


@app.command()
def allocate(
    bundle: Annotated[str, typer.Option(help="bundle folder or .zip")],
    input: Annotated[Path, typer.Option(help='JSONL (UTF-8), one {"question", "task"?, "id"?} per line; ids unique')],
    output: Annotated[Path, typer.Option(help="JSONL file of decisions to write")] = Path("decisions.jsonl"),
    lam: Annotated[float | None, typer.Option(help="joule price λ, >= 0 (overrides the bundle's rule)")] = None,
    budget_j: Annotated[float | None, typer.Option(help="target mean joules per query over the file, > 0")] = None,
    backend: Annotated[
        str, typer.Option(help=f"model backend: {', '.join(BACKENDS)} (numpy is safe for any bundle)")
    ] = "numpy",
    key_file: Annotated[Path | None, typer.Option(help=KEY_FILE_HELP)] = None,
    probe_model: Annotated[
        str | None, typer.Option(help="a text+probe policy: the model whose prefill it reads (see the bundle)")
    ] = None,
    device: Annotated[str, typer.Option(help="device of --probe-model: auto, cpu, cuda, cuda:N or mps")] = "auto",
) -> None:
    """Pick an arm (model, votes, max tokens) for every query of a JSONL file."""
    from ttc.stages import allocate_stage

    try:
        n = allocate_stage(
            bundle,
            input,
            output,
            lam,
            budget_j,
            backend,
            key=read_key(key_file),
            warn=lambda m: typer.echo(f"warning: {m}", err=True),
            probe_model=probe_model,
            device=device,
        )
    except TTCError as e:
        _fail(e)
    typer.echo(f"wrote {n} decisions to {output}")


@app.command(name="eval")
def eval_(
    store: Annotated[str, typer.Option(help="sample store folder")] = "runs/default/store",
    bundle: Annotated[
        str, typer.Option(help="bundle folder or .zip (with --folds: optional, lends its feature set and rule)")
    ] = "runs/default/policy",
    out: Annotated[str, typer.Option(help="report folder")] = "runs/default/eval",
    train_dir: Annotated[
        str, typer.Option(help="`ttc train` output: its split.json names the held-out queries (unused with --folds)")
    ] = "runs/default/train",
    split: Annotated[
        str, typer.Option(help=f"held-out split: {', '.join(SPLITS)}; with --folds, task = leave one task out")
    ] = "query",
    holdout_task: Annotated[list[str] | None, typer.Option(help="held-out task with --split task")] = None,
    folds: Annotated[
        int, typer.Option(help="cross-fit: K query folds, a policy trained per fold; 1 = use the train split")
    ] = 1,
    fold_trials: Annotated[int, typer.Option(help="Optuna trials per predictor when training each fold")] = 5,
    allocator: Annotated[list[str] | None, typer.Option(help="allocators to compare (default all)")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals; 0 = none")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the folds and the bootstrap")] = 0,
    allow_mixed_energy: Annotated[bool, typer.Option(help="allow comparing measured with estimated joules")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
    force: Annotated[bool, typer.Option(help="replace an earlier eval report at --out (never other files)")] = False,
) -> None:
    """Compare the learned allocator with fixed, model scaling, random, binned, early stopping, the published
    stopping rules (adaptive_consistency, esc) and the oracle; cross-fitted with --folds."""
    from eval.stage import eval_stage

    try:
        r = eval_stage(
            store,
            out_dir=out,
            split=split,
            holdout_tasks=holdout_task or None,
            n_boot=n_boot,
            seed=seed,
            tracking_uri=tracking_uri,
            allow_mixed_energy=allow_mixed_energy,
            allocators=allocator or None,
            folds=folds,
            fold_trials=fold_trials,
            force=force,
            **eval_inputs(bundle, train_dir, folds, holdout_task),
        )
    except TTCError as e:
        _fail(e)
    console.evaluated(r)


@app.command()
def run(
    quick: Annotated[bool, typer.Option(help="smaller preset for a first look (fewer trials and resamples)")] = False,
    out: Annotated[str, typer.Option(help="folder for the store, models, bundle and report")] = "runs/default",
    collect: Annotated[
        int | None,
        typer.Option(
            "--collect",
            "--extra-items",
            help="new queries per task to collect beyond the reference (default 0; 1 took 4.6 min on 2 CPU cores)",
        ),
    ] = None,
    task: Annotated[list[str] | None, typer.Option(help="restrict to these tasks; repeatable")] = None,
    trials: Annotated[int | None, typer.Option(help="Optuna trials per predictor")] = None,
    n_boot: Annotated[int | None, typer.Option(help="bootstrap resamples")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
) -> None:
    """The whole pipeline on the built-in default: collect -> train -> export -> eval (resumable)."""
    from ttc.stages import run_pipeline

    try:
        s = run_pipeline(
            out,
            "quick" if quick else "default",
            tasks=task or None,
            extra_items_per_task=collect,
            n_trials=trials,
            n_boot=n_boot,
            tracking_uri=tracking_uri,
            echo=typer.echo,
        )
    except TTCError as e:
        _fail(e)
    console.ran(s, str(Path(out) / "run_summary.json"))


@app.command()
def serve(
    bundle: Annotated[str, typer.Option(help="bundle folder or .zip")],
    upstream: Annotated[
        list[str],
        typer.Option(help="MODEL=URL of an OpenAI-compatible engine (URL ends in /v1); repeat per model"),
    ],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    lam: Annotated[
        float | None, typer.Option(help="fixed joule price λ, accuracy per J (default: the bundle's exported price)")
    ] = None,
    budget_j: Annotated[
        float | None,
        typer.Option(help="online budget: target mean predicted J per request (refused below the cheapest arms)"),
    ] = None,
    max_accuracy_loss: Annotated[
        float | None,
        typer.Option(help="the price losing at most this accuracy (0.01 = one point) vs the best arm or policy"),
    ] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option(
            help="trained: rebuild the prompt the policy was trained on; client: forward messages as sent "
            "(default: trained when the bundle records prompts)"
        ),
    ] = None,  # fmt: skip
    look: Annotated[bool, typer.Option(help="look-then-decide with the bundle's stage-2 rule, when it has one")] = True,
    budget_window: Annotated[int, typer.Option(help="online budget: requests in the window /metrics reports")] = 64,
    timeout_s: Annotated[float, typer.Option(help="seconds to wait for an upstream before answering 504")] = 120.0,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted, bytes (else 413)")] = 1 << 20,
    backend: Annotated[str, typer.Option(help=f"model backend: {', '.join(BACKENDS)}")] = "numpy",
    upstream_key: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=ENV_VAR: send the key held in that environment variable to MODEL's upstream"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TTC_API_KEY", help="clients must send 'Authorization: Bearer KEY' (else 401)"),
    ] = None,
) -> None:
    """Serve the policy as an OpenAI-compatible proxy that sizes, samples and votes each request."""
    from serve.proxy import serve as serve_proxy

    limits = {"budget_window": budget_window, "timeout_s": timeout_s, "max_body_bytes": max_body_bytes}
    price = {"lam": lam, "budget_j": budget_j, "max_accuracy_loss": max_accuracy_loss}
    how = {"prompt_template": prompt_template, "look": look}
    try:
        serve_proxy(bundle, upstream, host, port, backend, upstream_key, api_key=api_key, **price, **how, **limits)
    except TTCError as e:
        _fail(e)


@app.command()
def engines(
    model: Annotated[
        list[str] | None, typer.Option(help="built-in model to print (repeatable; default: all of them)")
    ] = None,
    port: Annotated[int, typer.Option(help="port of the first engine; the next ones count up from it")] = 8080,
    threads: Annotated[
        int, typer.Option(help="llama.cpp threads for prefill and decode (1: best on a small, busy machine)")
    ] = 1,
) -> None:
    """Print each built-in model's GGUF path and the llama.cpp server command that serves it."""
    from serve.engines import engine_commands, serve_command

    try:
        found = engine_commands(model, port, threads)
    except TTCError as e:
        _fail(e)
    for e in found:
        typer.echo(f"# {e.model}: {e.gguf}\n{e.command()}")
    typer.echo(f"# then the proxy in front of them:\n{serve_command(found)}")


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from collect.tasks import DEFAULT_TASKS, TASKS

    for name in TASKS:
        typer.echo(f"{name}{'  (default)' if name in DEFAULT_TASKS else ''}")
    typer.echo('jsonl:PATH  (your own file: one {"question", "answer"} object per line)')


# Without a terminal (a pipe, a CI log) rich falls back to 80 columns and squeezes Typer's help
# panels; the project's own line length reads better. COLUMNS or TERMINAL_WIDTH, when set, win.
HELP_WIDTH_WITHOUT_TERMINAL = 120


def main() -> None:
    console.quiet_libraries()
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        os.environ.setdefault("TERMINAL_WIDTH", str(HELP_WIDTH_WITHOUT_TERMINAL))  # read by typer.rich_utils
    try:
        app()
    except TTCError as e:  # a stage raised outside a command's own handler
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
