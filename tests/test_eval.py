"""Properties of the evaluation stage: allocators, metrics, bootstrap, the report.

Until the reference collection under data/reference/ is complete, the store is
a synthetic Sample table (`synthetic_samples`) shaped like collect's output:
two models (smollm2-135m, the bigger gemma3-270m), levels 16/32/64, eight
samples at temperature 0.7 plus one greedy sample per (query, model). Per query
a latent difficulty the question text partly reveals sets the chance that a
sample is right and the tokens an answer needs, so votes help the queries a
model half knows and short caps cut long answers off. Two reasoning tasks and
the factual task facts.atomic_number, where a model either knows the fact or
repeats the same wrong number, so votes barely help and the bigger model does.
The learned policy is a LightGBM pair trained on the training queries and
exported with policy.bundle.write_bundle.
"""

from __future__ import annotations

import json
import math

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
    frontier_of,
    pareto_frontier,
)
from policy.errors import MixedEnergyError, UsageError
from policy.records import ESTIMATED, MEASURED, SAMPLE_SCHEMA_VERSION, sample_fields

MODELS = {
    # name: (skill in logits, decode joules per token, prefill joules per prompt token)
    "smollm2-135m": (-0.3, 0.05, 0.004),
    "gemma3-270m": (0.9, 0.12, 0.009),
}
LEVELS = [16, 32, 64]
N_SAMPLES = 8
ELEMENTS = ["sodium", "argon", "iron", "zinc", "silver", "tin", "xenon", "gold", "lead", "radon", "iodine", "cobalt"]


def _reasoning(task: str, rng: np.random.Generator) -> tuple[str, str, float, float]:
    """(question, gold, difficulty, tokens needed) of an arithmetic item."""
    k = int(rng.integers(2, 7))
    digits = int(rng.integers(1, 4))
    nums = [int(x) for x in rng.integers(10 ** (digits - 1), 10**digits, size=k)]
    if task == "rg.chain_sum":
        question = "What is " + " + ".join(map(str, nums)) + "?"
    else:
        question = f"Tom has {nums[0]} apples. " + " ".join(f"He gets {n} more." for n in nums[1:]) + " How many now?"
    difficulty = 0.8 * (k - 2) + 0.6 * (digits - 1) - 1.0 + rng.normal(0, 0.4)
    return question, str(sum(nums)), difficulty, 8 + 8 * k + 3 * digits + rng.normal(0, 3)


