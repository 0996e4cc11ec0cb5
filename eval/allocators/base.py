"""The allocators' shared parts: outcome matrices, operating points, curves, small helpers.

`Outcomes` holds the realised outcomes of every grid arm on a set of queries
(from `store.views.arm_outcomes`); an allocator turns the context's held-out
queries into a `Curve` of `OperatingPoint`s, scored on those realised
outcomes, never on predictions (eval/allocators/context.py holds
`EvalContext`, what an allocator reads, and the `Allocator` base class).

This module never reads files, never logs, and never re-derives arm outcomes
from samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import CurveData, convex_frontier
from policy.arms import Arm
from policy.errors import UsageError
from policy.hulls import upper_hull


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Realised outcomes of every grid arm on a set of queries: (n_queries, n_arms) matrices.

    Built from the `ArmOutcome` rows of `store.views.arm_outcomes`; `correct`
    is the arm's majority vote as 0/1 integers (accuracies are compared as
    exact counts), `energy_j` its summed joules, `answered` whether the vote
    had any answer at all. Matrices are stored C-contiguous.
    """

    query_ids: np.ndarray
    tasks: np.ndarray
    questions: list[str]
    arm_ids: list[str]
    correct: np.ndarray
    energy_j: np.ndarray
    output_tokens: np.ndarray
    answered: np.ndarray
    #: the arm view's `correct_soft` (expected vote correctness over resampled subsets); None when not given
    correct_soft: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, dtype in (("correct", np.int64), ("energy_j", np.float64), ("output_tokens", np.float64)):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        if self.correct_soft is not None:
            object.__setattr__(self, "correct_soft", np.ascontiguousarray(self.correct_soft, dtype=np.float64))

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def subset(self, query_ids: Sequence[str]) -> Outcomes:
        pos = pd.Index(self.query_ids).get_indexer(list(query_ids))
        if (pos < 0).any():
            raise UsageError(f"{int((pos < 0).sum())} query ids are not among the evaluated queries")
        return Outcomes(
            self.query_ids[pos],
            self.tasks[pos],
            [self.questions[i] for i in pos],
            self.arm_ids,
            self.correct[pos],
            self.energy_j[pos],
            self.output_tokens[pos],
            self.answered[pos],
            None if self.correct_soft is None else self.correct_soft[pos],
        )

    @classmethod
    def from_arm_rows(cls, rows: pd.DataFrame, arm_ids: Sequence[str], questions: pd.DataFrame) -> Outcomes:
        """Matrices over `arm_ids` from ArmOutcome rows; queries lacking any of the arms are left out."""
        arm_ids = list(arm_ids)
        rows = rows[rows["arm_id"].isin(arm_ids)]
        complete = rows.groupby("query_id")["arm_id"].nunique()
        qids = np.asarray(sorted(complete.index[complete == len(arm_ids)]), dtype=object)
        rows = rows[rows["query_id"].isin(qids)]

        def mat(col: str, dtype: Any) -> np.ndarray:
            m = rows.pivot(index="query_id", columns="arm_id", values=col)
            return m.reindex(index=qids, columns=arm_ids).to_numpy(dtype=dtype)

        answered = rows.assign(_a=rows["answer"].notna())
        q = questions.drop_duplicates("query_id").set_index("query_id")
        return cls(
            query_ids=qids,
            tasks=q.loc[qids, "task"].astype(str).to_numpy(dtype=object) if len(qids) else np.zeros(0, dtype=object),
            questions=[str(s) for s in q.loc[qids, "question"]] if len(qids) else [],
            arm_ids=arm_ids,
            correct=mat("correct", np.int64),
            energy_j=mat("energy_j", np.float64),
            output_tokens=mat("output_tokens", np.float64),
            answered=answered.pivot(index="query_id", columns="arm_id", values="_a")
            .reindex(index=qids, columns=arm_ids)
            .to_numpy(dtype=bool),
            correct_soft=mat("correct_soft", np.float64) if "correct_soft" in rows.columns else None,
        )


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """One setting of an allocator, realised on the held-out queries.

    `correct` and `energy_j` are per query (energy includes any overhead the
    allocator is charged); `correct` counts correct answers out of `draws`
    (1, or the number of seeded draws a point averages, as random does), so
    `hits` and `accuracy_exact` are exact. `arm_ids` is the chosen arm per
    query (for early stopping, the arm id of the samples it used; for random,
    seed 0's draw).
    """

    label: str
    params: dict[str, Any]
    correct: np.ndarray
    energy_j: np.ndarray
    arm_ids: tuple[str, ...]
    samples_used: np.ndarray | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "correct", np.ascontiguousarray(self.correct, dtype=np.int64))
        object.__setattr__(self, "energy_j", np.ascontiguousarray(self.energy_j, dtype=np.float64))

    @property
    def hits(self) -> int:
        """Correct answers summed over queries (and draws)."""
        return int(self.correct.sum())

    @property
    def accuracy_exact(self) -> Fraction:
        return Fraction(self.hits, len(self.correct) * self.draws)

    @property
    def accuracy(self) -> float:
        return float(self.accuracy_exact)

    @property
    def mean_energy_j(self) -> float:
        return float(np.mean(self.energy_j))


