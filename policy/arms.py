"""Arms: the budgets the allocator chooses between.

An arm is (model, number of voted samples n, max_new_tokens, temperature);
temperature 0 means greedy decoding (then n must be 1). Arms have a stable
string id, `smollm2-135m/n4/L64/t0.7` or `smollm2-135m/n1/L64/greedy`, used
as the key everywhere (store views, predictors, bundles, reports).
Standard library only: the exported policy imports this.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from policy.errors import UsageError

# n and L of at most 9 digits, a temperature like 0.7, 1 or .5: anything else (t1.2.3, t., a 5,000-digit n) is malformed
_ARM_RE = re.compile(
    r"^(?P<model>[^/]+)/n(?P<n>\d{1,9})/L(?P<L>\d{1,9})/(?:t(?P<t>\d{1,6}(?:\.\d{0,12})?|\.\d{1,12})|(?P<greedy>greedy))$"
)
#: the largest sampling temperature an arm may carry (decoding above it is noise)
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True, order=True)
class Arm:
    model: str
    n: int
    max_new_tokens: int
    temperature: float

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UsageError(f"arm n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise UsageError(f"arm max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:  # also refuses NaN and inf
            raise UsageError(f"arm temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if self.temperature == 0 and self.n != 1:
            raise UsageError("a greedy arm (temperature 0) always gives the same answer: use n=1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def arm_id(self) -> str:
        decoding = "greedy" if self.greedy else f"t{self.temperature:g}"
        return f"{self.model}/n{self.n}/L{self.max_new_tokens}/{decoding}"

    @classmethod
    def parse(cls, arm_id: str) -> Arm:
        m = _ARM_RE.match(arm_id) if isinstance(arm_id, str) else None
        if not m:
            shown = arm_id if len(arm_id) <= 80 else f"{arm_id[:60]}...({len(arm_id)} characters)"
            raise UsageError(f"malformed arm id {shown!r}; expected like 'smollm2-135m/n4/L64/t0.7'")
        temperature = 0.0 if m["greedy"] else float(m["t"])
        return cls(m["model"], int(m["n"]), int(m["L"]), temperature)


def build_grid(
    models: list[str],
    n_values: list[int],
    max_new_tokens: list[int],
    temperatures: list[float],
    greedy: bool = True,
) -> list[Arm]:
    """Every (model, n, L, temperature) arm, plus one greedy arm per (model, L)."""
    if not models:
        raise UsageError("the budget grid names no model; add one under [grid] models")
    if not n_values or not max_new_tokens:
        raise UsageError("the budget grid is empty: give at least one n and one max_new_tokens")
    if not temperatures and not greedy:
        raise UsageError("the budget grid has no decoding: give temperatures or set greedy = true")
    if any(t <= 0 for t in temperatures):
        raise UsageError("grid temperatures must be > 0; greedy decoding is the separate 'greedy' switch")
    arms = [Arm(m, n, L, t) for m, n, L, t in itertools.product(models, n_values, max_new_tokens, temperatures)]
    if greedy:
        arms += [Arm(m, 1, L, 0.0) for m, L in itertools.product(models, max_new_tokens)]
    return sorted(set(arms))


def arm_feature_names(models: list[str]) -> list[str]:
    """Numeric columns describing an arm, for predictors that take (query, arm) rows."""
    return ["arm_n", "arm_log2_n", "arm_max_new_tokens", "arm_temperature", "arm_greedy"] + [
        f"arm_model={m}" for m in models
    ]


def arm_features(arm: Arm, models: list[str]) -> list[float]:
    import math

    return [
        float(arm.n),
        math.log2(arm.n),
        float(arm.max_new_tokens),
        float(arm.temperature),
        1.0 if arm.greedy else 0.0,
    ] + [1.0 if arm.model == m else 0.0 for m in models]