def synthetic_samples(n_queries: int = 150, seed: int = 0) -> pd.DataFrame:
    """A Sample table with the collect stage's exact columns and learnable per-query structure."""
    rng = np.random.default_rng(seed)
    tasks = ("rg.chain_sum", "rg.basic_arithmetic_1d", "facts.atomic_number")
    rows = []
    for qi in range(n_queries):
        task = tasks[qi % 3]
        if task == "facts.atomic_number":
            number = int(rng.integers(1, 100))
            question = f"What is the atomic number of {ELEMENTS[number % len(ELEMENTS)]}-{number}?"
            gold, difficulty, need = str(number), number / 25.0 - 1.5, 10 + rng.normal(0, 2)
        else:
            question, gold, difficulty, need = _reasoning(task, rng)
        qid = f"{task}:{qi}"
        prompt_tokens = int(len(question.split()) * 1.3 + 30)
        for model, (skill, j_tok, j_prefill) in MODELS.items():
            logit = skill + 1.0 - difficulty
            if task == "facts.atomic_number":
                knows = rng.random() < 1 / (1 + math.exp(-(2.5 * skill + 0.5 - difficulty)))
                fixed_wrong = str(number + int(rng.choice([-2, -1, 1, 2])))
            for temperature, index in [(0.0, 0)] + [(0.7, i) for i in range(N_SAMPLES)]:
                if task == "facts.atomic_number":
                    ok = rng.random() < (0.95 if knows else 0.05)
                    answer = gold if ok else (fixed_wrong if rng.random() < 0.85 else str(number + 3))
                else:
                    ok = rng.random() < 1 / (1 + math.exp(-(logit + (0.3 if temperature == 0 else 0.0))))
                    answer = gold if ok else str(int(gold) + int(rng.integers(-20, 21)) or 1)
                tokens = int(min(max(round(need * rng.lognormal(0, 0.2)), 3), 64))
                prefill_j = prompt_tokens * j_prefill
                per_tok = j_tok * rng.lognormal(0, 0.1)
                lv_tokens = [min(tokens, L) for L in LEVELS]
                lv_answer = [answer if tokens <= L else None for L in LEVELS]
                lv_energy = [prefill_j + t * per_tok for t in lv_tokens]
                rows.append(
                    {
                        "query_id": qid,
                        "task": task,
                        "question": question,
                        "gold": gold,
                        "model": model,
                        "temperature": temperature,
                        "max_new_tokens": 64,
                        "seed": seed,
                        "sample_index": index,
                        "batch_id": f"{qid}/{model}/{temperature}",
                        "prompt_tokens": prompt_tokens,
                        "output_tokens": tokens,
                        "finished": tokens < 64,
                        "text": f"... The answer is {answer}.",
                        "answer": answer,
                        "extraction": "answer_is",
                        "correct": bool(ok),
                        "duration_s": lv_energy[-1] / 30.0,
                        "energy_j": lv_energy[-1],
                        "energy_above_idle_j": lv_energy[-1],
                        "prefill_energy_j": prefill_j,
                        "window_energy_j": lv_energy[-1] * N_SAMPLES,
                        "window_duration_s": lv_energy[-1] / 30.0,
                        "window_samples": N_SAMPLES,
                        "window_output_tokens": tokens * N_SAMPLES,
                        "meter": "estimate",
                        "energy_source": ESTIMATED,
                        "attribution": "prefill_even+decode_by_tokens",
                        "levels": list(LEVELS),
                        "level_output_tokens": lv_tokens,
                        "level_answer": lv_answer,
                        "level_correct": [bool(ok and tokens <= L) for L in LEVELS],
                        "level_energy_j": lv_energy,
                        "level_duration_s": [e / 30.0 for e in lv_energy],
                        "collect_run": "synthetic",
                        "schema_version": SAMPLE_SCHEMA_VERSION,
                    }
                )
    return pd.DataFrame(rows)[sample_fields()]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    return synthetic_samples()


@pytest.fixture(scope="module")
def dataset(samples):
    from train.dataset import build_dataset, make_split

    data = build_dataset(samples, feature_set="text", seed=0)
    return data, make_split(data, "query", test_size=0.3, seed=0)