@dataclass(frozen=True, eq=False)
class Curve:
    """An allocator's operating points on the held-out queries."""

    allocator: str
    points: list[OperatingPoint]
    #: True when each point assigns one grid arm per query (the oracle bounds these)
    one_arm_per_query: bool = True
    notes: dict[str, Any] = field(default_factory=dict)
    #: True when the points' joules include the policy's metered cost (the allocator's `charged_overhead`)
    charged_overhead: bool = False

    def data(self) -> CurveData:
        draws = {p.draws for p in self.points}
        if len(draws) != 1:
            raise UsageError(f"curve {self.allocator!r} mixes points of different draws {sorted(draws)}")
        return CurveData(
            np.stack([p.correct for p in self.points]),
            np.stack([p.energy_j for p in self.points]),
            draws.pop(),
        )

    @property
    def energy_j(self) -> np.ndarray:
        return np.asarray([p.mean_energy_j for p in self.points])

    @property
    def accuracy(self) -> np.ndarray:
        return np.asarray([p.accuracy for p in self.points])

    @property
    def hits(self) -> list[Fraction]:
        return [p.accuracy_exact for p in self.points]

    def frontier(self) -> np.ndarray:
        """Indices of the points on the convex frontier (eval.metrics.convex_frontier), cheapest first."""
        return convex_frontier(self.energy_j, self.hits)

    def frontier_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(energy, accuracy) of the convex frontier, cheapest first: what every comparison interpolates on."""
        idx = self.frontier()
        return self.energy_j[idx], self.accuracy[idx]


# ---------------------------------------------------------------- helpers


def _point(
    ctx: Any, label: str, params: dict[str, Any], arm_idx: np.ndarray, extra_j: np.ndarray | float = 0.0
) -> OperatingPoint:
    rows = np.arange(ctx.test.n_queries)
    return OperatingPoint(
        label=label,
        params=params,
        correct=ctx.test.correct[rows, arm_idx],
        energy_j=ctx.test.energy_j[rows, arm_idx] + extra_j,
        arm_ids=tuple(ctx.arm_ids[i] for i in arm_idx),
    )


def _dedupe(points: list[tuple[np.ndarray, Any]]) -> list[tuple[np.ndarray, Any]]:
    """Keep the first of settings that give the same assignment."""
    seen: set[bytes] = set()
    out = []
    for idx, meta in points:
        key = np.asarray(idx, dtype=np.int64).tobytes()
        if key not in seen:
            seen.add(key)
            out.append((idx, meta))
    return out


def hull_slopes(p: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Every slope (accuracy per joule) of every row's upper convex hull of (e, p)."""
    out: list[float] = []
    for pr, er in zip(p.tolist(), e.tolist(), strict=True):
        h = upper_hull(er, pr)
        out += [(pr[b] - pr[a]) / (er[b] - er[a]) for a, b in zip(h, h[1:], strict=False)]
    return np.asarray(out, dtype=np.float64)


def lambda_grid(slopes: np.ndarray, n: int) -> np.ndarray:
    """0, `n` quantiles of the hull slopes, and a price above all of them (everyone cheapest), descending."""
    if len(slopes) == 0:
        return np.asarray([0.0])
    qs = np.quantile(slopes, np.linspace(0, 1, n))
    return np.unique(np.concatenate([[0.0], qs, [slopes.max() * 1.01]]))[::-1]


def scaling_reference_arm(arm_ids: Sequence[str], big_model: str) -> str:
    """The bigger model answering once: its n=1 arm at the longest cap, greedy preferred (then coolest)."""
    arms = [Arm.parse(a) for a in arm_ids]
    cands = [a for a in arms if a.model == big_model and a.n == 1]
    if not cands:
        raise UsageError(f"the grid has no n=1 arm of the bigger model {big_model!r} to compare against")
    best = max(cands, key=lambda a: (a.max_new_tokens, -a.temperature))
    return best.arm_id
