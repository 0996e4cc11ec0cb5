"""Allocators that need no policy and no samples, only the arm outcome matrices: `fixed` (one arm for every
query), `model_scaling` (the bigger model's arms) and `oracle` (each query's cheapest correct arm in
hindsight, the upper bound of every one-arm-per-query allocator). Never reads files or logs.
"""

from __future__ import annotations

import numpy as np

from eval.allocators.base import Curve, _point, scaling_reference_arm
from eval.allocators.context import Allocator, EvalContext
from policy.arms import Arm


class FixedAllocator(Allocator):
    name = "fixed"
    description = "one grid arm for every query; one point per arm"

    def curve(self, ctx: EvalContext) -> Curve:
        n = ctx.test.n_queries
        points = [_point(ctx, a, {"arm_id": a}, np.full(n, j)) for j, a in enumerate(ctx.arm_ids)]
        return Curve(self.name, points)


class ModelScalingAllocator(Allocator):
    name = "model_scaling"
    description = "the bigger model's arms for every query (reference: its n=1 arm at the longest cap)"
    needs_two_models = True

    def curve(self, ctx: EvalContext) -> Curve:
        ref = scaling_reference_arm(ctx.arm_ids, ctx.big_model)
        n = ctx.test.n_queries
        points = [
            _point(ctx, a, {"arm_id": a, "reference": a == ref}, np.full(n, j))
            for j, a in enumerate(ctx.arm_ids)
            if Arm.parse(a).model == ctx.big_model
        ]
        return Curve(self.name, points, notes={"big_model": ctx.big_model, "reference_arm": ref})


class OracleAllocator(Allocator):
    name = "oracle"
    description = "hindsight: each query's cheapest correct arm (cheapest arm if none): the upper bound"

    def __init__(self, max_points: int = 400) -> None:
        self.max_points = max_points

    def curve(self, ctx: EvalContext) -> Curve:
        c, e = ctx.test.correct, ctx.test.energy_j
        n = ctx.test.n_queries
        rows = np.arange(n)
        # cheapest arm, a correct one among equally cheap
        base = np.asarray([np.lexsort((-c[q], e[q]))[0] for q in rows])
        top = base.copy()
        slopes = np.full(n, -np.inf)
        for q in rows:
            if c[q, base[q]] < 1 and c[q].max() > 0:
                ok = np.flatnonzero(c[q] > 0)
                top[q] = ok[np.argmin(e[q, ok])]
                slopes[q] = 1.0 / max(e[q, top[q]] - e[q, base[q]], 1e-300)
        movers = np.flatnonzero(np.isfinite(slopes))
        order = movers[np.argsort(-slopes[movers], kind="stable")]
        # Points after the first m moves, best accuracy per joule first: the hindsight hull.
        cuts = np.unique(np.linspace(0, len(order), min(self.max_points, len(order) + 1)).round().astype(int))
        points = []
        for m in cuts:
            idx = base.copy()
            idx[order[:m]] = top[order[:m]]
            lam = float(slopes[order[m]]) if m < len(order) else 0.0
            label = "oracle" if m == len(order) else f"oracle lam={lam:.3g}"
            points.append(_point(ctx, label, {"lam": lam, "moves": int(m), "top": bool(m == len(order))}, idx))
        return Curve(self.name, points)