@pytest.fixture(scope="module")
def bundle(dataset, tmp_path_factory):
    """A policy trained on the training queries only, exported as a real bundle."""
    import lightgbm as lgb

    from policy.allocate import DecisionRule
    from policy.bundle import write_bundle

    data, sp = dataset
    x, rows = data.X[sp.train], data.rows.iloc[sp.train]
    params = {"num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    success = lgb.train({**params, "objective": "cross_entropy"}, lgb.Dataset(x, rows["correct_soft"]), 60)
    energy = lgb.train({**params, "objective": "regression"}, lgb.Dataset(x, np.log(rows["energy_j"])), 60)
    n_query_cols = len(data.feature_set.names())
    return write_bundle(
        tmp_path_factory.mktemp("bundle") / "bundle",
        success,
        energy,
        data.arms,
        data.models,
        data.feature_set,
        DecisionRule(),
        {"synthetic": 1},
        energy_meter="estimate",
        energy_source=ESTIMATED,
        reference_x=data.X[sp.train[:: len(data.arms) * 4], :n_query_cols],
    )


@pytest.fixture(scope="module")
def ctx(samples, dataset, bundle) -> EvalContext:
    from collect.views import queries
    from policy.bundle import load_bundle

    data, sp = dataset
    policy = load_bundle(bundle)
    full = Outcomes.from_arm_rows(data.rows, policy.arm_ids, queries(samples))
    return EvalContext(
        test=full.subset(sp.test_query_ids),
        train=full.subset(sp.train_query_ids),
        samples=samples,
        policy=policy,
        big_model="gemma3-270m",
        seed=0,
    )


@pytest.fixture(scope="module")
def curves(ctx):
    curves, skipped = run_allocators(ctx)
    assert skipped == {}
    return curves


@pytest.fixture(scope="module")
def staged(samples, dataset, bundle, tmp_path_factory):
    """One eval_stage run (small bootstrap) into a temporary MLflow store."""
    from eval.stage import eval_stage

    _, sp = dataset
    root = tmp_path_factory.mktemp("eval")
    store = root / "store"
    store.mkdir()
    samples.to_parquet(store / "shard-00000000000000000001-synth.parquet", index=False)
    rows = dataset[0].rows
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # setup_tracking puts artifacts under ./mlruns/artifacts
        # arm_outcomes spends ~10 s on soft labels here; the stage gets the rows build_dataset already
        # computed from these same samples (the fixed-arm test checks them against the store).
        mp.setattr("eval.stage.arm_outcomes", lambda s, seed=0: rows)
        report = eval_stage(
            store,
            bundle,
            root / "out",
            test_query_ids=sp.test_query_ids,
            train_query_ids=sp.train_query_ids,
            n_boot=60,
            seed=0,
            tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        )
    return report, json.loads(report.json_path.read_text())


# ---------------------------------------------------------------- allocators


def test_registry_lists_every_allocator_of_the_issue():
    assert set(ALLOCATORS) == {
        "learned",
        "fixed",
        "model_scaling",
        "random",
        "difficulty_bins",
        "early_stopping",
        "oracle",
    }


def test_fixed_arms_reproduce_the_store_arm_accuracies(dataset, ctx, curves):
    rows = dataset[0].rows  # collect.views.arm_outcomes of the store (build_dataset calls it once)
    rows = rows[rows["query_id"].isin(set(ctx.test.query_ids))]
    by_arm = rows.groupby("arm_id").agg(acc=("correct", "mean"), e=("energy_j", "mean"))
    fixed = curves["fixed"]
    assert [p.label for p in fixed.points] == ctx.arm_ids
    for p in fixed.points:
        assert p.accuracy == pytest.approx(by_arm.loc[p.label, "acc"], abs=1e-12)
        assert p.mean_energy_j == pytest.approx(by_arm.loc[p.label, "e"], rel=1e-12)
        assert set(p.arm_ids) == {p.label}


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
    oe, oa = frontier_of(oracle.energy_j, oracle.accuracy)
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
    assert overhead.features_j + overhead.predict_j > 0
    rows = np.arange(ctx.test.n_queries)
    col = {a: j for j, a in enumerate(ctx.arm_ids)}
    p = curves["learned"].points[0]
    arm_j = ctx.test.energy_j[rows, [col[a] for a in p.arm_ids]]
    np.testing.assert_allclose(p.energy_j - arm_j, overhead.per_query_j)


def test_learned_beats_the_best_fixed_arm_on_data_with_structure(curves):
    le, la = frontier_of(curves["learned"].energy_j, curves["learned"].accuracy)
    fixed = curves["fixed"]
    # at some fixed arm on the fixed frontier the learned curve is no costlier for the same accuracy
    saved = [
        1 - energy_at_accuracy(le, la, fixed.accuracy[i]) / fixed.energy_j[i]
        for i in fixed.frontier()
        if np.isfinite(energy_at_accuracy(le, la, fixed.accuracy[i]))
    ]
    assert max(saved) > 0.0


def test_random_at_matched_energy_sits_below_the_learned_frontier(ctx, curves):
    learned, rnd = curves["learned"], curves["random"]
    le, la = frontier_of(learned.energy_j, learned.accuracy)
    n = ctx.test.n_queries
    gaps = []
    for p, target in zip(rnd.points, learned.points, strict=True):
        assert p.params["target_energy_j"] == pytest.approx(target.mean_energy_j)
        assert p.mean_energy_j == pytest.approx(target.mean_energy_j, rel=0.1)
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
    assert set(skipped) == {"learned", "model_scaling", "difficulty_bins", "early_stopping"}
    with pytest.raises(UsageError, match="early_stopping"):
        run_allocators(bare, ["early_stopping"])
    with pytest.raises(UsageError, match="unknown allocator"):
        run_allocators(bare, ["oracel"])


# ---------------------------------------------------------------- metrics


def test_pareto_frontier_keeps_exactly_the_non_dominated_points():
    rng = np.random.default_rng(3)
    e, a = rng.uniform(1, 10, 60), rng.uniform(0, 1, 60)
    f = pareto_frontier(e, a)
    assert (np.diff(e[f]) > 0).all() and (np.diff(a[f]) > 0).all()
    for i in range(60):
        dominated = ((e <= e[i]) & (a >= a[i]) & ((e < e[i]) | (a > a[i]))).any()
        assert (i in f) != dominated


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
        iv = bootstrap(lambda w, x=x: {"acc": float(x @ w)}, n, n_boot=300, seed=1)["acc"]
        assert iv.low <= iv.point <= iv.high
        assert iv.n_valid == 300
        widths.append(iv.width)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16)


