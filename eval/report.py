"""The evaluation's outputs: eval_report.json, eval_report.md with its plots, and `EvalReport`.

`build_report` turns the allocators' curves into one JSON-ready dict (the
headline numbers with bootstrap intervals, every curve, the per-task
findings); `write_outputs` writes it with the Markdown report, the Pareto and
length plots and the per-query assignments. Every key that holds joules, or a
number derived from joules, carries the energy source in its name
(`mean_energy_estimated_j`, `energy_saved_at_equal_accuracy_estimated`), and
every axis label names source and meter: estimated and measured joules must
never be read as alike. The README documents every key.

matplotlib is imported inside the plotting functions (object API, no pyplot
state); this module never imports mlflow and never reads a store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.allocators import Curve, EvalContext, Outcomes, scaling_reference_arm
from eval.metrics import (
    CurveData,
    Interval,
    best_point,
    bootstrap,
    frontier_comparison,
    headline_stats,
    small_arm_choices,
    ttc_vs_scaling_stats,
    verdict,
)
from policy.arms import Arm

REPORT_SCHEMA_VERSION = 1
JSON_NAME = "eval_report.json"
MARKDOWN_NAME = "eval_report.md"
PARETO_PNG = "eval_pareto.png"
LENGTH_PNG = "eval_length.png"
ASSIGNMENTS_NAME = "eval_assignments.parquet"
#: What the paper (Jin, Wei & Brooks 2025) reports per task kind: who wins in accuracy per joule.
PAPER_EXPECTS = {"reasoning": "test_time_compute", "factual": "model_scaling"}
#: Fewer held-out queries of a task than this and its allocation saving is not reported.
MIN_TASK_QUERIES = 5


@dataclass(frozen=True)
class EvalReport:
    """What `eval_stage` produced: the headline numbers, where the files are, and the MLflow run.

    Energy figures are `energy_source` joules ("measured", "estimated", or
    "mixed" when allowed) read by `energy_meter`. A headline is None when it is
    undefined on this data (e.g. the learned curve never reaches the best fixed
    arm's accuracy).
    """

    out_dir: Path
    json_path: Path
    markdown_path: Path
    pareto_png: Path
    length_png: Path
    assignments_path: Path
    run_id: str
    experiment_id: str
    tracking_uri: str
    split: str
    n_test_queries: int
    energy_source: str
    energy_meter: str
    allocators: tuple[str, ...]
    energy_saved_at_equal_accuracy: Interval | None
    accuracy_gain_at_equal_energy: Interval | None
    oracle_share_of_saving: Interval | None
    energy_saved_vs_model_scaling: Interval | None
    learned_energy_per_correct_j: Interval | None
    best_fixed_energy_per_correct_j: Interval | None

    def to_json(self) -> str:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, dict) and "point" in v:
                d[k] = Interval(**v).to_dict()
            elif isinstance(v, tuple):
                d[k] = list(v)
        return json.dumps(d, indent=2, sort_keys=True)


# ---------------------------------------------------------------- naming


def energy_label(source: str, meter: str) -> str:
    """'estimated: estimate meter' — the words every energy figure carries."""
    return f"{source}: {meter} meter"


def axis_label(source: str, meter: str) -> str:
    return f"mean energy per query (J, {energy_label(source, meter)})"


def _is_figure(v: Any) -> bool:
    """A number, an undefined number, or an interval: what an energy key may hold."""
    return v is None or isinstance(v, int | float | np.number | Interval) and not isinstance(v, bool)


def tag_energy_keys(obj: Any, source: str) -> Any:
    """Put the energy source into every key that holds joules or a number made from joules.

    For keys holding a number or an interval: `x_j` becomes `x_<source>_j`,
    and any other key containing "energy" gets a `_<source>` suffix. Applied
    once, to the whole report, just before writing.
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = str(k)
            if _is_figure(v):
                key = tagged(key, source)
            out[key] = tag_energy_keys(v, source)
        return out
    if isinstance(obj, list | tuple):
        return [tag_energy_keys(v, source) for v in obj]
    return obj


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, Intervals -> dicts."""
    if isinstance(obj, Interval):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- building the report


def task_kind(task: str) -> str:
    """ "reasoning", "factual" or "unknown" (a task name the registry does not know)."""
    from collect.tasks import make_task
    from policy.errors import TTCError

    try:
        return str(make_task(task).kind)
    except TTCError:
        return "unknown"


def _curve_dict(curve: Curve) -> dict[str, Any]:
    front = set(curve.frontier().tolist())
    pts = []
    for i, p in enumerate(curve.points):
        d = {
            "label": p.label,
            "params": p.params,
            "accuracy": p.accuracy,
            "mean_energy_j": p.mean_energy_j,
            "energy_per_correct_j": p.mean_energy_j / p.accuracy if p.accuracy > 0 else math.nan,
            "on_frontier": i in front,
        }
        if p.samples_used is not None:
            d["mean_samples_used"] = float(np.mean(p.samples_used))
        pts.append(d)
    return {
        "one_arm_per_query": curve.one_arm_per_query,
        "notes": curve.notes,
        "n_points": len(pts),
        "frontier": sorted(front, key=lambda i: curve.points[i].mean_energy_j),
        "points": pts,
    }


def _headline(ctx: EvalContext, curves: Mapping[str, Curve], cols: np.ndarray, n_boot: int, seed: int) -> dict:
    learned, fixed = curves["learned"].data().subset(cols), curves["fixed"].data().subset(cols)
    oracle = curves["oracle"].data().subset(cols) if "oracle" in curves else None
    scaling = None
    if "model_scaling" in curves:
        ref = scaling_reference_arm(ctx.arm_ids, ctx.big_model)
        j = ctx.arm_ids.index(ref)
        scaling = CurveData(fixed.correct[j : j + 1], fixed.energy_j[j : j + 1])
    fe, fa = fixed.means(np.full(len(cols), 1.0 / len(cols)))
    best = best_point(fe, fa)
    ivs = bootstrap(lambda w: headline_stats(learned, fixed, oracle, scaling, best, w), len(cols), n_boot, seed)
    out: dict[str, Any] = {"n_queries": len(cols), "best_fixed_arm": ctx.arm_ids[best]}
    rename = {
        "learned_joules_per_correct_at_best_fixed_accuracy": "learned_energy_per_correct_j",
        "best_fixed_joules_per_correct": "best_fixed_energy_per_correct_j",
    }
    out.update({rename.get(k, k): v for k, v in ivs.items()})
    if scaling is not None:
        out["model_scaling_reference_arm"] = scaling_reference_arm(ctx.arm_ids, ctx.big_model)
    return out


def _ttc_vs_scaling(full: Outcomes, rows: np.ndarray, small: str, big: str, n_boot: int, seed: int) -> dict | None:
    arms = [Arm.parse(a) for a in full.arm_ids]
    s_cols = [j for j, a in enumerate(arms) if a.model == small]
    ref = scaling_reference_arm(full.arm_ids, big)
    b = full.arm_ids.index(ref)
    sc, se = full.correct[np.ix_(rows, s_cols)], full.energy_j[np.ix_(rows, s_cols)]
    bc, be = full.correct[rows, b], full.energy_j[rows, b]
    ivs = bootstrap(lambda w: ttc_vs_scaling_stats(sc, se, bc, be, w), len(rows), n_boot, seed)
    w = np.full(len(rows), 1.0 / len(rows))
    j_within, j_reach = small_arm_choices(se.T @ w, sc.T @ w, float(be @ w), float(bc @ w))
    result = verdict(ivs["accuracy_gain_at_big_energy"], ivs["energy_saved_at_big_accuracy"])
    return {
        "small_model": small,
        "big_model": big,
        "big_arm": ref,
        "small_best_arm_within_big_energy": full.arm_ids[s_cols[j_within]] if j_within is not None else None,
        "small_cheapest_arm_at_big_accuracy": full.arm_ids[s_cols[j_reach]] if j_reach is not None else None,
        **ivs,
        "verdict": result,
    }


def _length_rows(full: Outcomes, rows: np.ndarray) -> list[dict]:
    """Accuracy, joules and tokens of every n=1 arm, per (model, decoding), by max_new_tokens."""
    out = []
    for j, a in sorted(enumerate(Arm.parse(x) for x in full.arm_ids), key=lambda t: (t[1].model, t[1].temperature)):
        if a.n != 1:
            continue
        tokens = full.output_tokens[rows, j]
        energy = full.energy_j[rows, j]
        out.append(
            {
                "model": a.model,
                "decoding": "greedy" if a.greedy else f"t{a.temperature:g}",
                "max_new_tokens": a.max_new_tokens,
                "accuracy": float(full.correct[rows, j].mean()),
                "mean_energy_j": float(energy.mean()),
                "mean_output_tokens": float(tokens.mean()),
                "no_answer_rate": float(1 - full.answered[rows, j].mean()),
                "energy_per_output_token_j": float(energy.sum() / tokens.sum()) if tokens.sum() > 0 else math.nan,
            }
        )
    return sorted(out, key=lambda r: (r["model"], r["decoding"], r["max_new_tokens"]))


def _length_summary(rows: list[dict]) -> dict[str, dict]:
    """Per (model, decoding): what going from the shortest to the longest cap bought and cost."""
    out = {}
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(f"{r['model']}/{r['decoding']}", []).append(r)
    for key, rs in by.items():
        lo, hi = rs[0], rs[-1]
        out[key] = {
            "shortest_max_new_tokens": lo["max_new_tokens"],
            "longest_max_new_tokens": hi["max_new_tokens"],
            "accuracy_gain_longest_vs_shortest": hi["accuracy"] - lo["accuracy"],
            "energy_ratio_longest_vs_shortest": hi["mean_energy_j"] / lo["mean_energy_j"]
            if lo["mean_energy_j"] > 0
            else math.nan,
            "accuracy_rises_with_length": all(b["accuracy"] >= a["accuracy"] for a, b in zip(rs, rs[1:], strict=False)),
        }
    return out


def build_report(
    ctx: EvalContext,
    curves: Mapping[str, Curve],
    skipped: Mapping[str, str],
    full: Outcomes,
    meta: Mapping[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (energy keys already tagged with the source)."""
    source = meta["energy"]["source"]
    small = meta["models"]["small"]
    big = meta["models"]["big"]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **meta,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": 0.95, "resampled_unit": "query"},
        "allocators_run": list(curves),
        "allocators_skipped": dict(skipped),
        "curves": {name: _curve_dict(c) for name, c in curves.items()},
    }
    all_cols = np.arange(ctx.test.n_queries)
    report["vs_fixed_frontier"] = None
    report["vs_model_scaling_frontier"] = None
    if "learned" in curves and "fixed" in curves:
        report["headline"] = _headline(ctx, curves, all_cols, n_boot, seed)
        le, la = curves["learned"].energy_j, curves["learned"].accuracy
        f = curves["fixed"]
        report["vs_fixed_frontier"] = frontier_comparison(le, la, f.energy_j, f.accuracy, [p.label for p in f.points])
        if "model_scaling" in curves:
            m = curves["model_scaling"]
            ids = [p.label for p in m.points]
            report["vs_model_scaling_frontier"] = frontier_comparison(le, la, m.energy_j, m.accuracy, ids)
    else:
        report["headline"] = None

    per_task: dict[str, Any] = {}
    for task in sorted(set(full.tasks)):
        rows = np.flatnonzero(full.tasks == task)
        test_cols = np.flatnonzero(ctx.test.tasks == task)
        kind = task_kind(task)
        entry: dict[str, Any] = {"kind": kind, "n_queries": len(rows), "n_test_queries": len(test_cols)}
        if small is not None and big is not None and small != big:
            ttc = _ttc_vs_scaling(full, rows, small, big, n_boot, seed)
            expected = PAPER_EXPECTS.get(kind)
            ttc["paper_expects"] = expected
            decided = expected is not None and ttc["verdict"] != "tie"
            ttc["agrees_with_paper"] = ttc["verdict"] == expected if decided else None
            entry["ttc_vs_scaling"] = ttc
        lrows = _length_rows(full, rows)
        entry["length"] = lrows
        entry["length_summary"] = _length_summary(lrows)
        if report["headline"] is not None and len(test_cols) >= MIN_TASK_QUERIES:
            entry["allocation_saving"] = _headline(ctx, curves, test_cols, n_boot, seed)
        else:
            entry["allocation_saving"] = None
        per_task[task] = entry
    report["per_task"] = per_task
    all_rows = np.arange(full.n_queries)
    report["length_overall"] = _length_rows(full, all_rows)
    report["findings"] = _findings(report, per_task)
    return _clean(tag_energy_keys(report, source))


