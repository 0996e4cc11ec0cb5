"""The evaluation's report: `build_report` turns the allocators' curves into one JSON-ready dict, and `EvalReport`.

The report holds the headline (`eval.headline.Headline`, with its intervals),
the same headline per fold and per task, every curve, and the paper's
findings (eval/findings.py). The headline objects carry their `energy_source`
beside their figures and keep their field names as keys; every other key that
holds joules, or a number derived from joules, carries the energy source in
its name (`mean_energy_estimated_j`), applied once by `tag_energy_keys` just
before writing. Estimated and measured joules must never be read as alike.
docs/evaluation.md documents every key.

This module never imports mlflow or matplotlib and never reads a store.
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

from eval.allocators import Curve, EvalContext, Outcomes, scaling_reference_arm
from eval.findings import (
    PAPER_EXPECTS,
    findings,
    frontier_comparison,
    length_rows,
    length_summary,
    task_kind,
    ttc_vs_scaling,
)
from eval.headline import PEER_RULES, REFERENCES, Headline, HeadlineInputs, compute_headline
from eval.metrics import CurveData, Interval

#: 2: headline keys are Headline field names beside its energy_source; folds; peer rules; convex frontiers.
REPORT_SCHEMA_VERSION = 2
#: Fewer queries of a task (or fold) than this and its allocation saving is not reported.
MIN_TASK_QUERIES = 5


@dataclass(frozen=True)
class EvalReport:
    """What `eval_stage` produced: the headline, where the files are, and the MLflow run.

    Energy figures are `energy_source` joules ("measured", "estimated", or
    "mixed" when allowed) read by `energy_meter`. `headline` is None when the
    learned or fixed curve was not run; a figure inside it is None when it is
    undefined on this data (e.g. the learned curve never reaches the best
    fixed arm's accuracy).
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
    n_folds: int
    n_test_queries: int
    energy_source: str
    energy_meter: str
    allocators: tuple[str, ...]
    headline: Headline | None

    def to_json(self) -> str:
        """The fields, with the headline's figures also at the top level (what `ttc eval` prints)."""
        d = {k: v for k, v in asdict(self).items() if k != "headline"}
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        if self.headline is not None:
            d["headline"] = self.headline.to_json()
            d.update({k: (None if iv is None else iv.to_dict()) for k, iv in self.headline.figures().items()})
        return json.dumps(_clean(d), indent=2, sort_keys=True)


# ---------------------------------------------------------------- key tagging and JSON cleaning


def _is_figure(v: Any) -> bool:
    """A number, an undefined number, or an interval: what an energy key may hold."""
    return v is None or isinstance(v, int | float | np.number | Interval) and not isinstance(v, bool)


def tagged(key: str, source: str) -> str:
    """The name `tag_energy_keys` gives a figure's key: `x_j` -> `x_<source>_j`; other energy keys get `_<source>`."""
    if key.endswith("_j"):
        return f"{key[:-2]}_{source}_j"
    return f"{key}_{source}" if "energy" in key else key


def tag_energy_keys(obj: Any, source: str) -> Any:
    """Put the energy source into every key that holds joules or a number made from joules.

    Applied once, to the whole report, just before writing. `Headline`
    objects are left as they are: they carry their energy source as a field.
    """
    if isinstance(obj, Mapping):
        keys = [tagged(str(k), source) if _is_figure(v) else str(k) for k, v in obj.items()]
        return {key: tag_energy_keys(v, source) for key, v in zip(keys, obj.values(), strict=True)}
    if isinstance(obj, list | tuple):
        return [tag_energy_keys(v, source) for v in obj]
    return obj


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, Intervals and Headlines -> dicts."""
    if isinstance(obj, Headline):
        return _clean(obj.to_json())
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


def _curve_dict(curve: Curve) -> dict[str, Any]:
    front = curve.frontier().tolist()
    pts = []
    for i, p in enumerate(curve.points):
        d = {
            "label": p.label,
            "params": p.params,
            "accuracy": p.accuracy,
            "n_correct": p.hits,
            "n_answers": len(p.correct) * p.draws,
            "mean_energy_j": p.mean_energy_j,
            "energy_per_correct_j": p.mean_energy_j / p.accuracy if p.accuracy > 0 else math.nan,
            "on_frontier": i in front,
        }
        if p.samples_used is not None:
            d["mean_samples_used"] = float(np.mean(p.samples_used))
        pts.append(d)
    return {
        "one_arm_per_query": curve.one_arm_per_query,
        "charged_overhead": curve.charged_overhead,
        "notes": curve.notes,
        "n_points": len(pts),
        "frontier": front,
        "points": pts,
    }


def headline_inputs(ctx: EvalContext, curves: Mapping[str, Curve], cols: np.ndarray) -> HeadlineInputs:
    """The curves the headline compares, restricted to the query columns `cols`."""
    fixed = curves["fixed"].data().subset(cols)
    scaling = None
    if "model_scaling" in curves:
        j = ctx.arm_ids.index(scaling_reference_arm(ctx.arm_ids, ctx.big_model))
        scaling = CurveData(fixed.correct[j : j + 1], fixed.energy_j[j : j + 1])
    return HeadlineInputs(
        learned=curves["learned"].data().subset(cols),
        fixed=fixed,
        fixed_ids=[p.label for p in curves["fixed"].points],
        oracle=curves["oracle"].data().subset(cols) if "oracle" in curves else None,
        scaling_ref=scaling,
        peers={n: curves[n].data().subset(cols) for n in PEER_RULES if n in curves},
        per_task=curves["per_task"].data().subset(cols) if "per_task" in curves else None,
        soft_oracle=curves["soft_oracle"].data().subset(cols) if "soft_oracle" in curves else None,
        contenders={n: c.data().subset(cols) for n, c in curves.items() if n not in REFERENCES},
    )


def _headline(ctx: EvalContext, curves: Mapping[str, Curve], cols: np.ndarray, source: str, n_boot: int, seed: int):
    scaling_arm = scaling_reference_arm(ctx.arm_ids, ctx.big_model) if "model_scaling" in curves else None
    return compute_headline(headline_inputs(ctx, curves, cols), source, n_boot, seed, scaling_arm)


def fold_spread(headlines: Sequence[Headline]) -> dict[str, dict[str, float]]:
    """Per figure: min, max and standard deviation of the fold point estimates (defined folds only)."""
    out: dict[str, dict[str, float]] = {}
    if not headlines:
        return out
    for name in headlines[0].figures():
        vals = [getattr(h, name).point for h in headlines if getattr(h, name) is not None]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            out[name] = {
                "min": min(vals),
                "max": max(vals),
                "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n_folds_defined": len(vals),
            }
    return out


def _per_fold(ctx, curves, folds: Sequence[tuple[str, Sequence[str]]], source: str, n_boot: int, seed: int) -> dict:
    pos = {q: i for i, q in enumerate(ctx.test.query_ids)}
    rows, heads = [], []
    for name, qids in folds:
        cols = np.asarray(sorted(pos[q] for q in qids if q in pos), dtype=np.int64)
        h = _headline(ctx, curves, cols, source, n_boot, seed) if len(cols) >= MIN_TASK_QUERIES else None
        rows.append({"fold": name, "n_queries": len(cols), "headline": h})
        heads += [h] if h is not None else []
    # the spread's keys are Headline field names; like a Headline it names its energy source once
    return {"folds": rows, "spread": {"energy_source": source, **fold_spread(heads)}}


def _task_entry(ctx, curves, full: Outcomes, task: str, meta: Mapping[str, Any], n_boot: int, seed: int) -> dict:
    rows = np.flatnonzero(full.tasks == task)
    test_cols = np.flatnonzero(ctx.test.tasks == task)
    kind = task_kind(task)
    small, big = meta["models"]["small"], meta["models"]["big"]
    entry: dict[str, Any] = {"kind": kind, "n_queries": len(rows), "n_test_queries": len(test_cols)}
    if small is not None and big is not None and small != big:
        ttc = ttc_vs_scaling(full, rows, small, big, n_boot, seed)
        expected = PAPER_EXPECTS.get(kind)
        ttc["paper_expects"] = expected
        ttc["agrees_with_paper"] = ttc["verdict"] == expected if expected and ttc["verdict"] != "tie" else None
        entry["ttc_vs_scaling"] = ttc
    entry["length"] = length_rows(full, rows)
    entry["length_summary"] = length_summary(entry["length"])
    ok = "learned" in curves and "fixed" in curves and len(test_cols) >= MIN_TASK_QUERIES
    entry["allocation_saving"] = (
        _headline(ctx, curves, test_cols, meta["energy"]["source"], n_boot, seed) if ok else None
    )
    return entry


def within_task_discrimination(ctx: EvalContext, curves: Mapping[str, Curve]) -> dict[str, Any]:
    """Within-task AUC (train.discrimination) of each cross-fitted success predictor on the held-out queries:
    the learned policy's (named by its feature set) and two_stage's; a per-task base rate would score 0.5.
    Each at the strictly cheapest arm and at the arm each fold's look-then-decide rule looks at first."""
    out: dict[str, Any] = {}
    if "learned" in curves and ctx.has_predictions("test"):
        feature_set = getattr(getattr(ctx.policy, "feature_set", None), "name", None)
        out["learned"] = {"feature_set": feature_set, **ctx.within_task_auc(ctx.predictions("test").p)}
    if "two_stage" in curves and "within_task_auc" in curves["two_stage"].notes:
        out["two_stage"] = curves["two_stage"].notes["within_task_auc"]
    return out


def build_report(
    ctx: EvalContext,
    curves: Mapping[str, Curve],
    skipped: Mapping[str, str],
    full: Outcomes,
    meta: Mapping[str, Any],
    n_boot: int,
    seed: int,
    folds: Sequence[tuple[str, Sequence[str]]] = (),
) -> dict[str, Any]:
    """The whole report as a dict of figures and `Headline`s (`to_document` makes it JSON-ready).

    `folds` names each cross-fitting fold and its held-out query ids; with
    more than one, the report adds the headline per fold and its spread.
    """
    source = meta["energy"]["source"]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **meta,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": 0.95, "resampled_unit": "query"},
        "allocators_run": list(curves),
        "allocators_skipped": dict(skipped),
        "curves": {name: _curve_dict(c) for name, c in curves.items()},
        "headline": None,
        "cross_fitting": None,
        "vs_fixed_frontier": None,
        "vs_model_scaling_frontier": None,
    }
    if "learned" in curves and "fixed" in curves:
        all_cols = np.arange(ctx.test.n_queries)
        report["headline"] = _headline(ctx, curves, all_cols, source, n_boot, seed)
        report["vs_fixed_frontier"] = frontier_comparison(curves["learned"], curves["fixed"])
        if "model_scaling" in curves:
            report["vs_model_scaling_frontier"] = frontier_comparison(curves["learned"], curves["model_scaling"])
        if len(folds) > 1:
            report["cross_fitting"] = _per_fold(ctx, curves, folds, source, n_boot, seed)
    report["within_task_auc"] = within_task_discrimination(ctx, curves)
    per_task = {task: _task_entry(ctx, curves, full, task, meta, n_boot, seed) for task in sorted(set(full.tasks))}
    report["per_task"] = per_task
    report["length_overall"] = length_rows(full, np.arange(full.n_queries))
    report["findings"] = findings(report, per_task)
    return report


def to_document(report: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document of a `build_report` dict: energy keys tagged with the source, NaN as null."""
    return _clean(tag_energy_keys(report, report["energy"]["source"]))
