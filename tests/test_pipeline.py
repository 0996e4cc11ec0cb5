"""`ttc run --quick` end to end on a tiny slice, then export and allocate through the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttc.cli import app
from ttc.stages import REFERENCE_STORE

TASKS = ["rg.basic_arithmetic_1d", "rg.needle_haystack"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = [
        "run",
        "--quick",
        "--out",
        str(root / "out"),
        "--task",
        TASKS[0],
        "--task",
        TASKS[1],
        "--collect",
        "1",
        "--trials",
        "2",
        "--n-boot",
        "50",
        "--tracking-uri",
        uri,
    ]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.chdir(root)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    quick_run_warnings.extend(caught)
    return root, json.loads((root / "out" / "run_summary.json").read_text()), result.output


#: every warning `ttc run --quick` emitted (filled by the quick_run fixture)
quick_run_warnings: list[warnings.WarningMessage] = []


@pytest.mark.slow
def test_quick_run_collects_new_queries_and_reports_where_numbers_come_from(quick_run):
    root, summary, output = quick_run
    data = summary["data"]
    k = data["reference_items_per_task"]  # the reference's whole prefix of these two tasks (it grows)
    assert k >= 16 and data["queries_from_reference"] == 2 * k
    assert data["queries_collected_by_this_or_earlier_runs"] == 2  # one new query per task
    assert data["new_samples_this_run"] == 2 * 2 * (8 + 1)  # 2 queries x 2 models x (8 sampled + greedy)
    assert data["energy_source"] == "estimated"
    report = Path(summary["eval"]["json_path"])
    assert report.is_file() and Path(summary["eval"]["markdown_path"]).is_file()
    assert "estimated" in output and "mlflow ui" in output


@pytest.mark.slow
def test_second_run_reuses_every_stored_sample(quick_run, tmp_path):
    root, _, _ = quick_run
    from ttc.stages import run_pipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        again = run_pipeline(
            root / "out",
            "quick",
            tasks=TASKS,
            extra_items_per_task=1,
            n_trials=2,
            n_boot=50,
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            progress=False,
            echo=lambda *_: None,
        )
    assert again["data"]["new_samples_this_run"] == 0


@pytest.mark.slow
def test_allocate_writes_one_decision_per_query_from_the_exported_bundle(quick_run, tmp_path):
    root, summary, _ = quick_run
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"id": "a", "question": "What is 3 + 4?", "task": "rg.basic_arithmetic_1d"}\n'
        '{"question": "Who loves kayaks? Ana loves kayaks."}\n'
    )
    out = tmp_path / "d.jsonl"
    bundle = summary["export"]["zip"]
    r = CliRunner().invoke(app, ["allocate", "--bundle", bundle, "--input", str(queries), "--output", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["query_id"] for d in rows] == ["a", "2"]
    from policy.arms import Arm

    for d in rows:
        Arm.parse(d["arm_id"])
        assert d["energy_source"] == "estimated" and 0 <= d["p_success"] <= 1 and d["energy_j"] > 0


@pytest.mark.slow
def test_export_with_a_budget_rule_round_trips(quick_run, tmp_path):
    root, summary, _ = quick_run
    out = tmp_path / "b"
    r = CliRunner().invoke(
        app,
        ["export", "--from", str(root / "out" / "train"), "--out", str(out), "--mode", "budget", "--budget-j", "1000"],
    )
    assert r.exit_code == 0, r.output
    from policy.bundle import load_bundle

    pol = load_bundle(out.with_suffix(".zip"))
    assert pol.rule.mode == "budget" and pol.rule.budget_j == 1000


@pytest.mark.slow
def test_allocate_refuses_a_line_without_question_and_writes_nothing(quick_run, tmp_path):
    _, summary, _ = quick_run
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "1+1?"}\n{"task": "x"}\n')
    out = tmp_path / "d.jsonl"
    bundle = summary["export"]["zip"]
    r = CliRunner().invoke(app, ["allocate", "--bundle", bundle, "--input", str(q), "--output", str(out)])
    assert r.exit_code == 2 and "line 2" in r.output
    assert not out.exists()


def test_export_from_a_folder_without_a_bundle_exits_2(tmp_path):
    r = CliRunner().invoke(app, ["export", "--from", str(tmp_path), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no policy bundle" in r.output
    assert not (tmp_path / "b").exists()


def test_train_refuses_an_empty_store(tmp_path):
    (tmp_path / "store").mkdir()
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--store",
            str(tmp_path / "store"),
            "--out",
            str(tmp_path / "t"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
        ],
    )
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output


@pytest.mark.slow
def test_quick_run_prints_one_progress_line_per_stage_and_no_library_bars(quick_run):
    """In a log (no terminal) each stage's line is printed whole: every 30 s while it runs and once at its end
    (counts done = total); libraries print no bars."""
    from store.progress import LOG_EVERY_S

    _, summary, output = quick_run
    lines = output.splitlines()
    for stage, first in (("collect", "queries"), ("train", "trials"), ("export", ""), ("eval", "allocators")):
        mine = [x for x in lines if x.startswith(f"{stage}  ")]
        assert mine and first in mine[-1] and not any(c in x for x in mine for c in "\r━"), (stage, mine)
        counts = [p.split()[1] for p in mine[-1].split("  ") if "/" in p and p.split()[0] in ("queries", "samples",
                  "trials", "folds", "allocators")]  # fmt: skip
        assert all(c.split("/")[0] == c.split("/")[1] for c in counts), mine[-1]
        h, m, sec = (int(v) for v in next(p for p in mine[-1].split("  ") if p.count(":") == 2).split(":"))
        assert len(mine) <= 1 + (3600 * h + 60 * m + sec) // LOG_EVERY_S, mine  # one line, plus one per 30 s
    collect = next(x for x in reversed(lines) if x.startswith("collect  ")).split("  ")
    done, total = map(int, next(p for p in collect if p.startswith("samples ")).split()[1].split("/"))
    # every planned sample generated; a batch holding a stored query regenerates it (not rewritten)
    assert done == total >= summary["data"]["new_samples_this_run"] > 0 and any("tok/s" in p for p in collect)
    for noise in ("Generating train split", "Converting and de-quantizing", "━", "Loading weights"):
        assert noise not in output


@pytest.mark.slow
def test_quick_run_console_carries_no_library_warnings(quick_run):
    """MLflow's UserWarnings (dataset sources, integer schema columns) had causes in our calls; none remain.
    DeprecationWarnings raised inside the libraries are theirs and hidden on a console by default."""
    shown = [
        f"{w.category.__name__} ({Path(w.filename).name}:{w.lineno}): {str(w.message)[:120]}"
        for w in quick_run_warnings
        if not issubclass(w.category, DeprecationWarning)
    ]
    assert shown == []


def test_cli_choices_are_the_registries_names():
    """The help of each choice option lists exactly what the registry behind it accepts."""
    from collect.energy import METERS
    from policy.runtime import BACKENDS
    from train import CALIBRATIONS
    from train.dataset import SPLITS

    runner = CliRunner()
    # rich draws boxes around wrapped help: drop the box edges, then compare with whitespace collapsed
    help_of = {cmd: " ".join(runner.invoke(app, [cmd, "--help"]).output.replace("│", " ").split()) for cmd in
               ("train", "collect", "allocate", "eval")}  # fmt: skip
    assert f"success calibration: {', '.join(CALIBRATIONS)}" in help_of["train"]
    assert f"held-out split: {', '.join(SPLITS)}" in help_of["train"]
    assert f"held-out split: {', '.join(SPLITS)}" in help_of["eval"]
    assert f"energy meter: {', '.join(METERS)}" in help_of["collect"]
    assert f"model backend: {', '.join(BACKENDS)}" in help_of["allocate"]
    assert "journal:PATH" in help_of["train"]


def test_train_refuses_a_study_name_without_storage_and_a_bad_storage(tmp_path):
    for extra, match in ((["--study-name", "s"], "needs --storage"), (["--storage", "optuna.db"], "storage")):
        r = CliRunner().invoke(app, ["train", "--store", str(REFERENCE_STORE), "--out", str(tmp_path / "t"), *extra])
        assert r.exit_code == 2 and match in r.output, r.output
        assert not (tmp_path / "t").exists()


def test_run_refuses_an_unknown_preset(tmp_path):
    from policy.errors import UsageError
    from ttc.stages import run_pipeline

    with pytest.raises(UsageError, match="unknown preset 'fast', known: default, quick"):
        run_pipeline(tmp_path / "out", "fast", echo=lambda *_: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_registers_and_exports_back_from_the_registry(quick_run, tmp_path):
    root, _, _ = quick_run
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        r = CliRunner().invoke(
            app,
            [
                "export",
                "--from",
                str(root / "out" / "train"),
                "--out",
                str(tmp_path / "b"),
                "--register-name",
                "ttc-test-policy",
                "--tracking-uri",
                uri,
            ],
        )
        assert r.exit_code == 0, r.output
        assert "models:/ttc-test-policy@champion" in r.output
        back = tmp_path / "back"
        r = CliRunner().invoke(
            app, ["export", "--from", "models:/ttc-test-policy@champion", "--out", str(back), "--tracking-uri", uri]
        )
    assert r.exit_code == 0, r.output
    assert (back / "policy.json").read_bytes() == (tmp_path / "b" / "policy.json").read_bytes()
