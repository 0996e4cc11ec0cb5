"""Properties of the evaluation stage: allocators, metrics, bootstrap, the report.

The allocators, the bootstrap on real outcomes and the stage's report run on the
committed reference collection (data/reference: 128 real queries of 8 tasks x
2 models, smollm2-135m and the bigger gemma3-270m, 8 samples at temperature 0.7
plus one greedy per (query, model), graded at 16/32/64 tokens, estimated
joules), read once per session by conftest.py's `reference_samples`. The
learned policy is a LightGBM pair trained on 70% of its queries and exported
with policy.bundle.write_bundle; the other 39 queries are held out.

Two properties need structure known to exist, which 39 real held-out queries
do not supply, and run on tests/synthetic.py's Sample table instead (marked
`synthetic_` below): that the learned policy beats the best fixed arm where
queries differ learnably, and that the report calls a factual task for model
scaling when the bigger model knows the facts. On the reference collection
neither holds: see those tests' docstrings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.allocators import (
    ALLOCATORS,
    EvalContext,
    Outcomes,
    max_entropy_mix,
    run_allocators,
    stop_after,
)
from eval.metrics import (
    accuracy_at_energy,
    bootstrap,
    energy_at_accuracy,
)
from policy.errors import MixedEnergyError, UsageError
from policy.records import ESTIMATED, MEASURED

LEVELS = [16, 32, 64]
#: 30% of the reference's 128 queries (39) held out, as in every fixture below.
TEST_SIZE = 0.3
SEED = 0


def _dataset(samples: pd.DataFrame):
    from train.dataset import build_dataset, make_split

    data = build_dataset(samples, feature_set="text", seed=SEED)
    return data, make_split(data, "query", test_size=TEST_SIZE, seed=SEED)


def _bundle(dataset, folder: Path) -> Path:
    """A policy trained on the training queries only, exported as a real bundle."""
    import lightgbm as lgb

    from policy.allocate import DecisionRule
    from train.export import write_bundle

    data, sp = dataset
    x, rows = data.X[sp.train], data.rows.iloc[sp.train]
    params = {"num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    success = lgb.train({**params, "objective": "cross_entropy"}, lgb.Dataset(x, rows["correct_soft"]), 60)
    energy = lgb.train({**params, "objective": "regression"}, lgb.Dataset(x, np.log(rows["energy_j"])), 60)
    n_query_cols = len(data.feature_set.names())
    return write_bundle(
        folder / "bundle",
        success,
        energy,
        data.arms,
        data.models,
        data.feature_set,
        DecisionRule(),
        {"fixture": 1},
        energy_meter="estimate",
        energy_source=ESTIMATED,
        reference_x=data.X[sp.train[:: len(data.arms) * 4], :n_query_cols],
    )


def _context(samples: pd.DataFrame, dataset, bundle: Path) -> EvalContext:
    from policy.bundle import load_bundle
    from store.views import queries

    data, sp = dataset
    policy = load_bundle(bundle)
    full = Outcomes.from_arm_rows(data.rows, policy.arm_ids, queries(samples))
    return EvalContext(
        test=full.subset(sp.test_query_ids),
        train=full.subset(sp.train_query_ids),
        samples=samples,
        policy=policy,
        big_model="gemma3-270m",
        seed=SEED,
    )


def _stage(store, dataset, bundle: Path, root: Path, n_boot: int, allocators=None) -> tuple:
    """One eval_stage run into a temporary MLflow store: (EvalReport, its JSON report)."""
    from eval.stage import eval_stage

    _, sp = dataset
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # setup_tracking puts artifacts under ./mlruns/artifacts
        report = eval_stage(
            store,
            bundle,
            root / "out",
            test_query_ids=sp.test_query_ids,
            train_query_ids=sp.train_query_ids,
            n_boot=n_boot,
            seed=SEED,
            tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            allocators=allocators,
        )
    return report, json.loads(report.json_path.read_text())


# ---------------------------------------------------------------- fixtures: the reference collection


@pytest.fixture(scope="module")
def samples(reference_samples: pd.DataFrame) -> pd.DataFrame:
    return reference_samples


@pytest.fixture(scope="module")
def dataset(samples):
    return _dataset(samples)


@pytest.fixture(scope="module")
def bundle(dataset, tmp_path_factory):
    return _bundle(dataset, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def ctx(samples, dataset, bundle) -> EvalContext:
    return _context(samples, dataset, bundle)


@pytest.fixture(scope="module")
def curves(ctx):
    curves, skipped = run_allocators(ctx)
    assert skipped == {}
    return curves


@pytest.fixture(scope="module")
def staged(reference_store, dataset, bundle, tmp_path_factory):
    """One eval_stage run on the reference store folder (small bootstrap)."""
    return _stage(reference_store, dataset, bundle, tmp_path_factory.mktemp("eval"), n_boot=60)


# ---------------------------------------------------------------- fixtures: synthetic, for known structure


@pytest.fixture(scope="module")
def synthetic():
    """(samples, (dataset, split)) of tests/synthetic.py's table: 150 queries, 45 held out."""
    from synthetic import synthetic_samples

    samples = synthetic_samples(n_queries=150, seed=0)
    return samples, _dataset(samples)


