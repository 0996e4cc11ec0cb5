"""Numbers from operating points: Pareto frontiers, equal-accuracy savings, bootstrap intervals, findings.

An operating point is (mean joules per query, accuracy) of one assignment of
arms to the held-out queries. Every function here works on per-query vectors
(or a points x queries matrix) so that the bootstrap can resample *queries*
and recompute everything from scratch: a resample is a weight vector over
queries (how often each was drawn), and every mean becomes a weighted mean.

Definitions (the README documents them beside the keys of eval_report.json):
- frontier: points no other point beats on both axes, cheapest first, with
  strictly rising accuracy; between two frontier points the curve is the
  chord (a seeded coin between the two assignments realises it).
- energy at accuracy a: the frontier's joules where it first reaches a; the
  cheapest point's joules when even that is at least as accurate; undefined
  (NaN) above the frontier's best accuracy. No extrapolation either way.
- accuracy at energy j: the frontier's accuracy at j; undefined below its
  cheapest point; its best accuracy beyond its most expensive point.

numpy only; never reads a store, a bundle or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from policy.errors import UsageError

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval over queries.

    `n_valid` counts the resamples where the statistic was defined (an
    equal-accuracy saving is undefined when a resampled curve never reaches
    the accuracy); the interval is taken over those. `point` is the statistic
    on the queries as drawn, not the bootstrap mean.
    """

    point: float
    low: float
    high: float
    n_boot: int
    n_valid: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @property
    def width(self) -> float:
        return self.high - self.low


# ---------------------------------------------------------------- frontier and interpolation