def test_bootstrap_is_seeded():
    x = np.arange(40.0)

    def stat(w):
        return {"m": float(x @ w)}

    assert bootstrap(stat, 40, 50, seed=5)["m"] == bootstrap(stat, 40, 50, seed=5)["m"]
    assert bootstrap(stat, 40, 50, seed=5)["m"] != bootstrap(stat, 40, 50, seed=6)["m"]


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
    "vs_fixed_frontier",
    "vs_model_scaling_frontier",
    "per_task",
    "length_overall",
    "findings",
    "mlflow",
    "files",
}


def test_report_has_the_documented_keys(staged):
    report, doc = staged
    assert set(doc) == TOP_KEYS
    assert doc["energy"]["source"] == ESTIMATED
    assert doc["energy"]["axis_label"] == "mean energy per query (J, estimated: estimate meter)"
    h = doc["headline"]
    for key in (
        "energy_saved_at_equal_accuracy_estimated",
        "accuracy_gain_at_equal_energy_estimated",
        "oracle_share_of_energy_saving_estimated",
        "energy_saved_vs_model_scaling_estimated",
        "learned_energy_per_correct_estimated_j",
        "best_fixed_energy_per_correct_estimated_j",
    ):
        assert set(h[key]) == {"point", "low", "high", "n_boot", "n_valid", "confidence"}
    assert set(doc["per_task"]) == {"rg.chain_sum", "rg.basic_arithmetic_1d", "facts.atomic_number"}
    fact = doc["per_task"]["facts.atomic_number"]
    assert fact["kind"] == "factual" and doc["per_task"]["rg.chain_sum"]["kind"] == "reasoning"
    assert {r["max_new_tokens"] for r in fact["length"]} == set(LEVELS)
    assert set(doc["findings"]) == {"1_ttc_vs_model_scaling", "2_output_length", "3_query_aware_allocation"}
    assert report.energy_saved_at_equal_accuracy is not None
    assert json.loads(report.to_json())["run_id"] == doc["mlflow"]["run_id"]


def test_every_energy_key_in_the_report_names_its_source(staged):
    _, doc = staged

    def walk(obj, path=""):
        if isinstance(obj, dict):
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


def test_findings_report_the_factual_task_against_test_time_compute(staged):
    _, doc = staged
    ttc = doc["per_task"]["facts.atomic_number"]["ttc_vs_scaling"]
    assert ttc["paper_expects"] == "model_scaling"
    # votes cannot fix a fact the small model does not know: the bigger model wins here, as in the paper
    assert ttc["verdict"] == "model_scaling" and ttc["agrees_with_paper"] is True
    for entry in doc["per_task"].values():
        t = entry["ttc_vs_scaling"]
        assert t["agrees_with_paper"] in (None, t["verdict"] == t["paper_expects"])


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
    assert "energy_estimated/saved_frac_at_equal_accuracy" in run.data.metrics
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
    from eval.stage import _resolve_split

    _, test, train, tasks = _resolve_split(samples, "task", None, ["facts.atomic_number"], None, 0.2, 0)
    assert tasks == ["facts.atomic_number"]
    assert all(q.startswith("facts.atomic_number:") for q in test)
    assert not any(q.startswith("facts.atomic_number:") for q in train)
    assert len(test) == 50 and len(train) == 100
