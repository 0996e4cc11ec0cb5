"""`ttc collect --ray` on a local Ray cluster of 2 CPUs: same samples, no loss, no duplicate, resume.

Kept small for a 2-core machine: one cluster for the module (num_cpus=2, no
dashboard, shut down in a finally), 2 actors of one thread, SmolLM2 on a few
queries of one easy task with 16-token caps. The unit-store and layout tests
need no cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from collect.config import make_config
from collect.ray_store import UnitStore
from policy.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
#: the columns that must agree between two collections of the same plan (energy and timing may not)
SAME = ["text", "answer", "correct", "output_tokens", "prompt_tokens", "finished", "level_answer", "level_correct"]
SAME += ["level_output_tokens", "token_logprob", "token_entropy", "batch_id", "batch_rows", "dtype"]
KEY = ["query_id", "model", "temperature", "max_new_tokens", "seed", "sample_index"]


def _cfg(store: Path, items: int = 4, **kw):
    base = dict(
        models=["smollm2-135m"],
        tasks=["rg.basic_arithmetic_1d"],
        items_per_task=items,
        n_samples=2,
        levels=[8, 16],
        greedy=False,
        queries_per_batch=1,  # one query per unit: 4 units for 2 actors
        threads=1,
        track=False,
        store=str(store),
    )
    return make_config(None, **{**base, **kw})


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module: 2 CPUs, no dashboard, always shut down."""
    import ray

    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=env, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process collection of `_cfg`'s plan, with one torch thread as each actor has."""
    import torch

    from collect.stage import run_collection
    from store.loader import load_samples

    store = tmp_path_factory.mktemp("single") / "store"
    threads = torch.get_num_threads()
    try:
        run_collection(_cfg(store))
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its threads
    return store, _sorted(load_samples(store))


def _sorted(df):
    return df.sort_values(KEY).reset_index(drop=True)


def _assert_same_samples(store: Path, expected) -> None:
    """Every sample of `expected`, once, with the same generation; no duplicate read or dropped."""
    from store.loader import load_samples

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DuplicateSamplesWarning would mean a unit was stored twice
        got = _sorted(load_samples(store))
    assert len(got) == len(expected)
    assert got[KEY].equals(expected[KEY])
    for col in SAME:
        assert [np.asarray(v).tolist() for v in got[col]] == [np.asarray(v).tolist() for v in expected[col]], col


@pytest.mark.slow
def test_ray_collection_gives_the_single_process_samples(ray_cluster, reference, tmp_path):
    from collect.distributed import run_distributed

    store = tmp_path / "ray"
    r = run_distributed(_cfg(store), ray_cluster, max_actors=2, progress=False)
    assert r.failed == () and r.units_run == r.units_written == 4 and len(r.actors) == 2
    assert len({x.pid for x in r.results}) == 2  # both actors pulled units
    _assert_same_samples(store, reference[1])
    assert len(list(store.glob("shard-unit-*.parquet"))) == 4 and len(list(store.glob("probe-unit-*"))) == 4

    from store.loader import load_samples

    placed = load_samples(store, columns=["node", "device"])
    assert set(placed["device"]) == {"cpu"} and all(placed["node"])
    # a store the single-process path filled is already complete for the Ray path: nothing runs
    again = run_distributed(_cfg(reference[0]), ray_cluster, max_actors=2, progress=False)
    assert again.units_run == 0 and again.units_already_stored == 4 and again.collect.new_samples == 0


