"""train.task_table: the per-task table (issue 18's yardstick), on small hand-built rows and the real v1 reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from policy.errors import UsageError
from train.task_table import TaskTable, price_grid, task_table, task_tables


def _rows(spec: dict[str, dict[str, list[tuple[int, float]]]]) -> pd.DataFrame:
    """{task: {arm: [(correct, joules) per query]}} -> arm rows (query ids task-qN)."""
    out = []
    for task, arms in spec.items():
        for arm, vals in arms.items():
            for i, (c, j) in enumerate(vals):
                out.append({"query_id": f"{task}-q{i}", "task": task, "arm_id": arm, "correct": c, "energy_j": j})
    return pd.DataFrame(out)


ROWS = _rows(
    {
        # cheap arm right on "easy", the dear arm needed on "hard"
        "easy": {"a_cheap": [(1, 1.0), (1, 1.0), (0, 1.0)], "b_dear": [(1, 10.0), (1, 10.0), (1, 10.0)]},
        "hard": {"a_cheap": [(0, 1.0), (0, 1.0), (0, 1.0)], "b_dear": [(1, 10.0), (1, 10.0), (0, 10.0)]},
    }
)


def test_each_task_gets_its_own_best_arm_and_an_unseen_task_the_global_one():
    t = task_table(ROWS, lam=0.05)  # easy: 2-0.05*3=1.85 vs 3-1.5=1.5; hard: 0-0.15 vs 2-1.5=0.5
    assert isinstance(t, TaskTable)
    assert dict(t.by_task) == {"easy": "a_cheap", "hard": "b_dear"}
    # global: 2 - 0.3 = 1.7 vs 5 - 3.0 = 2.0
    assert t.global_arm == "b_dear"
    assert t.assign(["easy", "never-seen"]) == ["a_cheap", "b_dear"]
    assert dict(t.n_train) == {"easy": 3, "hard": 3}


def test_with_one_task_the_table_is_the_best_fixed_arm_at_that_price():
    rng = np.random.default_rng(3)
    n, arms = 40, [f"arm{j}" for j in range(6)]
    correct, joules = rng.integers(0, 2, (n, 6)), rng.uniform(0.5, 9.0, (n, 6))
    rows = pd.DataFrame(
        [
            {"query_id": f"q{i}", "task": "only", "arm_id": a, "correct": correct[i, j], "energy_j": joules[i, j]}
            for i in range(n)
            for j, a in enumerate(arms)
        ]
    )
    for lam in [0.0, 0.01, 0.05, 0.2, 5.0]:
        score = correct.mean(axis=0) - lam * joules.mean(axis=0)
        best = max(range(6), key=lambda j: (round(score[j], 12), correct[:, j].sum(), -joules[:, j].sum()))
        t = task_table(rows, lam)
        assert t.arm("only") == arms[best] == t.global_arm


def test_ties_go_to_more_hits_then_fewer_joules_then_arm_id():
    rows = _rows({"t": {"z": [(1, 2.0)], "y": [(1, 2.0)], "x": [(1, 3.0)], "w": [(0, 1.0)]}})
    assert task_table(rows, 0.0).arm("t") == "y"  # x, y, z all hit; y and z cheapest; y before z


def test_row_order_does_not_change_the_table():
    shuffled = ROWS.sample(frac=1.0, random_state=7)
    for lam in (0.0, 0.05, 0.2):
        assert task_table(shuffled, lam) == task_table(ROWS, lam)


def test_a_sweep_over_the_price_grid_reaches_every_table_a_dense_sweep_finds(reference_samples):
    from store.views import arm_outcomes

    rows = arm_outcomes(reference_samples)
    grid = price_grid(rows)
    assert list(grid) == sorted(grid, reverse=True) and grid[-1] == 0.0
    top = task_table(rows, float(grid[0]))  # above every hull slope: each task's cheapest arm
    for task, g in rows.groupby("task"):
        sums = g.groupby("arm_id").agg(j=("energy_j", "sum"), h=("correct", "sum"))
        assert top.arm(task) == sums.sort_values(["j", "h"], ascending=[True, False]).index[0]

    def key(t: TaskTable) -> tuple:
        return (tuple(sorted(t.by_task.items())), t.global_arm)

    on_grid = {key(t) for t in task_tables(rows, grid)}
    dense = {key(t) for t in task_tables(rows, np.geomspace(1e-6, float(grid[0]), 400))}
    assert dense <= on_grid


def test_bad_rows_and_prices_are_one_line_usage_errors():
    with pytest.raises(UsageError, match="missing columns"):
        task_table(ROWS.drop(columns=["energy_j"]), 0.1)
    with pytest.raises(UsageError, match="lam"):
        task_table(ROWS, -1.0)
    with pytest.raises(UsageError, match="twice"):
        task_table(pd.concat([ROWS, ROWS.head(1)]), 0.1)
    with pytest.raises(UsageError, match="at least one"):
        task_table(ROWS, 0.1, arm_ids=["a_cheap", "not-an-arm"])
