"""`soft_oracle`: per query, the arm with the best *expected* accuracy - λ × joules, in hindsight.

Beside the hindsight `oracle` (each query's cheapest arm whose one realised
vote was right), this oracle knows each query's expected accuracy per arm, the
arm view's `correct_soft` (the vote's correctness averaged over resampled
subsets of the collected samples; a greedy arm's is its one deterministic
answer), not the luck of one draw. It is what a perfect per-query predictor of
success could reach, and the ceiling issue 18 measures the headroom above the
per-task table against.

Its points are scored on the same expected accuracies it chose by (as the issue
defines it): a point's `correct` holds each query's `correct_soft` as an exact
integer count out of `draws` (64 on the reference: every soft label there is a
multiple of 1/64; in general the least common denominator of the labels, up to
`MAX_DRAWS`, else rounded to 1/MAX_DRAWS and said so in the notes). Joules are
the arms' realised joules. Ties at one price: more expected accuracy, fewer
joules, then the arm's column. Prices: the midpoints between the per-query hull
breakpoints (at most `max_points` of them, evenly spread by quantile), 0 and a
price above them all. Never reads files or logs.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from eval.allocators.base import Allocator, Curve, OperatingPoint, hull_slopes
from eval.allocators.context import EvalContext
from train.task_table import grid_from_slopes

#: The largest denominator the soft labels are counted in exactly.
MAX_DRAWS = 1 << 16


def soft_denominator(soft: np.ndarray) -> tuple[int, bool]:
    """(D, exact): the least D <= MAX_DRAWS with every label x D an integer, or (MAX_DRAWS, False)."""
    d = 1
    for v in np.unique(np.asarray(soft, dtype=np.float64)):
        f = Fraction(float(v)).limit_denominator(MAX_DRAWS)
        if abs(float(f) - v) > 1e-12:
            return MAX_DRAWS, False
        d = d * f.denominator // math.gcd(d, f.denominator)
        if d > MAX_DRAWS:
            return MAX_DRAWS, False
    return d, True


def soft_choice(soft: np.ndarray, energy_j: np.ndarray, lam: float) -> np.ndarray:
    """Per query, the column with the best soft - lam x joules; ties: more soft, fewer joules, first column."""
    score = soft - lam * energy_j
    cols = np.broadcast_to(np.arange(soft.shape[1]), soft.shape)
    return np.lexsort((cols, energy_j, -soft, -score), axis=1)[:, 0]


class SoftOracleAllocator(Allocator):
    name = "soft_oracle"
    description = "hindsight on expected accuracy: per query the arm of best correct_soft - lam x joules; swept"

    def __init__(self, max_points: int = 400) -> None:
        self.max_points = max_points

    def unavailable(self, ctx: EvalContext) -> str | None:
        if ctx.test.correct_soft is None:
            return "needs the arm view's correct_soft for the held-out queries"
        return super().unavailable(ctx)

    def curve(self, ctx: EvalContext) -> Curve:
        soft, e = ctx.test.correct_soft, ctx.test.energy_j
        draws, exact = soft_denominator(soft)
        counts = np.rint(soft * draws).astype(np.int64)
        b = np.unique(hull_slopes(soft, e))
        if len(b) > self.max_points:
            b = np.unique(np.quantile(b, np.linspace(0, 1, self.max_points)))
        rows = np.arange(ctx.test.n_queries)
        points, seen = [], set()
        for lam in grid_from_slopes(b):
            idx = soft_choice(soft, e, float(lam))
            key = idx.tobytes()
            if key in seen:
                continue
            seen.add(key)
            points.append(
                OperatingPoint(
                    label=f"soft_oracle lam={lam:.3g}",
                    params={"lam": float(lam)},
                    correct=counts[rows, idx],
                    energy_j=e[rows, idx],
                    arm_ids=tuple(ctx.arm_ids[i] for i in idx),
                    draws=draws,
                )
            )
        notes = {"scored_on": "correct_soft (expected accuracy)", "draws": draws, "exact_counts": exact}
        return Curve(self.name, points, notes=notes)