@pytest.fixture(scope="module")
def synthetic_bundle(synthetic, tmp_path_factory):
    return _bundle(synthetic[1], tmp_path_factory.mktemp("synthetic_bundle"))


# ---------------------------------------------------------------- allocators


def test_every_registered_allocator_is_named_described_and_styled_in_the_plot():
    from eval.plots import _STYLE

    for key, cls in ALLOCATORS.items():
        assert cls.name == key and cls.description and key in _STYLE


def test_fixed_arms_reproduce_the_store_arm_accuracies(samples, dataset, ctx, curves):
    rows = dataset[0].rows  # store.views.arm_outcomes of the store (build_dataset calls it once)
    rows = rows[rows["query_id"].isin(set(ctx.test.query_ids))]
    by_arm = rows.groupby("arm_id").agg(acc=("correct", "mean"), e=("energy_j", "mean"))
    fixed = curves["fixed"]
    assert [p.label for p in fixed.points] == ctx.arm_ids == sorted(by_arm.index)
    for p in fixed.points:
        assert p.accuracy == pytest.approx(by_arm.loc[p.label, "acc"], abs=1e-12)
        assert p.mean_energy_j == pytest.approx(by_arm.loc[p.label, "e"], rel=1e-12)
        assert set(p.arm_ids) == {p.label}
    # one-sample arms straight from the recorded samples, without the arm view: the first sample of the
    # (model, temperature) generation graded at L tokens
    first = samples[samples["query_id"].isin(set(ctx.test.query_ids)) & (samples["sample_index"] == 0)]
    checked = 0
    for p in fixed.points:
        model, n, L, temp = p.label.split("/")
        if n != "n1":
            continue
        li = LEVELS.index(int(L[1:]))
        g = first[(first["model"] == model) & (first["temperature"] == (0.0 if temp == "greedy" else 0.7))]
        assert len(g) == ctx.test.n_queries
        assert p.accuracy == pytest.approx(np.mean([bool(c[li]) for c in g["level_correct"]]), abs=1e-12)
        assert p.mean_energy_j == pytest.approx(np.mean([e[li] for e in g["level_energy_j"]]), rel=1e-9)
        checked += 1
    assert checked == 2 * 2 * len(LEVELS)  # two models x (greedy, t0.7) x levels


def test_model_scaling_applies_only_the_bigger_models_arms(curves):
    points = curves["model_scaling"].points
    assert points and all(p.label.startswith("gemma3-270m/") for p in points)
    assert sum(p.params["reference"] for p in points) == 1
    assert curves["model_scaling"].notes["reference_arm"] == "gemma3-270m/n1/L64/greedy"


