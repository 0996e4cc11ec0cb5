"""Tests of the train stage: dataset, predictors, tuning with MLflow, the stage entry.

Everything runs on the committed reference collection (data/reference/v1: 128 real
queries of 8 tasks x 2 models, 8 samples at temperature 0.7 plus one greedy,
graded at 16/32/64 tokens, estimated joules), read once per session by the
`reference_samples` fixture of conftest.py. One small `train_stage` run on it
(`trained`: 2 Optuna trials per predictor, a quarter of the queries held out)
is what the predictor-versus-baseline properties check: the models it saves,
re-scored here from their files on its held-out queries, must beat each arm's
mean on the same queries. Bad stores are edits of the real samples.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from policy.errors import TTCError, UsageError
from policy.records import ESTIMATED

#: The stage's split and tuning in these tests: a quarter of the 128 queries (32) held out, 2 trials.
SEED = 0
TEST_SIZE = 0.25
N_TRIALS = 2


def _run_stage(store: Path, root: Path, register_name: str | None = None):
    from train.stage import train_stage

    return train_stage(
        store,
        root / "out",
        n_trials=N_TRIALS,
        seed=SEED,
        test_size=TEST_SIZE,
        tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        register_name=register_name,
        num_threads=1,
        progress=False,
        export_bundle=False,  # the bundle has its own test below (ONNX conversion is slow)
    )


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples(reference_samples: pd.DataFrame) -> pd.DataFrame:
    return reference_samples


@pytest.fixture(scope="module")
def store(reference_store: Path) -> Path:
    return reference_store


@pytest.fixture(scope="module")
def data(samples: pd.DataFrame):
    from train.dataset import build_dataset

    return build_dataset(samples, feature_set="text", seed=SEED)


@pytest.fixture(scope="module")
def split(data):
    from train.dataset import make_split

    return make_split(data, "query", test_size=TEST_SIZE, seed=SEED)


@pytest.fixture(scope="module")
def stage_run(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """One small `train_stage` run on the reference collection, and every warning it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run_stage(store, tmp_path_factory.mktemp("stage"), register_name="ttc-test")
    return result, caught


@pytest.fixture(scope="module")
def trained(stage_run):
    """The shared `train_stage` run's result."""
    return stage_run[0]


def _xy(data, idx):
    return pd.DataFrame(data.X[idx], columns=data.feature_names)


def _saved_predictions(trained, data, split, name: str) -> np.ndarray:
    """The saved model's raw output (P, log J or log1p tokens) on the held-out rows, from its file."""
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(trained.model_paths[name]))
    return booster.predict(data.X[split.test].astype(np.float32))


# ---------------------------------------------------------------- predictors vs baselines


def test_success_predictor_beats_each_arm_base_rate_on_heldout_queries(data, split, trained):
    """The stage's saved success model against a baseline predicting each arm's mean on the training
    queries, both scored on the 32 held-out queries' hard outcomes (960 rows): Brier and AUC over all
    held-out rows, and Brier within every arm (where the base rate has no ranking: AUC 0.5)."""
    from train.predictors import ArmMeanBaseline, success_metrics

    assert tuple(split.test_query_ids) == trained.test_query_ids
    p = _saved_predictions(trained, data, split, "success")
    y = data.y_correct[split.test]
    arms = data.arm_ids[split.test]
    base = ArmMeanBaseline().fit(data.arm_ids[split.train], data.y_success[split.train]).predict(arms)
    ours, theirs = success_metrics(y, p), success_metrics(y, base)
    # the file holds the model the stage scored and logged
    assert ours["brier"] == pytest.approx(trained.metrics["success/test_brier"], rel=1e-6)
    assert theirs["brier"] == pytest.approx(trained.metrics["success/baseline_test_brier"], rel=1e-9)
    # reference, seed 0: Brier 0.118 vs 0.225, AUC 0.891 vs 0.567
    assert ours["brier"] < theirs["brier"] - 0.05
    assert ours["auc"] > theirs["auc"] + 0.15
    per_arm = {a: (arms == a) for a in np.unique(arms)}
    for a, k in per_arm.items():
        assert np.mean((p[k] - y[k]) ** 2) < np.mean((base[k] - y[k]) ** 2), a
    aucs = [success_metrics(y[k], p[k])["auc"] for k in per_arm.values()]
    assert np.nanmin(aucs) > 0.5 and np.nanmedian(aucs) > 0.7


