"""The price frontier of a policy on its training queries, and the default price chosen on it (frontier.json).

A price λ (accuracy per joule) means nothing to a user by itself: the hull
slopes of one policy span four orders of magnitude. So export sweeps λ over
the training queries and records, per λ, what the policy's own rule would
have done there: the realised accuracy (the chosen arm's graded outcome) and
the mean *predicted* joules (what the proxy reports and the budget controller
steers), beside the same two figures for every fixed arm. The default price
is the largest λ whose accuracy is within `max_accuracy_loss` (default one
point) of the reference accuracy: the most accurate fixed arm's, or the
policy's own best on the sweep when that is higher (a policy that beats every
arm should not be priced down to the best arm's accuracy); when no λ gets
that close, the λ of the best accuracy (its `criterion_met` is then false).

`ttc serve --max-accuracy-loss X` reads the same table (`lam_for_loss`), the
online budget controller starts at `lam_for_budget(target)`, and a target
below `cheapest_mean_predicted_j` (every query on its cheapest predicted arm)
is refused at startup. The figures are on *training* queries, predicted by
refits that did not see them (train/price.py), and still noisy: eval and
benchmarks/serve_accuracy.py report held-out ones.

numpy and the standard library only; frontier.json is untrusted and checked on
load (`BundleError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policy import jsonsafe
from policy.allocate import DEFAULT_P_FLOOR
from policy.errors import BundleError, UsageError
from policy.hulls import hulls, price_positions

FRONTIER_FILE = "frontier.json"
DEFAULT_MAX_ACCURACY_LOSS = 0.01


@dataclass(frozen=True)
class FrontierPoint:
    """The policy at one price on the training queries."""

    lam: float
    accuracy: float  # realised: mean graded outcome of the chosen arms
    mean_predicted_j: float  # the policy's predicted joules of the chosen arms, mean per query
    mean_j: float  # the training store's joules of the chosen arms (estimated or measured: see energy_source)


@dataclass(frozen=True)
class ArmPoint:
    arm_id: str
    accuracy: float
    mean_predicted_j: float
    mean_j: float


@dataclass(frozen=True)
class Frontier:
    """frontier.json: the sweep, every fixed arm, and the default price with the criterion that chose it."""

    queries: int
    max_accuracy_loss: float
    default_lam: float
    criterion_met: bool
    best_arm: ArmPoint
    points: list[FrontierPoint]
    arms: list[ArmPoint]
    cheapest_mean_predicted_j: float
    energy_source: str
    queries_from: str = "training"
    #: what the loss is measured against: the best arm's accuracy, or the policy's best when higher
    reference_accuracy: float | None = None

    @property
    def reference(self) -> float:
        return self.best_arm.accuracy if self.reference_accuracy is None else self.reference_accuracy

    @property
    def default_point(self) -> FrontierPoint:
        return min(self.points, key=lambda q: abs(q.lam - self.default_lam))

    def arm(self, arm_id: str) -> ArmPoint:
        for a in self.arms:
            if a.arm_id == arm_id:
                return a
        raise UsageError(f"arm {arm_id!r} is not on the frontier; its arms: {', '.join(a.arm_id for a in self.arms)}")

    def lam_for_loss(self, max_accuracy_loss: float) -> float:
        """The largest λ whose training accuracy is within `max_accuracy_loss` of the most accurate arm."""
        if not (math.isfinite(max_accuracy_loss) and 0 <= max_accuracy_loss <= 1):
            raise UsageError(
                f"--max-accuracy-loss must be in [0, 1] (a share: 0.01 = one point), got {max_accuracy_loss}"
            )
        lam, _ = _pick(self.points, self.reference - max_accuracy_loss)
        return lam

    def lam_for_budget(self, target_j: float) -> float:
        """The smallest λ whose mean predicted joules on the training queries stay within `target_j`."""
        fits = [q for q in self.points if q.mean_predicted_j <= target_j]
        if not fits:
            return max(q.lam for q in self.points)
        return min(fits, key=lambda q: (-q.accuracy, q.lam)).lam

    def check_budget(self, target_j: float) -> None:
        """Refuse a budget the cheapest arms cannot meet (on the training queries' predictions)."""
        if target_j < self.cheapest_mean_predicted_j:
            raise UsageError(
                f"--budget-j {target_j:g} J is below what the cheapest arms cost: every query on its cheapest "
                f"predicted arm averages {self.cheapest_mean_predicted_j:.4g} J on the training queries; "
                f"give at least that (the most accurate arm {self.best_arm.arm_id} averages "
                f"{self.best_arm.mean_predicted_j:.4g} J)"
            )

    def describe(self) -> str:
        d, b = self.default_point, self.best_arm
        ref = "" if self.reference <= b.accuracy else f"; the policy's best {self.reference:.3f}"
        met = "" if self.criterion_met else ", not met: no price gets that close, so the price of the best accuracy"
        return (
            f"default price lam={self.default_lam:.4g} acc/J: accuracy {d.accuracy:.3f} at {d.mean_predicted_j:.3g} "
            f"predicted J/query vs the most accurate arm {b.arm_id} {b.accuracy:.3f} at {b.mean_predicted_j:.3g} J"
            f"{ref} (max loss {self.max_accuracy_loss:g}{met}; {self.queries} {self.queries_from} queries, "
            f"{self.energy_source} joules)"
        )

    def to_json(self) -> bytes:
        d = asdict(self)
        return (json.dumps(d, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, arm_ids: Sequence[str]) -> Frontier:
        try:
            d = jsonsafe.loads(raw, FRONTIER_FILE, BundleError, "; re-export the bundle")
            points = [FrontierPoint(**_nums(q, ("lam", "accuracy", "mean_predicted_j", "mean_j"))) for q in d["points"]]
            arms = [
                ArmPoint(str(a["arm_id"]), **_nums(a, ("accuracy", "mean_predicted_j", "mean_j"))) for a in d["arms"]
            ]
            best = d["best_arm"]
            best = ArmPoint(str(best["arm_id"]), **_nums(best, ("accuracy", "mean_predicted_j", "mean_j")))
            f = cls(
                int(d["queries"]), float(d["max_accuracy_loss"]), float(d["default_lam"]), bool(d["criterion_met"]),
                best, points, arms, float(d["cheapest_mean_predicted_j"]), str(d["energy_source"]),
                str(d.get("queries_from", "training")),
                None if d.get("reference_accuracy") is None else _nums(d, ("reference_accuracy",))[
                    "reference_accuracy"],
            )  # fmt: skip
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise BundleError(f"{FRONTIER_FILE} is malformed ({exc}); re-export the bundle") from exc
        if not points or any(q.lam < 0 for q in points) or f.default_lam < 0:
            raise BundleError(f"{FRONTIER_FILE} holds no price points or a negative price; re-export the bundle")
        stray = sorted({a.arm_id for a in arms} - set(arm_ids))
        if stray or best.arm_id not in arm_ids:
            raise BundleError(f"{FRONTIER_FILE} names arms {stray or [best.arm_id]} the bundle does not have")
        return f


def _nums(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for k in keys:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
        out[k] = float(v)
    return out


def _pick(points: Sequence[FrontierPoint], floor: float) -> tuple[float, bool]:
    """The largest λ with accuracy >= floor, else the λ of the best accuracy (largest λ among ties)."""
    ok = [q for q in points if q.accuracy >= floor - 1e-12]
    if ok:
        return max(q.lam for q in ok), True
    top = max(q.accuracy for q in points)
    return max(q.lam for q in points if q.accuracy == top), False


def price_grid(p: np.ndarray, e: np.ndarray, size: int = 48) -> np.ndarray:
    """0 plus quantiles of every query's hull slopes, and one price above them all (cheapest arms)."""
    s = hulls(p, e).slopes
    s = s[np.isfinite(s) & (s > 0)]
    if not s.size:
        return np.asarray([0.0])
    qs = np.quantile(s, np.linspace(0.0, 1.0, size))
    return np.unique(np.concatenate([[0.0], qs * (1 - 1e-9), [s.max() * 2]]))


def sweep(
    p: np.ndarray,
    e_pred: np.ndarray,
    correct: np.ndarray,
    e_true: np.ndarray,
    arm_ids: Sequence[str],
    energy_source: str,
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS,
    p_floor: float = DEFAULT_P_FLOOR,
    lams: Sequence[float] | None = None,
) -> Frontier:
    """The frontier of a policy's predictions (p, e_pred) against outcomes (correct, e_true), all (n_queries, n_arms).

    Arms are compared and chosen exactly as `policy.allocate.allocate_price` does (hull, p_floor).
    """
    p, e_pred = np.asarray(p, dtype=np.float64), np.asarray(e_pred, dtype=np.float64)
    correct, e_true = np.asarray(correct, dtype=np.float64), np.asarray(e_true, dtype=np.float64)
    if not (p.shape == e_pred.shape == correct.shape == e_true.shape) or p.ndim != 2 or p.shape[1] != len(arm_ids):
        raise UsageError(f"p, e_pred, correct and e_true must all be (n_queries, {len(arm_ids)})")
    if not p.shape[0]:
        raise UsageError("a price frontier needs at least one query")
    if not (0 <= max_accuracy_loss <= 1):
        raise UsageError(f"max_accuracy_loss must be in [0, 1], got {max_accuracy_loss}")
    n = p.shape[0]
    r = np.arange(n)
    h = hulls(np.clip(p, 0.0, 1.0), e_pred)
    hopeless = p.max(axis=1) < p_floor
    grid = price_grid(p, e_pred) if lams is None else np.asarray(sorted(set(map(float, lams))))
    points = []
    for lam in grid.tolist():
        arm = h.idx[r, np.where(hopeless, 0, price_positions(h, lam))]
        points.append(
            FrontierPoint(
                lam, float(correct[r, arm].mean()), float(e_pred[r, arm].mean()), float(e_true[r, arm].mean())
            )
        )
    arms = [
        ArmPoint(a, float(correct[:, j].mean()), float(e_pred[:, j].mean()), float(e_true[:, j].mean()))
        for j, a in enumerate(arm_ids)
    ]
    # the most accurate arm; among equals the cheaper one
    best = min(arms, key=lambda a: (-a.accuracy, a.mean_predicted_j))
    reference = max(best.accuracy, max(q.accuracy for q in points))
    lam, met = _pick(points, reference - max_accuracy_loss)
    cheapest = float(e_pred.min(axis=1).mean())
    return Frontier(
        n, float(max_accuracy_loss), lam, met, best, points, arms, cheapest, energy_source, "training", reference
    )


def greedy_arm(arm_ids: Sequence[str], models: Sequence[str]) -> str | None:
    """The small model's greedy arm with the longest cap (the baseline 'just ask the small model once')."""
    from policy.arms import Arm

    arms = [Arm.parse(a) for a in arm_ids]
    greedy = [a for a in arms if a.greedy and a.n == 1 and a.model == models[0]]
    return max(greedy, key=lambda a: a.max_new_tokens).arm_id if greedy else None
