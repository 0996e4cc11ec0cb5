"""The output folder and concurrency of `ttc train`: nothing half-written, nothing of yours replaced,
and several workers on one fresh MLflow database tuning one shared Optuna study.

Runs on the committed reference collection (conftest's `reference_store`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.errors import UsageError


def test_failed_stage_leaves_no_output_folder(reference_store, tmp_path, monkeypatch):
    """A crash after fitting (here: while writing reports) removes the half-written output, and a crash
    while opening MLflow (two `ttc train` racing on a fresh database) happens before any folder exists."""
    import sqlite3

    import train.stage

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(train.stage, "write_reports", boom)
    with pytest.raises(OSError, match="disk full"):
        train.stage.train_stage(reference_store, tmp_path / "out", n_trials=0, num_threads=1, progress=False,
                                tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", export_bundle=False)  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".out." in p.name] == []  # no temporary sibling either

    def race(*_a, **_k):
        raise sqlite3.OperationalError("duplicate column name: step")

    monkeypatch.setattr(train.stage, "open_tracking", race)
    with pytest.raises(sqlite3.OperationalError):
        train.stage.train_stage(reference_store, tmp_path / "out", n_trials=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_stage_refuses_to_replace_a_folder_that_is_not_a_train_output(reference_store, tmp_path):
    from train.stage import train_stage

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a `ttc train` output"):
        train_stage(reference_store, tmp_path / "out", n_trials=0, progress=False)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_two_train_workers_tune_one_optuna_study_on_a_fresh_mlflow_database(reference_store, tmp_path):
    """Two `ttc train` processes at once, on a fresh mlruns/, sharing a journal-file study: both finish,
    both outputs are complete (no empty or temporary folder), and every study holds both workers' trials."""
    import subprocess
    import sys

    import optuna

    from train.registry import PREDICTORS
    from train.tune import open_storage

    ttc = Path(sys.executable).parent / "ttc"
    journal = f"journal:{tmp_path / 'optuna.log'}"
    args = ["train", "--store", str(reference_store), "--trials", "2", "--threads", "1", "--storage", journal]
    args += ["--study-name", "shared", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]
    workers = [
        subprocess.Popen(
            [str(ttc), *args, "--out", str(tmp_path / f"w{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out[-3000:]
    for i in range(2):
        assert {"split.json", "success.txt", "energy.txt", "length.txt"} <= {
            p.name for p in (tmp_path / f"w{i}").iterdir()
        }
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".w")) == []
    storage = open_storage(journal)
    for name in PREDICTORS:
        trials = optuna.load_study(study_name=f"shared-{name}", storage=storage).trials
        assert len(trials) == 4, name
        assert len({t.user_attrs["worker"] for t in trials}) == 2, name
