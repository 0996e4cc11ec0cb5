"""What `ttc` prints beyond the stages' own progress: headline lines, the held-out summary, and
keeping libraries quiet. Printing only: nothing here computes a figure."""

from __future__ import annotations

from typing import Any

import typer


def held_out(d: dict) -> str:
    folds = d.get("eval_folds", 1)
    if folds >= 2:
        return f"eval cross-fitted over {folds} folds: every one of the {d['queries']} queries held out once"
    return f"held out {d['held_out_queries']}"


def print_headline(rep: dict) -> None:
    """The headline intervals of an eval report, one line each, with the energy source."""
    src = rep.get("energy_source", "estimated")
    for key, value in rep.items():
        if isinstance(value, dict) and {"point", "low", "high"} <= set(value):
            if None in (value["point"], value["low"], value["high"]):
                typer.echo(f"  {key}: undefined on this data")
            else:
                typer.echo(f"  {key} ({src}): {value['point']:.3g}  [95% CI {value['low']:.3g} .. {value['high']:.3g}]")


def quiet_libraries() -> None:
    """A quiet console: the commands print their own progress and results; MLflow's INFO lines
    ("Validating input example...") and its artifact download bars say nothing a user acts on."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow's logging setup and its subprocesses
    logging.getLogger("mlflow").setLevel(logging.WARNING)


# ---------------------------------------------------------------- one summary per command


def collected(r: Any, failed: tuple[str, ...] = ()) -> None:
    """`ttc collect`'s summary (r: a CollectResult); units that failed after their tries go to stderr."""
    typer.echo(
        f"collected {r.new_samples} new samples ({r.skipped_groups} query groups already stored); "
        f"store {r.store} holds {r.total_samples}; {r.output_tokens} tokens, "
        f"{r.energy_j:.1f} J {r.energy_source} ({r.meter} meter)"
    )
    for line in failed:  # a rerun tries them again
        typer.echo(f"failed: {line}", err=True)


def trained(r: Any) -> None:
    """`ttc train`'s summary (r: a train.stage.TrainResult)."""
    typer.echo(
        f"trained on {len(r.train_query_ids)} queries, held out {len(r.test_query_ids)}; "
        f"models in {r.out_dir}; MLflow run {r.run_id}"
    )


def exported(r: dict) -> None:
    typer.echo(
        f"bundle {r['bundle']} and {r['zip']} (energy {r['energy_source']})"
        + (f"; registered as {r['model_uri']}" if "model_uri" in r else "")
        + (f"\n{r['price']}" if r.get("price") else "")
    )


def adapted(r: dict, seconds: float) -> None:
    tasks = ", ".join(f"{t} ({k} queries)" for t, k in r["adapted"].items())
    typer.echo(
        f"adapted {tasks} (prior weight {r['prior_queries']:.1f} queries; energy {r['energy_source']}); "
        f"bundle {r['bundle']} and {r['zip']} in {seconds:.1f} s"
    )


def evaluated(r: Any) -> None:
    """`ttc eval`'s headline and where the report is (r: an eval.report.EvalReport)."""
    import json

    print_headline(json.loads(r.to_json()))
    typer.echo(f"report: {r.markdown_path}  |  MLflow: mlflow ui --backend-store-uri {r.tracking_uri}")


def ran(s: dict, summary_path: str) -> None:
    """`ttc run`'s closing lines: where the data came from, the headline, and where everything is."""
    d = s["data"]
    typer.echo(
        f"\ndata: {d['queries']} queries ({d['queries_from_reference']} from the reference collection, "
        f"{d['queries_collected_by_this_or_earlier_runs']} collected by ttc run; {d['new_samples_this_run']} "
        f"new samples now); {held_out(d)}; energy {d['energy_source']} ({d['energy_meter']})"
    )
    print_headline(s["eval"])
    if s["export"].get("price"):
        typer.echo(f"bundle: {s['export']['price']}")
    typer.echo(
        f"report: {s['eval'].get('markdown_path')}\nsummary: {summary_path}\n"
        f"MLflow: {s['mlflow_ui']}  (took {s['timings_s']['total_s']:.0f} s)"
    )