def _findings(report: Mapping[str, Any], per_task: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's three claims, checked on this data, disagreements included."""
    by_kind: dict[str, dict[str, Any]] = {}
    for task, e in per_task.items():
        t = e.get("ttc_vs_scaling")
        if t is None:
            continue
        k = by_kind.setdefault(e["kind"], {"tasks": [], "test_time_compute": 0, "model_scaling": 0, "tie": 0})
        k["tasks"].append(task)
        k[t["verdict"]] += 1
    disagree = [t for t, e in per_task.items() if (e.get("ttc_vs_scaling") or {}).get("agrees_with_paper") is False]
    agree = [t for t, e in per_task.items() if (e.get("ttc_vs_scaling") or {}).get("agrees_with_paper") is True]
    length = {
        t: {k: v["accuracy_gain_longest_vs_shortest"] for k, v in e["length_summary"].items()}
        for t, e in per_task.items()
    }
    saving = None
    h = report.get("headline")
    if h is not None:
        saving = h["energy_saved_at_equal_accuracy"]
    return {
        "1_ttc_vs_model_scaling": {
            "by_kind": by_kind,
            "tasks_agreeing_with_paper": agree,
            "tasks_disagreeing_with_paper": disagree,
            "tasks_inconclusive": [t for t in per_task if t not in agree and t not in disagree],
        },
        "2_output_length": {"accuracy_gain_longest_vs_shortest_cap": length},
        "3_query_aware_allocation": {"energy_saved_at_equal_accuracy": saving},
    }


# ---------------------------------------------------------------- plots


_STYLE = {
    "learned": ("tab:blue", "o", "-"),
    "fixed": ("tab:gray", "s", ":"),
    "model_scaling": ("tab:brown", "D", "--"),
    "random": ("tab:orange", "x", "-."),
    "difficulty_bins": ("tab:green", "^", "-"),
    "early_stopping": ("tab:purple", "v", "--"),
    "oracle": ("black", "", "-"),
}


def plot_pareto(curves: Mapping[str, Curve], path: Path, xlabel: str) -> Path:
    """Accuracy against mean joules per query (log axis): every point faint, each frontier as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    for name, c in curves.items():
        color, marker, line = _STYLE.get(name, ("tab:red", ".", "-"))
        e, a = c.energy_j, c.accuracy
        if name != "oracle":
            ax.scatter(e, a, color=color, marker=marker or ".", s=14, alpha=0.35)
        f = c.frontier()
        ax.plot(e[f], a[f], color=color, linestyle=line, marker=marker or None, markersize=4, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on held-out queries")
    ax.set_title("Accuracy vs energy per allocator (lines: Pareto frontiers)")
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


# ---------------------------------------------------------------- files


def write_assignments(curves: Mapping[str, Curve], query_ids: Sequence[str], path: Path, source: str) -> Path:
    """Per (allocator, point, query): the chosen arm, its realised correctness and joules."""
    frames = []
    for name, c in curves.items():
        for i, p in enumerate(c.points):
            frames.append(
                pd.DataFrame(
                    {
                        "allocator": name,
                        "point": i,
                        "label": p.label,
                        "query_id": list(query_ids),
                        "arm_id": list(p.arm_ids),
                        "correct": p.correct,
                        f"energy_{source}_j": p.energy_j,
                    }
                )
            )
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def tagged(key: str, source: str) -> str:
    """The name `tag_energy_keys` gives a figure's key."""
    if key.endswith("_j"):
        return f"{key[:-2]}_{source}_j"
    return f"{key}_{source}" if "energy" in key else key


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, Mapping) and "point" in v:
        if v["point"] is None:
            return "n/a"
        if v["low"] is None:
            return _fmt(v["point"], pct)
        return f"{_fmt(v['point'], pct)} [{_fmt(v['low'], pct)}, {_fmt(v['high'], pct)}]"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.4g}"
    return str(v)