class _Killer:
    """Kills an actor twice mid-unit: SIGKILL of the other actor's process when the first unit comes back,
    `ray.kill` of the actor that returned the second (the pool has just handed it the last unit)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.handles: list = []
        self.killed: list[str] = []

    def actors_ready(self, infos, handles) -> None:
        self.pids, self.handles = [i.pid for i in infos], handles

    def unit_done(self, result, progress) -> None:
        import ray

        if not self.killed:
            os.kill(next(p for p in self.pids if p != result.pid), signal.SIGKILL)
            self.killed.append("sigkill")
        elif len(self.killed) == 1:
            ray.kill(self.handles[result.actor], no_restart=False)
            self.killed.append("ray.kill")


@pytest.mark.slow
def test_actor_killed_mid_unit_loses_nothing_and_stores_nothing_twice(ray_cluster, reference, tmp_path):
    from collect.distributed import run_distributed

    store = tmp_path / "ray"
    killer = _Killer()
    r = run_distributed(_cfg(store), ray_cluster, max_actors=2, progress=False, observer=killer)
    assert killer.killed == ["sigkill", "ray.kill"] and r.failed == ()
    assert len({x.pid for x in r.results} - set(killer.pids)) >= 2, "the killed units did not run on restarts"
    _assert_same_samples(store, reference[1])  # the retried units regenerated the same samples
    assert len(list(store.glob("shard-unit-*.parquet"))) == 4
    assert not list(store.glob(".*.tmp"))  # the killed attempts' temporary files were cleaned by the driver


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_skips_finished_units(ray_cluster, tmp_path):
    from collect.distributed import run_distributed

    store, units = tmp_path / "ray", 6
    cmd = [sys.executable, "-m", "ttc", "collect", "--ray", ray_cluster, "--ray-actors", "2", "--store", str(store)]
    cmd += ["--model", "smollm2-135m", "--task", "rg.basic_arithmetic_1d", "--items-per-task", str(units)]
    cmd += ["--n-samples", "2", "--level", "8", "--level", "16", "--no-greedy", "--queries-per-batch", "1"]
    cmd += ["--threads", "1", "--no-track"]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list(store.glob("shard-unit-*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None, f"the driver ended before it could be killed: {driver.stderr.read()[-2000:]}"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    time.sleep(3)  # Ray stops a dead driver's actors; a write already under way may still land
    before = {f.name: f.stat().st_ino for f in store.glob("shard-unit-*.parquet")}
    assert 1 <= len(before) < units

    r = run_distributed(_cfg(store, items=units), ray_cluster, max_actors=2, progress=False)
    assert r.failed == () and r.units_already_stored >= len(before)
    assert r.units_written == units - r.units_already_stored
    after = {f.name: f.stat().st_ino for f in store.glob("shard-unit-*.parquet")}
    assert len(after) == units and all(after[name] == ino for name, ino in before.items())


# ---- a unit that fails every try: a stand-in model that raises on one item --------------------------------


class _StandIn:
    """Generates three tokens per row; raises on a prompt holding "BAD", noting each try in a file."""

    dtype, probe_layer = "float32", 1

    def __init__(self, tries: str, sleep_s: float = 0.0) -> None:
        self.tries, self.sleep_s = tries, sleep_s

    def build_prompt(self, question, demos) -> str:
        return question

    def decode(self, ids) -> str:
        return "The answer is 1."

    def generate(self, prompts, n, max_new_tokens, temperature, seed, meter=None):
        from collect.generation import Generation

        if any("BAD" in p for p in prompts):
            with open(self.tries, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            raise ValueError("this item breaks the model")
        time.sleep(self.sleep_s)  # a device busy for a while, so an energy counter ticks
        rows = len(prompts) * n
        vec = np.zeros((len(prompts), 4), np.float16)
        stats = [[-0.5, -0.5, -0.5] for _ in range(rows)]
        values = dict(
            output_ids=[[1, 2, 3]] * rows,
            finished=[True] * rows,
            prompt_tokens=[4] * rows,
            prefill_s=0.001,
            token_logprob=stats,
            token_top1_logprob=stats,
            token_entropy=stats,
            probe_last=vec,
            probe_mean=vec,
            n=n,
        )
        # any other field (e.g. a measured prefill's joules) left unknown, as a model without it reports
        unset = dataclasses.MISSING
        rest = [f.name for f in dataclasses.fields(Generation) if f.default is unset and f.default_factory is unset]
        return Generation(**{**dict.fromkeys(rest), **values})


def _stand_in_loader(tries: str, name: str, device: str, threads: int, dtype: str) -> _StandIn:
    return _StandIn(tries)


_TAKE_LOCK = "import sys; from pathlib import Path; from store.locks import acquire_writer_lock as a; "
_TAKE_LOCK += "a(Path(sys.argv[1]))"


class _TryTheLock:
    """While units come back (actors writing), another process tries to take the store's writer lock."""

    def __init__(self, store: Path) -> None:
        self.store, self.refusals = store, []

    def actors_ready(self, infos, handles) -> None:
        pass

    def unit_done(self, result, progress) -> None:
        cmd = [sys.executable, "-c", _TAKE_LOCK, str(self.store)]
        self.refusals.append(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stderr)


