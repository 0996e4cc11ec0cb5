"""`random`: query-blind random arms at matched mean joules (the maximum-entropy arm mix with that mean).

The baseline a learned policy must beat at equal energy. Never reads files or logs.
"""

from __future__ import annotations

import numpy as np

from eval.allocators.base import Curve, OperatingPoint
from eval.allocators.context import Allocator, EvalContext
from eval.allocators.learned import LearnedAllocator


def max_entropy_mix(arm_energy_j: np.ndarray, target_j: float) -> np.ndarray:
    """The arm distribution of highest entropy whose mean joules equal `target_j` (clipped to the arms' range).

    It is softmax(-β·e) for the β that meets the target (β = 0: uniform).
    """
    e = np.asarray(arm_energy_j, dtype=np.float64)
    scale = float(e.mean())
    x, t = e / scale, target_j / scale
    if t <= x.min():
        return (x == x.min()).astype(np.float64) / np.sum(x == x.min())
    if t >= x.max():
        return (x == x.max()).astype(np.float64) / np.sum(x == x.max())

    def mix(beta: float) -> np.ndarray:
        z = -beta * x
        w = np.exp(z - z.max())
        return w / w.sum()

    lo, hi = -1.0, 1.0
    while float(mix(lo) @ x) < t:
        lo *= 2
    while float(mix(hi) @ x) > t:
        hi *= 2
    for _ in range(200):  # mean joules fall as β rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(mix(mid) @ x) > t else (lo, mid)
    return mix((lo + hi) / 2)


class RandomAllocator(Allocator):
    name = "random"
    description = "query-blind random arms at each learned point's mean joules, averaged over seeds"

    #: matched to the learned points' joules, which include the policy's cost; its own points are not charged
    charged_overhead = False
    #: with a policy, it runs the learned allocator to match its joules
    runs_policy = True

    def __init__(self, n_seeds: int = 20, n_points: int = 12) -> None:
        self.n_seeds = n_seeds
        self.n_points = n_points

    def curve(self, ctx: EvalContext) -> Curve:
        arm_e = ctx.test.energy_j.mean(axis=0)
        if ctx.policy is not None:
            learned = ctx.curve(LearnedAllocator())
            targets = [(p.mean_energy_j, p.label) for p in learned.points]
        else:
            targets = [(float(t), "grid") for t in np.geomspace(arm_e.min(), arm_e.max(), self.n_points)]
        n, na = ctx.test.n_queries, len(ctx.arm_ids)
        rows = np.arange(n)
        points = []
        for k, (target, label) in enumerate(targets):
            pi = max_entropy_mix(arm_e, target)
            correct, energy = np.zeros(n, dtype=np.int64), np.zeros(n)
            first: np.ndarray | None = None
            for s in range(self.n_seeds):
                idx = np.random.default_rng([ctx.seed, k, s]).choice(na, size=n, p=pi)
                first = idx if first is None else first
                correct += ctx.test.correct[rows, idx]
                energy += ctx.test.energy_j[rows, idx]
            params = {"target_energy_j": float(target), "matched_to": label, "n_seeds": self.n_seeds}
            points.append(
                OperatingPoint(
                    label=f"random at {target:.3g} J",
                    params=params,
                    correct=correct,
                    energy_j=energy / self.n_seeds,
                    arm_ids=tuple(ctx.arm_ids[i] for i in first),
                    draws=self.n_seeds,
                )
            )
        notes = {"matched_to": "learned" if ctx.policy is not None else "grid"}
        return Curve(self.name, points, one_arm_per_query=False, notes=notes)
