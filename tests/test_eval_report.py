"""Properties of `eval_stage` and its report on the committed reference collection (fixtures: eval_fixtures.py):
the documented keys, energy sources in every name, intervals, findings, outputs and MLflow, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
from eval_helpers import LEVELS, _stage

from policy.errors import MixedEnergyError, UsageError
from policy.records import ESTIMATED, MEASURED

#: the shared fixtures (samples, dataset, bundle, ctx, curves, staged, synthetic, synthetic_bundle)
pytest_plugins = ["eval_fixtures"]

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
    "within_task_auc",
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
