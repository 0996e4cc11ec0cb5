"""`EvalContext`: everything the allocators read, with the policy (or one policy per cross-fitting fold) metered;
and `Allocator`, the base class of what reads it.

A context holds the held-out queries' outcomes (`test`) and one or more
`Fold`s: each fold names a part of the held-out queries, the queries its
policy was trained on, and that policy. Without cross-fitting there is one
fold: the held-out split and the bundle. With cross-fitting every query is
held out by exactly one fold, and its predictions come from the policy that
never saw it; `predictions("test")` pools them in `test` order.

The policy's own cost (features, predictions, probe) is metered per fold with
the overhead meter and charged per query. The probe is one prefill of the
probe model on the prompt (its joules: the side table's `prefill_energy_j`):
when the chosen arm runs that model, generation reuses that prefill and its
joules are already in the arm's (collection charges the prefill to the first
sample), so nothing extra is charged; when the arm runs another model the
probe is an extra prefill and its joules are added (`PolicyOverhead.charged`).
Never reads files, never logs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from eval.allocators.base import Curve, Outcomes
from policy.arms import Arm
from policy.errors import UsageError


@dataclass(frozen=True, eq=False)
class Fold:
    """One cross-fitting fold: its held-out queries' outcomes, its training queries' outcomes, its policy."""

    name: str
    test: Outcomes
    train: Outcomes | None
    policy: Any


@dataclass(frozen=True, eq=False)
class PolicyOverhead:
    """Joules per query the policy spends before any arm runs (per-query arrays), and where they came from."""

    features_j: np.ndarray
    predict_j: np.ndarray
    probe_j: np.ndarray
    duration_s: float
    meter: str
    source: str
    #: the model whose prefill the probe is (None: no probe)
    probe_model: str | None = None

    @property
    def per_query_j(self) -> np.ndarray:
        """Every part, the probe's prefill included (its cost when no chosen arm shares it)."""
        return self.features_j + self.predict_j + self.probe_j

    def charged(self, arm_idx: np.ndarray, arms: Sequence[Arm]) -> np.ndarray:
        """Joules per query when query i runs arm `arms[arm_idx[i]]`: the probe's prefill only on another model."""
        extra = self.probe_j
        if self.probe_model is not None:
            other = np.asarray([a.model != self.probe_model for a in arms], dtype=bool)[np.asarray(arm_idx)]
            extra = np.where(other, self.probe_j, 0.0)
        return self.features_j + self.predict_j + extra

    def summary(self) -> dict[str, Any]:
        """Mean joules per query of each part, the metering time, and the meter."""
        return {
            "features_per_query_j": float(np.mean(self.features_j)),
            "predict_per_query_j": float(np.mean(self.predict_j)),
            "probe_per_query_j": float(np.mean(self.probe_j)),
            "per_query_j": float(np.mean(self.per_query_j)),
            "duration_s": self.duration_s,
            # the probe's prefill is charged only to queries whose chosen arm runs another model (`charged`)
            "probe_model": self.probe_model,
            "meter": self.meter,
            "source": self.source,
        }


@dataclass(frozen=True, eq=False)
class Predictions:
    p: np.ndarray
    e: np.ndarray
    overhead: PolicyOverhead


def _pool(parts: Sequence[tuple[np.ndarray, Predictions]], n: int) -> Predictions:
    """Fold predictions placed at their rows of the pooled query order."""
    first = parts[0][1]
    p = np.zeros((n, first.p.shape[1]), dtype=first.p.dtype)
    e = np.zeros((n, first.e.shape[1]), dtype=first.e.dtype)
    feats, preds, probes = np.zeros(n), np.zeros(n), np.zeros(n)
    for rows, pr in parts:
        p[rows], e[rows] = pr.p, pr.e
        feats[rows], preds[rows], probes[rows] = pr.overhead.features_j, pr.overhead.predict_j, pr.overhead.probe_j
    o = first.overhead
    duration = sum(pr.overhead.duration_s for _, pr in parts)
    return Predictions(p, e, PolicyOverhead(feats, preds, probes, duration, o.meter, o.source, o.probe_model))