def test_oracle_bounds_every_one_arm_per_query_allocator_at_equal_energy(ctx, curves):
    """Precisely: for any allocator that gives each query one grid arm, at any of its points (E, A),
    A <= the oracle's hindsight hull at E (the hull is the best accuracy any assignment reaches with
    mean joules E); and per query the oracle's top point is right wherever any arm is right."""
    oracle = curves["oracle"]
    oe, oa = oracle.frontier_points()
    top = next(p for p in oracle.points if p.params["top"])
    assert top.accuracy == pytest.approx(ctx.test.correct.max(axis=1).mean())
    for name, c in curves.items():
        if not c.one_arm_per_query or name == "oracle":
            continue
        for p in c.points:
            assert p.mean_energy_j >= oe[0] * (1 - 1e-9), (name, p.label)
            assert p.accuracy <= accuracy_at_energy(oe, oa, p.mean_energy_j) + 1e-9, (name, p.label)
            assert (p.correct <= top.correct + 1e-12).all()
            if p.accuracy >= top.accuracy - 1e-12:
                assert p.mean_energy_j >= top.mean_energy_j * (1 - 1e-9)


def test_oracle_picks_the_cheapest_correct_arm_in_hindsight(ctx, curves):
    top = next(p for p in curves["oracle"].points if p.params["top"])
    col = {a: j for j, a in enumerate(ctx.arm_ids)}
    for q, arm in enumerate(top.arm_ids):
        c, e = ctx.test.correct[q], ctx.test.energy_j[q]
        pool = np.flatnonzero(c > 0) if c.max() > 0 else np.arange(len(c))
        assert e[col[arm]] == pytest.approx(e[pool].min())


def test_budget_mode_meets_its_budget_in_predicted_joules(ctx, curves):
    budget = [p for p in curves["learned"].points if p.params["mode"] == "budget"]
    assert len(budget) >= 3
    for p in budget:
        assert p.params["predicted_energy_j"] <= p.params["budget_j"] * (1 + 1e-9)
    # the realised joules track the budget: more budget never buys fewer realised joules by much
    e = [p.mean_energy_j for p in sorted(budget, key=lambda p: p.params["budget_j"])]
    assert e[-1] > e[0]


def test_learned_points_are_charged_the_metered_feature_cost(ctx, curves):
    overhead = ctx.predictions("test").overhead
    assert overhead.source == ESTIMATED and overhead.meter == "estimate"
    assert (overhead.features_j + overhead.predict_j > 0).all()
    rows = np.arange(ctx.test.n_queries)
    col = {a: j for j, a in enumerate(ctx.arm_ids)}
    p = curves["learned"].points[0]
    arm_j = ctx.test.energy_j[rows, [col[a] for a in p.arm_ids]]
    np.testing.assert_allclose(p.energy_j - arm_j, overhead.per_query_j)


def test_synthetic_learned_beats_the_best_fixed_arm_on_data_with_structure(synthetic, synthetic_bundle):
    """Where queries differ learnably (tests/synthetic.py), the learned frontier reaches some fixed-frontier
    accuracy for fewer joules. Not a property of the reference collection's 39 held-out queries: there the
    fixed frontier is one arm (smollm2-135m/n1/L16/t0.7: 41.0% at 7.03 J) and the learned curve tops out at
    38.5% (6.39 J), so it never reaches a fixed-frontier accuracy at all."""
    samples, dataset = synthetic
    curves, _ = run_allocators(_context(samples, dataset, synthetic_bundle), ["learned", "fixed"])
    le, la = curves["learned"].frontier_points()
    fixed = curves["fixed"]
    # at some fixed arm on the fixed frontier the learned curve is no costlier for the same accuracy
    saved = [
        1 - energy_at_accuracy(le, la, fixed.accuracy[i]) / fixed.energy_j[i]
        for i in fixed.frontier()
        if np.isfinite(energy_at_accuracy(le, la, fixed.accuracy[i]))
    ]
    assert max(saved) > 0.0


