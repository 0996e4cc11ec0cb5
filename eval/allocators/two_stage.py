"""`two_stage`: look, then decide. Stage 1 always draws one sample; stage 2 picks the rest from its signals.

Stage 1 is the fold's cheapest one-sample arm (lowest mean joules on the fold's
training queries, counting arms within 5% of it as equally cheap and taking the
most accurate of those on the training queries). Its sample's
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

from eval.allocators.base import Curve, Outcomes, _dedupe, _point, hull_slopes, lambda_grid
from eval.allocators.context import Allocator, EvalContext
from policy.arms import Arm
from policy.errors import UsageError
from policy.two_stage import choose, continues, marginal_joules
from train.two_stage import (
    fit_stage_two_model,
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
    description = "one look from the cheapest arm's model, then the arm of best predicted accuracy per marginal joule"
    needs_policy = True
    needs_train = True
    needs_samples = True
    charged_overhead = True
    runs_policy = True

    def __init__(self, n_lambdas: int = 24) -> None:
        self.n_lambdas = n_lambdas

    def _fold(self, ctx: EvalContext, k: int) -> dict[str, Any]:
        """Fold k: stage-1 arm, stage-2 p on held-out queries, marginal joules, continuation mask, overhead."""
        from collect.energy import make_meter

        fold, arms = ctx.folds[k], ctx.arms
        models = sorted({a.model for a in arms})
        a1 = stage_one_arm(fold.train, arms)

        def rows(o: Outcomes) -> np.ndarray:
            sig = stage_one_signals(ctx.samples, list(o.query_ids), arms[a1])
            return stage_two_rows(o.questions, list(o.tasks), sig, arms, models)

        # soft labels (expected correctness) where the outcomes carry them, as `ttc train` fits it
        label = fold.train.correct if fold.train.correct_soft is None else fold.train.correct_soft
        model = fit_stage_two_model(rows(fold.train), label.reshape(-1).astype(np.float64), ctx.seed)
        meter = make_meter(ctx.overhead_meter)
        meter.begin_window("two_stage")
        p2 = predict_stage_two(model, rows(fold.test)).reshape(fold.test.n_queries, len(arms))
        stage2_j = meter.end_window("two_stage").energy_j / max(fold.test.n_queries, 1)
        pred = ctx.fold_predictions(k, "test")
        cont = continues(arms, arms[a1])
        e1 = fold.test.energy_j[:, a1]
        marginal = marginal_joules(pred.e, e1, cont)
        return {
            "model": model,
            "a1": a1,
            "p2": p2,
            "marginal": marginal,
            "cont": cont,
            "pred": pred,
            "stage2_j": stage2_j,
        }

    def curve(self, ctx: EvalContext) -> Curve:
        if ctx.samples is None:
            raise UsageError("two_stage replays the stage-1 sample: it needs the raw samples")
        folds = [self._fold(ctx, k) for k in range(len(ctx.folds))]
        where = [ctx.fold_rows(k) for k in range(len(ctx.folds))]
        n, n_arms = ctx.test.n_queries, len(ctx.arms)
        p2, marginal, cont = np.zeros((n, n_arms)), np.zeros((n, n_arms)), np.zeros((n, n_arms), dtype=bool)
        a1, stage2_j = np.zeros(n, dtype=np.int64), np.zeros(n)
        for f, r in zip(folds, where, strict=True):
            p2[r], marginal[r], cont[r], a1[r], stage2_j[r] = f["p2"], f["marginal"], f["cont"], f["a1"], f["stage2_j"]
        pred, q = ctx.predictions("test"), np.arange(n)
        settings = []
        for lam in with_midpoints(lambda_grid(hull_slopes(p2, marginal + 1e-9), self.n_lambdas)):
            # the exported rule's own choice (policy.two_stage.choose), so a bundle decides as simulated here
            settings.append((choose(p2, marginal, float(lam)), float(lam)))
        points = []
        for idx, lam in _dedupe(settings):
            # an arm that does not continue the stage-1 sample pays for stage 1 on top of its own joules
            extra = (
                pred.overhead.charged(idx, ctx.arms) + stage2_j + np.where(cont[q, idx], 0.0, ctx.test.energy_j[q, a1])
            )
            points.append(_point(ctx, f"two-stage lam={lam:.3g}", {"lam": lam}, idx, extra))
        notes = {"stage_one_arms": sorted({ctx.arm_ids[int(j)] for j in a1}), **stage_two_scores(p2, ctx.test.correct)}
        # scored at the strictly cheapest arm and at the arm each fold's rule looked at (a1)
        notes["within_task_auc"] = ctx.within_task_auc(p2, look=a1)
        return Curve(self.name, points, notes=notes)


def with_midpoints(lams: np.ndarray) -> np.ndarray:
    """The prices and one between each neighbouring pair (geometric; half the least positive next to 0), descending.

    A price exactly at a hull slope is a tie the rule breaks toward the cheaper arm; the prices between
    two slopes are the settled choices, and with few queries the quantile grid may hold no such price.
    """
    lams = np.unique(np.asarray(lams, dtype=np.float64))
    pos = lams[lams > 0]
    mids = np.sqrt(pos[:-1] * pos[1:]) if len(pos) > 1 else np.zeros(0)
    low = [pos[0] / 2] if len(pos) and lams[0] == 0 else []
    return np.unique(np.concatenate([lams, mids, low]))[::-1]


def stage_two_scores(p: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Held-out Brier score and AUC of a success predictor over every (query, arm) pair (hard labels)."""
    from sklearn.metrics import roc_auc_score

    y, pf = correct.reshape(-1).astype(float), p.reshape(-1)
    auc = float(roc_auc_score(y, pf)) if 0 < y.sum() < len(y) else float("nan")
    return {"success_brier": float(np.mean((pf - y) ** 2)), "success_auc": auc}
