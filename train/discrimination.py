"""Within-task discrimination: does a success predictor tell, inside one task, which queries an arm gets right?

A predictor that only knows the task (and the arm) cannot: whatever it
learned, it gives every query of a task the same score for an arm, and a
constant score has ROC AUC 0.5. So the figure issue 18 asks for is the AUC
*within each (task, arm) cell*, over that cell's queries, averaged:

- `macro_auc_cheapest_arm`: the mean over tasks of the cheapest arm's within-task AUC
  (the arm whose answer a cascade would look at first);
- `macro_auc_all_arms`: for each arm the mean over tasks, then the mean over arms;
- `within_task_auc_look` (the look-then-decide rule's first look): per query the column of the arm
  the query's fold rule looked at, which may be a little dearer than the cheapest arm (and may differ
  between folds): within each task the AUC per look arm over the task's queries that looked at it,
  weighted by their counts, then the mean over tasks.

A cell where every query is right (or every one wrong) has no AUC and is left
out of the means; the counts of cells used are returned beside them. Labels
are the realised votes (0/1); scores are any predicted P(success).
`roc_auc_score` (scikit-learn) gives tied scores half credit, so a per-task
(or per-(task, arm)) base rate scores exactly 0.5 in every cell.

numpy and scikit-learn only; never reads files or logs. `ttc train` prints it
for its held-out rows, eval writes it for every cross-fitted predictor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from policy.errors import UsageError


def cell_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of scores `p` against 0/1 labels `y`; NaN when only one class occurs."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y) >= 0.5
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(p, dtype=np.float64)))


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def within_task_auc(
    y: np.ndarray, p: np.ndarray, tasks: Sequence[str], arm_ids: Sequence[str], cheapest_arm: str
) -> dict[str, Any]:
    """Within-task AUCs (module docstring) of long rows: one (query, arm) per row, label `y`, score `p`.

    Returns macro_auc_cheapest_arm, macro_auc_all_arms, the cheapest arm, the
    cheapest arm's AUC per task, and how many cells were defined.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    tasks, arm_ids = np.asarray([str(t) for t in tasks]), np.asarray([str(a) for a in arm_ids])
    if not (len(y) == len(p) == len(tasks) == len(arm_ids)):
        raise UsageError(f"within-task AUC needs one label, score, task and arm per row; got {len(y)}, {len(p)}, ...")
    if str(cheapest_arm) not in set(arm_ids):
        raise UsageError(f"the cheapest arm {cheapest_arm!r} has no rows")
    per_arm: dict[str, dict[str, float]] = {}
    for a in sorted(set(arm_ids)):
        in_arm = arm_ids == a
        per_arm[str(a)] = {
            str(t): cell_auc(y[in_arm & (tasks == t)], p[in_arm & (tasks == t)]) for t in sorted(set(tasks))
        }
    cheap = per_arm[str(cheapest_arm)]
    return {
        "macro_auc_cheapest_arm": _mean(list(cheap.values())),
        "macro_auc_all_arms": _mean([_mean(list(c.values())) for c in per_arm.values()]),
        "cheapest_arm": str(cheapest_arm),
        "per_task_cheapest_arm": cheap,
        "n_tasks_defined_cheapest_arm": sum(math.isfinite(v) for v in cheap.values()),
        "n_cells_defined": sum(math.isfinite(v) for c in per_arm.values() for v in c.values()),
        "n_cells": sum(len(c) for c in per_arm.values()),
    }


def within_task_auc_matrix(
    correct: np.ndarray, p: np.ndarray, tasks: Sequence[str], arm_ids: Sequence[str], cheapest: int
) -> dict[str, Any]:
    """`within_task_auc` of (queries x arms) matrices; `cheapest` is the cheapest arm's column."""
    correct, p = np.asarray(correct), np.asarray(p)
    if correct.shape != p.shape or correct.ndim != 2 or correct.shape[1] != len(arm_ids):
        raise UsageError(f"within-task AUC needs matching (queries x arms) matrices, got {correct.shape}, {p.shape}")
    n, k = correct.shape
    return within_task_auc(
        correct.reshape(-1),
        p.reshape(-1),
        np.repeat(np.asarray([str(t) for t in tasks]), k),
        np.tile(np.asarray([str(a) for a in arm_ids]), n),
        str(arm_ids[cheapest]),
    )


def within_task_auc_look(
    correct: np.ndarray, p: np.ndarray, tasks: Sequence[str], arm_ids: Sequence[str], look: np.ndarray
) -> dict[str, Any]:
    """Within-task AUC of each query's own look column: `look[q]` is the column of the arm query q's rule
    looked at first. Cells are (task, look arm), so a per-(task, arm) base rate still scores 0.5; a task's
    AUC is its defined cells' mean weighted by their query counts; `macro_auc_look_arm` the mean over tasks.
    """
    correct, p = np.asarray(correct), np.asarray(p)
    look = np.asarray(look, dtype=np.int64)
    if correct.shape != p.shape or correct.ndim != 2 or look.shape != (correct.shape[0],):
        raise UsageError(f"the look-arm AUC needs (queries x arms) matrices and one look per query, got {look.shape}")
    if len(look) and (look.min() < 0 or look.max() >= correct.shape[1]):
        raise UsageError("a look arm is outside the arm grid")
    tasks = np.asarray([str(t) for t in tasks])
    q = np.arange(len(look))
    y, s = correct[q, look], p[q, look]
    per_task: dict[str, float] = {}
    for t in sorted(set(tasks)):
        aucs, weights = [], []
        for a in sorted(set(look[tasks == t].tolist())):
            cell = (tasks == t) & (look == a)
            auc = cell_auc(y[cell], s[cell])
            if math.isfinite(auc):
                aucs.append(auc)
                weights.append(int(cell.sum()))
        per_task[str(t)] = float(np.average(aucs, weights=weights)) if aucs else math.nan
    return {
        "macro_auc_look_arm": _mean(list(per_task.values())),
        "look_arms": sorted({str(arm_ids[int(a)]) for a in look}),
        "per_task_look_arm": per_task,
        "n_tasks_defined_look_arm": sum(math.isfinite(v) for v in per_task.values()),
    }