def test_random_at_matched_energy_sits_below_the_learned_frontier(ctx, curves):
    """Each random point lies below the learned frontier or within 2.5 binomial standard errors above it,
    and on average below. Reference, seed 0: gaps from -2.6 to +4.2 points, mean +0.3 (within noise).

    A query-blind mix of arms spends at least the cheapest arm's mean joules; the learned policy, picking
    per query, can spend less (reference: 6.39 J against the cheapest arm's 7.03 J), and there random sits
    at the cheapest arm."""
    learned, rnd = curves["learned"], curves["random"]
    le, la = learned.frontier_points()
    n = ctx.test.n_queries
    cheapest_arm_j = ctx.test.energy_j.mean(axis=0).min()
    gaps = []
    for p, target in zip(rnd.points, learned.points, strict=True):
        assert p.params["target_energy_j"] == pytest.approx(target.mean_energy_j)
        matched = max(target.mean_energy_j, cheapest_arm_j)
        assert p.mean_energy_j == pytest.approx(matched, rel=1e-12 if matched == cheapest_arm_j else 0.1)
        ref = accuracy_at_energy(le, la, p.mean_energy_j)
        if np.isfinite(ref):
            se = math.sqrt(max(ref * (1 - ref), 0.05) / n)
            assert p.accuracy <= ref + 2.5 * se, p.label
            gaps.append(ref - p.accuracy)
    assert np.mean(gaps) > 0


def test_max_entropy_mix_meets_its_target_mean_energy():
    e = np.array([1.0, 2.0, 5.0, 20.0])
    for target in (1.5, 3.0, 10.0):
        pi = max_entropy_mix(e, target)
        assert pi.sum() == pytest.approx(1.0) and (pi >= 0).all()
        assert pi @ e == pytest.approx(target, rel=1e-6)
    assert max_entropy_mix(e, e.mean()) == pytest.approx(np.full(4, 0.25), abs=1e-6)
    assert max_entropy_mix(e, 0.1)[0] == 1.0


def test_difficulty_bins_give_one_arm_per_bin(ctx, curves):
    c = curves["difficulty_bins"]
    assert len(c.points) >= 2
    for p in c.points:
        assert len(set(p.arm_ids)) <= c.notes["n_bins"]
    accs = c.accuracy
    assert accs.max() > accs.min()


def test_early_stopping_draws_fewer_samples_than_n_max_when_the_first_answers_agree(ctx, curves):
    assert stop_after(["7", "7", "3", "3"], 2, 8) == 2
    assert stop_after(["7", "3", "7", "7", "7", "7", "7", "7"], 2, 8) == 6  # 5 vs 1 with 2 left: settled
    assert stop_after(["7", "3", "1", "2", "5", "6", "8", "9"], 2, 8) == 8
    assert stop_after([None, None, "4"], 2, 8) == 3
    s = ctx.samples.set_index(["query_id", "model", "temperature", "sample_index"]).sort_index()
    for p in curves["early_stopping"].points:
        k, n_max, L = p.params["k"], p.params["n_max"], p.params["max_new_tokens"]
        li = LEVELS.index(L)
        for q, used in zip(ctx.test.query_ids, p.samples_used, strict=True):
            first = [s.loc[(q, p.params["model"], 0.7, i), "level_answer"][li] for i in range(k)]
            if first[0] is not None and len(set(first)) == 1:
                assert used == k < n_max
            assert 1 <= used <= n_max
        assert p.samples_used.mean() < n_max


