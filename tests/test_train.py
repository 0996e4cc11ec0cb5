"""Tests of the train stage: dataset, predictors, tuning with MLflow, the stage entry.

The store comes from the `store` fixture. Until the real reference collection
lands under data/reference/, it is a synthetic Sample table written as Parquet
shards (`synthetic_samples`): per-query latent difficulty that the question text
reveals in part (more numbers, harder), votes and longer budgets that help some
queries, and energy proportional to tokens with a per-model cost. Swapping in
the reference store is a change of that one fixture.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from policy.errors import TTCError, UsageError
from policy.records import ESTIMATED, SAMPLE_SCHEMA_VERSION, sample_fields

MODELS = {
    # name: (skill in logits, decode joules per token, prefill joules per prompt token)
    "smollm2-135m": (-0.4, 0.05, 0.004),
    "gemma3-270m": (0.7, 0.11, 0.009),
}
LEVELS = [16, 32, 64]
TASKS = ("chain_sum", "word_problem", "compare")
_NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Kim")
_ITEMS = ("apples", "coins", "books", "marbles", "stamps")


def _question(task: str, nums: list[int], rng: np.random.Generator) -> str:
    if task == "chain_sum":
        return "What is " + " + ".join(str(n) for n in nums) + "?"
    if task == "word_problem":
        who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        parts = [f"{who} has {nums[0]} {item}."] + [f"Then {who} gets {n} more." for n in nums[1:]]
        return " ".join(parts) + f" How many {item} does {who} have in total?"
    return "Add these numbers and say the total: " + ", ".join(str(n) for n in nums) + "."


def synthetic_samples(n_queries: int = 200, seed: int = 0, samples_per_query: int = 8) -> pd.DataFrame:
    """A Sample table shaped like the collect stage's output, with learnable structure.

    Per query: k numbers (2..7) set the latent difficulty and the tokens needed to
    finish; per model, each sample at temperature 0.7 is right with
    sigmoid(skill + 1.5 - difficulty) and otherwise gives one of a few wrong
    answers, so majority votes help the queries a model half knows; a sample cut
    off before it finishes has no answer. One greedy sample per model too.
    Energy: prefill share plus joules per output token, per model, with noise.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for qi in range(n_queries):
        task = str(TASKS[qi % len(TASKS)])
        k = int(rng.integers(2, 8))
        nums = [int(x) for x in rng.integers(1, 10 ** rng.integers(1, 4), size=k)]
        question = _question(task, nums, rng)
        gold = str(sum(nums))
        difficulty = 0.7 * (k - 2) + 0.3 * math.log10(max(nums)) + rng.normal(0, 0.6)
        need_tokens = 6 + 7 * k + rng.normal(0, 3)
        wrong = [str(sum(nums) + d) for d in (-10, -1, 1, 2, 10)]
        prompt_tokens = int(len(question.split()) * 1.3 + 20)
        qid = f"{task}-{qi:05d}"
        for model, (skill, j_tok, j_prefill) in MODELS.items():
            settings = [(0.0, 0)] + [(0.7, i) for i in range(samples_per_query)]
            for temperature, index in settings:
                bonus = 0.3 if temperature == 0 else 0.0
                ok = rng.random() < 1 / (1 + math.exp(-(skill + 1.5 + bonus - difficulty)))
                answer = gold if ok else str(rng.choice(wrong))
                tokens = int(min(max(round(need_tokens * rng.lognormal(0, 0.25)), 3), 64))
                prefill_j = prompt_tokens * j_prefill
                per_tok = j_tok * rng.lognormal(0, 0.1)
                lv_tokens = [min(tokens, L) for L in LEVELS]
                lv_answer = [answer if tokens <= L else None for L in LEVELS]
                lv_correct = [bool(ok and tokens <= L) for L in LEVELS]
                lv_energy = [prefill_j + t * per_tok for t in lv_tokens]
                lv_duration = [e / 25.0 for e in lv_energy]
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
                        "text": f"... the answer is {answer}",
                        "answer": answer,
                        "extraction": "last_number",
                        "correct": bool(ok),
                        "duration_s": lv_duration[-1],
                        "energy_j": lv_energy[-1],
                        "energy_above_idle_j": lv_energy[-1],
                        "prefill_energy_j": prefill_j,
                        "window_energy_j": lv_energy[-1] * samples_per_query,
                        "window_duration_s": lv_duration[-1],
                        "window_samples": samples_per_query,
                        "window_output_tokens": tokens * samples_per_query,
                        "meter": "estimate",
                        "energy_source": ESTIMATED,
                        "attribution": "prefill_even+decode_by_tokens",
                        "levels": list(LEVELS),
                        "level_output_tokens": lv_tokens,
                        "level_answer": lv_answer,
                        "level_correct": lv_correct,
                        "level_energy_j": lv_energy,
                        "level_duration_s": lv_duration,
                        "collect_run": "synthetic",
                        "schema_version": SAMPLE_SCHEMA_VERSION,
                    }
                )
    out = pd.DataFrame(rows)
    return out[sample_fields()]


