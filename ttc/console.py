"""What `ttc` prints beyond the stages' own progress: headline lines, the held-out summary, and
keeping libraries quiet. Printing only: nothing here computes a figure."""

from __future__ import annotations

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
