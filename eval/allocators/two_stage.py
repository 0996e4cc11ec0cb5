"""`two_stage`: look, then decide. Stage 1 always draws one sample; stage 2 picks the rest from its signals.

Stage 1 depends on the query's task and the price λ (since issue 18,
`train.two_stage.task_looks`): the first sample of the arm the per-task table
of the fold's training queries gives that task at λ (its one-sample version:
same model, temperature and cap), so continuing to the table's own choice
pays nothing twice; a task the fold never trained on looks at the global
table arm's first sample. Each first look has its own stage-2 model, fitted
per fold on demand. Before issue 18 every query looked at the cheapest
one-sample arm, and that look's joules were wasted on every task whose table
arm runs the other model. Its sample's
signals (`policy.features.STAGE2_SIGNAL_NAMES`: mean and minimum token
log-probability and mean entropy over its tokens up to the cap, whether an
answer was extracted, its length, and the equations its text writes and how
many are wrong) join the text features; a LightGBM
model trained per fold on the fold's training queries (label: the arm's
expected correctness `correct_soft`, cross-entropy) predicts each arm's success given them. Stage 2 takes, at a
price λ, the arm with the most predicted accuracy minus λ x its *marginal*
joules (the fold policy's predicted joules, less the stage-1 joules already
spent when the arm continues that sample). Choosing the stage-1 arm itself is
"stop here".

Simulated exactly on the collected samples: an arm of the stage-1 sample's
model and temperature with a cap >= stage 1's starts from that very sample
(collection's first sample, continued to the longer cap, then the next
samples), so its realised joules and vote are the arm's own and already hold
stage 1's; any other arm (other model or temperature) is charged stage 1's
joules on top of its own, and its vote is its own samples' (stage 1's answer
is not added to it). Plus the policy's metered features/predictions (and
probe, context.PolicyOverhead.charged) and the metered stage-2 prediction.
Never reads files, never logs. The fitting (train/two_stage.py) and the choice
(policy/two_stage.py) are the ones `ttc train` exports into a bundle's stage2.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eval.allocators.base import Curve, Outcomes, _point, hull_slopes, lambda_grid
from eval.allocators.context import Allocator, EvalContext
from policy.arms import Arm
from policy.errors import UsageError
from policy.two_stage import choose, continues, marginal_joules
from train.task_table import breakpoints_from_matrices, grid_from_slopes
from train.two_stage import (
    StageTwoData,
    predict_stage_two,
    stage_one_index,
    stage_one_signals,
    stage_two_rows,
)

__all__ = ["TwoStageAllocator", "continues", "stage_one_arm", "stage_one_signals", "stage_two_scores"]


def stage_one_arm(train: Outcomes, arms: list[Arm]) -> int:
    """The most accurate of the one-sample arms within 5% of the lowest mean training joules (`stage_one_index`)."""
    return stage_one_index(train.energy_j.mean(axis=0), arms, train.correct.mean(axis=0))


class TwoStageAllocator(Allocator):
    name = "two_stage"
    description = "one look per task (its table arm's first sample), then the best predicted accuracy per joule"
    needs_policy = True
    needs_train = True
    needs_samples = True
    charged_overhead = True
    runs_policy = True

    def __init__(self, n_lambdas: int = 24) -> None:
        self.n_lambdas = n_lambdas

    def _fold(self, ctx: EvalContext, k: int) -> dict[str, Any]:
        """Fold k's stage-2 rule, fitted per first look on demand: P(correct) of its held-out queries, joules."""
        from collect.energy import make_meter

        fold, arms = ctx.folds[k], ctx.arms
        tr, te = fold.train, fold.test
        # soft labels (expected correctness) where the outcomes carry them, as `ttc train` fits it
        label = tr.correct if tr.correct_soft is None else tr.correct_soft
        # the very object `ttc train` fits and exports from (train.two_stage.StageTwoData.fit_at)
        data = StageTwoData(
            ctx.samples, list(tr.query_ids), list(tr.questions), [str(t) for t in tr.tasks], list(arms),
            sorted({a.model for a in arms}), np.asarray(label, dtype=np.float64), tr.correct, tr.energy_j, ctx.seed,
            stage_one_arm(tr, arms),
        )  # fmt: skip
        cache: dict[int, np.ndarray] = {}
        meter_j: list[float] = []

        def p2_after(a1: int) -> np.ndarray:
            """(test queries, arms) P(correct) after a look at arm a1 (the model of `ttc train`'s rule)."""
            if a1 not in cache:
                model = data.model_for(a1)
                sig = stage_one_signals(ctx.samples, list(te.query_ids), arms[a1])
                x = stage_two_rows(te.questions, list(te.tasks), sig, arms, data.models)
                meter = make_meter(ctx.overhead_meter)
                meter.begin_window("two_stage")
                cache[a1] = predict_stage_two(model, x).reshape(te.n_queries, len(arms))
                meter_j.append(meter.end_window("two_stage").energy_j / max(te.n_queries, 1))
            return cache[a1]

        def looks(lam: float) -> np.ndarray:
            """Each held-out query's first look at `lam` (train.two_stage.task_looks on the fold's training queries)."""
            return data.query_looks(te.tasks, lam)

        return {"data": data, "p2_after": p2_after, "looks": looks, "pred": ctx.fold_predictions(k, "test"),
                "meter_j": meter_j}  # fmt: skip

    def curve(self, ctx: EvalContext) -> Curve:
        if ctx.samples is None:
            raise UsageError("two_stage replays the stage-1 sample: it needs the raw samples")
        folds = [self._fold(ctx, k) for k in range(len(ctx.folds))]
        where = [ctx.fold_rows(k) for k in range(len(ctx.folds))]
        n, n_arms = ctx.test.n_queries, len(ctx.arms)
        conts = np.stack([continues(ctx.arms, a) for a in ctx.arms])  # conts[a1, j]: arm j continues a look at a1
        q = np.arange(n)

        def at(lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(p2, marginal joules, first look) of every held-out query when the tables are priced at `lam`."""
            p2, marginal, a1 = np.zeros((n, n_arms)), np.zeros((n, n_arms)), np.zeros(n, dtype=np.int64)
            for f, r in zip(folds, where, strict=True):
                look = f["looks"](lam)
                a1[r] = look
                for a in np.unique(look):
                    m = look == a
                    p2[r[m]] = f["p2_after"](int(a))[m]
                    e1 = ctx.test.energy_j[r[m], a]
                    marginal[r[m]] = marginal_joules(f["pred"].e[m], e1, conts[a])
            return p2, marginal, a1

        # every distinct table of every fold (the per_task allocator's grid)
        slopes = [s for fd in ctx.folds for s in breakpoints_from_matrices(fd.train.tasks, fd.train.correct,
                                                                          fd.train.energy_j)]  # fmt: skip
        # and, inside each regime of the tables, the prices where stage 2's choices change after those looks
        # (quantiles of its hull slopes); one price between each neighbouring pair of all these breakpoints
        table_lams = grid_from_slopes(slopes)
        p0, _, a0 = at(0.0)
        stage2 = [lambda_grid(hull_slopes(p, m + 1e-9), self.n_lambdas) for p, m, _ in map(at, table_lams)]
        lams = grid_from_slopes([*slopes, *np.concatenate(stage2)])
        settings = []
        for lam in lams:
            p2, marginal, a1 = at(float(lam))
            # the exported rule's own choice (policy.two_stage.choose), so a bundle decides as simulated here
            idx = np.zeros(n, dtype=np.int64)
            for a in np.unique(a1):
                m = a1 == a
                idx[m] = choose(p2[m], marginal[m], float(lam))
            settings.append(((idx, a1), float(lam)))
        stage2_j = np.zeros(n)
        for f, r in zip(folds, where, strict=True):
            stage2_j[r] = float(np.mean(f["meter_j"])) if f["meter_j"] else 0.0
        pred = ctx.predictions("test")
        points, seen = [], set()
        for (idx, a1), lam in settings:
            key = np.concatenate([idx, a1]).tobytes()
            if key in seen:
                continue
            seen.add(key)
            # an arm that does not continue the query's look pays for the look on top of its own joules
            look_j = np.where(conts[a1, idx], 0.0, ctx.test.energy_j[q, a1])
            extra = pred.overhead.charged(idx, ctx.arms) + stage2_j + look_j
            points.append(_point(ctx, f"two-stage lam={lam:.3g}", {"lam": lam}, idx, extra))
        notes = {"stage_one_arms": sorted({ctx.arm_ids[int(j)] for j in a0}), **stage_two_scores(p0, ctx.test.correct)}
        # scored at the strictly cheapest arm and at each query's look, at the table's top point (lam = 0)
        notes["within_task_auc"] = ctx.within_task_auc(p0, look=a0)
        return Curve(self.name, points, notes=notes)


def stage_two_scores(p: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Held-out Brier score and AUC of a success predictor over every (query, arm) pair (hard labels)."""
    from sklearn.metrics import roc_auc_score

    y, pf = correct.reshape(-1).astype(float), p.reshape(-1)
    auc = float(roc_auc_score(y, pf)) if 0 < y.sum() < len(y) else float("nan")
    return {"success_brier": float(np.mean((pf - y) ** 2)), "success_auc": auc}
