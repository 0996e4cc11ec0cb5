"""The `ttc` command: parse arguments, call one stage function, report.

Thin on purpose: every command maps its flags onto a stage function and turns a
`TTCError` into a one-line message with exit code 2. Heavy imports happen
inside each command so `ttc --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from policy.errors import TTCError

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
        list[str] | None, typer.Option(help="model name, folder, .gguf file or hub id; repeatable")
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
        list[float] | None, typer.Option(help="sampling temperatures (>0); greedy is separate")
    ] = None,
    greedy: Annotated[bool | None, typer.Option(help="also collect one greedy sample per query")] = None,
    queries_per_batch: Annotated[int | None, typer.Option(help="queries per generate call")] = None,
    meter: Annotated[str | None, typer.Option(help="energy meter: estimate, nvml, rapl, auto")] = None,
    watts_per_core: Annotated[float | None, typer.Option(help="W per busy core for the estimate meter")] = None,
    idle_baseline_s: Annotated[
        float | None, typer.Option(help="seconds of idle sampling before work; 0 = none")
    ] = None,
    store: Annotated[str | None, typer.Option(help="sample store folder (resumes if it exists)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI; default sqlite:///mlruns/mlflow.db")] = None,
    track: Annotated[bool | None, typer.Option(help="log the run to MLflow")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 …")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads; 0 = torch's default")] = None,
) -> None:
    """Generate samples over the (query, budget) grid into a crash-safe store."""
    from collect.config import load_config
    from collect.stage import collect_stage

    try:
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
        r = collect_stage(cfg)
    except TTCError as e:
        _fail(e)
    typer.echo(
        f"collected {r.new_samples} new samples ({r.skipped_groups} query groups already stored); "
        f"store {r.store} holds {r.total_samples}; {r.output_tokens} tokens, "
        f"{r.energy_j:.1f} J {r.energy_source} ({r.meter} meter)"
    )


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from collect.tasks import DEFAULT_TASKS, TASKS

    for name in TASKS:
        typer.echo(f"{name}{'  (default)' if name in DEFAULT_TASKS else ''}")
    typer.echo('jsonl:PATH  (your own file: one {"question", "answer"} object per line)')


def main() -> None:
    try:
        app()
    except TTCError as e:  # a stage raised outside a command's own handler
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
