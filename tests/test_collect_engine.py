"""`ttc collect --model openai:MODEL@URL`: collection through an OpenAI-compatible engine.

The engine tests run a real llama.cpp server (llama-cpp-python, one thread) on
127.0.0.1 serving SmolLM2-135M, collect a few queries of one cheap task through
it, and build the training rows `ttc train` fits on. They are skipped only when
llama_cpp is not importable; the naming, meter and unmeasured-energy tests need no engine.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from collect.config import CollectConfig
from collect.energy import EstimateMeter
from collect.energy.machine import MachineEstimateMeter
from collect.engine import EngineModel, UnmeasuredMeter, engine_meter
from collect.engine_ref import parse_engine, stored_name
from collect.stage import run_collection
from policy.arms import Arm
from policy.errors import UsageError
from store.loader import load_samples
from train.dataset import build_dataset

TASK = "rg.basic_arithmetic_1d"
LOCAL = "openai:HuggingFaceTB/SmolLM2@http://127.0.0.1:9/v1"


def test_engine_model_is_stored_without_its_url_or_slashes():
    assert stored_name(LOCAL) == "HuggingFaceTB--SmolLM2"
    assert stored_name("smollm2-135m") == "smollm2-135m"
    arms = CollectConfig(models=(LOCAL,), tasks=(TASK,), levels=(8, 16), n_samples=2).arms()
    assert {Arm.parse(a.arm_id).model for a in arms} == {"HuggingFaceTB--SmolLM2"}


@pytest.mark.parametrize("name", ["openai:m", "openai:@http://h/v1", "openai:m@ftp://h/v1"])
def test_malformed_engine_name_is_a_usage_error(name):
    with pytest.raises(UsageError, match="openai:MODEL@URL"):
        parse_engine(name)


def test_machine_meter_counts_jiffies_of_the_whole_machine(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 9000 40 0 0 0 0 0\ncpu0 1 2 3\n")
    meter = MachineEstimateMeter(watts_per_core=10.0, stat=stat)
    meter.begin_window("w")
    # +30 user +10 nice +5 system +2 irq +3 softirq = 50 busy jiffies; idle and iowait do not count
    stat.write_text("cpu  130 10 55 9500 90 2 3 0 0 0\n")
    m = meter.end_window("w")
    import os

    assert m.meter == "estimate-machine" and m.source == "estimated"
    assert m.energy_j == pytest.approx(50 / os.sysconf("SC_CLK_TCK") * 10.0)


def test_machine_meter_sees_another_processes_cpu_time_the_process_meter_does_not():
    machine, own = MachineEstimateMeter(watts_per_core=1.0), EstimateMeter(watts_per_core=1.0)
    machine.begin_window("w")
    own.begin_window("w")
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)
    assert machine.end_window("w").energy_j >= 0.35  # the child's 0.4 CPU-s at 1 W/core, and more
    assert own.end_window("w").energy_j < 0.1  # this process only waited


def test_engine_elsewhere_is_unmeasured_and_here_is_metered_by_the_machine():
    here, there = parse_engine(LOCAL), parse_engine("openai:m@http://10.1.2.3:8000/v1")
    assert here.loopback and parse_engine("openai:m@http://localhost:1/v1").loopback and not there.loopback
    assert isinstance(engine_meter("estimate", 12.0, [here]), MachineEstimateMeter)
    assert engine_meter("estimate", 12.0, []) is None
    meter = engine_meter("estimate", 12.0, [there])
    assert isinstance(meter, UnmeasuredMeter)
    meter.begin_window("w")
    m = meter.end_window("w")
    assert math.isnan(m.energy_j) and m.source == "unmeasured"
    with pytest.raises(UsageError, match="separate stores"):
        engine_meter("estimate", 12.0, [here, there])


# --- a real engine ---------------------------------------------------------------------------------


def _cfg(url: str, store, **kw) -> CollectConfig:
    base = CollectConfig(
        models=(f"openai:smollm2@{url}",),
        tasks=(TASK,),
        items_per_task=10,
        n_samples=2,
        levels=(8, 16),
        queries_per_batch=4,
        meter="estimate",
        store=str(store),
        track=False,
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def collected(llama_engine, tmp_path_factory):
    store = tmp_path_factory.mktemp("engine") / "store"
    t0 = time.perf_counter()
    result = run_collection(_cfg(llama_engine, store))
    return result, load_samples(store), time.perf_counter() - t0


@pytest.mark.slow
def test_engine_samples_are_charged_by_the_machine_meter(collected):
    result, s, _ = collected
    assert result.meter == "estimate-machine" and len(s) == 10 * 3  # 2 sampled + 1 greedy per query
    assert set(s["model"]) == {"smollm2"} and set(s["meter"]) == {"estimate-machine"}
    assert (s["energy_j"] > 0).all() and set(s["energy_source"]) == {"estimated"}
    # one window per batch of concurrent requests: its samples' metered shares add up to the window
    for _, w in s.groupby("batch_id"):
        assert w["metered_energy_j"].sum() == pytest.approx(w["window_energy_j"].iloc[0])


@pytest.mark.slow
def test_engine_samples_carry_per_token_logprobs_and_are_graded_at_every_cut(collected):
    _, s, _ = collected
    assert (s["output_tokens"] <= 16).all() and (s["output_tokens"] > 0).all()
    assert all(len(lp) == t for lp, t in zip(s["token_logprob"], s["output_tokens"], strict=True))
    assert all(np.all(np.asarray(lp) <= 0) for lp in s["token_logprob"])
    assert all(
        list(lt) == [min(8, t), min(16, t)] for lt, t in zip(s["level_output_tokens"], s["output_tokens"], strict=True)
    )
    # the full cut is the sample itself; the 8-token cut was graded on its own text, so some differ
    assert all(lc[-1] == c for lc, c in zip(s["level_correct"], s["correct"], strict=True))
    assert s["correct"].any(), "the 135M model answers some 1-digit sums right"


@pytest.mark.slow
def test_engine_collection_yields_training_rows(collected):
    _, s, _ = collected
    data = build_dataset(s)
    assert len(set(data.arm_ids)) == 6 and data.energy_source == "estimated"


@pytest.mark.slow
def test_engine_without_token_list_refuses_more_than_one_level(llama_engine):
    lm = EngineModel(parse_engine(f"openai:smollm2@{llama_engine}"), [8, 16])
    lm._body_orig = lm._body
    lm._body = lambda *a: {**lm._body_orig(*a), "logprobs": False}  # the engine then returns no token list
    with pytest.raises(UsageError, match="one level only"):
        lm.generate([lm.build_prompt("Calculate 1 + 1.", [])], 1, 4, 0.0, seed=0)
    single = EngineModel(parse_engine(f"openai:smollm2@{llama_engine}"), [4])
    single._body = lm._body
    gen = single.generate([single.build_prompt("Calculate 1 + 1.", [])], 1, 4, 0.0, seed=0)
    assert gen.token_logprob == [[]] and 0 < len(gen.output_ids[0]) <= 4


@pytest.mark.slow
def test_remote_engine_samples_are_unmeasured_and_train_refuses_them(llama_engine, tmp_path, monkeypatch):
    from collect.engine_ref import EngineRef

    monkeypatch.setattr(EngineRef, "loopback", property(lambda self: False))  # as if on another machine
    store = tmp_path / "store"
    run_collection(_cfg(llama_engine, store, items_per_task=1, n_samples=1, greedy=False, levels=(4, 8)))
    s = load_samples(store)
    assert set(s["energy_source"]) == {"unmeasured"} and s["energy_j"].isna().all()
    with pytest.raises(UsageError, match="not measured"):
        build_dataset(s)


@pytest.mark.slow
def test_cli_collect_names_the_same_engine_batches_so_a_rerun_resumes(llama_engine, collected):
    from typer.testing import CliRunner

    from ttc.cli import app

    args = ["collect", "--model", f"openai:smollm2@{llama_engine}", "--task", TASK, "--items-per-task", "10"]
    args += ["--n-samples", "2", "--level", "8", "--level", "16", "--queries-per-batch", "4"]
    r = CliRunner().invoke(app, [*args, "--store", str(collected[0].store), "--no-track"])
    assert r.exit_code == 0, r.output
    assert "collected 0 new samples (20 query groups already stored)" in r.output  # 10 sampled, 10 greedy


@pytest.mark.slow
def test_train_stage_fits_on_engine_samples(collected, tmp_path):
    from train.stage import train_stage

    # so few queries give LightGBM trees without a split: the bundle's parity check must load them
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = train_stage(collected[0].store, tmp_path / "train", n_trials=2, tracking_uri=tracking, progress=False)
    assert r.energy_meter == "estimate-machine" and r.n_rows == 10 * 6
    assert all(p.is_file() for p in r.model_paths.values()) and (r.bundle_dir / "policy.json").is_file()


def test_a_tree_without_splits_is_one_leaf_and_nothing_else():
    from policy.errors import BundleError
    from policy.trees import _check_shape

    assert _check_shape([], [], 1) == 0
    with pytest.raises(BundleError, match="exactly one leaf"):
        _check_shape([], [], 2)
