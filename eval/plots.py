"""The evaluation's plots: accuracy against joules per allocator, and the output-length sweep of the n=1 arms.

matplotlib's object API only (no pyplot state), imported inside each function
so that importing eval never imports matplotlib. Never reads a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.allocators import Curve


def energy_label(source: str, meter: str) -> str:
    """'estimated: estimate meter' — the words every energy figure carries."""
    return f"{source}: {meter} meter"


def axis_label(source: str, meter: str) -> str:
    return f"mean energy per query (J, {energy_label(source, meter)})"


_STYLE = {
    "learned": ("tab:blue", "o", "-"),
    "fixed": ("tab:gray", "s", ":"),
    "model_scaling": ("tab:brown", "D", "--"),
    "random": ("tab:orange", "x", "-."),
    "difficulty_bins": ("tab:green", "^", "-"),
    "early_stopping": ("tab:purple", "v", "--"),
    "adaptive_consistency": ("tab:pink", "P", "--"),
    "esc": ("tab:olive", "*", "--"),
    "two_stage": ("tab:cyan", "h", "-"),
    "per_task": ("tab:red", "s", "-"),
    "oracle": ("black", "", "-"),
    "soft_oracle": ("dimgray", "", "--"),
}


def plot_pareto(curves: Mapping[str, Curve], path: Path, xlabel: str) -> Path:
    """Accuracy against mean joules per query (log axis): every point faint, each convex frontier as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    for name, c in curves.items():
        color, marker, line = _STYLE.get(name, ("tab:red", ".", "-"))
        e, a = c.energy_j, c.accuracy
        if name not in ("oracle", "soft_oracle"):
            ax.scatter(e, a, color=color, marker=marker or ".", s=14, alpha=0.35)
        f = c.frontier()
        ax.plot(e[f], a[f], color=color, linestyle=line, marker=marker or None, markersize=4, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on held-out queries")
    ax.set_title("Accuracy vs energy per allocator (lines: convex frontiers)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_length(
    rows_overall: Sequence[Mapping], per_task: Mapping[str, Any], path: Path, source: str, meter: str
) -> Path:
    """Accuracy, mean joules and output tokens against max_new_tokens for the n=1 arms (rows as in the report)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    keys = [
        ("accuracy", "accuracy"),
        (f"mean_energy_{source}_j", f"mean energy per answer (J, {energy_label(source, meter)})"),
        ("mean_output_tokens", "mean output tokens"),
    ]

    def draw(rows: Sequence[Mapping], alpha: float, width: float, label: bool) -> None:
        df = pd.DataFrame(rows)
        if df.empty:
            return
        for (model, decoding), g in df.groupby(["model", "decoding"]):
            g = g.sort_values("max_new_tokens")
            for ax, (col, _) in zip(axes, keys, strict=True):
                ax.plot(
                    g["max_new_tokens"],
                    g[col],
                    marker="o",
                    alpha=alpha,
                    linewidth=width,
                    label=f"{model} {decoding}" if label else None,
                )

    for entry in per_task.values():
        draw(entry["length"], 0.2, 0.8, False)
    draw(rows_overall, 1.0, 2.0, True)
    levels = sorted({int(r["max_new_tokens"]) for r in rows_overall})
    for ax, (_, ylabel) in zip(axes, keys, strict=True):
        ax.set_xlabel("max_new_tokens (L)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(v) for v in levels])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Output length: n=1 arms (bold: all tasks, faint: per task)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
