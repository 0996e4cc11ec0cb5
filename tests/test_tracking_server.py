"""The shared-tracking-server recipe of docs/ray.md, run for real on 127.0.0.1.

`mlflow server --backend-store-uri sqlite:///... --artifacts-destination ...`
is what a cluster's nodes log to (`ttc collect --ray --tracking-uri
http://HOST:PORT`); here a real collect stage logs to one over HTTP, and its
params, metrics and artifacts come back through the server, the artifacts
stored where the server was told to keep them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    """A real `mlflow server` on a free local port, up within 120 s, its whole process group stopped after."""
    port = _free_port()
    artifacts = tmp_path / "artifacts"
    cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(artifacts)]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed in the finally below)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, artifacts
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


@pytest.mark.slow
def test_the_collect_stage_logs_to_a_tracking_server_over_http(tracking_server, tmp_path):
    from mlflow import MlflowClient

    from collect.config import make_config
    from collect.observers import collect_stage

    url, artifacts = tracking_server
    cfg = make_config(
        None,
        models=["smollm2-135m"],
        tasks=["rg.basic_arithmetic_1d"],
        items_per_task=1,
        n_samples=1,
        levels=[8],
        greedy=False,
        store=str(tmp_path / "store"),
        tracking_uri=url,
        experiment="shared-server",
    )
    result = collect_stage(cfg, progress=False)

    client = MlflowClient(url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["tracking_uri"] == url
    assert run.data.metrics["samples"] == 1 and run.data.tags["stage"] == "collect"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server, not a local path
    assert "collect_config.json" in [f.path for f in client.list_artifacts(result.run_id)]
    assert list(artifacts.rglob("collect_config.json"))  # and kept where --artifacts-destination says
