"""Online budget mode: hold the mean predicted joules per request near a target by moving the price λ.

Offline, budget mode sees the whole batch and bisects λ exactly
(policy/allocate.py). A server sees one request at a time, so it steers λ
instead, with a multiplicative integral controller:

    after each decision, m = mean predicted joules of the last `window` decisions
    λ ← clip(λ · (m / target) ** gain, s_min, s_max)

Spending above the target raises the price of a joule, spending below lowers
it; the multiplicative form suits λ, which spans orders of magnitude. The
clip range [s_min, s_max] is the range of hull slopes (accuracy per joule
between neighbouring arms on a query's convex hull) seen so far: above the
largest slope every query already gets its cheapest arm and below the
smallest every query gets its best, so λ outside it changes nothing and would
only wind up. The first λ is the bundle's price when it has one, else the
geometric middle of the first slopes seen.

What it steers is *predicted* joules (the policy's energy model): the proxy
cannot measure the upstream's energy. This module is pure arithmetic; it never
reads the policy or the network.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from policy.errors import UsageError


@dataclass(frozen=True)
class BudgetState:
    """The controller's state, as /metrics shows it."""

    target_j: float
    lam: float
    window_mean_j: float
    window_size: int
    slope_min: float
    slope_max: float


class BudgetController:
    """λ steered so that the mean predicted joules per request over a sliding window meets `target_j`."""

    def __init__(self, target_j: float, window: int = 64, gain: float = 0.2, lam0: float = 0.0) -> None:
        if not (math.isfinite(target_j) and target_j > 0):
            raise UsageError(f"--budget-j must be > 0 joules per request, got {target_j}")
        if window < 1:
            raise UsageError(f"--budget-window must be >= 1 requests, got {window}")
        if not 0 < gain <= 2:
            raise UsageError(f"budget controller gain must be in (0, 2], got {gain}")
        self.target_j = float(target_j)
        self.gain = float(gain)
        self.lam = float(lam0) if lam0 > 0 else 0.0
        self._window: deque[float] = deque(maxlen=window)
        self.slope_min = math.inf
        self.slope_max = 0.0

    def observe_slopes(self, slopes: Iterable[float]) -> None:
        """Widen the clip range with one query's hull slopes (accuracy per joule)."""
        for s in slopes:
            if s > 0 and math.isfinite(s):
                self.slope_min = min(self.slope_min, s)
                self.slope_max = max(self.slope_max, s)
        if self.lam == 0.0 and self.slope_max > 0:
            self.lam = math.sqrt(self.slope_min * self.slope_max)

    def price(self) -> float:
        """The λ to decide the next request with."""
        return self.lam

    def record(self, predicted_j: float) -> None:
        """Count one decision's predicted joules and update λ."""
        self._window.append(float(predicted_j))
        if self.lam == 0.0 or self.slope_max == 0.0:
            return  # no slope seen yet: every arm choice is the same at any price
        ratio = self.window_mean_j / self.target_j
        if ratio <= 0:
            return
        lam = self.lam * ratio**self.gain
        self.lam = min(max(lam, self.slope_min), self.slope_max)

    @property
    def window_mean_j(self) -> float:
        return sum(self._window) / len(self._window) if self._window else 0.0

    def state(self) -> BudgetState:
        return BudgetState(
            self.target_j,
            self.lam,
            self.window_mean_j,
            len(self._window),
            self.slope_min if math.isfinite(self.slope_min) else 0.0,
            self.slope_max,
        )
