"""Unseen tasks (issue 19): distinct task columns, the k = 0 rule for unknown tasks, `ttc adapt`.

A small real policy is trained on the v1 reference with one task left out (LightGBM defaults, no
tuning); the left-out task's queries are the "new task" a user would collect.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from policy.features import get_feature_set
from policy.tasks import (
    ADAPTED,
    KNOWN,
    TASKS_FILE,
    UNKNOWN,
    TaskTable,
    assign_task_columns,
    shrunk_accuracy,
    task_hash_column,
)
from ttc.cli import app

NEW_TASK = "rg.chain_sum"
REFERENCE_V2_TASKS = (
    "facts.atomic_number_1_30", "gsm8k", "rg.add3_1d_steps", "rg.basic_arithmetic_1d", "rg.basic_arithmetic_2d",
    "rg.lcm_small", "rg.letter_count_1w", "rg.needle_haystack", "rg.products_1x1",
)  # fmt: skip


@pytest.fixture(scope="module")
def policy_dir(reference_samples, tmp_path_factory) -> Path:
    from train.fit import TrainConfig, fit_policy

    s = reference_samples
    train_ids = sorted(set(s.loc[s["task"] != NEW_TASK, "query_id"].astype(str)))
    cfg = TrainConfig(n_trials=0, two_stage="off", num_threads=1)
    return fit_policy(s, train_ids, cfg, tmp_path_factory.mktemp("adapt") / "bundle")


@pytest.fixture(scope="module")
def new_task_store(reference_store: Path, tmp_path_factory) -> Path:
    """A store holding only the new task's samples: what `ttc collect --task ...` writes for it."""
    out = tmp_path_factory.mktemp("newtask") / "store"
    out.mkdir()
    for f in sorted(reference_store.glob("shard-*.parquet")):
        t = pq.read_table(f)
        t = t.filter(np.asarray(t.column("task").to_pylist()) == NEW_TASK)
        if t.num_rows:
            pq.write_table(t, out / f.name)
    return out


def test_known_tasks_never_share_a_feature_column():
    assert task_hash_column("rg.products_1x1") == task_hash_column("rg.letter_count_1w")  # the collision
    cols = assign_task_columns(REFERENCE_V2_TASKS)
    assert len(set(cols.values())) == len(REFERENCE_V2_TASKS)
    # a task whose hashed column was free keeps it: bundles' columns move only where they collided
    assert cols["rg.needle_haystack"] == task_hash_column("rg.needle_haystack")
    fs = get_feature_set("text")
    x = fs.transform(["What is 3 x 4?"] * 2, ["rg.products_1x1", "rg.letter_count_1w"], None, cols)
    assert not np.array_equal(x[0], x[1])
    unknown = fs.transform(["What is 3 x 4?"], ["my.task"], None, cols)
    assert unknown[0, -16:].sum() == 0  # a task the columns do not name gets none


def test_rows_of_named_task_columns_rehash_to_the_hashed_rows_bit_for_bit():
    """Stage 2 reads hashed task columns; a bundle with tasks.json rewrites its rows' task block instead of
    reading the questions twice (policy.features.with_hashed_tasks)."""
    from policy.features import with_hashed_tasks

    fs = get_feature_set("text")
    cols = assign_task_columns(REFERENCE_V2_TASKS)
    questions = ["What is 3 x 4?", "How many r in strawberry?", "", "Calculate 12 + 7."]
    tasks = ["rg.products_1x1", "rg.letter_count_1w", None, "my.task"]
    named = fs.transform(questions, tasks, None, cols)
    assert not np.array_equal(named, fs.transform(questions, tasks))  # the columns do differ
    assert np.array_equal(with_hashed_tasks(named, tasks), fs.transform(questions, tasks))
    assert np.array_equal(with_hashed_tasks(named, None), fs.transform(questions, None))


def test_bundle_knows_its_training_tasks_only(policy_dir: Path, reference_samples):
    pol = load_bundle(policy_dir)
    trained = sorted(set(reference_samples["task"]) - {NEW_TASK})
    assert list(pol.known_tasks) == trained
    assert pol.task_status(trained[0]) == KNOWN
    assert pol.task_status(NEW_TASK) == pol.task_status(None) == pol.task_status("nope") == UNKNOWN


def test_unknown_task_decides_as_the_global_table(policy_dir: Path):
    pol = load_bundle(policy_dir)
    g_acc, g_e = np.asarray(pol.task_table.global_accuracy), np.asarray(pol.task_table.global_energy_j)
    qs = ["What is 17 + 25?", "Name the element with atomic number 6."]
    for lam in (0.0, 0.01, 0.05, 1.0):
        want = max(range(len(g_acc)), key=lambda j: (g_acc[j] - lam * g_e[j], -g_e[j]))
        for task in (None, NEW_TASK, "client-own-task"):
            got = {d.arm_id for d in pol.allocate(qs, [task] * 2, lam=lam)}
            assert got == {pol.arm_ids[want]}, (lam, task)


