"""Online budget mode: hold the mean predicted joules per request near a target by moving the price λ.

Offline, budget mode sees the whole batch and bisects λ exactly
(policy/allocate.py). A server sees one request at a time, so it steers λ
instead, by multiplicative dual ascent on the budget constraint:

    after each decision of predicted joules e:   λ ← clip(λ · exp(gain · min(e / target − 1, 3)), s_min, s_max)

A request above the target raises the price of a joule, one below lowers it.
Summed over requests, log λ moves by gain × the summed relative overspend, so
while λ stays inside its clip range the running mean of e is pulled back to
the target after every excursion (an integral controller on the per-request
error), rather than chasing a sliding window's mean, which lags by half a
window. The clip range [s_min, s_max] is the range of hull slopes (accuracy
per joule between neighbouring arms on a query's convex hull) seen so far:
above the largest slope every query already gets its cheapest arm and below
the smallest every query gets its best, so λ outside it changes nothing and
would only wind up.

The first λ is the caller's (`ttc serve` passes the price at which the
bundle's training frontier meets the target, policy/frontier.py, else the
bundle's own price), else the geometric middle of the first slopes seen. A
target below `min_mean_j` (every request on its cheapest predicted arm) is
refused at construction. The sliding window is kept for reporting only.

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

    def __init__(
        self,
        target_j: float,
        window: int = 64,
        gain: float = 0.1,
        lam0: float = 0.0,
        min_mean_j: float | None = None,
    ) -> None:
        if not (math.isfinite(target_j) and target_j > 0):
            raise UsageError(f"--budget-j must be > 0 joules per request, got {target_j}")
        if min_mean_j is not None and target_j < min_mean_j:
            raise UsageError(
                f"--budget-j {target_j:g} J is below what the cheapest arms cost ({min_mean_j:.4g} predicted J per "
                "request on the bundle's training queries); give at least that"
            )
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
        over = min(float(predicted_j) / self.target_j - 1.0, 3.0)  # one huge request moves λ by at most e^(3 gain)
        lam = self.lam * math.exp(self.gain * over)
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
