"""`two_stage`: look, then decide. Stage 1 always draws one sample; stage 2 picks the rest from its signals.

Stage 1 is the fold's cheapest one-sample arm (lowest mean joules on the fold's
training queries; its model is the cheapest arm's model). Its sample's
signals (`policy.features.FIRST_SAMPLE_NAMES`: mean and minimum token
log-probability and mean entropy over its tokens up to the cap, whether an
answer was extracted, its length) join the text features; a LightGBM
classifier trained per fold on the fold's training queries (label: the arm's
realised vote) predicts each arm's success given them. Stage 2 takes, at a
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
Never reads files, never logs; the stage-2 rule is not exported to bundles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from eval.allocators.base import Allocator, Curve, Outcomes, _dedupe, _point, hull_slopes, lambda_grid
from eval.allocators.context import EvalContext
from policy.arms import Arm
from policy.errors import UsageError
from policy.features import first_sample_signals, get_feature_set, row_matrix


def stage_one_arm(train: Outcomes, arms: list[Arm]) -> int:
    """The one-sample arm with the lowest mean training joules (ties: arm order)."""
    ones = [j for j, a in enumerate(arms) if a.n == 1]
    if not ones:
        raise UsageError("two_stage needs a one-sample arm in the grid (n=1) for its first look")
    mean_j = train.energy_j.mean(axis=0)
    return min(ones, key=lambda j: (mean_j[j], j))


def continues(arms: list[Arm], first: Arm) -> np.ndarray:
    """Per arm: whether it starts from the stage-1 sample (same model and temperature, cap >= stage 1's)."""
    return np.asarray(
        [a.model == first.model and a.temperature == first.temperature and a.max_new_tokens >= first.max_new_tokens
         for a in arms]
    )  # fmt: skip


def stage_one_signals(samples: pd.DataFrame, query_ids: Any, arm: Arm) -> np.ndarray:
    """(n, 5) first-sample signals of `arm` (n=1) for `query_ids`: the generation's first sample, cut at the cap."""
    g = samples[(samples["model"] == arm.model) & (samples["temperature"] == arm.temperature)]
    first = g.sort_values("sample_index", kind="stable").drop_duplicates("query_id").set_index("query_id")
    missing = [q for q in query_ids if q not in first.index]
    if missing:
        raise UsageError(f"{len(missing)} queries have no sample of {arm.arm_id}; evaluate on the store's queries")
    lps, ents, answered, tokens = [], [], [], []
    for q in query_ids:
        r = first.loc[q]
        li = [int(x) for x in r["levels"]].index(arm.max_new_tokens)
        k = int(r["level_output_tokens"][li])
        lps.append(list(r.get("token_logprob", []))[:k])
        ents.append(list(r.get("token_entropy", []))[:k])
        answered.append(r["level_answer"][li] is not None)
        tokens.append(k)
    return first_sample_signals(lps, ents, answered, tokens)


def _fit_stage_two(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """LightGBM on (query, signals, arm) rows; a constant when the labels hold one class only."""
    if len(np.unique(y)) < 2:
        return float(y[0]) if len(y) else 0.0
    from lightgbm import LGBMClassifier

    params = dict(n_estimators=150, learning_rate=0.05, num_leaves=7, min_child_samples=20, subsample=0.8)
    model = LGBMClassifier(**params, subsample_freq=1, random_state=seed, n_jobs=1, verbose=-1)
    return model.fit(x, y)


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.full(len(x), model) if isinstance(model, float) else model.predict_proba(x)[:, 1]


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

        fold, arms, text = ctx.folds[k], ctx.arms, get_feature_set("text")
        models = sorted({a.model for a in arms})
        a1 = stage_one_arm(fold.train, arms)

        def rows(o: Outcomes) -> np.ndarray:
            sig = stage_one_signals(ctx.samples, list(o.query_ids), arms[a1])
            return row_matrix(np.hstack([text.transform(o.questions, list(o.tasks)), sig]), arms, models)

        model = _fit_stage_two(rows(fold.train), fold.train.correct.reshape(-1).astype(int), ctx.seed)
        meter = make_meter(ctx.overhead_meter)
        meter.begin_window("two_stage")
        p2 = _predict(model, rows(fold.test)).reshape(fold.test.n_queries, len(arms))
        stage2_j = meter.end_window("two_stage").energy_j / max(fold.test.n_queries, 1)
        pred = ctx.fold_predictions(k, "test")
        cont = continues(arms, arms[a1])
        e1 = fold.test.energy_j[:, a1]
        marginal = np.where(cont[None, :], np.maximum(pred.e - e1[:, None], 0.0), pred.e)
        return {"a1": a1, "p2": p2, "marginal": marginal, "cont": cont, "pred": pred, "stage2_j": stage2_j}

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
        for lam in lambda_grid(hull_slopes(p2, marginal + 1e-9), self.n_lambdas):
            score = p2 - lam * marginal
            # ties go to the cheaper arm (lexsort's last key is primary)
            idx = np.asarray([np.lexsort((marginal[i], -score[i]))[0] for i in range(n)])
            settings.append((idx, float(lam)))
        points = []
        for idx, lam in _dedupe(settings):
            # an arm that does not continue the stage-1 sample pays for stage 1 on top of its own joules
            extra = (
                pred.overhead.charged(idx, ctx.arms) + stage2_j + np.where(cont[q, idx], 0.0, ctx.test.energy_j[q, a1])
            )
            points.append(_point(ctx, f"two-stage lam={lam:.3g}", {"lam": lam}, idx, extra))
        notes = {"stage_one_arms": sorted({ctx.arm_ids[int(j)] for j in a1}), **stage_two_scores(p2, ctx.test.correct)}
        return Curve(self.name, points, notes=notes)


def stage_two_scores(p: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Held-out Brier score and AUC of a success predictor over every (query, arm) pair (hard labels)."""
    from sklearn.metrics import roc_auc_score

    y, pf = correct.reshape(-1).astype(float), p.reshape(-1)
    auc = float(roc_auc_score(y, pf)) if 0 < y.sum() < len(y) else float("nan")
    return {"success_brier": float(np.mean((pf - y) ** 2)), "success_auc": auc}
