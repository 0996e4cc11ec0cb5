"""The allocators' shared parts: outcome matrices, operating points, curves, the metering context, the base class.

`Outcomes` holds the realised outcomes of every grid arm on a set of queries
(from `store.views.arm_outcomes`); an allocator turns the context's held-out
queries into a `Curve` of `OperatingPoint`s, scored on those realised
outcomes, never on predictions. `EvalContext` is everything an allocator
reads; it runs the policy once per query set under the overhead meter.

This module never reads files, never logs, and never re-derives arm outcomes
from samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import CurveData, pareto_frontier
from policy.allocate import upper_hull
from policy.arms import Arm
from policy.errors import UsageError


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Realised outcomes of every grid arm on a set of queries: (n_queries, n_arms) matrices.

    Built from the `ArmOutcome` rows of `store.views.arm_outcomes`; `correct`
    is the arm's majority vote, `energy_j` its summed joules, `answered` whether
    the vote had any answer at all.
    """

    query_ids: np.ndarray
    tasks: np.ndarray
    questions: list[str]
    arm_ids: list[str]
    correct: np.ndarray
    energy_j: np.ndarray
    output_tokens: np.ndarray
    answered: np.ndarray

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
            correct=mat("correct", np.float64),
            energy_j=mat("energy_j", np.float64),
            output_tokens=mat("output_tokens", np.float64),
            answered=answered.pivot(index="query_id", columns="arm_id", values="_a")
            .reindex(index=qids, columns=arm_ids)
            .to_numpy(dtype=bool),
        )


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """One setting of an allocator, realised on the held-out queries.

    `correct` and `energy_j` are per query (energy includes any overhead the
    allocator is charged); `arm_ids` is the chosen arm per query (for early
    stopping, the arm id of the samples it used; for random, seed 0's draw).
    """

    label: str
    params: dict[str, Any]
    correct: np.ndarray
    energy_j: np.ndarray
    arm_ids: tuple[str, ...]
    samples_used: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

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

    def data(self) -> CurveData:
        return CurveData(
            np.stack([p.correct for p in self.points]).astype(np.float64),
            np.stack([p.energy_j for p in self.points]).astype(np.float64),
        )

    @property
    def energy_j(self) -> np.ndarray:
        return np.asarray([p.mean_energy_j for p in self.points])

    @property
    def accuracy(self) -> np.ndarray:
        return np.asarray([p.accuracy for p in self.points])

    def frontier(self) -> np.ndarray:
        return pareto_frontier(self.energy_j, self.accuracy)


@dataclass(frozen=True, eq=False)
class PolicyOverhead:
    """Joules per query the policy spends before any arm runs, and where they came from."""

    features_j: float
    predict_j: float
    probe_j: np.ndarray
    duration_s: float
    meter: str
    source: str

    @property
    def per_query_j(self) -> np.ndarray:
        return self.features_j + self.predict_j + self.probe_j


@dataclass(frozen=True, eq=False)
class Predictions:
    p: np.ndarray
    e: np.ndarray
    overhead: PolicyOverhead


