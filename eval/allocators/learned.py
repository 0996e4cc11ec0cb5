"""Allocators that read the policy's predictions: `learned` (allocate swept over prices and budgets) and
`difficulty_bins` (Snell et al.'s recipe: quantile bins of predicted difficulty, best arm per bin).

Both are charged the metered joules of computing the policy's features and predictions, and the
probe's prefill when the chosen arm runs another model than the probe's (context.PolicyOverhead.charged).
Never reads files or logs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eval.allocators.base import Curve, _dedupe, _point, hull_slopes, lambda_grid
from eval.allocators.context import Allocator, EvalContext
from policy.errors import UsageError


class LearnedAllocator(Allocator):
    name = "learned"
    description = "the policy's predictions, allocate() swept over prices and budgets; charged its feature cost"
    needs_policy = True
    charged_overhead = True
    runs_policy = True

    def __init__(self, n_lambdas: int = 24, n_budgets: int = 12) -> None:
        self.n_lambdas = n_lambdas
        self.n_budgets = n_budgets

    def curve(self, ctx: EvalContext) -> Curve:
        pred = ctx.predictions("test")
        p, e = pred.p, pred.e
        qids = [str(q) for q in ctx.test.query_ids]
        col = {a: j for j, a in enumerate(ctx.arm_ids)}
        charged = pred.overhead.charged
        settings: list[tuple[np.ndarray, Any]] = []
        for lam in lambda_grid(hull_slopes(p, e), self.n_lambdas):
            dec = ctx.policy.allocate_predictions(p, e, qids, lam=float(lam))
            settings.append((np.asarray([col[d.arm_id] for d in dec]), ("price", float(lam))))
        points = [
            _point(ctx, f"price lam={lam:.3g}", {"mode": "price", "lam": lam}, idx, charged(idx, ctx.arms))
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
            points.append(_point(ctx, f"budget {b:.3g} J", params, idx, charged(idx, ctx.arms)))
        notes = {f"overhead_{k}": v for k, v in pred.overhead.summary().items()}
        return Curve(self.name, points, notes=notes)


class DifficultyBinsAllocator(Allocator):
    name = "difficulty_bins"
    description = "quantile bins of predicted difficulty (p of the cheapest arm), best arm per bin on training queries"
    needs_policy = True
    charged_overhead = True
    runs_policy = True
    needs_train = True

    def __init__(self, n_bins: int = 4) -> None:
        self.n_bins = n_bins

    def _fold_bins(self, ctx: EvalContext, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Fold k: (bin of each held-out query, per-bin accuracy, per-bin joules) from its training queries."""
        tr, te = ctx.fold_predictions(k, "train"), ctx.fold_predictions(k, "test")
        train = ctx.folds[k].train
        cheapest = int(np.argmin(tr.e.mean(axis=0)))
        d_tr, d_te = tr.p[:, cheapest], te.p[:, cheapest]
        edges = np.unique(np.quantile(d_tr, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        bin_tr, bin_te = np.searchsorted(edges, d_tr, side="right"), np.searchsorted(edges, d_te, side="right")
        n_bins = len(edges) + 1
        acc = np.stack([train.correct[bin_tr == b].mean(axis=0) for b in range(n_bins)])
        joules = np.stack([train.energy_j[bin_tr == b].mean(axis=0) for b in range(n_bins)])
        notes = {"n_bins": n_bins, "difficulty_arm": ctx.arm_ids[cheapest], "bin_edges_p": edges.tolist()}
        return bin_te, acc, joules, notes

    def curve(self, ctx: EvalContext) -> Curve:
        if self.n_bins < 1:
            raise UsageError(f"difficulty_bins needs n_bins >= 1, got {self.n_bins}")
        folds = [self._fold_bins(ctx, k) for k in range(len(ctx.folds))]
        rows = [ctx.fold_rows(k) for k in range(len(ctx.folds))]
        # The exact breakpoints: every slope of every bin's hull in every fold (ties go to the cheaper arm).
        slopes = [hull_slopes(acc, joules) for _, acc, joules, _ in folds]
        lams = np.unique(np.concatenate([[0.0], *slopes]))[::-1]
        settings = []
        for lam in lams:
            idx = np.zeros(ctx.test.n_queries, dtype=np.int64)
            for (bin_te, acc, joules, _), r in zip(folds, rows, strict=True):
                score = acc - lam * joules
                best = np.asarray([np.lexsort((joules[b], -score[b]))[0] for b in range(len(acc))])
                idx[r] = best[bin_te]
            settings.append((idx, float(lam)))
        charged = ctx.predictions("test").overhead.charged
        points = [
            _point(ctx, f"bins lam={lam:.3g}", {"lam": lam, "n_bins": self.n_bins}, idx, charged(idx, ctx.arms))
            for idx, lam in _dedupe(settings)
        ]
        notes = folds[0][3] if len(folds) == 1 else {"folds": [f[3] for f in folds]}
        return Curve(self.name, points, notes=notes)
