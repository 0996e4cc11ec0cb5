"""The paper's findings on this data: test-time compute vs model scaling per task, output length, and the report's
per-task summary; plus the learned curve against a reference curve's frontier points.

Finding 1 compares *arms* (the small model's best arm within the big arm's
joules, the cheapest small arm as accurate), with exact hit counts and a
bootstrap over the task's queries; it is a comparison of arms, not of
allocators, so it needs no frontier. numpy only; never logs or writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from eval.allocators import Curve, Outcomes, scaling_reference_arm
from eval.metrics import (
    Interval,
    accuracy_at_energy,
    best_point,
    bootstrap,
    energy_at_accuracy,
    exact_mean,
    saved_fraction,
)
from policy.arms import Arm

#: What the paper (Jin, Wei & Brooks 2025) reports per task kind: who wins in accuracy per joule.
PAPER_EXPECTS = {"reasoning": "test_time_compute", "factual": "model_scaling"}


def task_kind(task: str) -> str:
    """ "reasoning", "factual" or "unknown" (a task name the registry does not know)."""
    from collect.tasks import make_task
    from policy.errors import TTCError

    try:
        return str(make_task(task).kind)
    except TTCError:
        return "unknown"


def small_arm_choices(
    small_energy_j: np.ndarray, small_hits: np.ndarray, big_energy_j: float, big_hits: int
) -> tuple[int | None, int | None]:
    """(best small arm costing no more than the big arm, cheapest small arm at least as accurate); None if none.

    Accuracy is compared as exact hit counts on the same queries.
    """
    se, sa = np.asarray(small_energy_j), np.asarray(small_hits)
    within = np.flatnonzero(se <= big_energy_j * (1 + 1e-12))
    reach = np.flatnonzero(sa >= big_hits)
    j_within = int(within[best_point(se[within], sa[within])]) if len(within) else None
    j_reach = int(reach[int(np.argmin(se[reach]))]) if len(reach) else None
    return j_within, j_reach


def ttc_vs_scaling_stats(
    small_correct: np.ndarray,
    small_energy_j: np.ndarray,
    big_correct: np.ndarray,
    big_energy_j: np.ndarray,
    counts: np.ndarray,
) -> dict[str, float]:
    """The small model's arms against the bigger model's reference arm, query i drawn counts[i] times.

    `small_*` are (n_queries, n_small_arms); `big_*` are (n_queries,). Uses
    the arms themselves (a step frontier), not interpolation: the best small
    arm costing no more than the big arm, and the cheapest small arm at least
    as accurate (both re-chosen on every resample).
    """
    n = int(counts.sum())
    se = (np.ascontiguousarray(small_energy_j.T) * counts).sum(axis=1) / n  # layout-free sums (CurveData.means)
    shits = small_correct.T.astype(np.int64) @ counts
    be, bhits = float((big_energy_j * counts).sum() / n), int(big_correct.astype(np.int64) @ counts)
    sa, ba = shits / n, bhits / n
    j_within, j_reach = small_arm_choices(se, shits, be, bhits)
    out = {
        "big_accuracy": ba,
        "big_energy_j": be,
        "big_accuracy_per_j": ba / be if be > 0 else math.nan,
        "small_best_accuracy_within_big_energy": math.nan,
        "small_energy_of_that_arm_j": math.nan,
        "accuracy_gain_at_big_energy": math.nan,
        "small_accuracy_per_j_within_big_energy": math.nan,
        "small_energy_at_big_accuracy_j": math.nan,
        "energy_saved_at_big_accuracy": math.nan,
    }
    if j_within is not None:
        out["small_best_accuracy_within_big_energy"] = float(sa[j_within])
        out["small_energy_of_that_arm_j"] = float(se[j_within])
        out["accuracy_gain_at_big_energy"] = float(sa[j_within]) - ba
        if se[j_within] > 0:
            out["small_accuracy_per_j_within_big_energy"] = float(sa[j_within] / se[j_within])
    if j_reach is not None:
        out["small_energy_at_big_accuracy_j"] = float(se[j_reach])
        out["energy_saved_at_big_accuracy"] = saved_fraction(float(se[j_reach]), be)
    return out


def verdict(gain: Interval | None, saved: Interval | None) -> str:
    """ "test_time_compute", "model_scaling" or "tie" from the two comparisons' intervals.

    Test-time compute wins when the small model is more accurate at the big
    model's joules (interval above 0) or reaches its accuracy on fewer joules
    (interval above 0); model scaling wins when the small model is less accurate
    at equal joules (interval below 0) and cannot reach the accuracy cheaper.
    Anything else is a tie within the intervals.
    """

    def above(iv: Interval | None) -> bool:
        return iv is not None and math.isfinite(iv.low) and iv.low > 0

    def below(iv: Interval | None) -> bool:
        return iv is not None and math.isfinite(iv.high) and iv.high < 0

    if above(gain) or above(saved):
        return "test_time_compute"
    unreachable = saved is None or not math.isfinite(saved.point)
    if below(gain) and (unreachable or below(saved) or saved.point <= 0):
        return "model_scaling"
    return "tie"


def ttc_vs_scaling(full: Outcomes, rows: np.ndarray, small: str, big: str, n_boot: int, seed: int) -> dict | None:
    arms = [Arm.parse(a) for a in full.arm_ids]
    s_cols = [j for j, a in enumerate(arms) if a.model == small]
    ref = scaling_reference_arm(full.arm_ids, big)
    b = full.arm_ids.index(ref)
    sc, se = full.correct[np.ix_(rows, s_cols)], full.energy_j[np.ix_(rows, s_cols)]
    bc, be = full.correct[rows, b], full.energy_j[rows, b]
    ivs = bootstrap(lambda c: ttc_vs_scaling_stats(sc, se, bc, be, c), len(rows), n_boot, seed)
    j_within, j_reach = small_arm_choices(
        exact_mean(se.T), sc.sum(axis=0), float(exact_mean(be[None])[0]), int(bc.sum())
    )
    result = verdict(ivs["accuracy_gain_at_big_energy"], ivs["energy_saved_at_big_accuracy"])
    return {
        "small_model": small,
        "big_model": big,
        "big_arm": ref,
        "small_best_arm_within_big_joules": full.arm_ids[s_cols[j_within]] if j_within is not None else None,
        "small_cheapest_arm_at_big_accuracy": full.arm_ids[s_cols[j_reach]] if j_reach is not None else None,
        **ivs,
        "verdict": result,
    }


def length_rows(full: Outcomes, rows: np.ndarray) -> list[dict]:
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


def length_summary(rows: list[dict]) -> dict[str, dict]:
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


def frontier_comparison(learned: Curve, ref: Curve) -> list[dict]:
    """For each reference point on its own convex frontier: the learned curve at its accuracy and at its energy."""
    le, la = learned.frontier_points()
    rows = []
    for i in ref.frontier():
        p = ref.points[i]
        e_at = energy_at_accuracy(le, la, p.accuracy)
        rows.append(
            {
                "arm_id": p.label,
                "accuracy": p.accuracy,
                "n_correct": p.hits,
                "energy_j": p.mean_energy_j,
                "learned_energy_at_accuracy_j": e_at,
                "energy_saved": saved_fraction(e_at, p.mean_energy_j),
                "learned_accuracy_at_energy": accuracy_at_energy(le, la, p.mean_energy_j),
            }
        )
    return rows


def findings(report: Mapping[str, Any], per_task: Mapping[str, Any]) -> dict[str, Any]:
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
    h = report.get("headline")
    saving = h.energy_saved_at_equal_accuracy if h is not None else None
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