def test_a_unit_failing_every_try_is_reported_and_skipped(ray_cluster, tmp_path):
    import ray
    from mlflow import MlflowClient

    from collect.distributed import MAX_UNIT_TRIES, run_distributed

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors unpickle the stand-in by value
    tasks = tmp_path / "items.jsonl"
    tasks.write_text('{"question": "1 + 0?", "answer": "1"}\n{"question": "BAD", "answer": "1"}\n')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(tmp_path / "store", items=2, models=["stand-in"], tasks=[f"jsonl:{tasks}"], n_samples=1)
    cfg = make_config(cfg, track=True, tracking_uri=uri, experiment="ray-test")
    tries = tmp_path / "tries"
    loader = functools.partial(_stand_in_loader, str(tries))
    other = _TryTheLock(tmp_path / "store")
    r = run_distributed(cfg, ray_cluster, max_actors=2, progress=False, loader=loader, observer=other)

    # the driver held the store's writer lock while its actors wrote: another writer was refused
    assert other.refusals and all("is being written by pid" in e for e in other.refusals)
    assert len(tries.read_text().split()) == MAX_UNIT_TRIES  # bounded, never forever
    assert len(r.failed) == 1 and "ValueError: this item breaks the model" in r.failed[0]
    assert r.units_written == 1 and r.collect.total_samples == 1
    # MLflow: the parent run on the driver, one nested run per actor holding its units' metrics
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ray-test").experiment_id])
    parent = next(x for x in runs if x.info.run_id == r.collect.run_id)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.data.metrics["units_failed"] == 1 and parent.data.tags["executor"] == "ray"
    logged = [c for c in children if "unit_output_tokens" in c.data.metrics]
    assert len(logged) == 1 and logged[0].data.metrics["unit_output_tokens"] == 3


def test_the_driver_refuses_a_store_another_writer_holds(ray_cluster, tmp_path):
    from collect.distributed import run_distributed

    store = tmp_path / "store"
    code = "import sys, time; from pathlib import Path; from store.locks import acquire_writer_lock as a; "
    code += "a(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match="being written by pid"):
            run_distributed(_cfg(store), ray_cluster, progress=False)
    finally:
        holder.kill()
        holder.wait()


# ---- no cluster needed ----------------------------------------------------------------------------------------


def _table(n: int = 2):
    import pyarrow as pa

    return pa.table({"query_id": [f"q{i}" for i in range(n)], "x": list(range(n))})


def test_a_unit_shard_is_written_once_in_a_folder(tmp_path):
    store = UnitStore(str(tmp_path))
    assert store.write("shard", "abc", _table(2)) is True
    assert store.write("shard", "abc", _table(3)) is False  # a retry of the same unit is refused
    assert [f.name for f in tmp_path.iterdir()] == ["shard-unit-abc.parquet"]  # no temporary file left
    assert store.done_units() == {"abc"} and store.count_samples() == 2


def test_a_unit_shard_is_written_once_through_a_pyarrow_filesystem():
    from pyarrow._fs import _MockFileSystem

    store = UnitStore("bucket/store", filesystem=_MockFileSystem())  # the code path of s3:// stores
    assert store.write("probe", "k1", _table()) and store.write("shard", "k1", _table())
    assert store.write("shard", "k1", _table(5)) is False
    assert store.done_units() == {"k1"} and store.count_samples() == 2 and store.has("probe", "k1")


