"""The per_task and soft_oracle allocators (issue 18's yardstick and ceiling): properties on small real matrices."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import ARMS
from eval_helpers import random_outcomes as _outcomes

from eval.allocators import EvalContext, Fold, Outcomes, run_allocators
from eval.allocators.soft_oracle import soft_choice
from eval.metrics import accuracy_at_energy


def _per_task(test: Outcomes, train: Outcomes):
    ctx = EvalContext(test=test, folds=[Fold("f", test, train, None)])
    return run_allocators(ctx, ["per_task"])[0]["per_task"]


def test_with_one_task_per_task_is_the_best_fixed_arm_at_each_price():
    train, test = _outcomes(1, 60, ["only"], "tr"), _outcomes(2, 30, ["only"], "te")
    curve = _per_task(test, train)
    assert len(curve.points) >= 2
    for p in curve.points:
        lam = p.params["lam"]
        score = train.correct.sum(axis=0) - lam * train.energy_j.sum(axis=0)
        best = max(range(len(ARMS)), key=lambda j: (score[j], train.correct[:, j].sum(), -train.energy_j[:, j].sum()))
        assert set(p.arm_ids) == {ARMS[best]}


def test_an_unseen_task_gets_the_global_arm_at_the_same_price():
    from train.task_table import tables_from_matrices

    train, test = _outcomes(3, 80, ["a", "b"], "tr"), _outcomes(4, 20, ["c"], "te")
    curve = _per_task(test, train)
    assert curve.notes["n_test_queries_of_unseen_tasks"] == 20
    for p in curve.points:
        t = tables_from_matrices(train.tasks, train.correct, train.energy_j, ARMS, [p.params["lam"]])[0]
        assert set(p.arm_ids) == {t.global_arm}


def test_per_task_never_reads_the_held_out_outcomes():
    train, test = _outcomes(5, 90, ["a", "b", "c"], "tr"), _outcomes(6, 45, ["a", "b", "c"], "te")
    flipped = Outcomes(
        test.query_ids, test.tasks, test.questions, ARMS, 1 - test.correct, test.energy_j[:, ::-1] * 3,
        test.output_tokens, test.answered, test.correct_soft,
    )  # fmt: skip
    assert [p.arm_ids for p in _per_task(test, train).points] == [p.arm_ids for p in _per_task(flipped, train).points]


def test_cross_fitted_per_task_assigns_each_fold_from_its_own_training_queries():
    from train.task_table import tables_from_matrices

    full = _outcomes(7, 120, ["a", "b", "c"])
    parts = [full.query_ids[j::3] for j in range(3)]
    folds = [
        Fold(f"f{j}", full.subset(p), full.subset([q for q in full.query_ids if q not in set(p)]), None)
        for j, p in enumerate(parts)
    ]
    ctx = EvalContext(test=full.subset([q for p in parts for q in p]), folds=folds)
    curve = run_allocators(ctx, ["per_task"])[0]["per_task"]
    for p in curve.points:
        for k, f in enumerate(folds):
            t = tables_from_matrices(f.train.tasks, f.train.correct, f.train.energy_j, ARMS, [p.params["lam"]])[0]
            assert [p.arm_ids[r] for r in ctx.fold_rows(k)] == t.assign(f.test.tasks)


def test_soft_oracle_is_at_least_per_task_at_every_energy_when_trained_on_the_test_queries():
    """With deterministic arms (correct_soft = correct) and the table built on the very same outcomes."""
    for seed in range(4):
        test = _outcomes(10 + seed, 90, ["a", "b", "c"], "te")
        train = Outcomes(
            np.asarray([f"tr{q}" for q in test.query_ids], dtype=object), test.tasks, test.questions, ARMS,
            test.correct, test.energy_j, test.output_tokens, test.answered, test.correct_soft,
        )  # fmt: skip
        pt = _per_task(test, train)
        so = run_allocators(EvalContext(test=test), ["soft_oracle"])[0]["soft_oracle"]
        se, sa = so.frontier_points()
        for e, a in zip(*pt.frontier_points(), strict=True):
            assert accuracy_at_energy(se, sa, e) >= a - 1e-12


def test_soft_oracle_chooses_by_expected_accuracy_and_is_scored_on_the_realised_outcomes():
    test = _outcomes(20, 50, ["a", "b"], soft=True)
    so = run_allocators(EvalContext(test=test), ["soft_oracle"])[0]["soft_oracle"]
    top = next(p for p in so.points if p.params["lam"] == 0.0)
    rows = np.arange(test.n_queries)
    best = test.correct_soft.max(axis=1)
    assert top.params["expected_accuracy"] == pytest.approx(best.mean())
    idx = [ARMS.index(a) for a in top.arm_ids]
    assert (test.correct_soft[rows, idx] == best).all()
    assert top.hits == int(test.correct[rows, idx].sum())
    assert so.notes["top_expected_accuracy"] == max(p.params["expected_accuracy"] for p in so.points)
    # among equally good arms the cheaper one wins
    soft = np.asarray([[0.5, 0.5, 0.25]])
    assert soft_choice(soft, np.asarray([[3.0, 2.0, 1.0]]), 0.0).tolist() == [1]
