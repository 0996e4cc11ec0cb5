"""Sequential-sampling allocators replayed on the collected sample order: `early_stopping` (ours).

Each draws samples one at a time in their collected order at one (model, max_new_tokens, temperature)
and is charged the joules of the samples it actually drew; simulated from the raw samples' own level
answers, as the arm view does. Never reads files or logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from eval.allocators.base import Allocator, Curve, EvalContext, OperatingPoint
from policy.errors import UsageError
from store.views import vote


class EarlyStoppingAllocator(Allocator):
    name = "early_stopping"
    description = "samples one at a time in collected order; stop when the first k agree or the majority is settled"
    needs_samples = True

    def __init__(self, ks: tuple[int, ...] = (2, 3)) -> None:
        self.ks = ks

    def curve(self, ctx: EvalContext) -> Curve:
        if any(k < 1 for k in self.ks):
            raise UsageError(f"early stopping needs every k >= 1, got {self.ks}")
        sampled = [a for a in ctx.arms if not a.greedy]
        settings = sorted({(a.model, a.temperature) for a in sampled})
        if not settings:
            raise UsageError("early stopping needs sampled (temperature > 0) arms in the grid")
        s = ctx.samples[ctx.samples["query_id"].isin(set(ctx.test.query_ids))]
        qpos = {q: i for i, q in enumerate(ctx.test.query_ids)}
        points = []
        for model, temp in settings:
            n_max = max(a.n for a in sampled if (a.model, a.temperature) == (model, temp))
            levels = sorted({a.max_new_tokens for a in sampled if (a.model, a.temperature) == (model, temp)})
            g = s[(s["model"] == model) & np.isclose(s["temperature"].astype(float), temp)]
            groups = {q: grp.sort_values("sample_index").head(n_max) for q, grp in g.groupby("query_id")}
            if set(groups) != set(qpos):
                raise UsageError(f"the samples lack some held-out queries for {model} at temperature {temp:g}")
            for L in levels:
                table = {q: _level_columns(grp, L) for q, grp in groups.items()}
                for k in self.ks:
                    n = ctx.test.n_queries
                    correct, energy, used = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
                    for q, (answers, oks, joules) in table.items():
                        i = qpos[q]
                        m = stop_after(answers, k, n_max)
                        correct[i] = float(vote(answers[:m], oks[:m])[1])
                        energy[i] = float(sum(joules[:m]))
                        used[i] = m
                    decoding = "greedy" if temp == 0 else f"t{temp:g}"
                    points.append(
                        OperatingPoint(
                            label=f"{model}/L{L}/{decoding} first {k} agree (n_max {n_max})",
                            params={"model": model, "max_new_tokens": L, "temperature": temp, "k": k, "n_max": n_max},
                            correct=correct,
                            energy_j=energy,
                            arm_ids=tuple(f"{model}/n{m}/L{L}/{decoding}" for m in used),
                            samples_used=used,
                        )
                    )
        return Curve(self.name, points, one_arm_per_query=False)


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