def test_energy_predictor_beats_arm_mean_energy_on_heldout_queries(data, split, trained):
    """The stage's saved energy and length models against each arm's (geometric) mean on the training
    queries, scored on the held-out queries."""
    from train.predictors import ArmMeanBaseline, log_target_metrics

    arms_tr, arms_te = data.arm_ids[split.train], data.arm_ids[split.test]
    y = data.energy_j[split.test]
    ours = log_target_metrics(y, np.exp(_saved_predictions(trained, data, split, "energy")))
    base = np.exp(ArmMeanBaseline().fit(arms_tr, np.log(data.energy_j[split.train])).predict(arms_te))
    theirs = log_target_metrics(y, base)
    assert ours["rmse_log"] == pytest.approx(trained.metrics["energy_estimated/test_rmse_log"], rel=1e-6)
    # reference, seed 0: RMSE of log joules 0.251 vs 0.435, MAPE 0.196 vs 0.331
    assert ours["rmse_log"] < 0.8 * theirs["rmse_log"]
    assert ours["mape"] < theirs["mape"]

    y = data.output_tokens[split.test]
    ours = log_target_metrics(y, np.expm1(_saved_predictions(trained, data, split, "length")), "log1p")
    base = np.expm1(ArmMeanBaseline().fit(arms_tr, np.log1p(data.output_tokens[split.train])).predict(arms_te))
    theirs = log_target_metrics(y, base, "log1p")
    assert ours["rmse_log1p"] < theirs["rmse_log1p"]  # reference, seed 0: 0.209 vs 0.342


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


def test_query_split_never_shares_a_query(samples, data, split, trained):
    import json

    from store.splits import read_split

    train_q, test_q = set(data.groups[split.train]), set(data.groups[split.test])
    assert not train_q & test_q
    assert train_q | test_q == set(data.groups)
    assert set(split.test_query_ids) == test_q
    assert len(test_q) == round(TEST_SIZE * data.n_queries) == 32
    # the stage holds out the same queries, whole, and writes them down
    assert (trained.train_query_ids, trained.test_query_ids) == (split.train_query_ids, split.test_query_ids)
    written = json.loads(trained.out_dir.joinpath("split.json").read_text())
    assert not set(written["train_query_ids"]) & set(written["test_query_ids"])
    assert set(written["test_query_ids"]) == test_q
    # and records the seed and the store it was drawn from, which eval checks
    assert written["seed"] == SEED
    assert read_split(trained.out_dir).check_store(samples) is True


def test_task_split_holds_out_whole_tasks(data):
    from train.dataset import make_split

    sp = make_split(data, "task", seed=0)
    tasks = data.rows["task"].to_numpy()
    assert sp.holdout_tasks and set(tasks[sp.test]) == set(sp.holdout_tasks)
    assert not set(tasks[sp.train]) & set(sp.holdout_tasks)
    assert not set(sp.train_query_ids) & set(sp.test_query_ids)

    named = make_split(data, "task", holdout_tasks=["facts.atomic_number"])
    assert set(tasks[named.test]) == {"facts.atomic_number"}
    assert len(named.test_query_ids) == 16
    with pytest.raises(UsageError, match="unknown task 'gsm8'"):
        make_split(data, "task", holdout_tasks=["gsm8"])
    with pytest.raises(UsageError, match="every task"):
        make_split(data, "task", holdout_tasks=sorted(set(tasks)))
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
    from train.registry import PREDICTORS
    from train.tune import tune

    X, y, g = _xy(data, split.train), data.y_success[split.train], data.groups[split.train]
    params = dict(n_estimators=40, subsample=0.7, colsample_bytree=0.6, random_state=3, num_threads=1)
    a = SuccessPredictor(**params).fit(X, y)
    b = SuccessPredictor(**params).fit(X, y)
    assert a.booster_.model_to_string() == b.booster_.model_to_string()
    assert np.array_equal(a.predict_p(X), b.predict_p(X))

    runs = [tune(PREDICTORS["success"], SuccessPredictor(num_threads=1), X, y, g, n_trials=2, seed=5) for _ in range(2)]
    assert runs[0].best_params == runs[1].best_params
    assert runs[0].best_value == runs[1].best_value