def test_unit_keys_follow_the_group_keys_of_their_samples():
    from collect.ray_store import unit_key

    k = unit_key("m", 0.7, 16, 5, ["a", "b"])
    assert k == unit_key("m", 0.7, 16, 5, ["b", "a"]) and len(k) == 16
    assert len({k, unit_key("m", 0.7, 32, 5, ["a", "b"]), unit_key("m", 0.7, 16, 6, ["a", "b"])}) == 3


def test_one_actor_per_gpu_or_per_cpu_slots():
    from collect.distributed import actor_layout

    cfg = make_config(None, threads=4)
    assert actor_layout(cfg, {"CPU": 64, "GPU": 8}, 0, 100) == (8, 1, True)
    assert actor_layout(cfg, {"CPU": 64}, 0, 100) == (16, 4, False)
    assert actor_layout(cfg, {"CPU": 64}, 3, 100) == (3, 4, False)  # --ray-actors caps
    assert actor_layout(cfg, {"CPU": 64}, 0, 5) == (5, 4, False)  # never more actors than units
    assert actor_layout(make_config(cfg, device="cpu"), {"CPU": 8, "GPU": 2}, 0, 9) == (2, 4, False)
    with pytest.raises(UsageError, match="lower --threads"):
        actor_layout(cfg, {"CPU": 2}, 0, 10)


def test_cli_refuses_a_negative_actor_count_before_starting_ray(tmp_path):
    from typer.testing import CliRunner

    from ttc.cli import app

    args = ["collect", "--ray", "local", "--ray-actors", "-1", "--store", str(tmp_path / "s")]
    out = CliRunner().invoke(app, [*args, "--model", "smollm2-135m", "--task", "rg.basic_arithmetic_1d"])
    assert out.exit_code == 2 and "--ray-actors must be >= 0" in out.output, out.output


def test_cli_names_the_fix_for_an_address_where_no_cluster_answers(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ttc", "collect", "--ray", f"127.0.0.1:{port}", "--store", str(tmp_path / "s")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "ray start --head" in out.stderr
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("shard-*"))


def test_an_actor_meters_and_records_the_gpu_ray_gave_it(monkeypatch, tmp_path):
    """No Ray needed: the worker as Ray starts it on a GPU node (CUDA_VISIBLE_DEVICES set, get_gpu_ids)."""
    import socket as sock

    from fakes.fake_pynvml import FakeGpu, FakeNvml

    import collect.ray_worker as rw
    from collect.distributed import plan_units

    gpus = [FakeGpu("GPU-0", power_w=10_000.0), FakeGpu("GPU-1", power_w=100.0)]  # GPU 0 is another actor's
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpus).module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what Ray sets for an actor given GPU 1
    monkeypatch.setattr(rw, "_gpu_ids", lambda: [1])
    tasks = tmp_path / "items.jsonl"
    tasks.write_text('{"question": "1 + 0?", "answer": "1"}\n')
    cfg = _cfg(tmp_path / "store", items=1, models=["stand-in"], tasks=[f"jsonl:{tasks}"], n_samples=1, meter="nvml")
    [unit] = plan_units(cfg, UnitStore(cfg.store)).units
    loader = functools.partial(_stand_in_loader_slow, str(tmp_path / "tries"))
    worker = rw.UnitWorker(cfg, cfg.store, 0, "run", 1, True, loader=loader)
    assert worker.run(unit).status == "written"

    from store.loader import load_samples

    s = load_samples(cfg.store, columns=["node", "device", "meter", "energy_source", "window_energy_j"]).iloc[0]
    assert (s.device, s.node, s.meter, s.energy_source) == ("gpu1", sock.gethostname(), "nvml", "measured")
    # ~0.3 s at GPU 1's 100 W; the hidden GPU 0 at 10 kW would add thousands of joules
    assert 0 < s.window_energy_j < 100


def _stand_in_loader_slow(tries: str, name: str, device: str, threads: int, dtype: str) -> _StandIn:
    assert device == "cuda"  # an actor given a GPU loads its model there
    return _StandIn(tries, sleep_s=0.3)