class EvalContext:
    """Held-out outcomes, the folds (policies and their training queries), the raw samples, cached curves.

    `predictions(which)` runs each fold's policy once per query set and caches
    it (for held-out queries, under the overhead meter); `curve(name)` runs and
    caches an allocator, so random can match the learned curve's joules.
    Passing `policy` (and `train`) without `folds` makes the single fold.
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
        folds: Sequence[Fold] | None = None,
        probes: Any = None,
    ) -> None:
        if test.n_queries == 0:
            raise UsageError("no held-out query has an outcome for every arm of the policy; nothing to evaluate")
        self.test = test
        self.folds = list(folds) if folds is not None else [Fold("all", test, train, policy)]
        self._check_folds()
        self.policy = self.folds[0].policy
        self.train = train if folds is None else None  # with folds, each fold holds its own
        self.samples = samples
        self.big_model = big_model
        self.seed = seed
        self.overhead_meter = overhead_meter
        #: the store's probe side table (store.probes.ProbeTable) for "text+probe" policies
        self.probes = probes
        self.arms = [Arm.parse(a) for a in test.arm_ids]
        self._predictions: dict[tuple[int, str], Predictions] = {}
        self._curves: dict[str, Curve] = {}
        self._cache: dict[str, Any] = {}

    def _check_folds(self) -> None:
        seen: list[str] = [str(q) for f in self.folds for q in f.test.query_ids]
        if len(seen) != len(set(seen)) or set(seen) != {str(q) for q in self.test.query_ids}:
            raise UsageError("the folds must hold out every evaluated query exactly once")
        ids = {tuple(f.policy.arm_ids) for f in self.folds if f.policy is not None}
        if len(ids) > 1:
            raise UsageError("the folds' policies choose among different arms; train every fold on one store")
        for f in self.folds:
            if f.train is not None and set(map(str, f.train.query_ids)) & set(map(str, f.test.query_ids)):
                raise UsageError(f"fold {f.name!r} trains on some of its held-out queries")

    @property
    def has_train(self) -> bool:
        """Whether every fold has training queries with outcomes for every arm."""
        return all(f.train is not None and f.train.n_queries > 0 for f in self.folds)

    @property
    def arm_ids(self) -> list[str]:
        return self.test.arm_ids

    def fold_rows(self, k: int) -> np.ndarray:
        """Rows of `test` that fold k holds out, in the fold's own order."""
        return pd.Index(self.test.query_ids).get_indexer(list(self.folds[k].test.query_ids))

    def _probe(self, policy: Any, outcomes: Outcomes) -> tuple[np.ndarray | None, np.ndarray]:
        """Raw probe vectors of `outcomes`' queries and their prefill joules (none for a text-only policy)."""
        n = outcomes.n_queries
        if not policy.needs_probe:
            return None, np.zeros(n)
        if self.probes is None:
            raise UsageError(
                "this policy reads a prefill probe: evaluate it on a store with a probe side table "
                "(probes=store.probes.load_probes(store, model)), or evaluate a 'text' policy"
            )
        if self.probes.model != policy.probe_model:
            raise UsageError(
                f"the policy's probe reads model {policy.probe_model!r} but the probes given are of "
                f"{self.probes.model!r}; load the probes of {policy.probe_model!r}"
            )
        return self.probes.rows(outcomes.query_ids)

    def fold_predictions(self, k: int, which: str = "test") -> Predictions:
        """Fold k's policy on its held-out ("test") or training ("train") queries, metered."""
        fold = self.folds[k]
        if fold.policy is None:
            raise UsageError("this allocator needs a policy bundle")
        if (k, which) not in self._predictions:
            from collect.energy import make_meter

            outcomes = fold.test if which == "test" else fold.train
            if outcomes is None:
                raise UsageError("this allocator needs training queries (train_query_ids)")
            probe, probe_j = self._probe(fold.policy, outcomes)
            meter = make_meter(self.overhead_meter)
            n = max(outcomes.n_queries, 1)
            meter.begin_window("features")
            x = fold.policy.query_features(outcomes.questions, list(outcomes.tasks), probe)
            m_feat = meter.end_window("features")
            meter.begin_window("predict")
            # the exported rule: a task the fold's policy never saw gets its k = 0 rule (policy/tasks.py)
            p, e = fold.policy.route_tasks(*fold.policy.predict_features(x), list(outcomes.tasks))
            m_pred = meter.end_window("predict")
            ones = np.ones(outcomes.n_queries)
            overhead = PolicyOverhead(
                features_j=ones * m_feat.energy_j / n,
                predict_j=ones * m_pred.energy_j / n,
                probe_j=probe_j,
                duration_s=m_feat.duration_s + m_pred.duration_s,
                meter=meter.name,
                source=meter.source,
                probe_model=fold.policy.probe_model,
            )
            self._predictions[(k, which)] = Predictions(p, e, overhead)
        return self._predictions[(k, which)]

    def predictions(self, which: str = "test") -> Predictions:
        """Held-out predictions pooled over folds in `test` order ("test"), or the single fold's "train" ones."""
        if which == "train":
            if len(self.folds) != 1:
                raise UsageError("training predictions are per fold; use fold_predictions(k, 'train')")
            return self.fold_predictions(0, "train")
        if (-1, which) not in self._predictions:
            parts = [(self.fold_rows(k), self.fold_predictions(k, which)) for k in range(len(self.folds))]
            self._predictions[(-1, which)] = _pool(parts, self.test.n_queries)
        return self._predictions[(-1, which)]

    def within_task_auc(self, p: np.ndarray, look: np.ndarray | None = None) -> dict[str, Any]:
        """Within-task AUC (train.discrimination) of success scores `p` (queries x arms, `test` order) against
        the held-out votes; the cheapest arm is the one of least mean joules on the held-out queries.

        Beside it, the look-then-decide rule's first look: `look` (per query, `test` order, the column its
        fold's rule looked at; default `look_arms()`) scored by `within_task_auc_look`, and that arm's mean
        held-out joules over the cheapest arm's (`look_arm_energy_ratio_to_cheapest`). None where no fold
        rule can be named.
        """
        from train.discrimination import within_task_auc_look, within_task_auc_matrix

        mean_j = self.test.energy_j.mean(axis=0)
        cheapest = int(np.argmin(mean_j))
        out = within_task_auc_matrix(self.test.correct, p, self.test.tasks, self.arm_ids, cheapest)
        look = self.look_arms() if look is None else np.asarray(look, dtype=np.int64)
        if look is None:
            none = ("macro_auc_look_arm", "look_arms", "per_task_look_arm", "look_arm_energy_ratio_to_cheapest")
            return {**out, **dict.fromkeys(none), "n_tasks_defined_look_arm": 0}
        q = np.arange(self.test.n_queries)
        ratio = float(self.test.energy_j[q, look].mean() / mean_j[cheapest]) if mean_j[cheapest] > 0 else math.nan
        look_auc = within_task_auc_look(self.test.correct, p, self.test.tasks, self.arm_ids, look)
        return {**out, **look_auc, "look_arm_energy_ratio_to_cheapest": ratio}

    def look_arms(self) -> np.ndarray | None:
        """Per held-out query (`test` order) the column of the arm its fold's look-then-decide rule looks at
        first at the per-task table's top point (lam = 0): `train.two_stage.task_looks` on the fold's
        training queries (as eval's two_stage and `ttc train` choose it), else the fold bundle's stage-2
        first arm; None where a fold has neither."""
        if "look" not in self._cache:
            from train.two_stage import query_looks, stage_one_index

            look = np.full(self.test.n_queries, -1, dtype=np.int64)
            for k, fold in enumerate(self.folds):
                first = getattr(fold.policy, "first_arm", None)
                if fold.train is not None and fold.train.n_queries > 0:
                    tr = fold.train
                    try:
                        cheapest = stage_one_index(tr.energy_j.mean(axis=0), self.arms, tr.correct.mean(0))
                    except UsageError:  # no one-sample arm: no rule looks first
                        look[self.fold_rows(k)] = -1
                        continue
                    a1 = query_looks(fold.test.tasks, list(tr.tasks), tr.correct, tr.energy_j, self.arms, 0.0, cheapest)
                elif isinstance(first, str) and first in self.arm_ids:
                    a1 = self.arm_ids.index(first)
                else:
                    a1 = -1
                look[self.fold_rows(k)] = a1
            self._cache["look"] = None if (look < 0).any() else look
        return self._cache["look"]

    def has_predictions(self, which: str = "test") -> bool:
        return (-1, which) in self._predictions

    def curve(self, alloc: Allocator) -> Curve:
        """`alloc`'s curve on this context, computed once per allocator name."""
        if alloc.name not in self._curves:
            self._curves[alloc.name] = replace(alloc.curve(self), charged_overhead=alloc.charged_overhead)
        return self._curves[alloc.name]


class Allocator(ABC):
    """Produces a `Curve` for the context's held-out queries."""

    name: str = ""
    description: str = ""
    needs_policy: bool = False
    needs_train: bool = False
    needs_samples: bool = False
    needs_two_models: bool = False
    #: whether its points are charged the policy's metered cost (features, predictions, probe)
    charged_overhead: bool = False
    #: whether it runs the policy on the held-out queries (so the overhead meter's joules enter the report)
    runs_policy: bool = False

    @abstractmethod
    def curve(self, ctx: EvalContext) -> Curve:
        """Operating points on `ctx.test`."""

    def unavailable(self, ctx: EvalContext) -> str | None:
        """Why this allocator cannot run in `ctx` (None when it can)."""
        if self.needs_policy and ctx.policy is None:
            return "needs a policy bundle"
        if self.needs_train and not ctx.has_train:
            return "needs training queries with outcomes for every arm"
        if self.needs_samples and ctx.samples is None:
            return "needs the raw samples table"
        if self.needs_two_models and ctx.big_model is None:
            return "needs two models in the grid"
        return None