def write_store(folder: Path, samples: pd.DataFrame, shards: int = 2) -> Path:
    """Write samples as Parquet shards, the layout `ttc collect` produces."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(samples)), shards)):
        samples.iloc[part].to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    return folder


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    # The one place to swap in the reference collection: load_samples("data/reference").
    return synthetic_samples(n_queries=160, seed=0)


@pytest.fixture(scope="module")
def store(samples: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store"), samples)


@pytest.fixture(scope="module")
def data(samples: pd.DataFrame):
    from train.dataset import build_dataset

    return build_dataset(samples, feature_set="text")


@pytest.fixture(scope="module")
def split(data):
    from train.dataset import make_split

    return make_split(data, "query", test_size=0.25, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One small `train_stage` run (few trials, small store) shared by the stage tests."""
    from train.stage import train_stage

    root = tmp_path_factory.mktemp("stage")
    small = write_store(root / "store", synthetic_samples(n_queries=60, seed=1))
    result = train_stage(
        small,
        root / "out",
        n_trials=2,
        seed=0,
        tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        register_name="ttc-test",
        num_threads=1,
        progress=False,
        export_bundle=False,  # the bundle has its own test below (ONNX conversion is slow)
    )
    return result


def _xy(data, idx):
    return pd.DataFrame(data.X[idx], columns=data.feature_names)


# ---------------------------------------------------------------- predictors vs baselines


def test_success_predictor_beats_arm_base_rate_on_heldout_queries(data, split):
    from train.predictors import ArmMeanBaseline, SuccessPredictor, success_metrics

    model = SuccessPredictor(n_estimators=150, num_threads=1).fit(_xy(data, split.train), data.y_success[split.train])
    p = model.predict_p(_xy(data, split.test))
    y = data.y_correct[split.test]
    base = ArmMeanBaseline().fit(data.arm_ids[split.train], data.y_success[split.train])
    b = base.predict(data.arm_ids[split.test])
    ours, theirs = success_metrics(y, p), success_metrics(y, b)
    assert ours["brier"] < theirs["brier"] - 0.02
    assert ours["auc"] > theirs["auc"] + 0.05
    # Per arm, the base rate has no ranking at all (AUC 0.5); the predictor must rank queries.
    arms = data.arm_ids[split.test]
    aucs = [success_metrics(y[arms == a], p[arms == a])["auc"] for a in np.unique(arms)]
    assert np.nanmedian(aucs) > 0.7