def test_unrunnable_allocators_are_skipped_by_default_and_refused_by_name(ctx):
    bare = EvalContext(test=ctx.test, train=None, samples=None, policy=None, big_model=None)
    curves, skipped = run_allocators(bare)
    assert set(curves) == {"fixed", "oracle", "random"}
    assert set(skipped) == {
        "learned",
        "model_scaling",
        "difficulty_bins",
        "early_stopping",
        "adaptive_consistency",
        "esc",
    }
    with pytest.raises(UsageError, match="early_stopping"):
        run_allocators(bare, ["early_stopping"])
    with pytest.raises(UsageError, match="unknown allocator"):
        run_allocators(bare, ["oracel"])


# ---------------------------------------------------------------- metrics


def test_interpolation_never_extrapolates():
    fe, fa = np.array([1.0, 3.0]), np.array([0.5, 0.7])
    assert energy_at_accuracy(fe, fa, 0.6) == pytest.approx(2.0)
    assert energy_at_accuracy(fe, fa, 0.2) == 1.0
    assert math.isnan(energy_at_accuracy(fe, fa, 0.8))
    assert accuracy_at_energy(fe, fa, 2.0) == pytest.approx(0.6)
    assert math.isnan(accuracy_at_energy(fe, fa, 0.5))
    assert accuracy_at_energy(fe, fa, 9.0) == 0.7


def test_bootstrap_intervals_contain_the_point_and_narrow_with_more_queries():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        x = (rng.random(n) < 0.6).astype(float)
        iv = bootstrap(lambda c, x=x: {"acc": float(x @ c) / c.sum()}, n, n_boot=300, seed=1)["acc"]
        assert iv.low <= iv.point <= iv.high
        assert iv.n_valid == 300
        widths.append(iv.width)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16)


def test_bootstrap_is_seeded():
    x = np.arange(40.0)

    def stat(c):
        return {"m": float(x @ c) / c.sum()}

    assert bootstrap(stat, 40, 50, seed=5)["m"] == bootstrap(stat, 40, 50, seed=5)["m"]
    assert bootstrap(stat, 40, 50, seed=5)["m"] != bootstrap(stat, 40, 50, seed=6)["m"]


def test_bootstrap_intervals_of_the_held_out_arm_accuracies_match_their_binomial_spread(ctx):
    """Resampling the 39 real held-out queries: every arm's accuracy interval holds its point, and its
    width is the normal approximation's 2 * 1.96 * sqrt(p (1 - p) / n) to within a quarter."""
    correct, n = ctx.test.correct, ctx.test.n_queries
    ivs = bootstrap(lambda c: dict(zip(ctx.arm_ids, c @ correct / n, strict=True)), n, n_boot=400, seed=0)
    for j, arm in enumerate(ctx.arm_ids):
        iv, p = ivs[arm], correct[:, j].mean()
        assert iv.point == pytest.approx(p) and iv.low <= iv.point <= iv.high and iv.n_valid == 400
        assert iv.width == pytest.approx(2 * 1.959964 * math.sqrt(p * (1 - p) / n), rel=0.25), arm


# ---------------------------------------------------------------- the stage and its report

TOP_KEYS = {
    "schema_version",
    "created_utc",
    "store",
    "bundle",
    "split",
    "energy",
    "arms",
    "models",
    "learned_overhead",
    "bootstrap",
    "allocators_run",
    "allocators_skipped",
    "curves",
    "headline",
    "cross_fitting",
    "vs_fixed_frontier",
    "vs_model_scaling_frontier",
    "per_task",
    "length_overall",
    "findings",
    "mlflow",
    "files",
}


