"""Allocators under evaluation: each turns held-out queries into a curve of operating points.

An allocator assigns every held-out query an arm (or, for early stopping, a
number of samples) at each of its settings; one setting is one operating point,
scored on the *realised* outcomes of the held-out queries (the ArmOutcome rows
from `store.views.arm_outcomes`), never on predictions. They are looked up by
name in `ALLOCATORS`, which the CLI's choices come from:

- learned: the policy's predictions, `allocate` swept over prices λ and over
  target budgets; charged the joules of computing its features and predictions
  (measured with the estimate meter) and of the probe, if it uses one.
- fixed: every grid arm for every query, one point per arm.
- model_scaling: the bigger model's arms for every query (its n=1 greedy arm at
  the longest cap is the reference "just use the bigger model").
- random: at each learned point's mean joules, query-blind random arms with the
  same mean joules (the maximum-entropy arm distribution with that mean),
  averaged over seeds.
- difficulty_bins: queries binned by predicted difficulty (the policy's p of
  the cheapest arm, quantile bins fitted on training queries), the best arm
  per bin chosen on training queries at each λ (Snell et al.'s recipe).
- early_stopping: draw samples one at a time in their collected order at one
  (model, L, temperature) and stop when the first k agree or the majority of
  n_max is settled; simulated from the raw samples.
- oracle: in hindsight, each query's cheapest correct arm (its cheapest arm if
  none is correct): the top point of the hindsight price sweep, whose points
  bound every one-arm-per-query assignment from above.

Every allocator chooses among the same grid: the policy's arms. This module
never reads files, never logs, and never re-derives arm outcomes from samples
(early stopping replays the samples' own level answers, as the arm view does).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import CurveData, pareto_frontier
from policy.allocate import upper_hull
from policy.arms import Arm
from policy.errors import UsageError, unknown_name
from policy.features import PROBE_NAMES
from store.views import vote


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


class LearnedAllocator(Allocator):
    name = "learned"
    description = "the policy's predictions, allocate() swept over prices and budgets; charged its feature cost"
    needs_policy = True

    def __init__(self, n_lambdas: int = 24, n_budgets: int = 12) -> None:
        self.n_lambdas = n_lambdas
        self.n_budgets = n_budgets

    def curve(self, ctx: EvalContext) -> Curve:
        pred = ctx.predictions("test")
        p, e = pred.p, pred.e
        qids = [str(q) for q in ctx.test.query_ids]
        col = {a: j for j, a in enumerate(ctx.arm_ids)}
        overhead = pred.overhead.per_query_j
        settings: list[tuple[np.ndarray, Any]] = []
        for lam in lambda_grid(hull_slopes(p, e), self.n_lambdas):
            dec = ctx.policy.allocate_predictions(p, e, qids, lam=float(lam))
            settings.append((np.asarray([col[d.arm_id] for d in dec]), ("price", float(lam))))
        points = [
            _point(ctx, f"price lam={lam:.3g}", {"mode": "price", "lam": lam}, idx, overhead)
            for idx, (_, lam) in _dedupe(settings)
        ]
        floor_j, top_j = float(e.min(axis=1).mean()), float(e.max(axis=1).mean())
        budget_settings = []
        for b in np.geomspace(floor_j * 1.02, max(top_j, floor_j * 1.04), self.n_budgets):
            dec = ctx.policy.allocate_predictions(p, e, qids, budget_j=float(b), on_infeasible="cheapest")
            budget_settings.append((np.asarray([col[d.arm_id] for d in dec]), ("budget", float(b))))
        rows = np.arange(len(qids))
        for idx, (_, b) in _dedupe(budget_settings):
            predicted = float(e[rows, idx].mean())
            params = {"mode": "budget", "budget_j": b, "predicted_energy_j": predicted}
            points.append(_point(ctx, f"budget {b:.3g} J", params, idx, overhead))
        o = pred.overhead
        notes = {
            "overhead_features_per_query_j": o.features_j,
            "overhead_predict_per_query_j": o.predict_j,
            "overhead_probe_per_query_j": float(np.mean(o.probe_j)),
            "overhead_duration_s": o.duration_s,
            "overhead_meter": o.meter,
            "overhead_source": o.source,
        }
        return Curve(self.name, points, notes=notes)


class FixedAllocator(Allocator):
    name = "fixed"
    description = "one grid arm for every query; one point per arm"

    def curve(self, ctx: EvalContext) -> Curve:
        n = ctx.test.n_queries
        points = [_point(ctx, a, {"arm_id": a}, np.full(n, j)) for j, a in enumerate(ctx.arm_ids)]
        return Curve(self.name, points)


class ModelScalingAllocator(Allocator):
    name = "model_scaling"
    description = "the bigger model's arms for every query (reference: its n=1 arm at the longest cap)"
    needs_two_models = True

    def curve(self, ctx: EvalContext) -> Curve:
        ref = scaling_reference_arm(ctx.arm_ids, ctx.big_model)
        n = ctx.test.n_queries
        points = [
            _point(ctx, a, {"arm_id": a, "reference": a == ref}, np.full(n, j))
            for j, a in enumerate(ctx.arm_ids)
            if Arm.parse(a).model == ctx.big_model
        ]
        return Curve(self.name, points, notes={"big_model": ctx.big_model, "reference_arm": ref})


def max_entropy_mix(arm_energy_j: np.ndarray, target_j: float) -> np.ndarray:
    """The arm distribution of highest entropy whose mean joules equal `target_j` (clipped to the arms' range).

    It is softmax(-β·e) for the β that meets the target (β = 0: uniform).
    """
    e = np.asarray(arm_energy_j, dtype=np.float64)
    scale = float(e.mean())
    x, t = e / scale, target_j / scale
    if t <= x.min():
        return (x == x.min()).astype(np.float64) / np.sum(x == x.min())
    if t >= x.max():
        return (x == x.max()).astype(np.float64) / np.sum(x == x.max())

    def mix(beta: float) -> np.ndarray:
        z = -beta * x
        w = np.exp(z - z.max())
        return w / w.sum()

    lo, hi = -1.0, 1.0
    while float(mix(lo) @ x) < t:
        lo *= 2
    while float(mix(hi) @ x) > t:
        hi *= 2
    for _ in range(200):  # mean joules fall as β rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(mix(mid) @ x) > t else (lo, mid)
    return mix((lo + hi) / 2)


class RandomAllocator(Allocator):
    name = "random"
    description = "query-blind random arms at each learned point's mean joules, averaged over seeds"

    def __init__(self, n_seeds: int = 20, n_points: int = 12) -> None:
        self.n_seeds = n_seeds
        self.n_points = n_points

    def curve(self, ctx: EvalContext) -> Curve:
        arm_e = ctx.test.energy_j.mean(axis=0)
        if ctx.policy is not None:
            learned = ctx.curve("learned")
            targets = [(p.mean_energy_j, p.label) for p in learned.points]
        else:
            targets = [(float(t), "grid") for t in np.geomspace(arm_e.min(), arm_e.max(), self.n_points)]
        n, na = ctx.test.n_queries, len(ctx.arm_ids)
        rows = np.arange(n)
        points = []
        for k, (target, label) in enumerate(targets):
            pi = max_entropy_mix(arm_e, target)
            correct, energy = np.zeros(n), np.zeros(n)
            first: np.ndarray | None = None
            for s in range(self.n_seeds):
                idx = np.random.default_rng([ctx.seed, k, s]).choice(na, size=n, p=pi)
                first = idx if first is None else first
                correct += ctx.test.correct[rows, idx]
                energy += ctx.test.energy_j[rows, idx]
            params = {"target_energy_j": float(target), "matched_to": label, "n_seeds": self.n_seeds}
            points.append(
                OperatingPoint(
                    label=f"random at {target:.3g} J",
                    params=params,
                    correct=correct / self.n_seeds,
                    energy_j=energy / self.n_seeds,
                    arm_ids=tuple(ctx.arm_ids[i] for i in first),
                )
            )
        notes = {"matched_to": "learned" if ctx.policy is not None else "grid"}
        return Curve(self.name, points, one_arm_per_query=False, notes=notes)


class DifficultyBinsAllocator(Allocator):
    name = "difficulty_bins"
    description = "quantile bins of predicted difficulty (p of the cheapest arm), best arm per bin on training queries"
    needs_policy = True
    needs_train = True

    def __init__(self, n_bins: int = 4) -> None:
        self.n_bins = n_bins

    def curve(self, ctx: EvalContext) -> Curve:
        if self.n_bins < 1:
            raise UsageError(f"difficulty_bins needs n_bins >= 1, got {self.n_bins}")
        tr, te = ctx.predictions("train"), ctx.predictions("test")
        cheapest = int(np.argmin(tr.e.mean(axis=0)))
        d_tr, d_te = tr.p[:, cheapest], te.p[:, cheapest]
        edges = np.unique(np.quantile(d_tr, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        bin_tr, bin_te = np.searchsorted(edges, d_tr, side="right"), np.searchsorted(edges, d_te, side="right")
        n_bins = len(edges) + 1
        acc = np.stack([ctx.train.correct[bin_tr == b].mean(axis=0) for b in range(n_bins)])
        joules = np.stack([ctx.train.energy_j[bin_tr == b].mean(axis=0) for b in range(n_bins)])
        # The exact breakpoints: every slope of every bin's hull (ties go to the cheaper arm).
        lams = np.unique(np.concatenate([[0.0], hull_slopes(acc, joules)]))[::-1]
        settings = []
        for lam in lams:
            score = acc - lam * joules
            best = np.asarray([np.lexsort((joules[b], -score[b]))[0] for b in range(n_bins)])
            settings.append((best[bin_te], float(lam)))
        overhead = te.overhead.per_query_j
        points = [
            _point(ctx, f"bins lam={lam:.3g}", {"lam": lam, "n_bins": n_bins}, idx, overhead)
            for idx, lam in _dedupe(settings)
        ]
        notes = {"n_bins": n_bins, "difficulty_arm": ctx.arm_ids[cheapest], "bin_edges_p": edges.tolist()}
        return Curve(self.name, points, notes=notes)


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


class OracleAllocator(Allocator):
    name = "oracle"
    description = "hindsight: each query's cheapest correct arm (cheapest arm if none): the upper bound"

    def __init__(self, max_points: int = 400) -> None:
        self.max_points = max_points

    def curve(self, ctx: EvalContext) -> Curve:
        c, e = ctx.test.correct, ctx.test.energy_j
        n = ctx.test.n_queries
        rows = np.arange(n)
        # cheapest arm, a correct one among equally cheap
        base = np.asarray([np.lexsort((-c[q], e[q]))[0] for q in rows])
        top = base.copy()
        slopes = np.full(n, -np.inf)
        for q in rows:
            if c[q, base[q]] < 1 and c[q].max() > 0:
                ok = np.flatnonzero(c[q] > 0)
                top[q] = ok[np.argmin(e[q, ok])]
                slopes[q] = 1.0 / max(e[q, top[q]] - e[q, base[q]], 1e-300)
        movers = np.flatnonzero(np.isfinite(slopes))
        order = movers[np.argsort(-slopes[movers], kind="stable")]
        # Points after the first m moves, best accuracy per joule first: the hindsight hull.
        cuts = np.unique(np.linspace(0, len(order), min(self.max_points, len(order) + 1)).round().astype(int))
        points = []
        for m in cuts:
            idx = base.copy()
            idx[order[:m]] = top[order[:m]]
            lam = float(slopes[order[m]]) if m < len(order) else 0.0
            label = "oracle" if m == len(order) else f"oracle lam={lam:.3g}"
            points.append(_point(ctx, label, {"lam": lam, "moves": int(m), "top": bool(m == len(order))}, idx))
        return Curve(self.name, points)


#: Allocators by name; the CLI's choices and the report's curves come from here.
ALLOCATORS: dict[str, Callable[[], Allocator]] = {
    LearnedAllocator.name: LearnedAllocator,
    FixedAllocator.name: FixedAllocator,
    ModelScalingAllocator.name: ModelScalingAllocator,
    RandomAllocator.name: RandomAllocator,
    DifficultyBinsAllocator.name: DifficultyBinsAllocator,
    EarlyStoppingAllocator.name: EarlyStoppingAllocator,
    OracleAllocator.name: OracleAllocator,
}


def make_allocator(name: str) -> Allocator:
    if name not in ALLOCATORS:
        raise unknown_name("allocator", name, ALLOCATORS)
    return ALLOCATORS[name]()


def run_allocators(ctx: EvalContext, names: Sequence[str] | None = None) -> tuple[dict[str, Curve], dict[str, str]]:
    """Curves of the named allocators (default: every one that can run), and why the others were skipped.

    A named allocator that cannot run in this context is a `UsageError`; with
    the default list it is skipped and its reason returned.
    """
    explicit = names is not None
    names = list(ALLOCATORS) if names is None else list(names)
    for nm in names:
        if nm not in ALLOCATORS:
            raise unknown_name("allocator", nm, ALLOCATORS)
    curves, skipped = {}, {}
    for nm in names:
        why = make_allocator(nm).unavailable(ctx)
        if why is not None:
            if explicit:
                raise UsageError(f"allocator {nm!r} {why}; drop it from the list or supply what it needs")
            skipped[nm] = why
            continue
        curves[nm] = ctx.curve(nm)
    return curves, skipped