def test_energy_predictor_beats_arm_mean_energy_on_heldout_queries(data, split):
    from train.predictors import ArmMeanBaseline, EnergyPredictor, LengthPredictor, log_target_metrics

    X_tr, X_te = _xy(data, split.train), _xy(data, split.test)
    arms_tr, arms_te = data.arm_ids[split.train], data.arm_ids[split.test]
    energy = EnergyPredictor(n_estimators=150, num_threads=1).fit(X_tr, data.energy_j[split.train])
    base = np.exp(ArmMeanBaseline().fit(arms_tr, np.log(data.energy_j[split.train])).predict(arms_te))
    ours = log_target_metrics(data.energy_j[split.test], energy.predict_j(X_te))
    theirs = log_target_metrics(data.energy_j[split.test], base)
    assert ours["rmse_log"] < 0.8 * theirs["rmse_log"]
    assert ours["mape"] < theirs["mape"]

    length = LengthPredictor(n_estimators=150, num_threads=1).fit(X_tr, data.output_tokens[split.train])
    base = np.expm1(ArmMeanBaseline().fit(arms_tr, np.log1p(data.output_tokens[split.train])).predict(arms_te))
    ours = log_target_metrics(data.output_tokens[split.test], length.predict_tokens(X_te), "log1p")
    theirs = log_target_metrics(data.output_tokens[split.test], base, "log1p")
    assert ours["rmse_log1p"] < theirs["rmse_log1p"]


def test_isotonic_calibration_is_a_json_table_applied_by_interpolation(data, split):
    import json

    from train.predictors import SuccessPredictor

    X = _xy(data, split.train)
    model = SuccessPredictor(calibration="isotonic", n_estimators=60, num_threads=1)
    model.fit(X, data.y_success[split.train], groups=data.groups[split.train])
    cal = json.loads(json.dumps(model.calibration_))
    assert cal["method"] == "isotonic"
    assert np.all(np.diff(cal["x"]) >= 0) and np.all(np.diff(cal["y"]) >= 0)
    raw = model.predict_raw_p(X.head(50))
    assert np.allclose(model.predict_p(X.head(50)), np.interp(raw, cal["x"], cal["y"]))
    with pytest.raises(ValueError, match="groups"):
        SuccessPredictor(calibration="isotonic").fit(X, data.y_success[split.train])


# ---------------------------------------------------------------- splits


def test_query_split_never_shares_a_query(data, split):
    train_q, test_q = set(data.groups[split.train]), set(data.groups[split.test])
    assert not train_q & test_q
    assert train_q | test_q == set(data.groups)
    assert set(split.test_query_ids) == test_q
    assert 0.15 < len(test_q) / data.n_queries < 0.35


def test_task_split_holds_out_whole_tasks(data):
    from train.dataset import make_split

    sp = make_split(data, "task", seed=0)
    tasks = data.rows["task"].to_numpy()
    assert sp.holdout_tasks and set(tasks[sp.test]) == set(sp.holdout_tasks)
    assert not set(tasks[sp.train]) & set(sp.holdout_tasks)
    assert not set(sp.train_query_ids) & set(sp.test_query_ids)

    named = make_split(data, "task", holdout_tasks=["compare"])
    assert set(tasks[named.test]) == {"compare"}
    with pytest.raises(UsageError, match="unknown task 'gsm8'"):
        make_split(data, "task", holdout_tasks=["gsm8"])
    with pytest.raises(UsageError, match="every task"):
        make_split(data, "task", holdout_tasks=list(TASKS))
    with pytest.raises(UsageError, match="unknown split"):
        make_split(data, "sample")


# ---------------------------------------------------------------- sklearn contract, seeds