def pareto_frontier(energy_j: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated points, cheapest first, accuracy strictly rising.

    Among points of equal energy the most accurate is kept (then the lowest index).
    """
    e = np.asarray(energy_j, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    order = np.lexsort((np.arange(len(e)), -a, e))
    keep: list[int] = []
    best = -np.inf
    for i in order:
        if a[i] > best:
            keep.append(int(i))
            best = a[i]
    return np.asarray(keep, dtype=np.int64)


def energy_at_accuracy(front_e: np.ndarray, front_a: np.ndarray, accuracy: float) -> float:
    """Joules the frontier needs to reach `accuracy` (see the module docstring); NaN if it never does."""
    if len(front_e) == 0 or not math.isfinite(accuracy) or accuracy > front_a[-1] + 1e-12:
        return math.nan
    if accuracy <= front_a[0]:
        return float(front_e[0])
    return float(np.interp(accuracy, front_a, front_e))


def accuracy_at_energy(front_e: np.ndarray, front_a: np.ndarray, energy_j: float) -> float:
    """Accuracy the frontier reaches with `energy_j` joules per query; NaN below its cheapest point."""
    if len(front_e) == 0 or not math.isfinite(energy_j) or energy_j < front_e[0] * (1 - 1e-12):
        return math.nan
    if energy_j >= front_e[-1]:
        return float(front_a[-1])
    return float(np.interp(energy_j, front_e, front_a))


def frontier_of(energy_j: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(energy, accuracy) of the frontier points, cheapest first."""
    idx = pareto_frontier(energy_j, accuracy)
    return np.asarray(energy_j)[idx], np.asarray(accuracy)[idx]


def best_point(energy_j: np.ndarray, accuracy: np.ndarray) -> int:
    """The most accurate point; ties go to the cheaper one."""
    return int(np.lexsort((energy_j, -accuracy))[0])


def saved_fraction(energy_j: float, reference_j: float) -> float:
    """1 - energy / reference: the share of the reference's joules not spent (NaN if either is undefined)."""
    if not (math.isfinite(energy_j) and math.isfinite(reference_j)) or reference_j <= 0:
        return math.nan
    return 1.0 - energy_j / reference_j


# ---------------------------------------------------------------- bootstrap


def resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) weights: how often each query was drawn in each resample, divided by n (rows sum to 1)."""
    if n < 1:
        raise UsageError("the bootstrap needs at least one query")
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]) if n_boot else None
    if counts is None:
        return np.zeros((0, n))
    return counts / float(n)


def bootstrap(
    stats: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile intervals of every statistic `stats(weights)` returns, resampling n queries with replacement.

    `stats` takes a length-n weight vector summing to 1 (uniform for the point
    estimate) and returns named floats (NaN where undefined); it is recomputed
    in full for each of the `n_boot` resamples, seeded by `seed`.
    """
    if n_boot < 0:
        raise UsageError(f"n_boot must be >= 0 (0 = point estimates only), got {n_boot}")
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be in (0, 1), got {confidence}")
    point = dict(stats(np.full(n, 1.0 / n)))
    draws: dict[str, list[float]] = {k: [] for k in point}
    for w in resample_weights(n, n_boot, seed):
        for k, v in stats(w).items():
            draws[k].append(float(v))
    out = {}
    tail = (1 - confidence) / 2 * 100
    for k, p in point.items():
        vals = np.asarray(draws[k], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if len(vals) and math.isfinite(p):
            low, high = np.percentile(vals, [tail, 100 - tail])
        else:
            low = high = math.nan
        out[k] = Interval(float(p), float(low), float(high), n_boot, int(len(vals)), confidence)
    return out


# ---------------------------------------------------------------- headline numbers


@dataclass(frozen=True, eq=False)
class CurveData:
    """Per-query outcomes of an allocator's operating points: (n_points, n_queries) each."""

    correct: np.ndarray
    energy_j: np.ndarray

    def means(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(energy per query, accuracy) of every point under query weights `w` (summing to 1)."""
        return self.energy_j @ w, self.correct @ w

    def subset(self, cols: np.ndarray) -> CurveData:
        return CurveData(self.correct[:, cols], self.energy_j[:, cols])


def headline_stats(
    learned: CurveData,
    fixed: CurveData,
    oracle: CurveData | None,
    scaling_ref: CurveData | None,
    best_fixed: int,
    w: np.ndarray,
) -> dict[str, float]:
    """The headline numbers under query weights `w`.

    `fixed` holds one point per grid arm and `best_fixed` indexes the reference
    arm among them (chosen once, on the queries as drawn: near-tied arms of very
    different cost would otherwise swap places between resamples and the
    interval would measure the swap, not the saving). `scaling_ref` holds one
    point, the bigger model's reference arm. The learned and oracle frontiers
    are recomputed on every resample.
    """
    le, la = frontier_of(*learned.means(w))
    fe, fa = fixed.means(w)
    best_e, best_a = float(fe[best_fixed]), float(fa[best_fixed])
    learned_e = energy_at_accuracy(le, la, best_a)
    saved = saved_fraction(learned_e, best_e)
    out = {
        "energy_saved_at_equal_accuracy": saved,
        "accuracy_gain_at_equal_energy": accuracy_at_energy(le, la, best_e) - best_a,
        "learned_energy_at_best_fixed_accuracy_j": learned_e,
        "best_fixed_energy_j": best_e,
        "best_fixed_accuracy": best_a,
        "learned_joules_per_correct_at_best_fixed_accuracy": learned_e / best_a if best_a > 0 else math.nan,
        "best_fixed_joules_per_correct": best_e / best_a if best_a > 0 else math.nan,
    }
    if oracle is not None:
        oe, oa = frontier_of(*oracle.means(w))
        oracle_saved = saved_fraction(energy_at_accuracy(oe, oa, best_a), best_e)
        out["oracle_energy_saved_at_equal_accuracy"] = oracle_saved
        out["oracle_share_of_energy_saving"] = saved / oracle_saved if oracle_saved > 1e-12 else math.nan
        out["oracle_accuracy"] = float(oa[-1])
    if scaling_ref is not None:
        se, sa = scaling_ref.means(w)
        out["model_scaling_energy_j"] = float(se[0])
        out["model_scaling_accuracy"] = float(sa[0])
        out["energy_saved_vs_model_scaling"] = saved_fraction(energy_at_accuracy(le, la, float(sa[0])), float(se[0]))
    return out


def frontier_comparison(
    learned_e: np.ndarray, learned_a: np.ndarray, ref_e: np.ndarray, ref_a: np.ndarray, ref_ids: Sequence[str]
) -> list[dict]:
    """For each reference point on its own frontier: the learned curve at its accuracy and at its energy."""
    le, la = frontier_of(learned_e, learned_a)
    rows = []
    for i in pareto_frontier(ref_e, ref_a):
        e_at = energy_at_accuracy(le, la, float(ref_a[i]))
        rows.append(
            {
                "arm_id": str(ref_ids[i]),
                "accuracy": float(ref_a[i]),
                "energy_j": float(ref_e[i]),
                "learned_energy_at_accuracy_j": e_at,
                "energy_saved": saved_fraction(e_at, float(ref_e[i])),
                "learned_accuracy_at_energy": accuracy_at_energy(le, la, float(ref_e[i])),
            }
        )
    return rows


# ---------------------------------------------------------------- finding 1: test-time compute vs model scaling


def small_arm_choices(
    small_energy_j: np.ndarray, small_accuracy: np.ndarray, big_energy_j: float, big_accuracy: float
) -> tuple[int | None, int | None]:
    """(best small arm costing no more than the big arm, cheapest small arm at least as accurate); None if none."""
    se, sa = np.asarray(small_energy_j), np.asarray(small_accuracy)
    within = np.flatnonzero(se <= big_energy_j * (1 + 1e-12))
    reach = np.flatnonzero(sa >= big_accuracy - 1e-12)
    j_within = int(within[best_point(se[within], sa[within])]) if len(within) else None
    j_reach = int(reach[int(np.argmin(se[reach]))]) if len(reach) else None
    return j_within, j_reach


def ttc_vs_scaling_stats(
    small_correct: np.ndarray,
    small_energy_j: np.ndarray,
    big_correct: np.ndarray,
    big_energy_j: np.ndarray,
    w: np.ndarray,
) -> dict[str, float]:
    """The small model's arms against the bigger model's reference arm, under query weights `w`.

    `small_*` are (n_queries, n_small_arms); `big_*` are (n_queries,). Uses
    the arms themselves (a step frontier), not interpolation: the best small
    arm costing no more than the big arm, and the cheapest small arm at least
    as accurate (both re-chosen on every resample).
    """
    se, sa = small_energy_j.T @ w, small_correct.T @ w
    be, ba = float(big_energy_j @ w), float(big_correct @ w)
    j_within, j_reach = small_arm_choices(se, sa, be, ba)
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
