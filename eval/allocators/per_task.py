"""`per_task`: the per-task table (train.task_table), cross-fitted like `learned`: the yardstick of issue 18.

For each fold, the table is built from that fold's training queries only:
per task, the arm with the best accuracy - λ × joules (integer hits, fsum'd
joules; ties: more hits, fewer joules, arm id); a held-out query whose task has
no training query takes the arm of the global table (one arm for all training
queries) at the same λ. The sweep covers every price at which any fold's table
changes (the midpoints between the pooled hull breakpoints of every fold's
tasks, train.task_table.grid_from_slopes), so the curve holds every distinct
table; its convex frontier is what the headline compares the learned policy with.

Nothing is charged on top of the arm's joules: knowing a query's task costs
nothing. Never reads files or logs.
"""

from __future__ import annotations

import numpy as np

from eval.allocators.base import Curve, _dedupe, _point
from eval.allocators.context import Allocator, EvalContext
from train.task_table import breakpoints_from_matrices, grid_from_slopes, tables_from_matrices


class PerTaskAllocator(Allocator):
    name = "per_task"
    description = "per task, the arm with the best training accuracy - lam x joules (unseen task: the global arm)"
    needs_train = True

    def curve(self, ctx: EvalContext) -> Curve:
        trains = [f.train for f in ctx.folds]
        slopes = [s for tr in trains for s in breakpoints_from_matrices(tr.tasks, tr.correct, tr.energy_j)]
        lams = grid_from_slopes(slopes)
        idx = np.zeros((len(lams), ctx.test.n_queries), dtype=np.int64)
        unseen = 0
        for k, (fold, tr) in enumerate(zip(ctx.folds, trains, strict=True)):
            rows = ctx.fold_rows(k)
            tables = tables_from_matrices(tr.tasks, tr.correct, tr.energy_j, ctx.arm_ids, lams)
            for i, t in enumerate(tables):
                idx[i, rows] = t.index(fold.test.tasks, ctx.arm_ids)
            unseen += int(sum(str(t) not in tables[0].by_task for t in fold.test.tasks))
        settings = _dedupe([(idx[i], float(lam)) for i, lam in enumerate(lams)])
        points = [_point(ctx, f"per_task lam={lam:.3g}", {"lam": lam}, a) for a, lam in settings]
        notes = {"n_prices": len(lams), "n_distinct_tables": len(points), "n_test_queries_of_unseen_tasks": unseen}
        return Curve(self.name, points, notes=notes)