@pytest.mark.parametrize("name", ["SuccessPredictor", "EnergyPredictor", "LengthPredictor"])
def test_predictors_follow_the_sklearn_contract(name, data, split):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    import train.predictors as P

    est = getattr(P, name)(n_estimators=5, num_threads=1)
    copy = clone(est).set_params(num_leaves=7, learning_rate=0.2)
    assert copy.get_params()["num_leaves"] == 7 and est.get_params()["num_leaves"] == 31
    X = _xy(data, split.train[:400])
    with pytest.raises(NotFittedError):
        copy.predict(X)
    y = {"SuccessPredictor": data.y_success, "EnergyPredictor": data.energy_j, "LengthPredictor": data.output_tokens}
    assert copy.fit(X, y[name][split.train[:400]]) is copy
    assert copy.n_features_in_ == len(data.feature_names)
    assert list(copy.booster_.feature_name()) == data.feature_names
    assert copy.predict(X).shape == (400,)
    with pytest.raises(ValueError):
        copy.predict(X.iloc[:, :-1])


def test_seed_reproducibility(data, split):
    from train.predictors import SuccessPredictor
    from train.tune import PREDICTORS, tune

    X, y, g = _xy(data, split.train), data.y_success[split.train], data.groups[split.train]
    params = dict(n_estimators=40, subsample=0.7, colsample_bytree=0.6, random_state=3, num_threads=1)
    a = SuccessPredictor(**params).fit(X, y)
    b = SuccessPredictor(**params).fit(X, y)
    assert a.booster_.model_to_string() == b.booster_.model_to_string()
    assert np.array_equal(a.predict_p(X), b.predict_p(X))

    runs = [
        tune(PREDICTORS["success"], SuccessPredictor(num_threads=1), X, y, g, n_trials=2, seed=5, log_to_mlflow=False)
        for _ in range(2)
    ]
    assert runs[0].best_params == runs[1].best_params
    assert runs[0].best_value == runs[1].best_value


def test_optuna_study_persists_in_sqlite_storage(data, split, tmp_path):
    import optuna

    from train.predictors import EnergyPredictor
    from train.tune import PREDICTORS, tune

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    X = _xy(data, split.train)
    res = tune(
        PREDICTORS["energy"],
        EnergyPredictor(num_threads=1),
        X,
        data.energy_j[split.train],
        data.groups[split.train],
        n_trials=2,
        cv_folds=2,
        storage=url,
        study_name="energy-test",
        log_to_mlflow=False,
    )
    study = optuna.load_study(study_name="energy-test", storage=url)
    assert len(study.trials) == res.n_trials == 2
    assert res.best_n_estimators >= 1
    with pytest.raises(UsageError, match="storage"):
        tune(PREDICTORS["energy"], EnergyPredictor(), X, data.energy_j[split.train], data.groups[split.train], 1,
             storage="optuna.db", log_to_mlflow=False)  # fmt: skip


# ---------------------------------------------------------------- the stage and MLflow


def test_stage_logs_one_nested_run_per_trial(trained):
    from mlflow import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    children = client.search_runs(
        [trained.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{trained.run_id}'", max_results=100
    )
    assert len(children) == 2 * 3  # n_trials per predictor, three predictors
    assert {r.data.tags["predictor"] for r in children} == {"success", "energy", "length"}
    energy_trials = [r for r in children if r.data.tags["predictor"] == "energy"]
    assert all("energy_estimated/valid_rmse_log" in r.data.metrics for r in energy_trials)
    assert all("learning_rate" in r.data.params for r in children)


def test_stage_records_energy_source_metrics_inputs_and_models(trained):
    from mlflow import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.params["energy_source"] == ESTIMATED
    assert run.data.params["energy_meter"] == "estimate"
    assert run.data.tags["energy_source"] == ESTIMATED
    assert run.data.params["success_label"] == "correct_soft"
    energy_keys = [k for k in run.data.metrics if k.split("/")[0].startswith("energy")]
    assert energy_keys and all(k.startswith("energy_estimated/") for k in energy_keys)
    for key in ("success/test_brier", "success/baseline_test_brier", "success/test_auc", "length/test_rmse_log1p"):
        assert key in run.data.metrics
    contexts = {tag.value for inp in run.inputs.dataset_inputs for tag in inp.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"training", "testing"}
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "train")}
    for name in ("reliability.png", "feature_importance.png", "feature_importance.csv", "metrics.json"):
        assert f"train/{name}" in artifacts
    for name in ("success", "energy", "length"):
        version = client.get_model_version_by_alias(f"ttc-test-{name}", "champion")
        assert version.run_id == trained.run_id


