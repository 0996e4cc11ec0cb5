"""The policy as an MLflow model: logged from code, registered as @champion, served over HTTP.

The served model runs the numpy backend: its requirements name no lightgbm or onnxruntime.

Uses a SQLite tracking store and an artifact folder under a temp dir, and a
real `mlflow models serve` subprocess on a free local port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from policy_fixtures import build_synthetic_bundle, synthetic_questions

from policy.bundle import load_bundle

pytestmark = pytest.mark.slow

NAME = "ttc-policy"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(tracking uri, bundle dir, champion uri) with the synthetic policy logged and aliased."""
    import mlflow

    from serve.mlflow_log import log_policy_model

    root = tmp_path_factory.mktemp("mlflow")
    bundle = build_synthetic_bundle(root / "bundle")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("policy", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=exp)
        model_uri = log_policy_model(bundle, registered_name=NAME, alias="champion")
        yield uri, bundle, model_uri
    finally:
        mlflow.set_tracking_uri(old_uri)


def _requests() -> pd.DataFrame:
    questions, tasks, _ = synthetic_questions(12, seed=21)
    tasks[3] = None
    return pd.DataFrame({"question": questions + ["What is 2 + 2?"], "task": tasks + ["gsm8k"]})


def _expected(bundle: Path, df: pd.DataFrame, **kwargs) -> list[tuple]:
    policy = load_bundle(bundle)  # the numpy backend, which the logged model serves with by default
    tasks = [None if t is None or t != t else t for t in df["task"]]
    return [(d.arm_id, d.rule, d.p_success, d.energy_j) for d in policy.allocate(list(df["question"]), tasks, **kwargs)]


def _rows(predictions: pd.DataFrame | list[dict]) -> list[tuple]:
    df = pd.DataFrame(predictions)
    return list(zip(df["arm_id"], df["rule"], df["p_success"], df["energy_j"], strict=True))


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert np.allclose([g[2:] for g in got], [w[2:] for w in want], rtol=1e-9, atol=0)


def test_logged_model_loads_and_decides_like_the_bundle(registry):
    import mlflow

    uri, bundle, model_uri = registry
    assert model_uri == f"models:/{NAME}@champion"
    model = mlflow.pyfunc.load_model(model_uri)
    df = _requests()
    out = model.predict(df)
    assert set(out["energy_source"]) == {"estimated"}
    _same(_rows(out), _expected(bundle, df))
    _same(_rows(model.predict(df, params={"budget_j": 9.0})), _expected(bundle, df, budget_j=9.0))


def test_logged_model_ships_the_policy_package_and_needs_no_model_library(registry):
    import mlflow

    _, _, model_uri = registry
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    reqs = (local / "requirements.txt").read_text()
    assert "lightgbm" not in reqs and "onnxruntime" not in reqs and "mlflow==" in reqs
    assert (local / "code" / "policy" / "trees.py").is_file() and (local / "code" / "policy" / "bundle.py").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_served_champion_answers_http_requests_like_the_bundle(registry, tmp_path):
    uri, bundle, model_uri = registry
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    # mlflow starts `uvicorn` by name: the venv's bin folder must be on PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow models serve exited with {proc.returncode}:\n{(tmp_path / 'serve.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /ping in 120 s:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)
        df = _requests()
        split = json.loads(df.to_json(orient="split", index=False))
        url = f"http://127.0.0.1:{port}/invocations"
        answer = _post(url, {"dataframe_split": split})
        _same(_rows(answer["predictions"]), _expected(bundle, df))
        answer = _post(url, {"dataframe_split": split, "params": {"budget_j": 9.0}})
        _same(_rows(answer["predictions"]), _expected(bundle, df, budget_j=9.0))
        assert {r["energy_source"] for r in answer["predictions"]} == {"estimated"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