def test_adapted_accuracy_lies_between_the_task_prior_and_its_own_mean():
    g = np.asarray([0.2, 0.4, 0.6, 0.5])
    own = np.asarray([0.0, 0.1, 0.5, 0.1])
    models = ["a", "a", "a", "b"]
    few, many = shrunk_accuracy(own, 4, g, models, 8.0), shrunk_accuracy(own, 4000, g, models, 8.0)
    assert np.abs(many - own).max() < 0.01
    assert np.abs(few - own).max() > 0.05
    # the prior is the global table moved to the task's level: the task's arm order survives shrinking
    assert np.argmax(few[:3]) == 2


def test_ttc_adapt_writes_a_verified_bundle_that_knows_the_new_task(policy_dir: Path, new_task_store, tmp_path):
    out = tmp_path / "adapted"
    r = CliRunner().invoke(
        app, ["adapt", "--bundle", str(policy_dir), "--store", str(new_task_store), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert f"adapted {NEW_TASK} (16 queries)" in r.output
    new = load_bundle(out)
    assert new.task_status(NEW_TASK) == ADAPTED
    assert load_bundle(out.with_name("adapted.zip")).task_status(NEW_TASK) == ADAPTED
    old = load_bundle(policy_dir)
    assert new.files["success.trees.json"] == old.files["success.trees.json"]  # no tree refitted
    assert old.task_status(NEW_TASK) == UNKNOWN  # the source bundle is unchanged
    p_new, _ = new.predict(["1 + 2 + 3 = ?"], [NEW_TASK])
    p_old, _ = old.predict(["1 + 2 + 3 = ?"], [NEW_TASK])
    assert not np.allclose(p_new, p_old)


def test_ttc_adapt_refuses_bad_outputs_and_known_tasks(policy_dir: Path, new_task_store, reference_store, tmp_path):
    runner = CliRunner()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["adapt", "--bundle", str(policy_dir), "--store", str(new_task_store), "--out", str(foreign)]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "not a policy bundle" in r.output
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "b2"
    r = runner.invoke(app, ["adapt", "--bundle", str(policy_dir), "--store", str(reference_store), "--out", str(out),
                            "--task", "gsm8k"])  # fmt: skip
    assert r.exit_code == 2 and "trained on" in r.output
    assert not out.exists()
    r = runner.invoke(app, ["adapt", "--bundle", str(policy_dir), "--store", str(tmp_path / "none"), "--out", str(out)])
    assert r.exit_code == 2 and "not a folder" in r.output


def test_task_table_that_gives_two_tasks_one_column_is_refused(policy_dir: Path):
    pol = load_bundle(policy_dir)
    d = json.loads(pol.files[TASKS_FILE])
    a, b = list(d["columns"])[:2]
    d["columns"][b] = d["columns"][a]
    with pytest.raises(BundleError, match="one column"):
        TaskTable.from_json(json.dumps(d).encode(), pol.arm_ids)
    with pytest.raises(UsageError, match="trained on"):
        pol.task_table.with_adapted(a, pol.task_table.adapted.get(a))


def test_allocate_reports_an_unknown_task_once_with_the_known_names(policy_dir: Path, tmp_path):
    from ttc.bundle_stages import allocate_stage

    src = tmp_path / "q.jsonl"
    rows = [{"question": f"What is {i} + 1?", "task": t} for i, t in enumerate(["gsm8k", "mine", "theirs", "mine"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    warnings: list[str] = []
    n = allocate_stage(policy_dir, src, tmp_path / "d.jsonl", lam=0.01, warn=warnings.append)
    assert n == 4 and len(warnings) == 1
    assert "'mine'" in warnings[0] and "gsm8k" in warnings[0] and "unknown tasks" in warnings[0]


def test_ttc_adapt_refuses_a_store_without_every_model_of_the_policy(policy_dir: Path, new_task_store, tmp_path):
    one_model = tmp_path / "store"
    one_model.mkdir()
    for f in sorted(new_task_store.glob("shard-*.parquet")):
        t = pq.read_table(f)
        t = t.filter(np.asarray(t.column("model").to_pylist()) == "smollm2-135m")
        if t.num_rows:
            pq.write_table(t, one_model / f.name)
    out = tmp_path / "b2"
    r = CliRunner().invoke(app, ["adapt", "--bundle", str(policy_dir), "--store", str(one_model), "--out", str(out)])
    assert r.exit_code == 2 and "gemma3-270m" in r.output
    assert not out.exists()