def write_markdown(report: Mapping[str, Any], path: Path) -> Path:
    src = report["energy"]["source"]
    label = report["energy"]["label"]

    def T(key: str) -> str:  # noqa: N802  (reads like a subscript)
        return tagged(key, src)

    L: list[str] = [
        "# ttc-allocator evaluation",
        "",
        f"Store `{report['store']}`, bundle `{report['bundle']}`; split **{report['split']['kind']}** with "
        f"{report['split']['n_test_queries']} held-out queries. Energy: **{label}** "
        f"(every joule figure below is {src}). Intervals: 95% bootstrap over queries, "
        f"B = {report['bootstrap']['n_boot']}.",
        "",
    ]
    h = report.get("headline")
    if h:
        L += [
            "## Headline",
            "",
            "| number | value [95% interval] |",
            "|---|---|",
            f"| energy saved at equal accuracy vs the best fixed arm ({h['best_fixed_arm']}) | "
            f"{_fmt(h[T('energy_saved_at_equal_accuracy')], True)} |",
            f"| accuracy gained at equal energy | {_fmt(h[T('accuracy_gain_at_equal_energy')], True)} |",
            f"| share of the oracle's saving achieved | {_fmt(h.get(T('oracle_share_of_energy_saving')), True)} |",
            f"| energy saved vs model scaling ({h.get('model_scaling_reference_arm', 'n/a')}) at its accuracy | "
            f"{_fmt(h.get(T('energy_saved_vs_model_scaling')), True)} |",
            f"| joules per correct answer, learned (J, {label}) | {_fmt(h[T('learned_energy_per_correct_j')])} |",
            f"| joules per correct answer, best fixed arm (J, {label}) | "
            f"{_fmt(h[T('best_fixed_energy_per_correct_j')])} |",
            "",
        ]
    L += [f"![Pareto frontiers]({PARETO_PNG})", "", "## Allocators", ""]
    L += [f"| allocator | points | best accuracy | its mean energy (J, {label}) |", "|---|---|---|---|"]
    for name, c in report["curves"].items():
        best = max(c["points"], key=lambda p: (p["accuracy"], -p[f"mean_energy_{src}_j"]))
        L.append(f"| {name} | {c['n_points']} | {_fmt(best['accuracy'])} | {_fmt(best[T('mean_energy_j')])} |")
    for name, why in report["allocators_skipped"].items():
        L.append(f"| {name} | skipped: {why} | | |")
    L += ["", "## The paper's findings on this data", "", "### 1. Test-time compute vs model scaling, per task", ""]
    L += [
        "| task | kind | small best arm within big arm's joules | accuracy gain at equal energy | "
        "energy saved at equal accuracy | verdict | paper expects | agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, e in report["per_task"].items():
        t = e.get("ttc_vs_scaling")
        if t is None:
            continue
        L.append(
            f"| {task} | {e['kind']} | {t['small_best_arm_within_big_energy']} | "
            f"{_fmt(t[T('accuracy_gain_at_big_energy')], True)} | "
            f"{_fmt(t[T('energy_saved_at_big_accuracy')], True)} | {t['verdict']} | "
            f"{t['paper_expects'] or 'n/a'} | {_fmt(t['agrees_with_paper'])} |"
        )
    f1 = report["findings"]["1_ttc_vs_model_scaling"]
    if report["models"]["big"] is None:
        L.append("| not checked: the grid has one model | | | | | | | |")
    L += [
        "",
        f"Agreeing with the paper: {', '.join(f1['tasks_agreeing_with_paper']) or 'none'}. "
        f"Disagreeing: {', '.join(f1['tasks_disagreeing_with_paper']) or 'none'}. "
        f"Inconclusive (tie within the intervals, or unknown kind): {', '.join(f1['tasks_inconclusive']) or 'none'}.",
        "",
        "### 2. Output length (n=1 arms, all tasks)",
        "",
        f"![Output length]({LENGTH_PNG})",
        "",
        f"| model | decoding | L | accuracy | mean energy (J, {label}) | mean output tokens | no answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["length_overall"]:
        L.append(
            f"| {r['model']} | {r['decoding']} | {r['max_new_tokens']} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r[T('mean_energy_j')])} | {_fmt(r['mean_output_tokens'])} | {_fmt(r['no_answer_rate'], True)} |"
        )
    L += ["", "### 3. Query-aware allocation, per task", ""]
    L += [
        "| task | held-out queries | energy saved at equal accuracy | accuracy gain at equal energy |",
        "|---|---|---|---|",
    ]
    for task, e in report["per_task"].items():
        s = e.get("allocation_saving")
        if s is None:
            L.append(f"| {task} | {e['n_test_queries']} | n/a | n/a |")
        else:
            L.append(
                f"| {task} | {e['n_test_queries']} | {_fmt(s[T('energy_saved_at_equal_accuracy')], True)} | "
                f"{_fmt(s[T('accuracy_gain_at_equal_energy')], True)} |"
            )
    ov = report.get("learned_overhead")
    L += ["", "## Notes", ""]
    if ov:
        L.append(
            f"- The learned policy (and difficulty_bins) are charged "
            f"{_fmt(ov.get(T('per_query_j')))} J per query for features, predictions and probe "
            f"({ov['source']}: {ov['meter']} meter)."
        )
    L += [
        "- The oracle is not charged any policy cost; it bounds every one-arm-per-query allocator from above.",
        "- Random arms are matched to each learned point's mean joules (policy cost included).",
        "- Findings 1 and 2 use every query with outcomes for all arms; the headline and finding 3 use the "
        "held-out queries only.",
        "",
    ]
    path.write_text("\n".join(L), encoding="utf-8")
    return path


def write_outputs(
    report: dict[str, Any], curves: Mapping[str, Curve], query_ids: Sequence[str], out_dir: Path
) -> dict[str, Path]:
    """Plots, assignments, JSON and Markdown into `out_dir`; returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src, meter = report["energy"]["source"], report["energy"]["meter"]
    paths = {
        "pareto_png": plot_pareto(curves, out_dir / PARETO_PNG, axis_label(src, meter)),
        "length_png": plot_length(report["length_overall"], report["per_task"], out_dir / LENGTH_PNG, src, meter),
        "assignments": write_assignments(curves, query_ids, out_dir / ASSIGNMENTS_NAME, src),
        "json": out_dir / JSON_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
    }
    report["files"] = {k: p.name for k, p in paths.items()}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    write_markdown(report, paths["markdown"])
    return paths
