"""The data layer (store/): the one loader, the writer lock, split files, tracking set-up, config validation.

Stores here are copies or edits of the committed reference collection's real
shards; the concurrency properties run real processes side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from policy.errors import UsageError
from store.loader import DuplicateSamplesWarning, load_samples
from store.schema import ARM_COLUMNS, ARM_DTYPES, SAMPLE_KEY
from store.splits import Split, read_split, store_fingerprint, write_split
from ttc.cli import app

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _copy_store(reference_store: Path, dest: Path, n_shards: int = 3) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    shards = sorted(reference_store.glob("shard-*.parquet"))[:n_shards]
    return [Path(shutil.copy(f, dest / f.name)) for f in shards]


def _one_line_exit_2(args: list[str]) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.output.strip().count("\n") == 0, r.output
    return r.output


# ---------------------------------------------------------------- the one loader


def test_every_sample_reader_is_the_one_loader():
    import store.shards
    import train.dataset

    assert store.shards.read_samples is load_samples
    assert train.dataset.load_samples is load_samples


def test_loader_reads_a_folder_a_file_and_a_frame_alike(reference_store, tmp_path):
    shards = _copy_store(reference_store, tmp_path / "s", 2)
    folder = load_samples(tmp_path / "s")
    one = load_samples(shards[0])
    assert len(folder) == len(one) + len(load_samples(shards[1]))
    with pytest.warns(DuplicateSamplesWarning, match="dropped 3 duplicate"):  # a frame is checked the same way
        assert load_samples(pd.concat([folder, folder.head(3)], ignore_index=True)).equals(folder)
    few = load_samples(tmp_path / "s", columns=["energy_j"])
    assert list(few.columns) == [*SAMPLE_KEY, "energy_j"] and len(few) == len(folder)


def test_identical_copies_are_dropped_with_one_warning_naming_the_count(reference_store, tmp_path):
    (shard,) = _copy_store(reference_store, tmp_path / "s", 1)
    shutil.copy(shard, tmp_path / "s" / "shard-99999999999999999999-copy.parquet")
    n = len(load_samples(shard))
    with pytest.warns(DuplicateSamplesWarning, match=f"dropped {n} duplicate samples") as caught:
        got = load_samples(tmp_path / "s")
    assert len(caught) == 1
    assert len(got) == n and not got.duplicated(list(SAMPLE_KEY)).any()


def test_conflicting_copies_are_refused_naming_the_later_shard(reference_store, tmp_path):
    (shard,) = _copy_store(reference_store, tmp_path / "s", 1)
    df = pd.read_parquet(shard)
    df["energy_j"] = df["energy_j"] * 2  # a second writer measured the same samples again
    later = tmp_path / "s" / "shard-99999999999999999999-second.parquet"
    df.to_parquet(later)
    with pytest.raises(UsageError, match=f"{len(df)} sample keys have copies that differ.*{later.name}"):
        load_samples(tmp_path / "s")


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),  # truncated
        lambda f: f.write_text("query_id,model\nq1,m\n"),  # not Parquet
        lambda f: f.write_bytes(b""),  # empty
        lambda f: f.write_bytes(f.read_bytes()[:-20] + b"\x00" * 20),  # corrupt footer
    ],
    ids=["truncated", "csv", "empty", "corrupt-footer"],
)
def test_a_damaged_shard_is_a_usage_error_naming_it(reference_store, tmp_path, damage):
    shards = _copy_store(reference_store, tmp_path / "s", 2)
    damage(shards[1])
    with pytest.raises(UsageError, match=f"{shards[1].name}.*move it out of the store"):
        load_samples(tmp_path / "s")
    with pytest.raises(UsageError, match=shards[1].name):
        load_samples(tmp_path / "s", columns=["energy_j"])


def test_train_refuses_a_damaged_store_or_a_file_with_exit_2(reference_store, tmp_path):
    shards = _copy_store(reference_store, tmp_path / "s", 2)
    shards[0].write_bytes(shards[0].read_bytes()[:100])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store")
    for store, message in ((tmp_path / "s", "cannot be read as Parquet"), (notes, "is a file, not a sample store")):
        assert message in _one_line_exit_2(["train", "--store", str(store), "--out", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()


def test_missing_or_empty_stores_are_refused(tmp_path):
    with pytest.raises(UsageError, match="no sample store"):
        load_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no samples"):
        load_samples(tmp_path / "empty")
    with pytest.raises(UsageError, match="lack columns"):
        load_samples(pd.DataFrame({"query_id": ["q"]}))


def test_arm_rows_follow_the_one_schema(reference_samples):
    from store.views import arm_outcomes

    some = reference_samples[reference_samples["query_id"].isin(reference_samples["query_id"].unique()[:3])]
    rows = arm_outcomes(some)
    assert tuple(rows.columns) == ARM_COLUMNS
    assert {c: str(t) for c, t in rows.dtypes.items()} == ARM_DTYPES


# ---------------------------------------------------------------- the writer lock

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from policy.errors import UsageError
    from policy.records import Sample
    from store.loader import load_samples
    from store.shards import SampleStore

    source, dest, ready, n_queries = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    samples = [Sample(**r) for r in load_samples(source).to_dict("records")]
    first = set(sorted({s.query_id for s in samples})[:n_queries])  # whole groups: every sample of a query
    store = SampleStore(dest)
    try:
        store.append([s for s in samples if s.query_id in first])
    except UsageError as e:
        print(f"error: {e}", flush=True)
        sys.exit(2)
    ready.write_text("written")
    deadline = time.time() + 60
    while time.time() < deadline and not (dest / "release").exists():  # keep writing, as a collector does
        time.sleep(0.05)
    store.append(samples)
    print("done", flush=True)
    """
)


