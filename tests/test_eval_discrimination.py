"""train.discrimination: AUC inside each task (issue 18), where knowing the task alone is worth nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy.errors import UsageError
from train.discrimination import within_task_auc, within_task_auc_matrix

ARMS = ["cheap", "mid", "dear"]


def _table(seed: int, n: int = 300):
    """(correct, tasks): three tasks of very different difficulty, three arms; label noise inside each task."""
    rng = np.random.default_rng(seed)
    tasks = np.asarray(["easy", "mid", "hard"])[rng.integers(0, 3, n)]
    level = {"easy": 0.8, "mid": 0.5, "hard": 0.15}
    p_true = np.clip(np.asarray([level[t] for t in tasks])[:, None] + rng.normal(0, 0.25, (n, 3)), 0, 1)
    return (rng.random((n, 3)) < p_true).astype(int), tasks, p_true


def test_a_per_task_base_rate_scores_one_half_in_every_cell():
    correct, tasks, _ = _table(0)
    # each (task, arm)'s training mean: a constant inside every cell, whatever its value
    rate = np.stack([[correct[tasks == t, j].mean() for j in range(3)] for t in tasks])
    w = within_task_auc_matrix(correct, rate, tasks, ARMS, 0)
    assert w["macro_auc_cheapest_arm"] == 0.5 and w["macro_auc_all_arms"] == 0.5
    assert all(v == 0.5 for v in w["per_task_cheapest_arm"].values())
    assert w["n_cells_defined"] == w["n_cells"] == 9


def test_task_knowledge_that_wins_the_pooled_auc_wins_nothing_within_tasks():
    from sklearn.metrics import roc_auc_score

    correct, tasks, _ = _table(1)
    rate = np.stack([[correct[tasks == t, j].mean() for j in range(3)] for t in tasks])
    assert roc_auc_score(correct.reshape(-1), rate.reshape(-1)) > 0.75  # pooled over tasks it looks good
    assert within_task_auc_matrix(correct, rate, tasks, ARMS, 0)["macro_auc_all_arms"] == 0.5


def test_the_expected_accuracy_discriminates_within_tasks_and_its_reverse_is_the_mirror():
    correct, tasks, p_true = _table(2)
    w = within_task_auc_matrix(correct, p_true, tasks, ARMS, 0)
    r = within_task_auc_matrix(correct, -p_true, tasks, ARMS, 0)
    assert w["macro_auc_cheapest_arm"] > 0.6
    assert w["macro_auc_cheapest_arm"] + r["macro_auc_cheapest_arm"] == pytest.approx(1.0)
    assert w["macro_auc_all_arms"] + r["macro_auc_all_arms"] == pytest.approx(1.0)


def test_a_task_where_the_arm_is_always_right_is_left_out_and_counted():
    y = np.asarray([1, 1, 1, 0, 1, 0])
    p = np.asarray([0.9, 0.2, 0.5, 0.1, 0.8, 0.3])
    tasks = ["solved"] * 3 + ["open"] * 3
    w = within_task_auc(y, p, tasks, ["a"] * 6, "a")
    assert math.isnan(w["per_task_cheapest_arm"]["solved"])
    assert w["macro_auc_cheapest_arm"] == 1.0 and w["n_tasks_defined_cheapest_arm"] == 1


def test_mismatched_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="one label"):
        within_task_auc([1, 0], [0.5], ["t", "t"], ["a", "a"], "a")
    with pytest.raises(UsageError, match="no rows"):
        within_task_auc([1, 0], [0.5, 0.2], ["t", "t"], ["a", "a"], "b")
    with pytest.raises(UsageError, match="matrices"):
        within_task_auc_matrix(np.ones((2, 3)), np.ones((2, 2)), ["t", "t"], ARMS, 0)


def test_ttc_train_prints_the_within_task_auc_beside_the_base_rate(capsys):
    from types import SimpleNamespace

    from train.report import print_summary

    metrics = {
        "success/test_within_task_auc_cheapest_arm": 0.61,
        "success/baseline_test_within_task_auc_cheapest_arm": 0.5,
        "success/test_within_task_auc_all_arms": 0.66,
        "success/baseline_test_within_task_auc_all_arms": 0.5,
    }
    print_summary(metrics, SimpleNamespace(n_queries=10, rows=[0] * 30), 1.0)
    out = capsys.readouterr().out
    assert "within_task_auc_cheapest_arm" in out and "0.6100" in out and "0.5000" in out
