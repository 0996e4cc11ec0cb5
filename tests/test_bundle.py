"""The exported bundle: round trip, numpy/LightGBM/ONNX parity, refusal of tampered or mismatched bundles.

Hostile inputs (crafted trees, zips, links, export data loss) are in tests/test_bundle_hostile.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from policy_fixtures import (
    MODELS,
    build_synthetic_bundle,
    synthetic_arms,
    synthetic_probe,
    synthetic_questions,
    train_boosters,
)

from policy.allocate import DecisionRule
from policy.bundle import BUNDLE_FILES, SCHEMA_VERSION, load_bundle
from policy.errors import BundleError, UsageError
from policy.features import row_matrix
from policy.manifest import Manifest, bundle_digest
from train.export import write_bundle, write_policy, zip_bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_queries() -> tuple[list[str], list[str]]:
    questions, tasks, _ = synthetic_questions(50, seed=7)
    return questions + ["", "hello world", "What is 2 + 2?"], tasks + [None, None, "unknown-task"]


def _edit_manifest(bundle: Path, change, rehash: bool = True) -> None:
    """Change policy.json; with `rehash` also recompute its digest, as someone who re-hashes would."""
    d = json.loads((bundle / "policy.json").read_text())
    change(d)
    if rehash:
        files = {n: (bundle / n).read_bytes() for n in d["files"]}
        m = Manifest(**d)
        d["digest"] = bundle_digest(m, files)
    (bundle / "policy.json").write_text(json.dumps(d))


def test_bundle_holds_exactly_the_documented_files_and_no_pickle(bundle_dir):
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(BUNDLE_FILES)
    d = json.loads((bundle_dir / "policy.json").read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    assert sorted(d["files"]) == sorted(set(BUNDLE_FILES) - {"policy.json"})
    assert d["energy_source"] == "estimated" and d["energy_meter"] == "synthetic"
    assert d["models"] == MODELS and d["arms"] == [a.arm_id for a in synthetic_arms()]
    for p in bundle_dir.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks pickled"


@pytest.mark.parametrize("backend", ["numpy", "lightgbm", "onnx"])
def test_loaded_policy_predicts_probabilities_and_positive_joules_per_arm(bundle_dir, fresh_queries, backend):
    questions, tasks = fresh_queries
    policy = load_bundle(bundle_dir, backend=backend)
    p, e = policy.predict(questions, tasks)
    assert p.shape == e.shape == (len(questions), len(policy.arms))
    assert np.all((p >= 0) & (p <= 1)) and np.all(e > 0)


def test_predictions_have_the_structure_they_were_trained_on(bundle_dir):
    policy = load_bundle(bundle_dir)
    questions, tasks, hard = synthetic_questions(200, seed=11)
    p, e = policy.predict(questions, tasks)
    easy, difficult = hard < 0.3, hard > 0.7
    assert p[easy].mean() > p[difficult].mean() + 0.2
    n8 = policy.arm_ids.index("tiny-360m/n8/L128/t0.7")
    n1 = policy.arm_ids.index("tiny-360m/n1/L128/t0.7")
    assert np.all(e[:, n8] > e[:, n1])


@pytest.mark.parametrize("backend, tol", [("numpy", 1e-6), ("onnx", 1e-5)])
def test_backends_agree_with_lightgbm_and_choose_the_same_arms(bundle_dir, fresh_queries, backend, tol):
    questions, tasks = fresh_queries
    lg, other = load_bundle(bundle_dir, "lightgbm"), load_bundle(bundle_dir, backend)
    rows = row_matrix(lg.query_features(questions, tasks), lg.arms, lg.models)
    p_l, le_l = lg.backend.predict_rows(rows)
    p_o, le_o = other.backend.predict_rows(rows)
    assert np.max(np.abs(p_l - p_o)) <= tol
    assert np.max(np.abs(le_l - le_o)) <= tol
    for kwargs in ({}, {"lam": 0.0005}, {"budget_j": 8.0}, {"budget_j": 20.0}):
        a, b = lg.allocate(questions, tasks, **kwargs), other.allocate(questions, tasks, **kwargs)
        assert [(d.arm_id, d.rule, d.next_arm_id) for d in a] == [(d.arm_id, d.rule, d.next_arm_id) for d in b]
        assert np.allclose([d.p_success for d in a], [d.p_success for d in b], rtol=0, atol=tol)


def test_parity_file_records_agreement_of_every_backend_on_the_reference_rows(bundle_dir):
    parity = json.loads((bundle_dir / "parity.json").read_text())
    assert parity["ok"] is True and parity["n_queries"] == 64 and parity["reference_backend"] == "lightgbm"
    assert parity["numpy"]["max_abs_diff_p"] <= 1e-6 and parity["numpy"]["max_abs_diff_log_energy"] <= 1e-6
    assert parity["onnx"]["max_abs_diff_p"] <= 1e-5 and parity["onnx"]["max_abs_diff_log_energy"] <= 1e-5
    assert parity["numpy"]["decisions_agree"] == parity["onnx"]["decisions_agree"] == 1.0


@pytest.mark.parametrize("objective", ["binary", "cross_entropy"])
def test_both_success_objectives_export_with_parity(tmp_path, objective):
    out = build_synthetic_bundle(tmp_path / objective, success_objective=objective)
    assert json.loads((out / "policy.json").read_text())["success_objective"] == objective
    assert json.loads((out / "parity.json").read_text())["ok"] is True


def test_zip_and_folder_load_to_the_same_decisions(bundle_dir, fresh_queries, tmp_path):
    bundle_copy = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle_copy)
    zipped = zip_bundle(bundle_copy)
    assert zipped == tmp_path / "b.zip"
    with zipfile.ZipFile(zipped) as zf:
        assert sorted(zf.namelist()) == sorted(BUNDLE_FILES)
    for backend in ("numpy", "lightgbm", "onnx"):
        assert load_bundle(zipped, backend).allocate(*fresh_queries) == load_bundle(bundle_copy, backend).allocate(
            *fresh_queries
        )


def test_zip_is_byte_reproducible(bundle_copy):
    first = zip_bundle(bundle_copy).read_bytes()
    assert zip_bundle(bundle_copy).read_bytes() == first


@pytest.mark.parametrize("name", sorted(set(BUNDLE_FILES) - {"policy.json"}))
def test_a_changed_file_is_refused_with_its_name(bundle_copy, name):
    data = bytearray((bundle_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}.*sha256"):
        load_bundle(bundle_copy)


def test_a_tampered_zip_member_is_refused(bundle_copy, tmp_path):
    (bundle_copy / "energy.txt").write_text(
        (bundle_copy / "energy.txt").read_text().replace("leaf_value=", "leaf_value=9")
    )
    with pytest.raises(BundleError, match="energy.txt.*sha256"):
        load_bundle(zip_bundle(bundle_copy))


def test_a_missing_model_file_is_refused(bundle_copy):
    (bundle_copy / "success.onnx").unlink()
    with pytest.raises(BundleError, match="lacks success.onnx"):
        load_bundle(bundle_copy, backend="lightgbm")


def test_a_feature_set_version_this_package_does_not_compute_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d["feature_set"].update(version=2))
    with pytest.raises(BundleError, match="version 2.*computes version 1"):
        load_bundle(bundle_copy)


def test_an_unknown_feature_set_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d["feature_set"].update(name="embeddings"))
    with pytest.raises(BundleError, match="not provided by this package"):
        load_bundle(bundle_copy)


def test_row_features_that_differ_from_the_feature_set_are_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d["row_features"].reverse())
    with pytest.raises(BundleError, match="row features differ"):
        load_bundle(bundle_copy)


def test_an_arm_of_an_unlisted_model_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d["arms"].append("big-7b/n1/L64/greedy"))
    with pytest.raises(BundleError, match="big-7b"):
        load_bundle(bundle_copy)


def test_a_newer_schema_is_refused_with_an_upgrade_hint(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="newer.*upgrade ttc-allocator"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [0, 1])
def test_a_bundle_of_an_older_schema_is_refused_with_a_message_to_re_export(bundle_copy, version):
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=version), rehash=False)
    with pytest.raises(BundleError, match=f"schema_version {version} predates.*re-export"):
        load_bundle(bundle_copy)


def test_a_path_that_is_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no policy bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="policy.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="neither"):
        load_bundle(tmp_path / "junk.zip")


def test_an_unknown_backend_names_the_known_ones(bundle_dir):
    with pytest.raises(UsageError, match="known: lightgbm, numpy, onnx"):
        load_bundle(bundle_dir, backend="tensorrt")


def test_the_policy_shows_where_its_joules_came_from(bundle_dir):
    policy = load_bundle(bundle_dir)
    assert policy.energy_source == "estimated"
    assert "energy estimated by meter 'synthetic'" in policy.describe()


def test_a_price_or_budget_replaces_the_stored_rule_but_not_both(bundle_dir, fresh_queries):
    policy = load_bundle(bundle_dir)
    assert {d.rule for d in policy.allocate(*fresh_queries)} <= {"price", "hopeless"}
    decisions = policy.allocate(*fresh_queries, budget_j=9.0)
    assert {d.rule for d in decisions} <= {"budget", "hopeless"}
    assert np.mean([d.energy_j for d in decisions]) <= 9.0
    with pytest.raises(UsageError, match="not both"):
        policy.allocate(*fresh_queries, lam=0.01, budget_j=9.0)


def test_a_budget_rule_is_stored_and_applied(tmp_path, fresh_queries):
    out = build_synthetic_bundle(tmp_path / "b", rule=DecisionRule("budget", budget_j=10.0))
    decisions = load_bundle(out, "onnx").allocate(*fresh_queries)
    assert {d.rule for d in decisions} <= {"budget", "hopeless"}
    assert np.mean([d.energy_j for d in decisions]) <= 10.0


def test_calibration_table_maps_predicted_probabilities(tmp_path, bundle_dir, fresh_queries):
    table = {"x": [0.0, 0.5, 1.0], "y": [0.1, 0.2, 0.9]}
    calibrated = load_bundle(build_synthetic_bundle(tmp_path / "cal", calibration=table))
    raw = load_bundle(bundle_dir)
    p_cal, e_cal = calibrated.predict(*fresh_queries)
    p_raw, e_raw = raw.predict(*fresh_queries)
    assert np.allclose(p_cal, np.interp(p_raw, table["x"], table["y"]))
    assert np.array_equal(e_cal, e_raw)


def test_a_probe_policy_says_so_and_requires_probe_values(tmp_path):
    policy = load_bundle(build_synthetic_bundle(tmp_path / "probe", feature_set="text+probe"))
    questions, tasks, hard = synthetic_questions(5, seed=1)
    assert policy.needs_probe
    with pytest.raises(UsageError, match="probe="):
        policy.predict(questions, tasks)
    with pytest.raises(UsageError, match="probe values of shape"):
        policy.predict(questions, tasks, probe=np.zeros((5, 2)))
    p, _ = policy.predict(questions, tasks, probe=synthetic_probe(hard, 1))
    assert p.shape == (5, len(policy.arms))


def test_a_text_policy_does_not_need_probe_values(bundle_dir):
    assert not load_bundle(bundle_dir).needs_probe


def test_write_bundle_rejects_boosters_of_the_wrong_width(tmp_path):
    rows = np.random.default_rng(0).normal(size=(200, 5))
    small = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(rows, rows[:, 0]), 2)
    with pytest.raises(UsageError, match="takes 5 features"):
        write_bundle(
            tmp_path, small, small, synthetic_arms(), MODELS, "text", DecisionRule(), {}, "estimate", "estimated"
        )


def test_write_bundle_rejects_an_unknown_energy_source(tmp_path):
    success, energy = train_boosters(n_queries=40, n_trees=2)
    with pytest.raises(UsageError, match="energy_source"):
        write_bundle(tmp_path, success, energy, synthetic_arms(), MODELS, "text", DecisionRule(), {}, "rapl", "guess")


def _modules_after(code: str) -> set[str]:
    heavy = ("torch", "transformers", "mlflow", "lightgbm", "onnxruntime", "onnxmltools", "pandas")
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(','.join(m for m in {heavy!r} if m in sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(filter(None, out.stdout.strip().split(",")))


def test_import_policy_imports_no_heavy_library():
    assert _modules_after("import policy") == set()


def test_loading_and_allocating_with_the_default_backend_needs_numpy_only(bundle_dir):
    loaded = _modules_after(
        f"import policy; p = policy.load_bundle({str(bundle_dir)!r}); p.allocate(['What is 2 + 2?'], ['gsm8k'])"
    )
    assert loaded == set()


@pytest.mark.parametrize("backend, other", [("onnx", "lightgbm"), ("lightgbm", "onnxruntime")])
def test_an_optional_backend_imports_only_its_own_library(bundle_dir, backend, other):
    loaded = _modules_after(f"import policy; policy.load_bundle({str(bundle_dir)!r}, backend={backend!r})")
    # (lightgbm itself imports pandas when it is installed, so pandas is not checked here)
    assert other not in loaded and not loaded & {"torch", "transformers", "mlflow"}
    assert ("onnxruntime" if backend == "onnx" else "lightgbm") in loaded


def test_with_rule_returns_a_new_checked_policy_and_leaves_the_old_one(bundle_dir, fresh_queries):
    policy = load_bundle(bundle_dir)
    budget = policy.with_rule(DecisionRule("budget", budget_j=9.0))
    assert policy.rule.mode == "price" and budget.rule.mode == "budget"
    assert budget.allocate(*fresh_queries) == policy.allocate(*fresh_queries, budget_j=9.0)
    with pytest.raises(UsageError, match="budget_j"):
        policy.with_rule({"mode": "budget", "budget_j": -1.0})
    with pytest.raises(UsageError, match="lam must be a number"):
        policy.with_rule({"mode": "price", "lam": "0.1"})


def test_write_policy_writes_the_new_rule_with_a_fresh_digest(bundle_dir, tmp_path, fresh_queries):
    policy = load_bundle(bundle_dir).with_rule(DecisionRule("price", lam=0.0005))
    out = write_policy(policy, tmp_path / "new")
    again = load_bundle(out)
    assert again.rule == DecisionRule("price", lam=0.0005)
    assert again.allocate(*fresh_queries) == load_bundle(bundle_dir).allocate(*fresh_queries, lam=0.0005)
    for name in set(BUNDLE_FILES) - {"policy.json"}:
        assert (out / name).read_bytes() == (bundle_dir / name).read_bytes()


def test_benchmark_reports_latency_per_backend_and_the_streamed_allocate_beside_the_old_path(bundle_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_policy", ROOT / "benchmarks" / "policy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(
        [
            "--bundle",
            str(bundle_dir),
            "--repeats",
            "30",
            "--allocate-queries",
            "300",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert set(out["backends"]) == {"numpy", "lightgbm", "onnx"}
    for row in out["backends"].values():
        for batch in (1, 1000):
            assert 0 < row[f"batch{batch}_p50_ms"] <= row[f"batch{batch}_p99_ms"]
            assert row[f"batch{batch}_fraction_of_cheapest_arm"] > 0
    alloc = out["allocate_file"]
    assert alloc["n_queries"] == 300 and alloc["same_decisions_price"] is alloc["same_decisions_budget"] is True
    for run in ("streamed_price", "old_price", "streamed_budget", "old_budget"):
        assert alloc[run]["wall_s"] > 0 and alloc[run]["cpu_s"] > 0 and alloc[run]["peak_rss_mb"] > 0
    assert json.loads((tmp_path / "b.json").read_text()) == out