def test_stage_saves_native_models_and_disjoint_query_ids(trained):
    import lightgbm as lgb

    assert not set(trained.train_query_ids) & set(trained.test_query_ids)
    for name, path in trained.model_paths.items():
        booster = lgb.Booster(model_file=str(path))
        assert booster.num_trees() >= 1, name
    assert trained.energy_source == ESTIMATED
    assert trained.out_dir.joinpath("split.json").is_file()


def test_stage_bundle_call_matches_write_bundle(trained):
    from types import SimpleNamespace

    import lightgbm as lgb

    bundle = pytest.importorskip("policy.bundle")
    from train.dataset import build_dataset, load_samples, make_split
    from train.stage import _maybe_bundle

    data = build_dataset(load_samples(trained.out_dir.parent / "store"))
    sp = make_split(data, "query", seed=0)
    fitted = {
        name: SimpleNamespace(booster_=lgb.Booster(model_file=str(path)), calibration_=None)
        for name, path in trained.model_paths.items()
    }
    out = _maybe_bundle(trained.out_dir, fitted, data, trained.metrics, sp, None)
    policy = bundle.load_bundle(out)
    assert policy.manifest.energy_source == ESTIMATED
    assert policy.manifest.arms == [a.arm_id for a in data.arms]


# ---------------------------------------------------------------- bad input


def _one_arm(samples: pd.DataFrame) -> pd.DataFrame:
    s = samples[(samples["model"] == "gemma3-270m") & (samples["temperature"] == 0)].copy()
    for col in ("levels", "level_output_tokens", "level_answer", "level_correct", "level_energy_j", "level_duration_s"):
        s[col] = s[col].map(lambda v: list(v)[-1:])
    return s


def test_bad_stores_are_refused_with_usage_errors(samples, tmp_path):
    from train.dataset import build_dataset, load_samples

    with pytest.raises(UsageError, match="no sample store"):
        load_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no Parquet shards|no samples"):
        load_samples(tmp_path / "empty")
    with pytest.raises(UsageError, match="no samples"):
        build_dataset(samples.iloc[:0])
    small = samples[samples["query_id"].isin(samples["query_id"].unique()[:12])]
    with pytest.raises(UsageError, match="one arm"):
        build_dataset(_one_arm(small))
    with pytest.raises(UsageError, match="no energy_j"):
        build_dataset(small.assign(energy_j=np.nan))
    with pytest.raises(UsageError, match="energy_j = 0"):
        build_dataset(small.assign(energy_j=0.0))
    with pytest.raises(UsageError, match="unknown feature set 'txt'"):
        build_dataset(small, feature_set="txt")
    with pytest.raises(UsageError, match="probe columns"):
        build_dataset(small, feature_set="text+probe")
    mixed = small.assign(energy_source=np.where(small["model"] == "gemma3-270m", "measured", ESTIMATED))
    with pytest.raises(TTCError, match="mixes energy sources"):
        build_dataset(mixed)


def test_stage_refuses_bad_arguments_before_reading(tmp_path, store):
    from train.stage import train_stage

    for kwargs, match in (
        ({"feature_set": "txt"}, "unknown feature set"),
        ({"split": "sample"}, "unknown split"),
        ({"n_trials": -1}, "n_trials"),
        ({"storage": "optuna.db"}, "storage"),
    ):
        with pytest.raises(UsageError, match=match):
            train_stage(store, tmp_path / "out", progress=False, **kwargs)
    with pytest.raises(UsageError, match="no sample store"):
        train_stage(tmp_path / "nowhere", tmp_path / "out", progress=False)
