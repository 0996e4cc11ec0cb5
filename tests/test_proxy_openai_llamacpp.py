"""The proxy's OpenAI surface and operations in front of the real llama.cpp server (llama-cpp-python).

Each engine is started with the exact command `ttc engines` prints (serve/engines.py),
on a free port of 127.0.0.1; requests go through the official `openai` client.
The same points against the fake engine: tests/test_proxy_openai.py.
Skipped, with the reason, only when llama_cpp is not importable (scripts/setup.sh builds it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from policy.bundle import load_bundle
from serve.engines import engine_commands
from serve.proxy import create_app
from serve.upstream import parse_upstream_keys, parse_upstreams
from tests.fakes.openai_upstream import ThreadServer, wait_http
from tests.policy_fixtures import MODELS
from tests.proxy_helpers import ARITH, KNOWN, free_port, ttc_serve

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed; bash scripts/setup.sh builds it")
pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Engine:
    """The llama.cpp server as `ttc engines` prints it (plus an --api_key when asked), stopped on close."""

    def __init__(self, log: Path, model: str = "smollm2-135m", api_key: str | None = None) -> None:
        self.spec = replace(engine_commands([model])[0], port=free_port())
        argv = self.spec.argv() + (["--api_key", api_key] if api_key else [])
        self.proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = self.spec.url
        try:
            wait_http(f"{self.url}/models", timeout_s=120)
        except Exception:
            self.close()
            raise RuntimeError(f"llama.cpp server did not start; its log: {log.read_text()[-2000:]}") from None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def _proxy(bundle_dir, url: str, keys: list[str] = (), **kw) -> ThreadServer:
    ups = parse_upstreams([f"{m}={url}" for m in MODELS])
    parse_upstream_keys(list(keys), ups)
    return ThreadServer(create_app(load_bundle(bundle_dir), ups, **kw)).__enter__()


def _client(proxy: ThreadServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=600)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = Engine(tmp_path_factory.mktemp("llama") / "server.log")
    yield e
    e.close()


@pytest.fixture(scope="module")
def proxy(bundle_dir, engine):
    p = _proxy(bundle_dir, engine.url)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def client(proxy):
    return _client(proxy)


def test_n_choices_are_the_top_voted_answers_from_the_engines_samples(client):
    resp = client.chat.completions.create(
        model="ttc", messages=KNOWN, n=3, max_tokens=24, extra_body={"ttc": {**ARITH, "lam": 0.0}}
    )
    ttc = resp.model_extra["ttc"]
    assert len(resp.choices) == 3 and ttc["samples"] == ttc["n"] >= 3
    assert ttc["choice_answers"][0] == ttc["answer"] == "7"
    distinct = [a for a in ttc["choice_answers"] if a is not None]
    assert len(set(distinct[: len(ttc["votes"])])) == min(3, len(ttc["votes"]))  # distinct answers come first


def test_logprobs_are_the_engines_for_the_returned_sample(client):
    resp = client.chat.completions.create(
        model="ttc",
        messages=KNOWN,
        n=2,
        max_tokens=24,
        logprobs=True,
        top_logprobs=1,  # llama-cpp-python returns chat log-probs only with top_logprobs >= 1
        extra_body={"ttc": {**ARITH, "lam": 0.0}},
    )
    for choice in resp.choices:
        tokens = choice.logprobs.content
        assert tokens and all(t.logprob <= 0 for t in tokens)
        assert "".join(t.token for t in tokens).strip() == choice.message.content.strip()


def test_tools_and_json_mode_are_refused_in_policy_mode_before_the_engine_is_asked(client, proxy):
    before = _metric(httpx.get(f"{proxy.url}/metrics").text, "ttc_upstream_requests_total")
    for extra in ({"tools": [WEATHER]}, {"response_format": {"type": "json_object"}}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="ttc", messages=KNOWN, max_tokens=8, **extra)
        assert err.value.body["param"] == next(iter(extra))
    assert _metric(httpx.get(f"{proxy.url}/metrics").text, "ttc_upstream_requests_total") == before


def test_tools_and_json_mode_pass_through_to_the_engine(client):
    pt = {"ttc": {"mode": "passthrough"}}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    resp = client.chat.completions.create(
        model="tiny-135m", messages=messages, tools=[WEATHER], tool_choice=forced, max_tokens=48, extra_body=pt
    )
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    resp = client.chat.completions.create(
        model="tiny-135m",
        messages=[{"role": "user", "content": "Give a JSON object with the key answer set to 7."}],
        # llama-cpp-python's JSON grammar, held to a schema so the 135M model closes the object in time
        response_format={
            "type": "json_object",
            "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}},
        },
        max_tokens=64,
        temperature=0,
        extra_body=pt,
    )
    assert isinstance(json.loads(resp.choices[0].message.content), dict)  # the engine's JSON grammar held


def test_request_id_is_echoed_and_id_model_are_documented(client):
    raw = client.chat.completions.with_raw_response.create(
        model="ttc", messages=KNOWN, max_tokens=16, extra_headers={"X-Request-Id": "trace-42"}
    )
    resp = raw.parse()
    ttc = resp.model_extra["ttc"]
    assert raw.headers["x-request-id"] == "trace-42"
    assert resp.id.startswith("chatcmpl-ttc-") and resp.model == ttc["model"] and ttc["requested_model"] == "ttc"
    assert len(ttc["upstream_ids"]) == ttc["upstream_requests"] and all(ttc["upstream_ids"])  # llama.cpp's own ids


def test_stream_true_gets_the_voted_reply_as_one_chunk_then_done(client):
    chunks = list(
        client.chat.completions.create(
            model="ttc", messages=KNOWN, n=2, max_tokens=24, stream=True, extra_body={"ttc": {**ARITH, "lam": 0.0}}
        )
    )
    assert [c.choices[0].index for c in chunks] == [0, 1]
    assert chunks[0].model_extra["ttc"]["answer"] == "7" and "7" in chunks[0].choices[0].delta.content


def test_queued_samples_show_their_latency_cost(client, proxy):
    resp = client.chat.completions.create(
        model="ttc", messages=KNOWN, n=4, max_tokens=16, extra_body={"ttc": {**ARITH, "lam": 0.0}}
    )
    ttc = resp.model_extra["ttc"]
    # llama.cpp's server runs one request at a time: the 4 concurrent requests queue, so their wall time
    # is well over the fastest one's; the reply and the metrics say by how much
    assert ttc["upstream_requests"] >= 4 and ttc["latency_ratio"] > 1.5
    text = httpx.get(f"{proxy.url}/metrics").text
    assert _metric(text, "ttc_sampling_latency_ratio_count") >= 1
    assert _metric(text, "ttc_samples_total", task=ARITH["task"]) >= ttc["samples"]
    assert _metric(text, "ttc_tokens_total", kind="completion") > 0 and _metric(text, "ttc_tokens_total", kind="prompt")
    assert _metric(text, "ttc_vote_agreement_count", task=ARITH["task"]) >= 1
    assert _metric(text, "ttc_request_duration_seconds_count", task=ARITH["task"]) >= 1


def test_engine_killed_midstream_gives_an_error_event_a_502_count_and_not_ready(bundle_dir, tmp_path):
    engine = Engine(tmp_path / "server.log")
    proxy = _proxy(bundle_dir, engine.url)
    try:
        assert httpx.get(f"{proxy.url}/health/ready").status_code == 200
        stream = _client(proxy).chat.completions.create(
            model="tiny-135m",
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            max_tokens=400,
            stream=True,
            extra_body={"ttc": {"mode": "passthrough"}},
        )
        with pytest.raises(openai.APIError, match="stream"):
            for k, _chunk in enumerate(stream):
                if k == 2:
                    engine.close()
        text = httpx.get(f"{proxy.url}/metrics").text
        assert _metric(text, "ttc_requests_total", mode="passthrough", status="502") == 1.0
        assert _metric(text, "ttc_requests_total", mode="passthrough", status="200") == 0.0
        ready = httpx.get(f"{proxy.url}/health/ready")
        assert ready.status_code == 503 and not ready.json()["upstreams"]["tiny-135m"]["ready"]
        assert httpx.get(f"{proxy.url}/health").status_code == 200  # liveness: the proxy itself is fine
    finally:
        proxy.stop()
        engine.close()


def test_keys_end_to_end_through_ttc_serve(bundle_dir, tmp_path):
    """An engine that wants a key (llama.cpp's --api_key), `ttc serve --upstream-key` and `--api-key`."""
    engine = Engine(tmp_path / "server.log", api_key="sk-engine")
    keys = [arg for m in MODELS for arg in ("--upstream-key", f"{m}=TEST_ENGINE_KEY")]
    env = {**__import__("os").environ, "TEST_ENGINE_KEY": "sk-engine", "TTC_API_KEY": "sk-proxy"}
    try:
        with ttc_serve(bundle_dir, engine.url, *keys, env=env) as url:
            base = f"{url}/v1"
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
            c = openai.OpenAI(base_url=base, api_key="sk-proxy", max_retries=0, timeout=600)
            resp = c.chat.completions.create(model="ttc", messages=KNOWN, max_tokens=16)
            assert resp.model_extra["ttc"]["samples"] >= 1
            assert httpx.get(f"{url}/health/ready").status_code == 200  # the probe sends the key
    finally:
        engine.close()
    # without the engine's key the same engine answers 401, which the proxy reports as its own misconfiguration
    engine = Engine(tmp_path / "server2.log", api_key="sk-engine")
    proxy = _proxy(bundle_dir, engine.url)
    try:
        with pytest.raises(openai.APIStatusError) as err:
            _client(proxy).chat.completions.create(model="ttc", messages=KNOWN, max_tokens=8)
        assert err.value.status_code == 502 and "--upstream-key" in err.value.message
    finally:
        proxy.stop()
        engine.close()


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_the_printed_engine_command_serves_the_model(model, tmp_path):
    engine = Engine(tmp_path / "server.log", model=model)
    try:
        assert engine.spec.gguf.is_absolute() and "--n_threads_batch 1" in engine.spec.command()
        assert httpx.get(f"{engine.url}/models").json()["data"][0]["id"] == model
        t0 = time.monotonic()
        r = httpx.post(f"{engine.url}/completions", json={"prompt": "Question: 2 + 2?\nAnswer:", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, time.monotonic() - t0
    finally:
        engine.close()