def test_report_has_the_documented_keys(samples, staged):
    report, doc = staged
    assert set(doc) == TOP_KEYS
    assert doc["energy"]["source"] == ESTIMATED
    assert doc["energy"]["axis_label"] == "mean energy per query (J, estimated: estimate meter)"
    h = doc["headline"]
    assert h["energy_source"] == ESTIMATED
    for key in (
        "energy_saved_at_equal_accuracy",
        "accuracy_gain_at_equal_energy",
        "oracle_share_of_energy_saving",
        "energy_saved_vs_model_scaling",
        "learned_energy_per_correct_j",
        "best_fixed_energy_per_correct_j",
    ):
        assert set(h[key]) == {"point", "low", "high", "n_boot", "n_valid", "confidence"}
    assert h["n_queries"] == report.n_test_queries == 39
    assert set(doc["per_task"]) == set(samples["task"])  # the reference's 8 tasks
    fact = doc["per_task"]["facts.atomic_number"]
    assert fact["kind"] == "factual" and doc["per_task"]["rg.chain_sum"]["kind"] == "reasoning"
    assert {r["max_new_tokens"] for r in fact["length"]} == set(LEVELS)
    assert set(doc["findings"]) == {"1_ttc_vs_model_scaling", "2_output_length", "3_query_aware_allocation"}
    # A headline is None on the report object exactly when its point is undefined. On the reference the
    # learned curve never reaches the best fixed arm's accuracy, so the equal-accuracy saving is undefined.
    for key in ("energy_saved_at_equal_accuracy", "accuracy_gain_at_equal_energy", "energy_saved_vs_model_scaling"):
        iv = getattr(report.headline, key)
        assert (iv.point is None or not math.isfinite(iv.point)) == (h[key]["point"] is None), key
        assert h[key]["point"] is None or iv.point == pytest.approx(h[key]["point"])
    assert json.loads(report.to_json())["run_id"] == doc["mlflow"]["run_id"]


def test_every_energy_key_in_the_report_names_its_source(staged):
    _, doc = staged

    def walk(obj, path=""):
        if isinstance(obj, dict) and "energy_source" in obj:
            assert obj["energy_source"] == ESTIMATED, path  # a Headline: its keys are its field names
        elif isinstance(obj, dict):
            for k, v in obj.items():
                figure = (
                    v is None
                    or (isinstance(v, int | float) and not isinstance(v, bool))
                    or (isinstance(v, dict) and "point" in v)
                )
                if figure and (k.endswith("_j") or "energy" in k):
                    assert ESTIMATED in k, f"{path}/{k}"
                walk(v, f"{path}/{k}")
        elif isinstance(obj, list):
            for v in obj:
                walk(v, path)

    walk(doc)


def test_headline_intervals_contain_their_point_estimates(staged):
    _, doc = staged
    for key, v in doc["headline"].items():
        if isinstance(v, dict) and v.get("point") is not None and v.get("low") is not None:
            assert v["low"] - 1e-12 <= v["point"] <= v["high"] + 1e-12, key


def test_findings_compare_every_task_verdict_with_the_paper(staged):
    """On the reference the bigger gemma3-270m knows fewer atomic numbers than smollm2-135m (0% vs 10% of
    samples right), so the factual task's verdict is test_time_compute, disagreeing with the paper."""
    _, doc = staged
    assert doc["per_task"]["facts.atomic_number"]["ttc_vs_scaling"]["paper_expects"] == "model_scaling"
    agree, disagree, inconclusive = set(), set(), set()
    for task, entry in doc["per_task"].items():
        t = entry["ttc_vs_scaling"]
        assert t["verdict"] in ("test_time_compute", "model_scaling", "tie")
        assert t["paper_expects"] == ("model_scaling" if entry["kind"] == "factual" else "test_time_compute")
        assert t["agrees_with_paper"] is (None if t["verdict"] == "tie" else t["verdict"] == t["paper_expects"])
        {True: agree, False: disagree, None: inconclusive}[t["agrees_with_paper"]].add(task)
    f = doc["findings"]["1_ttc_vs_model_scaling"]
    assert set(f["tasks_agreeing_with_paper"]) == agree
    assert set(f["tasks_disagreeing_with_paper"]) == disagree
    assert set(f["tasks_inconclusive"]) == inconclusive


