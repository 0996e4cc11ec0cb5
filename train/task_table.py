"""The per-task table: for each task, the one arm with the best accuracy - λ × joules on training queries.

It is the strongest simple alternative to a per-query policy (issue 18): a user
who knows only which task a query belongs to picks that task's best arm at
their price λ. A task absent from the training queries gets the arm of the
*global* table (one arm for every training query) at the same λ.

    from train.task_table import task_table, task_tables, price_grid
    table = task_table(rows, lam=0.01)           # rows: ArmOutcome rows (store.views.arm_outcomes)
    table.arm("gsm8k"), table.assign(["gsm8k", "unseen"])   # arm ids; unseen -> table.global_arm
    tables = task_tables(rows, price_grid(rows)) # every distinct table, most expensive price first

Choice rule (integer counts, never float means): within a group of n training
queries, arm j scores hits_j - λ × joules_j (its correct answers and its summed
joules, both over the group's n queries: the same order as accuracy - λ × mean
joules). The best score wins; ties go to more hits, then fewer joules, then the
arm id in sort order (eval's rule, eval.metrics.best_point). Joules are summed
with math.fsum, so a choice never depends on row order. Only queries with an
outcome for every arm count (as in eval's outcome matrices).

`price_grid` returns λ = 0, a price above every group's steepest hull slope
(everyone takes the cheapest arm), and the midpoints between consecutive
breakpoints (the slopes of every group's upper hull of (joules, hits)): one
price strictly inside every interval where the tables are constant, so a sweep
over it reaches every distinct table without resting on a float tie.

numpy and pandas only; never reads files or logs. Eval's `per_task` allocator
and the unseen-task evaluation build on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd

from policy.errors import UsageError
from policy.hulls import upper_hull

#: The arm-row columns the table reads.
NEEDED = ("query_id", "task", "arm_id", "correct", "energy_j")


@dataclass(frozen=True)
class TaskTable:
    """The table at one price: each training task's arm, and the global arm for every other task.

    `n_train` is the number of training queries behind each task's choice
    (complete queries only); `global_arm` was chosen on all of them.
    """

    lam: float
    arm_ids: tuple[str, ...]
    by_task: Mapping[str, str]
    global_arm: str
    n_train: Mapping[str, int]

    def arm(self, task: str) -> str:
        """The arm for a query of `task`: its task's, or the global arm for a task unseen in training."""
        return self.by_task.get(str(task), self.global_arm)

    def assign(self, tasks: Sequence[str]) -> list[str]:
        """The arm id for each query, given its task."""
        return [self.arm(t) for t in tasks]

    def index(self, tasks: Sequence[str], arm_ids: Sequence[str] | None = None) -> np.ndarray:
        """Column of each query's arm in `arm_ids` (default: the table's own arm order)."""
        col = {a: j for j, a in enumerate(arm_ids if arm_ids is not None else self.arm_ids)}
        try:
            return np.asarray([col[self.arm(t)] for t in tasks], dtype=np.int64)
        except KeyError as e:
            raise UsageError(f"the table's arm {e.args[0]!r} is not among the arms given") from None


# ---------------------------------------------------------------- matrices


@dataclass(frozen=True, eq=False)
class _Groups:
    """Per group (each task, then the global group last): hits (n_groups, n_arms) and summed joules."""

    names: list[str]
    hits: np.ndarray
    joules: np.ndarray
    n: list[int]


def _groups(tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray) -> _Groups:
    tasks = np.asarray([str(t) for t in tasks], dtype=object)
    correct = np.asarray(correct)
    energy_j = np.asarray(energy_j, dtype=np.float64)
    if correct.ndim != 2 or correct.shape != energy_j.shape or correct.shape[0] != len(tasks):
        raise UsageError(
            f"the table needs (queries x arms) correct and joules matrices with one task per query, "
            f"got {correct.shape}, {energy_j.shape} and {len(tasks)} tasks"
        )
    if len(tasks) == 0:
        raise UsageError("the table needs at least one training query with an outcome for every arm")
    if not np.isfinite(energy_j).all():
        raise UsageError("the table's joules must all be finite")
    names = sorted(set(tasks))
    masks = [tasks == t for t in names] + [np.ones(len(tasks), dtype=bool)]
    hits = np.stack([correct[m].astype(np.int64).sum(axis=0) for m in masks])
    joules = np.asarray([[math.fsum(col) for col in energy_j[m].T] for m in masks], dtype=np.float64)
    return _Groups(names, hits, joules, [int(m.sum()) for m in masks])


def _choose(hits: np.ndarray, joules: np.ndarray, arm_ids: Sequence[str], lam: float) -> int:
    """The best arm of one group: best hits - lam * joules; ties: more hits, fewer joules, arm id."""
    score = hits - lam * joules
    return min(range(len(arm_ids)), key=lambda j: (-score[j], -hits[j], joules[j], arm_ids[j]))


def _table(g: _Groups, arm_ids: Sequence[str], lam: float) -> TaskTable:
    if not (math.isfinite(lam) and lam >= 0):
        raise UsageError(f"the price lam must be a finite number >= 0, got {lam!r}")
    picks = [arm_ids[_choose(g.hits[k], g.joules[k], arm_ids, lam)] for k in range(len(g.names) + 1)]
    return TaskTable(
        lam=float(lam),
        arm_ids=tuple(arm_ids),
        by_task=MappingProxyType(dict(zip(g.names, picks[:-1], strict=True))),
        global_arm=picks[-1],
        n_train=MappingProxyType(dict(zip(g.names, g.n[:-1], strict=True))),
    )


