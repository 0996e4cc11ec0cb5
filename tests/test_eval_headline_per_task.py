"""The headline against the per-task table and the soft oracle (issue 18), on the committed v1 reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from eval_helpers import random_outcomes

from eval.allocators import Curve, EvalContext, Fold, OperatingPoint, run_allocators
from eval.headline import compute_headline
from eval.metrics import accuracy_at_energy
from eval.report import headline_inputs

pytest_plugins = ["eval_fixtures"]


def _noisy(ctx: EvalContext, name: str, noise: float, seed: int) -> Curve:
    """A stand-in policy: per query the arm of best (expected accuracy + noise) - lam x joules, swept."""
    t, rng = ctx.test, np.random.default_rng(seed)
    guess = t.correct_soft + rng.normal(0, noise, t.correct_soft.shape)
    rows = np.arange(t.n_queries)
    pts = []
    for lam in np.geomspace(1e-3, 1.0, 40):
        idx = np.argmax(guess - lam * t.energy_j, axis=1)
        pts.append(OperatingPoint(f"{lam:.3g}", {}, t.correct[rows, idx], t.energy_j[rows, idx], ()))
    return Curve(name, pts)


@pytest.fixture(scope="module")
def table_curves():
    full = random_outcomes(31, 240, ["a", "b", "c"], soft=True)
    parts = [list(full.query_ids[j::4]) for j in range(4)]
    folds = [
        Fold(f"f{j}", full.subset(p), full.subset([q for q in full.query_ids if q not in set(p)]), None)
        for j, p in enumerate(parts)
    ]
    ctx = EvalContext(test=full.subset([q for p in parts for q in p]), folds=folds)
    curves, _ = run_allocators(ctx, ["fixed", "oracle", "per_task", "soft_oracle"])
    curves["learned"] = _noisy(ctx, "learned", 0.15, 1)
    curves["noisier"] = _noisy(ctx, "noisier", 0.4, 2)
    return ctx, curves


def _inputs(ctx, curves):
    return headline_inputs(ctx, curves, np.arange(ctx.test.n_queries))


def test_learned_minus_per_task_is_read_at_the_tables_top_point_joules(table_curves):
    ctx, curves = table_curves
    h = compute_headline(_inputs(ctx, curves), "estimated", n_boot=0, seed=0)
    te, ta = curves["per_task"].frontier_points()
    le, la = curves["learned"].frontier_points()
    se, sa = curves["soft_oracle"].frontier_points()
    assert len(te) >= 2
    assert h.per_task_top_energy_j.point == pytest.approx(te[-1])
    assert h.per_task_top_accuracy.point == pytest.approx(ta[-1])
    gain = accuracy_at_energy(le, la, te[-1]) - ta[-1]
    assert h.learned_minus_per_task_accuracy_at_equal_energy.point == pytest.approx(gain)
    ceiling = accuracy_at_energy(se, sa, te[-1]) - ta[-1]
    assert ceiling > 0.05  # per-query knowledge of the expected accuracy beats the table
    assert h.share_of_soft_oracle_gain.point == pytest.approx(gain / ceiling)
    assert {c.allocator for c in h.vs_per_task} == {"noisier"}


def test_the_table_captures_none_of_the_soft_oracles_gain_and_the_soft_oracle_all(table_curves):
    x = _inputs(*table_curves)
    x = dataclasses.replace(x, contenders={"table": x.per_task, "ceiling": x.soft_oracle})
    h = compute_headline(x, "estimated", n_boot=30, seed=0)
    by = {c.allocator: c for c in h.vs_per_task}
    assert by["table"].share_of_soft_oracle_gain.point == 0.0
    assert by["table"].minus_per_task_accuracy_at_equal_energy.high == 0.0  # paired: zero in every resample
    assert by["ceiling"].share_of_soft_oracle_gain.point == pytest.approx(1.0)
    assert by["ceiling"].share_of_soft_oracle_gain.low == pytest.approx(1.0)


def test_per_task_figures_reach_mlflow_under_names_derived_from_their_fields(table_curves):
    h = compute_headline(_inputs(*table_curves), "estimated", n_boot=20, seed=0)
    m = h.mlflow_metrics()
    for key in (
        "accuracy/learned_minus_per_task_accuracy_at_equal_energy",
        "accuracy/share_of_soft_oracle_gain",
        "energy_estimated/per_task_top_energy_j",
        "energy_estimated/learned_minus_per_task_energy_saved",
        "accuracy/vs_per_task/noisier/share_of_soft_oracle_gain_low",
    ):
        assert key in m and math.isfinite(m[key]), key
    assert set(h.to_json()["vs_per_task"]) == {"noisier"}


def test_the_report_names_both_references_side_by_side(staged):
    report, doc = staged
    md = report.markdown_path.read_text()
    assert f"against the best fixed arm ({doc['headline']['best_fixed_arm']})" in md
    assert "the per-task table (each task's best arm on its training queries)" in md
    assert doc["headline"]["per_task_top_energy_j"]["point"] > 0
    assert "per_task" in doc["curves"] and "soft_oracle" in doc["curves"]


def test_the_report_writes_each_predictors_within_task_auc(staged):
    report, doc = staged
    w = doc["within_task_auc"]
    assert set(w) == {"learned", "two_stage"} and w["learned"]["feature_set"] == "text"
    for v in w.values():
        assert v["n_cells"] == 8 * len(doc["arms"])  # the v1 reference's 8 tasks x every arm
        for key in ("macro_auc_cheapest_arm", "macro_auc_look_arm", "macro_auc_all_arms"):
            assert v[key] is None or 0.0 <= v[key] <= 1.0
        assert v["look_arms"] == doc["curves"]["two_stage"]["notes"]["stage_one_arms"]  # the rule's own look
        assert v["look_arm_energy_ratio_to_cheapest_estimated"] >= 1.0
    md = report.markdown_path.read_text()
    assert "## Within-task discrimination" in md and "macro AUC, look arm" in md


def test_a_task_base_rate_scores_one_half_within_tasks_in_the_context(table_curves):
    ctx, _ = table_curves
    t = ctx.test
    rate = np.stack([t.correct[t.tasks == task].mean(axis=0) for task in t.tasks])
    w = ctx.within_task_auc(rate)
    assert w["macro_auc_cheapest_arm"] == 0.5 and w["macro_auc_all_arms"] == 0.5
    assert ctx.within_task_auc(t.correct_soft)["macro_auc_all_arms"] > 0.6  # expected accuracy does discriminate


def test_the_look_arm_column_scores_exactly_the_arm_each_folds_rule_looked_at():
    from eval.allocators.two_stage import stage_one_arm
    from train.two_stage import task_looks

    # arm 1 (m/n1/L64) costs 2% more than arm 0 and is right on fold 0's queries only: each fold's rule
    # looks, per task, at the first sample of its per-task table arm at lam = 0 (the table's top point)
    base = random_outcomes(7, 240, ["a", "b", "c"])
    parts = [list(base.query_ids[j::4]) for j in range(4)]
    rng = np.random.default_rng(3)
    correct, energy = base.correct.copy(), base.energy_j.copy()
    in_fold0 = np.isin(base.query_ids, parts[0])
    correct[:, 0] = rng.random(240) < 0.15
    correct[:, 1] = rng.random(240) < np.where(in_fold0, 0.9, 0.05)
    energy[:, 1] = energy[:, 0] * 1.02
    full = dataclasses.replace(base, correct=correct, energy_j=energy, correct_soft=correct.astype(float))
    folds = [
        Fold(f"f{j}", full.subset(p), full.subset([q for q in full.query_ids if q not in set(p)]), None)
        for j, p in enumerate(parts)
    ]
    ctx = EvalContext(test=full.subset([q for p in parts for q in p]), folds=folds)
    t, look = ctx.test, ctx.look_arms()
    for k, fold in enumerate(ctx.folds):
        tr = fold.train
        by_task, glob = task_looks(list(tr.tasks), tr.correct, tr.energy_j, ctx.arms, 0.0, stage_one_arm(tr, ctx.arms))
        want = [by_task.get(str(task), glob) for task in fold.test.tasks]
        assert look[ctx.fold_rows(k)].tolist() == want  # the fold rule's own looks
        assert all(ctx.arms[a].n == 1 for a in want)
    assert len(set(look.tolist())) >= 2

    # perfect on each query's look column, reversed on every other column
    cols = np.arange(len(t.arm_ids))[None, :] == look[:, None]
    w = ctx.within_task_auc(np.where(cols, t.correct, 1 - t.correct).astype(float))
    assert w["macro_auc_look_arm"] == 1.0 and w["n_tasks_defined_look_arm"] == 3
    assert w["look_arms"] == sorted({t.arm_ids[a] for a in look}) and w["cheapest_arm"] == t.arm_ids[0]
    q = np.arange(t.n_queries)
    assert w["look_arm_energy_ratio_to_cheapest"] == pytest.approx(t.energy_j[q, look].mean() / t.energy_j[:, 0].mean())

    # a per-(task, arm) base rate knows nothing inside a task: 0.5 at the look arm too
    rate = np.stack([t.correct[t.tasks == task].mean(axis=0) for task in t.tasks])
    assert ctx.within_task_auc(rate)["macro_auc_look_arm"] == 0.5
    # an explicit look (as two_stage passes its own) overrides the folds' default
    assert ctx.within_task_auc(rate, look=np.zeros(t.n_queries, dtype=int))["look_arms"] == [t.arm_ids[0]]
