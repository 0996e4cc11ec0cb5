"""Sequential-sampling allocators replayed on the collected sample order: the shared base and `early_stopping` (ours).

The published peer rules (adaptive_consistency, esc) live in eval/allocators/peers.py on the same base.

Each draws samples one at a time in their collected order at one (model, max_new_tokens, temperature)
and is charged the joules of the samples it actually drew; simulated from the raw samples' own level
answers, as the arm view does. Never reads files or logs.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from eval.allocators.base import Curve, OperatingPoint
from eval.allocators.context import Allocator, EvalContext
from policy.errors import UsageError
from store.views import vote


@dataclass(frozen=True)
class Stop:
    """What a sequential rule did on one query: samples drawn and whether its answer is right."""

    samples_used: int
    correct: bool


class SequentialAllocator(Allocator):
    """Base of the rules that draw samples one at a time in collected order at one (model, cap, temperature).

    A subclass lists its `settings()` and decides, per query, from the answers
    and their correctness in collected order how many samples it draws and
    whether its answer is right (`decide`). Each setting at each (model, cap,
    temperature) is one operating point charged the joules of the samples
    drawn; the curve holds them all, so its frontier is the best over (model, cap).
    """

    needs_samples = True
    #: the setting's name in labels and params (k, threshold, window)
    param: str = ""

    @abstractmethod
    def settings(self, n_max: int) -> list[Any]:
        """The swept values of the rule's parameter for up to `n_max` samples."""

    @abstractmethod
    def decide(self, answers: Sequence[str | None], oks: Sequence[bool], n_max: int, value: Any) -> Stop:
        """Samples drawn and correctness on one query."""

    def _tables(self, ctx: EvalContext) -> Iterator[tuple[str, float, int, int, dict]]:
        """(model, temperature, n_max, cap, {query: (answers, oks, joules)}) for every sampled setting of the grid."""
        sampled = [a for a in ctx.arms if not a.greedy]
        settings = sorted({(a.model, a.temperature) for a in sampled})
        if not settings:
            raise UsageError(f"{self.name} needs sampled (temperature > 0) arms in the grid")
        s = ctx.samples[ctx.samples["query_id"].isin(set(ctx.test.query_ids))]
        for model, temp in settings:
            mine = [a for a in sampled if (a.model, a.temperature) == (model, temp)]
            n_max = max(a.n for a in mine)
            g = s[(s["model"] == model) & np.isclose(s["temperature"].astype(float), temp)]
            groups = {q: grp.sort_values("sample_index").head(n_max) for q, grp in g.groupby("query_id")}
            if set(groups) != set(ctx.test.query_ids):
                raise UsageError(f"the samples lack some held-out queries for {model} at temperature {temp:g}")
            for L in sorted({a.max_new_tokens for a in mine}):
                yield model, temp, n_max, L, {q: _level_columns(grp, L) for q, grp in groups.items()}

    def curve(self, ctx: EvalContext) -> Curve:
        qpos = {q: i for i, q in enumerate(ctx.test.query_ids)}
        n = ctx.test.n_queries
        points = []
        for model, temp, n_max, L, table in self._tables(ctx):
            decoding = "greedy" if temp == 0 else f"t{temp:g}"
            for value in self.settings(n_max):
                correct, energy, used = np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n, dtype=np.int64)
                for q, (answers, oks, joules) in table.items():
                    i = qpos[q]
                    stop = self.decide(answers, oks, n_max, value)
                    correct[i], energy[i], used[i] = (
                        stop.correct,
                        float(sum(joules[: stop.samples_used])),
                        stop.samples_used,
                    )
                params = {"model": model, "max_new_tokens": L, "temperature": temp, self.param: value, "n_max": n_max}
                points.append(
                    OperatingPoint(
                        label=f"{model}/L{L}/{decoding} {self.param}={value} (n_max {n_max})",
                        params=params,
                        correct=correct,
                        energy_j=energy,
                        arm_ids=tuple(f"{model}/n{m}/L{L}/{decoding}" for m in used),
                        samples_used=used,
                    )
                )
        return Curve(self.name, points, one_arm_per_query=False)


class EarlyStoppingAllocator(SequentialAllocator):
    name = "early_stopping"
    description = "samples one at a time in collected order; stop when the first k agree or the majority is settled"
    param = "k"

    def __init__(self, ks: tuple[int, ...] = (2, 3)) -> None:
        self.ks = ks

    def settings(self, n_max: int) -> list[Any]:
        if any(k < 1 for k in self.ks):
            raise UsageError(f"early stopping needs every k >= 1, got {self.ks}")
        return list(self.ks)

    def decide(self, answers: Sequence[str | None], oks: Sequence[bool], n_max: int, value: Any) -> Stop:
        m = stop_after(answers, value, n_max)
        return Stop(m, vote(list(answers[:m]), list(oks[:m]))[1])


def _level_columns(grp: pd.DataFrame, L: int) -> tuple[list[str | None], list[bool], list[float]]:
    levels = list(grp["levels"].iloc[0])
    if L not in levels:
        raise UsageError(f"the samples were not graded at max_new_tokens={L}; levels are {levels}")
    li = levels.index(L)
    answers = [lv[li] for lv in grp["level_answer"]]
    return (
        [None if a is None or (isinstance(a, float) and math.isnan(a)) else str(a) for a in answers],
        [bool(lv[li]) for lv in grp["level_correct"]],
        [float(lv[li]) for lv in grp["level_energy_j"]],
    )


def stop_after(answers: Sequence[str | None], k: int, n_max: int) -> int:
    """How many samples early stopping draws: k if the first k agree, else until the vote of n_max is settled.

    Settled: the leading answer's count exceeds the runner-up's by more than the
    samples left, so no remaining sample can change the winner.
    """
    n_max = min(n_max, len(answers))
    first = answers[:k]
    if len(first) == k and first[0] is not None and all(a == first[0] for a in first):
        return k
    for i in range(1, n_max + 1):
        counts = sorted(
            (sum(1 for a in answers[:i] if a == v) for v in {a for a in answers[:i] if a is not None}), reverse=True
        )
        c1 = counts[0] if counts else 0
        c2 = counts[1] if len(counts) > 1 else 0
        if i >= k and c1 > c2 + (n_max - i):
            return i
    return n_max