def _writer(tmp_path: Path, source: Path, tag: str, n_queries: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    args = [sys.executable, str(script), str(source), str(tmp_path / "store"), str(tmp_path / f"{tag}.ready")]
    return subprocess.Popen([*args, str(n_queries)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the first writer never wrote"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_writer_process_is_refused_naming_the_holder_and_nothing_is_duplicated(reference_store, tmp_path):
    _copy_store(reference_store, tmp_path / "src", 2)
    first = _writer(tmp_path, tmp_path / "src", "a", 2)
    _wait_for(tmp_path / "a.ready", first)
    second = _writer(tmp_path, tmp_path / "src", "b", 4)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err.decode()
    message = out.decode().strip()
    assert f"pid {first.pid} on " in message and "writer.py" in message and "since 20" in message
    assert "is being written by" in message and message.count("\n") == 0
    (tmp_path / "store" / "release").write_text("")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    stored = load_samples(tmp_path / "store")
    assert len(stored) == len(load_samples(tmp_path / "src"))
    assert not stored.duplicated(list(SAMPLE_KEY)).any()


@pytest.mark.slow
def test_the_writer_lock_dies_with_its_holder(reference_store, tmp_path):
    import signal

    _copy_store(reference_store, tmp_path / "src", 1)
    first = _writer(tmp_path, tmp_path / "src", "a", 2)
    _wait_for(tmp_path / "a.ready", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    from store.shards import SampleStore

    with SampleStore(tmp_path / "store") as store:  # a kill -9 left the lock file, not the lock
        assert store.clean_partial() == 0
        assert len(store.done_groups()) > 0


@pytest.mark.slow
def test_ttc_collect_on_a_store_being_written_exits_2_before_loading_a_model(tmp_path):
    from store.shards import SampleStore

    holder = SampleStore(tmp_path / "s")
    holder.lock()  # this test process is the other writer
    args = ["collect", "--store", str(tmp_path / "s"), "--no-track", "--device", "cpu", "--items-per-task", "1"]
    r = subprocess.run([sys.executable, "-m", "ttc", *args], env=ENV, capture_output=True, timeout=300, cwd=tmp_path)
    holder.close()
    err = r.stderr.decode()
    assert r.returncode == 2 and f"is being written by pid {os.getpid()}" in err, err[-2000:]
    assert "loading" not in r.stdout.decode() and not list((tmp_path / "s").glob("shard-*"))


def test_handles_of_one_process_share_the_lock_and_release_it_on_close(tmp_path):
    from store.locks import WRITER_LOCK_NAME
    from store.shards import SampleStore

    a, b = SampleStore(tmp_path / "s"), SampleStore(tmp_path / "s")
    a.lock()
    b.lock()  # the same process: shared, not refused
    holder = json.loads((tmp_path / "s" / WRITER_LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid()
    a.close()
    b.close()
    probe = subprocess.run(
        [sys.executable, "-c", f"from store.shards import SampleStore; SampleStore({str(tmp_path / 's')!r}).lock()"],
        env=ENV,
        capture_output=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr.decode()


# ---------------------------------------------------------------- split files


def _split(**kw) -> Split:
    base = dict(kind="query", train_query_ids=("a", "b"), test_query_ids=("c",), seed=3, store_fingerprint="0" * 64)
    return Split(**{**base, **kw})


def test_split_file_round_trips(tmp_path):
    sp = _split(kind="task", holdout_tasks=("gsm8k",))
    write_split(tmp_path / "split.json", sp)
    assert read_split(tmp_path / "split.json") == sp
    assert read_split(tmp_path) == sp  # the train folder holding it


def test_a_split_file_written_before_fingerprints_reads_as_not_recorded(tmp_path):
    legacy = {"kind": "query", "holdout_tasks": [], "train_query_ids": ["a"], "test_query_ids": ["b"]}
    (tmp_path / "split.json").write_text(json.dumps(legacy))
    sp = read_split(tmp_path / "split.json")
    assert sp.seed is None and sp.store_fingerprint is None


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"kind": "query", "train_query_ids": ["a"]}', "lacks \\['test_query_ids'\\]"),
        (b'{"kind": "row", "train_query_ids": ["a"], "test_query_ids": ["b"]}', "unknown split 'row'"),
        (b'{"kind": "query", "train_query_ids": ["a"], "test_query_ids": ["a"]}', "both trained on and held out"),
        (b'{"kind": "query", "train_query_ids": "ab", "test_query_ids": ["c"]}', "list of strings"),
        (b'{"kind": "query", "train_query_ids": [1], "test_query_ids": ["c"]}', "list of strings"),
        (b'{"kind": "query", "train_query_ids": ["a"], "test_query_ids": []}', "at least one"),
        (
            b'{"kind": "query", "train_query_ids": ["a"], "test_query_ids": ["b"], "seed": NaN}',
            "NaN is not a finite number",
        ),
        (b'{"kind": "query", "train_query_ids": ["a"], "test_query_ids": ["b"], "seed": "0"}', "seed"),
        (b'{"kind": "query", "train_query_ids": ["a"], "test_query_ids": ["b"], "store_fingerprint": "x"}', "sha256"),
        (b'{"schema_version": 9, "kind": "query"}', "schema_version 9"),
    ],
)
def test_a_bad_split_file_is_a_usage_error(tmp_path, content, message):
    (tmp_path / "split.json").write_bytes(content)
    with pytest.raises(UsageError, match=message):
        read_split(tmp_path / "split.json")
    with pytest.raises(UsageError, match="not found"):
        read_split(tmp_path / "other.json")


def test_store_fingerprint_follows_the_sample_keys_not_the_row_order(reference_samples):
    fp = store_fingerprint(reference_samples)
    assert store_fingerprint(reference_samples.iloc[::-1]) == fp
    assert store_fingerprint(reference_samples.iloc[1:]) != fp
    edited = reference_samples.copy()
    edited.loc[edited.index[0], "sample_index"] = 99
    assert store_fingerprint(edited) != fp


def test_make_split_yields_the_split_train_writes_down(reference_samples, tmp_path):
    from train.dataset import build_dataset, make_split

    data = build_dataset(reference_samples)
    rows = make_split(data, "query", test_size=0.25, seed=7)
    sp = rows.split
    assert sp.seed == 7 and sp.store_fingerprint == store_fingerprint(reference_samples)
    assert set(data.groups[rows.test]) == set(sp.test_query_ids)
    write_split(tmp_path / "split.json", sp)
    back = read_split(tmp_path / "split.json")
    assert back == sp and back.check_store(reference_samples) is True
    with pytest.raises(UsageError, match="differs from the one the split was drawn from"):
        back.check_store(reference_samples.iloc[1:])


# ---------------------------------------------------------------- MLflow set-up

_TRACKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # imported before the start line
    from store.tracking import setup_tracking

    go = Path(sys.argv[2])
    Path(sys.argv[3]).write_text("imported")
    while not go.exists():
        time.sleep(0.002)
    setup_tracking(sys.argv[1], "race")
    with mlflow.start_run():
        mlflow.log_metric("x", 1.0)
    """
)


@pytest.mark.slow
def test_two_processes_initialise_a_fresh_tracking_database_at_once(tmp_path):
    from mlflow import MlflowClient

    script = tmp_path / "tracker.py"
    script.write_text(_TRACKER)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, str(script), uri, str(go), str(r)], env=ENV, stderr=subprocess.PIPE)
        for r in ready
    ]
    for r, p in zip(ready, procs, strict=True):  # both have imported mlflow and wait at the start line
        _wait_for(r, p)
    go.write_text("")
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-2000:]
    exp = MlflowClient(uri).get_experiment_by_name("race")
    assert len(MlflowClient(uri).search_runs([exp.experiment_id])) == 2


# ---------------------------------------------------------------- collect config validation


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "nan"], "'temperatures' must be a finite number"),
        (["--temperature", "inf"], "'temperatures' must be a finite number"),
        (["--watts-per-core", "nan"], "'watts_per_core' must be a finite number"),
        (["--idle-baseline-s", "-5"], "idle_baseline_s must be a finite number >= 0"),
        (["--threads", "-3"], "threads must be >= 0"),
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available"),
    ],
)
def test_bad_collect_numbers_and_devices_exit_2_before_any_model_loads(tmp_path, extra, message):
    out = _one_line_exit_2(["collect", "--store", str(tmp_path / "s"), "--no-track", *extra])
    assert message in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "toml, message",
    [
        (b'items_per_task = "three"\n', "'items_per_task' must be an integer, got 'three'"),
        (b'levels = ["a"]\n', "every item of config key 'levels' must be an integer"),
        (b"levels = 16\n", "'levels' must be a list"),
        (b"[collect]\nwatts_per_core = nan\n", "the number nan is not finite"),
        (b"greedy = 1\n", "'greedy' must be true or false"),
        (b"store = 5\n", "'store' must be text"),
        (b'models = ["caf\xe9"]\n', "is not UTF-8 text"),
    ],
)
def test_a_config_value_of_the_wrong_type_or_encoding_exits_2(tmp_path, toml, message):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(toml)
    out = _one_line_exit_2(["collect", "--config", str(cfg), "--store", str(tmp_path / "s"), "--no-track"])
    assert message in out
    assert not (tmp_path / "s").exists()


def test_a_store_path_that_is_a_file_is_refused_before_collecting(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert "is a file" in _one_line_exit_2(["collect", "--store", str(f), "--no-track"])


def test_non_utf8_jsonl_names_the_line(tmp_path):
    from store.jsonl import read_jsonl

    f = tmp_path / "q.jsonl"
    f.write_bytes('\ufeff{"question": "1+1?", "answer": "2"}\n'.encode() + b'{"question": "caf\xe9"}\n')
    with pytest.raises(UsageError, match="line 2: not UTF-8 text"):
        list(read_jsonl(f, "question"))
    out = _one_line_exit_2(["collect", "--task", f"jsonl:{f}", "--store", str(tmp_path / "s"), "--no-track"])
    assert "line 2: not UTF-8" in out
