"""Numbers from operating points: Pareto frontiers, equal-accuracy savings, bootstrap intervals, findings.

An operating point is (mean joules per query, accuracy) of one assignment of
arms to the held-out queries. Every function here works on per-query vectors
(or a points x queries matrix) so that the bootstrap can resample *queries*
and recompute everything from scratch: a resample is an integer count vector
over queries (how often each was drawn), and every mean becomes a weighted
mean.

Definitions (docs/evaluation.md documents them beside the keys of eval_report.json):
- frontier (one rule for every allocator): the upper-left convex hull of
  (energy, accuracy), cheapest first, accuracy strictly rising. A mixture of
  two operating points is achievable (randomise between their assignments per
  query), so the chord between two hull points is achievable too, and a
  point under a chord is never the best way to spend those joules. Adding a
  point therefore never makes a curve worse.
- accuracy is compared as exact integer counts of correct answers (hits over
  one common denominator), never as float means: a float mean's last bit
  depends on summation order. Ties are broken by a documented rule: more
  hits, then fewer joules, then the arm id.
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
from typing import Any

import numpy as np

from policy.errors import UsageError
from policy.hulls import upper_hull

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


def convex_frontier(energy_j: Sequence[float], hits: Sequence[Any]) -> np.ndarray:
    """Indices of the upper-left convex hull of (energy, hits), cheapest first, hits strictly rising.

    `hits` must compare exactly (integer counts of correct answers over one
    common denominator, or `fractions.Fraction`s): a float accuracy's last bit
    depends on summation order, and a frontier must not. Among points of equal
    energy the one with more hits is kept (then the lower index); a point on or
    under the chord of its neighbours is dropped, because randomising per query
    between the neighbours achieves that chord.
    """
    e = np.asarray(energy_j, dtype=np.float64)
    return np.asarray(upper_hull(e, list(hits), exact=True), dtype=np.int64)


def energy_at_accuracy(front_e: np.ndarray, front_a: np.ndarray, accuracy: float) -> float:
    """Joules the frontier needs to reach `accuracy` (see the module docstring); NaN if it never does."""
    if len(front_e) == 0 or not math.isfinite(accuracy) or accuracy > front_a[-1]:
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


def frontier_of(energy_j: np.ndarray, hits: np.ndarray, denominator: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(energy, accuracy) of the convex frontier's points, cheapest first; accuracy = hits / denominator."""
    idx = convex_frontier(energy_j, hits)
    return np.asarray(energy_j, dtype=np.float64)[idx], np.asarray(hits, dtype=np.float64)[idx] / denominator


def best_point(energy_j: Sequence[float], hits: Sequence[Any], ids: Sequence[str] | None = None) -> int:
    """The most accurate point by exact hits; ties go to the cheaper one, then to the smaller id (or index).

    The documented tie rule for every "best arm" in the report: more correct
    answers, then fewer joules, then the arm id in sort order.
    """
    e = np.asarray(energy_j, dtype=np.float64)
    h = list(hits)
    key = list(ids) if ids is not None else list(range(len(e)))
    return min(range(len(e)), key=lambda i: (-h[i], e[i], key[i]))


def exact_mean(values: np.ndarray) -> np.ndarray:
    """Row means of a (points x queries) matrix with correctly rounded sums (math.fsum).

    Independent of memory layout and column order, unlike a BLAS reduction;
    used where a mean decides which point is the reference.
    """
    v = np.asarray(values, dtype=np.float64)
    return np.asarray([math.fsum(row) / len(row) for row in v], dtype=np.float64)


def saved_fraction(energy_j: float, reference_j: float) -> float:
    """1 - energy / reference: the share of the reference's joules not spent (NaN if either is undefined)."""
    if not (math.isfinite(energy_j) and math.isfinite(reference_j)) or reference_j <= 0:
        return math.nan
    return 1.0 - energy_j / reference_j


# ---------------------------------------------------------------- bootstrap


def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) integer counts: how often each query was drawn in each resample (rows sum to n)."""
    if n < 1:
        raise UsageError("the bootstrap needs at least one query")
    rng = np.random.default_rng(seed)
    if not n_boot:
        return np.zeros((0, n), dtype=np.int64)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.int64)


def bootstrap(
    stats: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile intervals of every statistic `stats(counts)` returns, resampling n queries with replacement.

    `stats` takes a length-n integer count vector (how often each query was
    drawn; all ones for the point estimate) and returns named floats (NaN
    where undefined); it is recomputed in full for each of the `n_boot`
    resamples, seeded by `seed`. Integer counts keep accuracies exact
    (hits = correct @ counts), so ties stay ties in every resample.
    """
    if n_boot < 0:
        raise UsageError(f"n_boot must be >= 0 (0 = point estimates only), got {n_boot}")
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be in (0, 1), got {confidence}")
    point = dict(stats(np.ones(n, dtype=np.int64)))
    draws: dict[str, list[float]] = {k: [] for k in point}
    for c in resample_counts(n, n_boot, seed):
        for k, v in stats(c).items():
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


# ---------------------------------------------------------------- per-query outcomes of a curve


@dataclass(frozen=True, eq=False)
class CurveData:
    """Per-query outcomes of an allocator's operating points: (n_points, n_queries) each.

    `correct` holds integer counts in [0, draws] (draws > 1 when a point
    averages seeded draws, as random does), so accuracies compare exactly;
    both matrices are stored C-contiguous so a reduction never depends on the
    caller's memory layout.
    """

    correct: np.ndarray
    energy_j: np.ndarray
    draws: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "correct", np.ascontiguousarray(self.correct, dtype=np.int64))
        object.__setattr__(self, "energy_j", np.ascontiguousarray(self.energy_j, dtype=np.float64))

    def means(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(energy per query, hits, denominator) of every point when query i is drawn counts[i] times."""
        total = int(counts.sum())
        # Elementwise products summed along each C-contiguous row (pairwise summation): a row's sum depends on
        # its values only, never on its position or the matrix layout, unlike a BLAS matrix-vector product.
        return (self.energy_j * counts).sum(axis=1) / total, self.correct @ counts, total * self.draws

    def frontier(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(energy, accuracy) of the convex frontier under `counts`."""
        e, hits, denom = self.means(counts)
        return frontier_of(e, hits, denom)

    def subset(self, cols: np.ndarray) -> CurveData:
        return CurveData(self.correct[:, cols], self.energy_j[:, cols], self.draws)