class EvalContext:
    """Everything the allocators read: held-out (and training) outcomes, the policy, the raw samples.

    `predictions(which)` runs the policy once per query set and caches it (for
    the test set, under the overhead meter); `curve(name)` runs and caches an
    allocator, so random can match the learned curve's joules.
    """

    def __init__(
        self,
        test: Outcomes,
        train: Outcomes | None = None,
        samples: pd.DataFrame | None = None,
        policy: Any = None,
        big_model: str | None = None,
        seed: int = 0,
        overhead_meter: str = "estimate",
    ) -> None:
        if test.n_queries == 0:
            raise UsageError("no held-out query has an outcome for every arm of the policy; nothing to evaluate")
        self.test = test
        self.train = train
        self.samples = samples
        self.policy = policy
        self.big_model = big_model
        self.seed = seed
        self.overhead_meter = overhead_meter
        self.arms = [Arm.parse(a) for a in test.arm_ids]
        self._predictions: dict[str, Predictions] = {}
        self._curves: dict[str, Curve] = {}

    @property
    def arm_ids(self) -> list[str]:
        return self.test.arm_ids

    def _probe(self, outcomes: Outcomes) -> tuple[np.ndarray | None, np.ndarray]:
        n = outcomes.n_queries
        if self.policy is None or not self.policy.needs_probe:
            return None, np.zeros(n)
        if self.samples is None:
            raise UsageError("this policy uses probe features: evaluation needs the store's samples with probe columns")
        from policy.features import PROBE_NAMES

        need = [*PROBE_NAMES, "probe_energy_j"]
        missing = [c for c in need if c not in self.samples.columns]
        if missing:
            raise UsageError(
                f"this policy uses probe features but the store lacks {', '.join(missing)}; "
                "collect with probes (their joules are charged to the policy) or evaluate a 'text' policy"
            )
        per_q = self.samples.groupby("query_id")[need].mean().reindex(outcomes.query_ids)
        if per_q.isna().to_numpy().any():
            raise UsageError("some evaluated queries have no probe values in the store; re-collect their probes")
        return per_q[list(PROBE_NAMES)].to_numpy(np.float32), per_q["probe_energy_j"].to_numpy(np.float64)

    def predictions(self, which: str = "test") -> Predictions:
        """The policy's (p, e) for the test or train queries; the test run is metered for the overhead."""
        if self.policy is None:
            raise UsageError("this allocator needs a policy bundle")
        if which not in self._predictions:
            from collect.energy import make_meter

            outcomes = self.test if which == "test" else self.train
            if outcomes is None:
                raise UsageError("this allocator needs training queries (train_query_ids)")
            probe, probe_j = self._probe(outcomes)
            meter = make_meter(self.overhead_meter)
            n = max(outcomes.n_queries, 1)
            meter.begin_window("features")
            x = self.policy.query_features(outcomes.questions, list(outcomes.tasks), probe)
            m_feat = meter.end_window("features")
            meter.begin_window("predict")
            p, e = self.policy.predict_features(x)
            m_pred = meter.end_window("predict")
            overhead = PolicyOverhead(
                features_j=m_feat.energy_j / n,
                predict_j=m_pred.energy_j / n,
                probe_j=probe_j,
                duration_s=m_feat.duration_s + m_pred.duration_s,
                meter=meter.name,
                source=meter.source,
            )
            self._predictions[which] = Predictions(p, e, overhead)
        return self._predictions[which]

    def has_predictions(self, which: str = "test") -> bool:
        return which in self._predictions

    def curve(self, name: str) -> Curve:
        if name not in self._curves:
            from eval.allocators import make_allocator  # the registry imports this module

            self._curves[name] = make_allocator(name).curve(self)
        return self._curves[name]


# ---------------------------------------------------------------- helpers


def _point(
    ctx: EvalContext, label: str, params: dict[str, Any], arm_idx: np.ndarray, extra_j: np.ndarray | float = 0.0
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


# ---------------------------------------------------------------- the allocators


class Allocator(ABC):
    """Produces a `Curve` for the context's held-out queries."""

    name: str = ""
    description: str = ""
    needs_policy: bool = False
    needs_train: bool = False
    needs_samples: bool = False
    needs_two_models: bool = False

    @abstractmethod
    def curve(self, ctx: EvalContext) -> Curve:
        """Operating points on `ctx.test`."""

    def unavailable(self, ctx: EvalContext) -> str | None:
        """Why this allocator cannot run in `ctx` (None when it can)."""
        if self.needs_policy and ctx.policy is None:
            return "needs a policy bundle"
        if self.needs_train and (ctx.train is None or ctx.train.n_queries == 0):
            return "needs training queries with outcomes for every arm"
        if self.needs_samples and ctx.samples is None:
            return "needs the raw samples table"
        if self.needs_two_models and ctx.big_model is None:
            return "needs two models in the grid"
        return None