def test_synthetic_findings_call_a_factual_task_the_bigger_model_knows_for_model_scaling(
    synthetic, synthetic_bundle, tmp_path
):
    """Votes cannot fix a fact the small model does not know: where the bigger model knows more facts
    (tests/synthetic.py), it wins the factual task, as in the paper."""
    samples, dataset = synthetic
    _, doc = _stage(samples, dataset, synthetic_bundle, tmp_path, n_boot=60, allocators=["fixed", "model_scaling"])
    ttc = doc["per_task"]["facts.atomic_number"]["ttc_vs_scaling"]
    assert ttc["verdict"] == "model_scaling" and ttc["agrees_with_paper"] is True


def test_outputs_are_written_and_logged_to_one_mlflow_run(staged):
    report, doc = staged
    from mlflow import MlflowClient

    for p in (report.json_path, report.markdown_path, report.pareto_png, report.length_png, report.assignments_path):
        assert p.is_file() and p.stat().st_size > 0
    md = report.markdown_path.read_text()
    assert "eval_pareto.png" in md and "eval_length.png" in md and "estimated: estimate meter" in md
    client = MlflowClient(report.tracking_uri)
    run = client.get_run(report.run_id)
    assert run.data.tags["energy_source"] == ESTIMATED
    from eval.headline import JOULES

    joule_fields = {f.name for f in dataclasses.fields(report.headline) if f.metadata == JOULES}
    assert "energy_estimated/energy_saved_vs_model_scaling" in run.data.metrics
    for key in run.data.metrics:
        head, _, field = key.partition("/")
        if field.split("/")[-1].removesuffix("_low").removesuffix("_high") in joule_fields:
            assert head == "energy_estimated", key
    saving_defined = doc["headline"]["energy_saved_at_equal_accuracy"]["point"] is not None
    assert ("energy_estimated/energy_saved_at_equal_accuracy" in run.data.metrics) == saving_defined
    logged = {f.path for f in client.list_artifacts(report.run_id, "eval")}
    assert {f"eval/{n}" for n in ("eval_report.json", "eval_report.md", "eval_pareto.png")} <= logged
    assignments = pd.read_parquet(report.assignments_path)
    assert set(assignments["allocator"]) == set(doc["allocators_run"])
    assert "energy_estimated_j" in assignments.columns


def test_mixed_energy_sources_are_refused_unless_allowed(samples, bundle, dataset, tmp_path):
    from eval.stage import eval_stage

    _, sp = dataset
    measured = samples.assign(energy_source=MEASURED, meter="nvml")
    with pytest.raises(MixedEnergyError, match="allow-mixed-energy"):
        eval_stage(measured, bundle, tmp_path, test_query_ids=sp.test_query_ids, n_boot=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "row"}, "unknown split"),
        ({"n_boot": -1}, "n_boot"),
        ({"allocators": ["learned", "oracel"]}, "unknown allocator"),
        ({"allocators": "learned"}, "list of names"),
        ({"test_query_ids": ["nope:1"]}, "not in the store"),
        ({"split": "task", "holdout_tasks": ["gsm8"]}, "unknown task"),
        ({"holdout_tasks": ["rg.chain_sum"]}, "only applies to split='task'"),
    ],
)
def test_bad_arguments_are_usage_errors(samples, bundle, tmp_path, kwargs, match):
    from eval.stage import eval_stage

    with pytest.raises(UsageError, match=match):
        eval_stage(samples, bundle, tmp_path, **kwargs)


def test_task_split_holds_out_whole_tasks(samples):
    from eval.inputs import single_split

    held = single_split(samples, "task", None, ["facts.atomic_number"], None, None)
    test, train, tasks = held.test_query_ids, held.train_query_ids, list(held.holdout_tasks)
    assert tasks == ["facts.atomic_number"]
    assert all(q.startswith("facts.atomic_number:") for q in test)
    assert not any(q.startswith("facts.atomic_number:") for q in train)
    assert len(test) == 16 and len(train) == 112
