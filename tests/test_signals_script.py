"""scripts/signals.py: within-task AUC ignores what tells tasks apart; a signal is oriented on training folds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "signals.py"


@pytest.fixture(scope="module")
def signals():
    spec = importlib.util.spec_from_file_location("signals", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_per_task_base_rate_scores_one_half_and_a_within_task_ranking_one(signals) -> None:
    tasks = np.array(["a"] * 4 + ["b"] * 4)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])  # task a mostly right, task b mostly wrong
    base_rate = np.where(tasks == "a", 0.75, 0.25)  # separates the pooled labels, not the ones inside a task
    assert signals.within_task_auc(y, base_rate, tasks) == (0.5, 2)
    inside = np.array([0.9, 0.8, 0.7, 0.1, 0.3, 0.2, 0.1, 0.4])  # ranks right above wrong inside each task only
    assert signals.within_task_auc(y, inside, tasks) == (1.0, 2)
    one_class = np.array(["a"] * 4 + ["c"] * 4)
    assert signals.within_task_auc(np.array([1, 1, 0, 0, 1, 1, 1, 1]), inside, one_class)[1] == 1  # c skipped


def test_a_signal_is_oriented_on_the_training_folds_only(signals) -> None:
    tasks = np.array(["a"] * 8)
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    s = np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0])  # folds 0-2: low means right; fold 3 the reverse
    fold = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    out = signals.crossfit_direction(y, s, tasks, fold)
    assert out[:6].tolist() == (-s[:6]).tolist()  # flipped by the other folds' direction
    assert out[6:].tolist() == (-s[6:]).tolist()  # and fold 3 flipped too, though its own labels disagree
    assert signals.within_task_auc(y, out, tasks)[0] < 1.0  # so its held-out score is not fitted to itself


def test_the_other_draws_share_reads_only_the_same_models_later_t1_draws_at_that_cap(signals) -> None:
    def look(right: int) -> tuple:
        return ("1", right, 0.0, 0.0, 0.0, 0.0, 3, 1.0, "")

    looks = {
        "q1": {("m", "t1", 0, 16): look(1), ("m", "t1", 1, 16): look(1), ("m", "t1", 2, 16): look(0),
               ("m", "t1", 1, 32): look(0), ("m", "greedy", 0, 16): look(0), ("o", "t1", 1, 16): look(0),
               "question": "?"},
        "q2": {("m", "t1", 0, 16): look(0), "question": "?"},
    }  # fmt: skip
    got = signals.other_draws_mean(["q1", "q2"], looks, "m", 16)
    assert got[0] == 0.5 and np.isnan(got[1])  # draw 0 itself, other caps, greedy and the other model left out
