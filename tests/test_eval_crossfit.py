"""Cross-fitted evaluation on the committed reference collection (128 real queries, 8 tasks), and what eval
checks before it runs: the split train wrote, the store it belongs to, folds that never see their queries.

One real cross-fitted `eval_stage` run (3 query folds, a LightGBM policy per fold with default
hyperparameters, 0 Optuna trials, to keep it to ~30 s) backs the report properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.allocators import EvalContext, Fold, Outcomes
from policy.errors import UsageError
from store.splits import Split, store_fingerprint, write_split


@pytest.fixture(scope="module")
def crossfitted(reference_store, tmp_path_factory):
    """(EvalReport, JSON report) of `eval_stage --folds 3` on the reference store, no bundle given."""
    from eval.stage import eval_stage

    root = tmp_path_factory.mktemp("crossfit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        report = eval_stage(
            reference_store,
            None,
            root / "out",
            n_boot=40,
            seed=0,
            tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            folds=3,
            fold_trials=0,
        )
    return report, json.loads(report.json_path.read_text())


def test_cross_fitting_holds_out_every_query_exactly_once(reference_samples, crossfitted):
    report, doc = crossfitted
    n = reference_samples["query_id"].nunique()
    assert report.n_folds == 3 and report.n_test_queries == n == doc["split"]["n_test_queries"]
    folds = doc["cross_fitting"]["folds"]
    assert [f["fold"] for f in folds] == ["fold0", "fold1", "fold2"]
    assert sum(f["n_queries"] for f in folds) == n
    assignments = __import__("pandas").read_parquet(report.assignments_path)
    learned = assignments[(assignments["allocator"] == "learned") & (assignments["point"] == 0)]
    assert sorted(learned["query_id"]) == sorted(reference_samples["query_id"].astype(str).unique())


def test_cross_fitted_report_has_headline_intervals_fold_spread_and_peers(crossfitted):
    report, doc = crossfitted
    h = doc["headline"]
    assert h["n_queries"] == report.n_test_queries
    assert set(h["peers"]) == {"early_stopping", "adaptive_consistency", "esc"}
    spread = doc["cross_fitting"]["spread"]
    assert "best_fixed_accuracy" in spread
    s = spread["best_fixed_accuracy"]
    points = [f["headline"]["best_fixed_accuracy"]["point"] for f in doc["cross_fitting"]["folds"]]
    assert s["min"] == pytest.approx(min(points)) and s["max"] == pytest.approx(max(points))
    assert {"adaptive_consistency", "esc"} <= set(doc["allocators_run"])
    assert doc["split"]["cross_fitted"] is True and doc["split"]["fold_trials"] == 0


def test_a_fold_that_trains_on_its_held_out_queries_is_refused(reference_samples):
    ids = np.asarray([f"q:{i}" for i in range(4)], dtype=object)
    out = Outcomes(
        ids, np.asarray(["t"] * 4, dtype=object), [""] * 4, ["a/n1/L16/greedy"],
        np.ones((4, 1)), np.ones((4, 1)), np.ones((4, 1)), np.ones((4, 1), dtype=bool),
    )  # fmt: skip
    with pytest.raises(UsageError, match="trains on some of its held-out"):
        EvalContext(test=out, folds=[Fold("f", out, out.subset(["q:0"]), None)])
    with pytest.raises(UsageError, match="exactly once"):
        EvalContext(test=out, folds=[Fold("f", out.subset(["q:0", "q:1"]), None, None)])


def test_leave_one_task_out_makes_one_fold_per_task(reference_samples):
    from eval.inputs import cross_fitted

    held = cross_fitted(reference_samples, "task", 2, 0)
    tasks = sorted(reference_samples["task"].astype(str).unique())
    assert [f.name for f in held.folds] == tasks and list(held.holdout_tasks) == tasks
    for f in held.folds:
        assert all(q.startswith(f"{f.name}:") for q in f.test_query_ids)
        train = held.train_ids_of(f, reference_samples["query_id"].astype(str).unique())
        assert not any(q.startswith(f"{f.name}:") for q in train)


def test_eval_reads_the_split_train_wrote_and_checks_its_store(reference_samples, tmp_path):
    from eval.inputs import single_split

    ids = sorted(reference_samples["query_id"].astype(str).unique())
    split = Split(
        "query", tuple(ids[:100]), tuple(ids[100:]), seed=0, store_fingerprint=store_fingerprint(reference_samples)
    )
    write_split(tmp_path / "split.json", split)
    held = single_split(reference_samples, "query", None, None, None, tmp_path)
    assert held.test_query_ids == ids[100:] and list(held.train_query_ids) == ids[:100]
    assert held.checks["split_vs_store"].startswith("checked")
    fewer = reference_samples[reference_samples["sample_index"] != 7]
    with pytest.raises(UsageError, match="differs from the one the split was drawn from"):
        single_split(fewer, "query", None, None, None, tmp_path)


def test_without_a_split_eval_says_how_to_name_the_held_out_queries(reference_samples):
    from eval.inputs import single_split

    with pytest.raises(UsageError, match="--train-dir"):
        single_split(reference_samples, "query", None, None, None, None)


def test_cli_eval_cross_fits_with_folds(reference_store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ttc.cli import app

    monkeypatch.chdir(tmp_path)
    args = ["eval", "--store", str(reference_store), "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "e")]
    args += ["--folds", "2", "--fold-trials", "0", "--n-boot", "0", "--allocator", "learned", "--allocator", "fixed"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "energy_saved_at_equal_accuracy" in result.output
    doc = json.loads(Path(tmp_path / "e" / "eval_report.json").read_text())
    assert doc["split"]["n_folds"] == 2 and doc["allocators_run"] == ["learned", "fixed"]


def test_every_energy_figure_of_the_cross_fitted_report_names_its_source(crossfitted):
    """Keys of joule figures carry the source; self-describing objects (headlines, the fold spread) say it once."""
    _, doc = crossfitted
    seen = []

    def walk(obj, path=""):
        if isinstance(obj, dict) and "energy_source" in obj:
            assert obj["energy_source"] == "estimated", path
            seen.append(path)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                number = isinstance(v, int | float) and not isinstance(v, bool)
                figure = v is None or number or (isinstance(v, dict) and "point" in v)
                if figure and (k.endswith("_j") or "energy" in k):
                    assert "estimated" in k, f"{path}/{k}"
                walk(v, f"{path}/{k}")
        elif isinstance(obj, list):
            for v in obj:
                walk(v, path)

    walk(doc)
    assert "/cross_fitting/spread" in seen and "/headline" in seen
