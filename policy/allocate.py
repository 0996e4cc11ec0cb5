"""The allocation rule: from predicted (success, joules) per arm to one arm per query.

Input is two (n_queries, n_arms) matrices, `p` (predicted probability that the
arm answers correctly) and `e` (predicted joules). Every rule works on each
query's *upper convex hull* of its (e, p) points, cheapest first: an arm that
costs more and predicts no better is never picked, and neither is one below
the chord of its neighbours (a mix of those two would dominate it). On the hull
the slopes (marginal accuracy per joule) strictly decrease, so a price λ in
accuracy per joule picks the point where the next slope falls to λ or below.

Rules, looked up by name in `RULES`:
- "price": per query, the hull arm maximising p - λ·e. Ties go to the cheaper arm.
- "budget": a target mean joules per query (or a total for the batch). The
  batch energy E(λ) of the price rule is a step function of λ whose steps are
  exactly the hull slopes, so bisection over the sorted slopes finds the
  smallest λ with E(λ) <= budget exactly (Lagrangian relaxation). The budget
  left under that step is then filled greedily with the hull moves of best
  marginal accuracy per joule that still fit, so the batch mean lands at or
  just under the budget, never over it.
- A query whose every arm predicts p below `p_floor` is "hopeless": it gets its
  cheapest arm whatever the rule (its joules still count against a budget).

A budget below the sum of every query's cheapest arm is infeasible: `UsageError`
naming the minimum feasible budget, or, with `on_infeasible="cheapest"`, every
query gets its cheapest arm.

numpy and the standard library only: the exported policy runs this. Never
imports a predictor library.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from policy.arms import Arm
from policy.errors import UsageError, unknown_name
from policy.hulls import decisions, hulls, price_positions
from policy.records import Decision

DEFAULT_P_FLOOR = 0.05
PRICE = "price"
BUDGET = "budget"
HOPELESS = "hopeless"
ON_INFEASIBLE = ("raise", "cheapest")
# Relative slack when comparing joule sums with a budget, so a budget equal to
# an attainable total (summed in another order) is not called exceeded.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class DecisionRule:
    """How a policy turns predictions into decisions; stored in the bundle's policy.json.

    `mode` is "price" (uses `lam`, accuracy per joule) or "budget" (uses
    `budget_j`, target mean joules per query). `p_floor` is the success
    probability under which a query is hopeless and gets its cheapest arm.
    """

    mode: str = PRICE
    lam: float = 0.0
    budget_j: float | None = None
    p_floor: float = DEFAULT_P_FLOOR

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in RULES:
            raise unknown_name("decision rule mode", str(self.mode), RULES)
        for name in ("lam", "budget_j", "p_floor"):
            v = getattr(self, name)
            # a string or a bool would compare or print oddly further on: refuse it here, at the edge
            if not (v is None and name == "budget_j") and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise UsageError(f"{name} must be a number, got {v!r} ({type(v).__name__})")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise UsageError(f"lam (accuracy per joule) must be finite and >= 0, got {self.lam}")
        if self.budget_j is not None and not (math.isfinite(self.budget_j) and self.budget_j > 0):
            raise UsageError(f"budget_j (mean joules per query) must be finite and > 0, got {self.budget_j}")
        if self.mode == BUDGET and self.budget_j is None:
            raise UsageError("budget mode needs budget_j > 0 (mean joules per query), got None")
        if not 0.0 <= self.p_floor < 1.0:
            raise UsageError(f"p_floor must be in [0, 1), got {self.p_floor}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DecisionRule:
        known = {"mode", "lam", "budget_j", "p_floor"}
        if not isinstance(d, dict):
            raise UsageError(f"a decision rule must be a mapping of {sorted(known)}, got {type(d).__name__}")
        extra = set(d) - known
        if extra:
            raise UsageError(f"unknown decision rule keys {sorted(extra)}, known: {sorted(known)}")
        return cls(**d)


def _check(p: np.ndarray, e: np.ndarray, arm_ids: list[str], query_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    if p.ndim != 2 or p.shape != e.shape:
        raise UsageError(f"p and e must be (n_queries, n_arms) matrices of one shape, got {p.shape} and {e.shape}")
    if p.shape[1] != len(arm_ids):
        raise UsageError(f"p has {p.shape[1]} arm columns but {len(arm_ids)} arms were given")
    if p.shape[0] != len(query_ids):
        raise UsageError(f"p has {p.shape[0]} query rows but {len(query_ids)} query ids were given")
    if len(set(arm_ids)) != len(arm_ids):
        raise UsageError("arm ids must be unique")
    if p.shape[1] == 0:
        raise UsageError("no arms to choose from")
    if not (np.isfinite(p).all() and np.isfinite(e).all()):
        raise UsageError("p and e must be finite; a predictor returned NaN or inf")
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():
        raise UsageError("p must be probabilities in [0, 1]")
    if (e < 0).any():
        raise UsageError("e (joules) must be >= 0")
    return np.clip(p, 0.0, 1.0), e


def _ids(arms: Sequence[Arm | str]) -> list[str]:
    return [a.arm_id if isinstance(a, Arm) else str(a) for a in arms]


def allocate_price(
    p: np.ndarray,
    e: np.ndarray,
    arms: Sequence[Arm | str],
    query_ids: Sequence[str],
    lam: float,
    p_floor: float = DEFAULT_P_FLOOR,
) -> list[Decision]:
    """Per query, the hull arm maximising p - lam * e (lam: accuracy per joule)."""
    arm_ids, query_ids = _ids(arms), [str(q) for q in query_ids]
    DecisionRule(PRICE, lam, None, p_floor)  # validates lam and p_floor
    p, e = _check(p, e, arm_ids, query_ids)
    hopeless = p.max(axis=1) < p_floor
    h = hulls(p, e)
    pos = np.where(hopeless, 0, price_positions(h, lam))
    return decisions(h, pos, p, e, arm_ids, query_ids, [HOPELESS if x else PRICE for x in hopeless.tolist()], lam)


def allocate_budget(
    p: np.ndarray,
    e: np.ndarray,
    arms: Sequence[Arm | str],
    query_ids: Sequence[str],
    budget_j: float | None = None,
    total_budget_j: float | None = None,
    p_floor: float = DEFAULT_P_FLOOR,
    on_infeasible: str = "raise",
) -> list[Decision]:
    """The most predicted accuracy for the batch whose joules stay within the budget.

    Give `budget_j` (mean joules per query) or `total_budget_j` (the batch's
    joules), not both. `on_infeasible="raise"` raises `UsageError` naming the
    minimum feasible budget when even the cheapest arms exceed it;
    `"cheapest"` returns every query's cheapest arm instead.
    """
    arm_ids, query_ids = _ids(arms), [str(q) for q in query_ids]
    p, e = _check(p, e, arm_ids, query_ids)
    n = len(query_ids)
    if (budget_j is None) == (total_budget_j is None):
        raise UsageError("give exactly one of budget_j (mean joules per query) or total_budget_j (joules per batch)")
    given, what = (total_budget_j, "total_budget_j") if total_budget_j is not None else (budget_j, "budget_j")
    if isinstance(given, bool) or not isinstance(given, numbers.Real) or not math.isfinite(given) or given < 0:
        # name the value the caller gave, not the total derived from it
        raise UsageError(f"{what} must be a finite number of joules >= 0, got {given!r}")
    total = float(given) if total_budget_j is not None else float(given) * n
    if on_infeasible not in ON_INFEASIBLE:
        raise unknown_name("on_infeasible", on_infeasible, ON_INFEASIBLE)
    DecisionRule(PRICE, 0.0, None, p_floor)  # validates p_floor
    if n == 0:
        return []
    h = hulls(p, e)
    hopeless = p.max(axis=1) < p_floor
    floor_j = sum(h.e0_j.tolist())  # in query order, as a Python sum: the same float as before
    slack = _REL_TOL * max(total, floor_j, 1.0)
    # Every hull move of a non-hopeless query, query-major: slope, extra joules, query, step.
    qs, ks = np.nonzero(~np.isnan(h.slopes) & ~hopeless[:, None])
    moves = (h.slopes[qs, ks], h.steps_j[qs, ks], qs, ks)
    lam_cheapest = float(moves[0].max()) if len(qs) else 0.0  # the price above which everyone stays cheapest

    if floor_j > total + slack:
        if on_infeasible == "raise":
            raise UsageError(
                f"budget infeasible: the cheapest arms alone need {floor_j:.6g} J for {n} queries "
                f"(mean {floor_j / n:.6g} J per query), above the budget of {total:.6g} J "
                f"(mean {total / n:.6g} J); raise the budget to at least that, or pass on_infeasible='cheapest'"
            )
        pos, lam = np.zeros(n, dtype=np.intp), lam_cheapest
    else:
        lam, pos = _fill_budget(moves, total - floor_j + slack, n)
    return decisions(h, pos, p, e, arm_ids, query_ids, [HOPELESS if x else BUDGET for x in hopeless.tolist()], lam)


def _fill_budget(moves: tuple[np.ndarray, ...], spare_j: float, n: int) -> tuple[float, np.ndarray]:
    """Bisection on λ over the hull slopes, then a greedy fill; returns (λ, hull position per query)."""
    # Moves in the order a falling price takes them; equal slopes: smaller step first, then query order.
    slopes, steps, qs, ks = moves
    order = np.lexsort((ks, qs, steps, -slopes))
    slopes, steps, qs, ks = slopes[order], steps[order], qs[order], ks[order]
    cost = np.cumsum(steps)  # sequential, so cost[k - 1] is the running sum of the first k steps
    # E(λ) - E(∞) = joules of every move with slope > λ. Candidate λ: each distinct slope, then 0.
    cands = np.unique(np.append(slopes, 0.0))[::-1]  # descending

    def taken(lam: float) -> int:
        return int(np.searchsorted(-slopes, -lam, side="left"))  # number of moves with slope > lam

    def spent(lam: float) -> float:
        k = taken(lam)
        return float(cost[k - 1]) if k > 0 else 0.0

    # The largest index (smallest λ) whose spend fits: spend grows as λ falls, so bisect.
    lo, hi = 0, len(cands) - 1
    if spent(float(cands[hi])) <= spare_j:
        lo = hi
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if spent(float(cands[mid])) <= spare_j:
                lo = mid
            else:
                hi = mid
    lam = float(cands[lo])
    # Every move above λ (a prefix of the sorted moves, and of each query's hull) is taken.
    first = taken(lam)
    pos = np.zeros(n, dtype=np.intp)
    np.maximum.at(pos, qs[:first], ks[:first] + 1)
    used = float(cost[first - 1]) if first > 0 else 0.0
    # Greedy fill under the step: best accuracy per joule first, a query's moves in hull order.
    at = pos.tolist()
    rest = zip(slopes[first:].tolist(), steps[first:].tolist(), qs[first:].tolist(), ks[first:].tolist(), strict=True)
    for slope, step_j, q, k in rest:
        if at[q] == k and used + step_j <= spare_j and slope > 0:
            at[q] = k + 1
            used += step_j
    return lam, np.asarray(at, dtype=np.intp)


def allocate(
    p: np.ndarray,
    e: np.ndarray,
    arms: Sequence[Arm | str],
    query_ids: Sequence[str],
    rule: DecisionRule,
    on_infeasible: str = "raise",
) -> list[Decision]:
    """Apply a stored `DecisionRule` (looked up by its mode in `RULES`)."""
    return RULES[rule.mode](p, e, arms, query_ids, rule, on_infeasible)


def _run_price(p, e, arms, query_ids, rule: DecisionRule, on_infeasible: str) -> list[Decision]:
    return allocate_price(p, e, arms, query_ids, rule.lam, rule.p_floor)


def _run_budget(p, e, arms, query_ids, rule: DecisionRule, on_infeasible: str) -> list[Decision]:
    return allocate_budget(p, e, arms, query_ids, rule.budget_j, None, rule.p_floor, on_infeasible)


RULES: dict[str, Callable[..., list[Decision]]] = {PRICE: _run_price, BUDGET: _run_budget}
