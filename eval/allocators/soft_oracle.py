"""`soft_oracle`: per query, the arm with the best *expected* accuracy - λ × joules, in hindsight.

Beside the hindsight `oracle` (each query's cheapest arm whose one realised
vote was right), this oracle knows each query's expected accuracy per arm, the
arm view's `correct_soft` (the vote's correctness averaged over resampled
subsets of the collected samples; a greedy arm's is its one deterministic
answer), not the luck of one draw. It is what a perfect per-query predictor of
success could reach, and the ceiling issue 18 measures the headroom above the
per-task table against.

It chooses by expected accuracy and, like every allocator, is scored on the
held-out queries' realised outcomes (each point's `params` also carry its mean
expected accuracy, `expected_accuracy`, the figure issue 18 quotes: 0.69 at
5.5 J on reference v2): a hindsight-chosen curve scored in the same units as
the table and the learned policy, so the gain above the table is a like-for-like
difference. Ties at one price: more expected accuracy, fewer joules, then the
arm's column. Prices: the midpoints between the per-query hull
breakpoints (at most `max_points` of them, evenly spread by quantile), 0 and a
price above them all. Never reads files or logs.
"""

from __future__ import annotations

import numpy as np

from eval.allocators.base import Curve, _point, hull_slopes
from eval.allocators.context import Allocator, EvalContext
from train.task_table import grid_from_slopes


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
        b = np.unique(hull_slopes(soft, e))
        if len(b) > self.max_points:
            b = np.unique(np.quantile(b, np.linspace(0, 1, self.max_points)))
        rows = np.arange(ctx.test.n_queries)
        points, seen = [], set()
        for lam in grid_from_slopes(b):
            idx = soft_choice(soft, e, float(lam))
            key = idx.tobytes()
            if key not in seen:
                seen.add(key)
                params = {"lam": float(lam), "expected_accuracy": float(soft[rows, idx].mean())}
                points.append(_point(ctx, f"soft_oracle lam={lam:.3g}", params, idx))
        top = max(p.params["expected_accuracy"] for p in points)
        return Curve(self.name, points, notes={"chosen_by": "correct_soft", "top_expected_accuracy": top})
