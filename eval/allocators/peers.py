"""The published early-stopping rules for self-consistency, as allocators beside our `early_stopping`.

Both replay the collected samples in their order at one (model, cap,
temperature), are charged the joules of the samples they drew, and sweep
their parameter to trace a curve (eval/allocators/stopping.py's base). Their
stopping rules follow the authors' public code:

- `adaptive_consistency`: Aggarwal et al. 2023, "Let's Sample Step by Step:
  Adaptive-Consistency for Efficient Reasoning and Coding with LLMs" (EMNLP),
  github.com/Pranjal2041/AdaptiveConsistency, `BetaStoppingCriteria`. After
  each sample, with a = the count of the most common answer and b = that of
  the runner-up (0 if none), stop when P(p > 1/2) under Beta(a+1, b+1), i.e.
  1 - I_0.5(a+1, b+1), reaches the threshold (their default 0.95). Their code
  counts answers with `Counter`, so an unparsed answer (None) is an answer
  like any other for the counts. At the last available sample it stops.
- `esc`: Li et al. 2024, "Escape Sky-high Cost: Early-stopping
  Self-Consistency for Multi-step Reasoning" (ICLR), github.com/Yiwei98/ESC,
  early_stop_*.py. Samples come in windows of w; stop at the first window
  whose w answers are all the same (unparsed included, as there) and answer
  with it; otherwise answer with the majority over every sample drawn. Only
  whole windows are drawn (n_max // w of them), as in their loop.

One departure, in the peers' favour and the same for every voting rule here:
the final majority vote is `store.views.vote`, which never lets an unparsed
answer win while a parsed one exists. Never reads files or logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from scipy.special import betainc

from eval.allocators.stopping import SequentialAllocator, Stop
from policy.errors import UsageError
from store.views import vote


def beta_confidence(a: int, b: int) -> float:
    """P(p > 1/2) for p ~ Beta(a+1, b+1): 1 - I_0.5(a+1, b+1), Adaptive-Consistency's stopping statistic."""
    return float(1.0 - betainc(a + 1, b + 1, 0.5))


def ac_samples(answers: Sequence[str | None], threshold: float, n_max: int) -> int:
    """How many samples Adaptive-Consistency draws: the first i whose top-two counts reach `threshold`."""
    n_max = min(n_max, len(answers))
    for i in range(1, n_max + 1):
        top = [c for _, c in Counter(answers[:i]).most_common(2)]
        a, b = top[0], (top[1] if len(top) > 1 else 0)
        if beta_confidence(a, b) >= threshold:
            return i
    return n_max


def esc_window(answers: Sequence[str | None], w: int, n_max: int) -> tuple[int, int | None]:
    """(samples ESC draws, start of the unanimous window it stopped at, or None when no window agreed)."""
    n_windows = min(n_max, len(answers)) // w
    for j in range(n_windows):
        if len(set(answers[j * w : (j + 1) * w])) == 1:
            return (j + 1) * w, j * w
    return n_windows * w, None


class AdaptiveConsistencyAllocator(SequentialAllocator):
    name = "adaptive_consistency"
    description = "Aggarwal et al. 2023: stop when P(p_top > 1/2 | Beta(a+1, b+1)) reaches the threshold; swept"
    param = "threshold"

    def __init__(self, thresholds: tuple[float, ...] = (0.5, 0.75, 0.8, 0.9, 0.95, 0.99)) -> None:
        self.thresholds = thresholds

    def settings(self, n_max: int) -> list[Any]:
        if any(not 0 < t < 1 for t in self.thresholds):
            raise UsageError(f"adaptive_consistency thresholds must lie in (0, 1), got {self.thresholds}")
        return list(self.thresholds)

    def decide(self, answers: Sequence[str | None], oks: Sequence[bool], n_max: int, value: Any) -> Stop:
        m = ac_samples(answers, value, n_max)
        return Stop(m, vote(list(answers[:m]), list(oks[:m]))[1])


class ESCAllocator(SequentialAllocator):
    name = "esc"
    description = "Li et al. 2024: windows of w samples, stop at the first unanimous window; w swept"
    param = "window"

    def __init__(self, windows: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)) -> None:
        self.windows = windows

    def settings(self, n_max: int) -> list[Any]:
        if any(w < 1 for w in self.windows):
            raise UsageError(f"esc windows must be >= 1, got {self.windows}")
        return [w for w in self.windows if w <= n_max]

    def decide(self, answers: Sequence[str | None], oks: Sequence[bool], n_max: int, value: Any) -> Stop:
        m, start = esc_window(answers, value, n_max)
        if start is not None:  # the unanimous window's answer (an unparsed one is wrong)
            return Stop(m, answers[start] is not None and bool(oks[start]))
        return Stop(m, vote(list(answers[:m]), list(oks[:m]))[1])