def _check_arms(arm_ids: Sequence[str], n_cols: int) -> list[str]:
    arm_ids = [str(a) for a in arm_ids]
    if len(arm_ids) != n_cols or len(set(arm_ids)) != len(arm_ids) or not arm_ids:
        raise UsageError(f"the table needs {n_cols} distinct arm ids, one per column, got {len(arm_ids)}")
    return arm_ids


def tables_from_matrices(
    tasks: Sequence[str],
    correct: np.ndarray,
    energy_j: np.ndarray,
    arm_ids: Sequence[str],
    lams: Sequence[float],
) -> list[TaskTable]:
    """One `TaskTable` per price in `lams` from (queries x arms) outcome matrices (eval's `Outcomes`)."""
    sweep = TableSweep(tasks, correct, energy_j, arm_ids)
    return [sweep.at(lam) for lam in lams]


class TableSweep:
    """The per-task tables of one set of (queries x arms) outcomes at any price asked, one price at a time.

    The per-task sums are taken once, so a caller that learns its prices one by one (eval's `two_stage`
    sweeps thousands, five folds each) pays only the choice per price; `tables_from_matrices` is the
    same for a list of prices known ahead.
    """

    def __init__(self, tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray, arm_ids: Sequence[str]):
        self.arm_ids = _check_arms(arm_ids, np.shape(correct)[1] if np.ndim(correct) == 2 else -1)
        self._groups = _groups(tasks, correct, energy_j)

    def at(self, lam: float) -> TaskTable:
        return _table(self._groups, self.arm_ids, float(lam))


def _hull_slopes(hits: np.ndarray, joules: np.ndarray) -> list[float]:
    """Slopes (hits per joule) between consecutive points of the upper convex hull of (joules, hits)."""
    hull = upper_hull(joules, hits, exact=True)
    return [(hits[b] - hits[a]) / (joules[b] - joules[a]) for a, b in zip(hull, hull[1:], strict=False)]


def breakpoints_from_matrices(tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray) -> list[float]:
    """Every price at which some task's (or the global) choice changes: the slopes of each group's hull."""
    g = _groups(tasks, correct, energy_j)
    return [s for k in range(len(g.names) + 1) for s in _hull_slopes(g.hits[k], g.joules[k])]


def price_grid_from_matrices(tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray) -> np.ndarray:
    """Prices reaching every distinct table (module docstring), descending: the top one makes all cheapest."""
    return grid_from_slopes(breakpoints_from_matrices(tasks, correct, energy_j))


def grid_from_slopes(slopes: Sequence[float]) -> np.ndarray:
    """0, the midpoints between consecutive distinct breakpoints, and twice the steepest one; descending.

    Pooling the breakpoints of several tables (e.g. one per cross-fitting fold)
    gives a grid on which every one of them passes through all its distinct choices.
    """
    b = np.unique(np.asarray([s for s in slopes if math.isfinite(s) and s > 0], dtype=np.float64))
    if len(b) == 0:
        return np.asarray([0.0])
    mids = (b[:-1] + b[1:]) / 2
    return np.unique(np.concatenate([[0.0], mids, [2 * b[-1]]]))[::-1]


# ---------------------------------------------------------------- arm rows


def _matrices(rows: pd.DataFrame, arm_ids: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    missing = [c for c in NEEDED if c not in rows.columns]
    if missing:
        raise UsageError(f"the table needs arm rows (store.views.arm_outcomes); missing columns {missing}")
    arm_ids = sorted(set(rows["arm_id"].astype(str))) if arm_ids is None else [str(a) for a in arm_ids]
    rows = rows.assign(arm_id=rows["arm_id"].astype(str), query_id=rows["query_id"].astype(str))
    rows = rows[rows["arm_id"].isin(arm_ids)]
    if rows.duplicated(["query_id", "arm_id"]).any():
        raise UsageError("the arm rows hold a (query, arm) pair twice; pass one row per query and arm")
    complete = rows.groupby("query_id")["arm_id"].nunique()
    qids = sorted(complete.index[complete == len(arm_ids)])
    rows = rows[rows["query_id"].isin(qids)]

    def mat(col: str) -> np.ndarray:
        m = rows.pivot(index="query_id", columns="arm_id", values=col)
        return m.reindex(index=qids, columns=arm_ids).to_numpy(dtype=np.float64)

    tasks = rows.drop_duplicates("query_id").set_index("query_id").loc[qids, "task"].astype(str).to_numpy()
    return tasks, mat("correct").astype(np.int64), mat("energy_j"), arm_ids


def task_tables(rows: pd.DataFrame, lams: Sequence[float], arm_ids: Sequence[str] | None = None) -> list[TaskTable]:
    """The table at each price in `lams`, from training arm rows (one row per (query, arm)).

    `rows` has the arm-row columns query_id, task, arm_id, correct (0/1) and
    energy_j (the loader's model_rate joules); `arm_ids` restricts and orders
    the arms (default: every arm in the rows, sorted). Queries lacking any of
    the arms are left out.
    """
    tasks, correct, energy, arm_ids = _matrices(rows, arm_ids)
    return tables_from_matrices(tasks, correct, energy, arm_ids, lams)


def task_table(rows: pd.DataFrame, lam: float, arm_ids: Sequence[str] | None = None) -> TaskTable:
    """The table at price `lam` (accuracy - lam x joules per query) from training arm rows; see `task_tables`."""
    return task_tables(rows, [lam], arm_ids)[0]


def price_grid(rows: pd.DataFrame, arm_ids: Sequence[str] | None = None) -> np.ndarray:
    """Prices that reach every distinct table of these arm rows, most expensive first (module docstring)."""
    tasks, correct, energy, _ = _matrices(rows, arm_ids)
    return price_grid_from_matrices(tasks, correct, energy)
