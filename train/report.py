"""The files and the console summary of a `ttc train` output: tables, the split, metadata, figures.

`write_reports` writes into a folder it is given (the stage's temporary
output folder); `print_summary` prints the held-out metrics beside the per-arm
baseline. This module never trains and never logs to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from store.splits import write_split
from train.dataset import TrainingData
from train.fit import Evaluation, Fitted

if TYPE_CHECKING:
    from train.dataset import RowSplit  # the split with row indices (store.splits.Split inside)

#: the file that marks a folder as a `ttc train` output (so a new run may replace it)
MARKER = "train_meta.json"


def write_reports(out_dir: Path, fitted: Fitted, sp: RowSplit, ev: Evaluation) -> None:
    """feature_importance.csv, metrics.json, split.json, train_meta.json and two figures."""
    data = fitted.data
    importance = pd.DataFrame({"feature": data.feature_names})
    for name, est in fitted.estimators.items():
        importance[f"{name}_gain"] = est.feature_importances_
    importance.to_csv(out_dir / "feature_importance.csv", index=False)
    metrics = {"metrics": ev.metrics, "details": ev.details}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    # The split as eval reads it (store.splits): held-out ids, seed and the store's fingerprint.
    write_split(out_dir / "split.json", sp.split)
    (out_dir / MARKER).write_text(json.dumps(_meta(data), indent=1))
    _plot_reliability(out_dir / "reliability.png", ev.details["success"])
    _plot_importance(out_dir / "feature_importance.png", importance, list(fitted.predictors))


def _meta(data: TrainingData) -> dict:
    return {
        "feature_set": data.feature_set.name,
        "feature_set_version": data.feature_set.version,
        "feature_names": data.feature_names,
        "arms": [a.arm_id for a in data.arms],
        "models": data.models,
        "success_label": data.label,
        "energy_source": data.energy_source,
        "energy_meter": data.meter,
    }


def _plot_reliability(path: Path, success: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, label in (("reliability", "success predictor"), ("baseline_reliability", "arm base rate")):
        ax.plot(success[key]["mean_p"], success[key]["observed"], marker="o", label=label)
    ax.set(xlabel="predicted P(success)", ylabel="observed success rate (test queries)", title="Reliability")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _plot_importance(path: Path, importance: pd.DataFrame, names: list[str]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        top = importance.nlargest(15, f"{name}_gain")
        ax.barh(top["feature"][::-1], top[f"{name}_gain"][::-1])
        ax.set_title(f"{name}: gain")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_summary(metrics: dict[str, float], data: TrainingData, wall_s: float) -> None:
    """The held-out metrics that have a baseline twin, model beside per-arm baseline, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ttc train: {data.n_queries} queries, {len(data.rows)} arm rows, {wall_s:.1f} s")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("per-arm baseline", justify="right")
    for key in sorted(metrics):
        head, _, tail = key.partition("/")
        if tail.startswith("test_") and f"{head}/baseline_{tail}" in metrics:
            table.add_row(key, f"{metrics[key]:.4f}", f"{metrics[f'{head}/baseline_{tail}']:.4f}")
    Console().print(table)