def test_stage_with_the_same_seed_saves_the_same_models(store, trained, tmp_path):
    """Run again into a copy of the first run's folder: same models, and the folder is replaced whole."""
    import shutil

    shutil.copytree(trained.out_dir, tmp_path / "out")
    (tmp_path / "out" / "stale.txt").write_text("from the first run")
    again = _run_stage(store, tmp_path)
    assert not (again.out_dir / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary sibling left
    assert (again.train_query_ids, again.test_query_ids) == (trained.train_query_ids, trained.test_query_ids)
    for name, path in trained.model_paths.items():
        assert again.model_paths[name].read_text() == path.read_text(), name
    assert again.metrics.keys() == trained.metrics.keys()
    np.testing.assert_array_equal([again.metrics[k] for k in trained.metrics], list(trained.metrics.values()))


def test_optuna_study_persists_in_sqlite_storage(data, split, tmp_path):
    import optuna

    from train.predictors import EnergyPredictor
    from train.registry import PREDICTORS
    from train.tune import tune

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
    )
    study = optuna.load_study(study_name="energy-test", storage=url)
    assert len(study.trials) == res.n_trials == 2
    assert res.best_n_estimators >= 1
    with pytest.raises(UsageError, match="storage"):
        tune(PREDICTORS["energy"], EnergyPredictor(), X, data.energy_j[split.train], data.groups[split.train], 1,
             storage="optuna.db")  # fmt: skip


# ---------------------------------------------------------------- the stage and MLflow


def test_stage_logs_one_nested_run_per_trial(trained):
    from mlflow import MlflowClient

    client = MlflowClient(trained.tracking_uri)
    children = client.search_runs(
        [trained.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{trained.run_id}'", max_results=100
    )
    assert len(children) == N_TRIALS * 3  # n_trials per predictor, three predictors
    assert {r.info.experiment_id for r in children} == {trained.experiment_id}
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


def test_stage_run_emits_no_library_warnings(stage_run):
    """MLflow's dataset-source and integer-schema UserWarnings had causes in our calls; none may remain.
    (DeprecationWarnings raised inside the libraries themselves are theirs to fix and hidden by default.)"""
    _, caught = stage_run
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert shown == []


def test_fit_never_sees_labels_of_queries_outside_its_training_ids(samples, data, split):
    """`fit` on the training rows gives the same models whatever the held-out queries' outcomes are."""
    from train.dataset import build_dataset
    from train.fit import TrainConfig, fit

    cfg = TrainConfig(n_trials=0, num_threads=1, seed=SEED)
    held_out = samples["query_id"].isin(split.test_query_ids)
    flipped = samples.copy()
    flipped.loc[held_out, "correct"] = ~flipped.loc[held_out, "correct"].astype(bool)
    flipped.loc[held_out, "level_correct"] = flipped.loc[held_out, "level_correct"].map(lambda v: [not c for c in v])
    flipped.loc[held_out, "energy_j"] *= 3.0
    flipped.loc[held_out, "level_energy_j"] = flipped.loc[held_out, "level_energy_j"].map(
        lambda v: [3.0 * e for e in v]
    )
    other = build_dataset(flipped, feature_set="text", seed=SEED)
    assert not np.array_equal(other.y_correct, data.y_correct)  # the edit reached the labels
    a = fit(data, split.train, cfg).estimators
    b = fit(other, split.train, cfg).estimators
    for name in a:
        assert a[name].booster_.model_to_string() == b[name].booster_.model_to_string(), name


def test_fit_policy_writes_a_loadable_bundle_from_the_given_queries(samples, data, split, tmp_path):
    from policy.bundle import load_bundle
    from train.fit import TrainConfig, fit_policy

    cfg = TrainConfig(n_trials=0, num_threads=1, seed=SEED)
    out = fit_policy(samples, split.train_query_ids, cfg, tmp_path / "fold0")
    policy = load_bundle(out)
    assert policy.manifest.energy_source == ESTIMATED
    assert policy.manifest.arms == [a.arm_id for a in data.arms]
    with pytest.raises(UsageError, match="not in the samples"):
        fit_policy(samples, ["no-such-query"], cfg, tmp_path / "fold1")
    with pytest.raises(UsageError, match="no training query ids"):
        fit_policy(samples, [], cfg, tmp_path / "fold2")
    assert not (tmp_path / "fold1").exists() and not (tmp_path / "fold2").exists()


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
