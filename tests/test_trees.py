"""The numpy tree evaluator (policy/trees.py, policy/forest.py) against LightGBM itself."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
from policy_fixtures import MODELS, synthetic_arms, synthetic_questions, train_boosters

from policy.bundle import load_bundle
from policy.features import arm_block, get_feature_set, row_matrix
from train.export import _float32_safe_thresholds


def test_numpy_trees_match_lightgbm_within_1e6_on_many_rows_and_through_the_grid_path(bundle_dir):
    lg, nu = load_bundle(bundle_dir, "lightgbm"), load_bundle(bundle_dir, "numpy")
    questions, tasks, _ = synthetic_questions(400, seed=12)
    x = nu.query_features(questions, tasks)
    rows = row_matrix(x, nu.arms, nu.models)
    p_l, le_l = lg.backend.predict_rows(rows)
    p_g, le_g = nu.backend.predict_grid(x, arm_block(nu.arms, nu.models))
    assert np.max(np.abs(p_g.reshape(-1) - p_l)) <= 1e-6 and np.max(np.abs(le_g.reshape(-1) - le_l)) <= 1e-6
    p_r, le_r = nu.backend.predict_rows(rows)
    # the grid path sums each row's trees in the same order as the row path: identical bits, any batch size
    assert np.array_equal(p_r, p_g.reshape(-1)) and np.array_equal(le_r, le_g.reshape(-1))
    p_one, _ = nu.backend.predict_grid(x[:1], arm_block(nu.arms, nu.models))
    assert np.array_equal(p_one, p_g[:1])


def test_numpy_trees_follow_lightgbm_on_missing_and_zero_values():
    """NaN and zero inputs take LightGBM's default directions (models trained with missing values)."""
    from policy.trees import TreeEnsemble
    from train.export import trees_json

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.2] = 0.0
    y = np.nan_to_num(x[:, 0]) - 2 * np.isnan(x[:, 1]) + (x[:, 2] == 0)
    for params in ({}, {"zero_as_missing": True}):
        b = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 7, **params}, lgb.Dataset(x, y), 20)
        model = trees_json(b, "identity")
        assert {m for t in model["trees"] for m in t["missing_type"]} - {"None"}, "no missing handling exercised"
        ens = TreeEnsemble.from_json(model, 4)
        assert np.max(np.abs(ens.predict(x) - b.predict(x))) <= 1e-9


def test_float32_snapped_thresholds_predict_exactly_like_the_original_booster():
    success, _ = train_boosters(n_queries=120, n_trees=10)
    snapped = lgb.Booster(model_str=_float32_safe_thresholds(success.model_to_string()))
    questions, tasks, _ = synthetic_questions(100, seed=3)
    fs = get_feature_set("text")
    rows = row_matrix(fs.transform(questions, tasks), synthetic_arms(), MODELS)
    assert np.array_equal(success.predict(rows), snapped.predict(rows))


def test_stored_tree_thresholds_are_float32_values(bundle_dir):
    model = json.loads((bundle_dir / "success.trees.json").read_text())
    thresholds = np.asarray([t for tree in model["trees"] for t in tree["threshold"]])
    assert len(thresholds) > 0 and np.array_equal(thresholds.astype(np.float32).astype(np.float64), thresholds)


def test_the_grid_path_falls_back_to_full_rows_for_a_huge_model_with_the_same_result(bundle_dir, monkeypatch):
    import policy.trees

    nu = load_bundle(bundle_dir)
    x = nu.query_features(*synthetic_questions(30, seed=2)[:2])
    want = nu.backend.predict_grid(x, arm_block(nu.arms, nu.models))
    monkeypatch.setattr(policy.trees, "MAX_SPECIALISE_WORK", 0)
    got = load_bundle(bundle_dir).backend.predict_grid(x, arm_block(nu.arms, nu.models))
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


def test_the_all_nodes_walk_takes_the_step_walks_decisions_bit_for_bit_on_nan_zero_and_one_row(monkeypatch):
    """A few rows decide every node at once (Forest._next_nodes); more rows walk a step at a time: same leaves."""
    import policy.forest
    from policy.trees import TreeEnsemble
    from train.export import trees_json

    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 5))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.2] = 0.0
    y = np.nan_to_num(x[:, 0]) - 2 * np.isnan(x[:, 1]) + (x[:, 2] == 0) + x[:, 3] * (x[:, 4] > 0)
    for params in ({}, {"zero_as_missing": True}):
        b = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 15, **params}, lgb.Dataset(x, y), 30)
        ens = TreeEnsemble.from_json(trees_json(b, "identity"), 5)
        few = [x[i : i + 1] for i in range(0, 400, 7)] + [x[:3], x[np.isnan(x).any(axis=1)][:2], np.zeros((1, 5))]
        assert len(ens.forest.value) * 3 <= policy.forest.ALL_NODES_CELLS, "the rows above must take the new path"
        assert len(set(ens.forest.root_depth.tolist())) > 2, "trees of several depths: the deepest-first walk"
        # the grid path: trees specialised on two "arm" columns (the last two), shared between arms where equal
        arms = np.asarray([[0.0, 1.0], [np.nan, -1.0], [0.5, 0.0]])
        grid = [r[:, :3] for r in few[:8]] + [np.zeros((1, 3))]
        got = [ens.raw_score(r) for r in few] + [ens.raw_score_grid(g, arms) for g in grid]
        monkeypatch.setattr(policy.forest, "ALL_NODES_CELLS", 0)
        ens = TreeEnsemble.from_json(trees_json(b, "identity"), 5)  # no cached grid forest
        want = [ens.raw_score(r) for r in few] + [ens.raw_score_grid(g, arms) for g in grid]
        monkeypatch.undo()
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        for g, grid_rows in zip(got[len(few) :], grid, strict=True):  # specialised on NaN and zero arm values
            rows = np.hstack([np.repeat(grid_rows, len(arms), axis=0), np.tile(arms, (len(grid_rows), 1))])
            assert np.array_equal(g.reshape(-1), ens.raw_score(rows))
        assert np.max(np.abs(np.concatenate(got[: len(few)]) - b.predict(np.concatenate(few)))) <= 1e-9
