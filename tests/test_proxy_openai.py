"""The proxy's OpenAI surface and operations against the fake engine (tests/fakes/openai_upstream.py).

`n` choices ranked by vote, the returned sample's `logprobs`, tools and JSON mode
(refused in policy mode, relayed in passthrough), request ids, upstream keys,
the proxy's own key, streaming the voted reply, a broken upstream stream,
readiness, and the per-engine and per-task metrics. Every call goes through the
official `openai` client or httpx on 127.0.0.1. tests/test_proxy_llamacpp_openai.py
checks the same points against the real llama.cpp server.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import uuid

import httpx
import openai
import pytest

from policy.bundle import load_bundle
from policy.errors import UsageError
from serve.upstream import parse_upstream_keys, parse_upstreams
from tests.policy_fixtures import MODELS
from tests.proxy_helpers import QUESTION, proxy_stacks

TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def policy(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture
def stack(policy):
    """`stack(**kw)`: a fake engine and the proxy in front of it (tests/proxy_helpers.py), closed after the test."""
    with proxy_stacks() as make:
        yield functools.partial(make, policy)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample line of a Prometheus exposition (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_n_returns_the_top_voted_answers_one_sample_each_winner_first(stack):
    texts = ["The answer is 7.", "The answer is 9.", "The answer is 7.", "The answer is 5."]
    s = stack(upstream_kw={"texts": texts})
    resp, _ = s.chat(n=3, extra_body={"ttc": {"lam": 0.0}})
    ttc = resp.model_extra["ttc"]
    assert len(resp.choices) == 3 and [c.index for c in resp.choices] == [0, 1, 2]
    assert ttc["n"] >= 3 and ttc["samples"] == ttc["n"]
    answers = ttc["choice_answers"]
    assert answers[0] == ttc["answer"] == "7" and set(answers) == {"7", "9", "5"}  # three distinct, winner first
    assert ttc["votes"]["9"] >= ttc["votes"]["5"] and answers.index("9") < answers.index("5")
    assert [c.message.content for c in resp.choices] == [f"The answer is {a}." for a in answers]


def test_n_above_the_distinct_answers_fills_with_more_samples_by_votes(stack):
    s = stack(upstream_kw={"texts": ["The answer is 4.", "The answer is 4.", "The answer is 6."]})
    resp, _ = s.chat(n=4, extra_body={"ttc": {"lam": 0.0}})
    answers = resp.model_extra["ttc"]["choice_answers"]
    assert len(resp.choices) == 4 and answers[:2] == ["4", "6"] and answers[2] == "4"


def test_a_high_price_still_draws_the_clients_n_samples(stack):
    s = stack()
    cheap, _ = s.chat(extra_body={"ttc": {"lam": 100.0}})
    four, _ = s.chat(n=4, extra_body={"ttc": {"lam": 100.0}})
    assert cheap.model_extra["ttc"]["n"] == 1 and four.model_extra["ttc"]["n"] == 4 and len(four.choices) == 4


def test_logprobs_are_those_of_the_returned_sample(stack):
    texts = ["The answer is 3.", "The answer is 8.", "The answer is 8."]
    s = stack(upstream_kw={"texts": texts})
    resp, _ = s.chat(logprobs=True, extra_body={"ttc": {"lam": 0.0}})
    ttc = resp.model_extra["ttc"]
    assert ttc["answer"] == "8" and s.seen[-1]["logprobs"] is True
    winner = 1  # the first sample that said 8; the fake's log-probs carry the sample's index
    content = resp.choices[0].logprobs.content
    assert [t.token for t in content] == ["The", "answer", "is", "8."]
    assert content[0].logprob == pytest.approx(-0.1 - 0.01 * winner)


def test_without_logprobs_asked_the_choice_has_none(stack):
    resp, _ = stack().chat()
    assert resp.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [TOOL]}, "tools"),
        ({"tools": [TOOL], "tool_choice": "auto"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ],
)
def test_tools_and_json_mode_are_refused_in_policy_mode_naming_the_field(stack, extra, param):
    s = stack()
    with pytest.raises(openai.BadRequestError) as err:
        s.chat(**extra)
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == param and body["code"] == "unsupported_in_policy_mode"
    assert "passthrough" in body["message"] and s.seen == []


def test_a_text_response_format_is_voted_as_usual(stack):
    resp, _ = stack().chat(response_format={"type": "text"})
    assert resp.model_extra["ttc"]["answer"] == "42"


def test_tools_and_json_mode_pass_through_to_the_engine(stack):
    s = stack()
    pt = {"ttc": {"mode": "passthrough"}}
    resp, _ = s.chat(model="tiny-135m", tools=[TOOL], tool_choice="auto", extra_body=pt)
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "add" and resp.choices[0].finish_reason == "tool_calls"
    assert s.seen[-1]["tools"] == [TOOL] and s.seen[-1]["tool_choice"] == "auto"
    s.chat(model="tiny-135m", response_format={"type": "json_object"}, extra_body=pt)
    assert s.seen[-1]["response_format"] == {"type": "json_object"}


def test_request_id_is_echoed_and_a_uuid_one_reaches_the_engine(stack):
    s = stack()
    rid = "0b7c2f6e-4a55-4e31-9c1e-2f7d1f1a9b10"
    _, headers = s.chat(extra_headers={"X-Request-Id": rid})
    assert headers["x-request-id"] == rid and s.fake.state.headers[-1]["x-request-id"] == rid
    # any other form is echoed, and the engine gets a UUID of its own, named in a header
    _, headers = s.chat(extra_headers={"X-Request-Id": "client-abc-123"})
    sent = s.fake.state.headers[-1]["x-request-id"]
    assert headers["x-request-id"] == "client-abc-123" and headers["x-ttc-upstream-request-id"] == sent != rid
    assert str(uuid.UUID(sent)) == sent
    _, headers = s.chat()  # none given: the proxy makes one, and the engine sees the same
    assert headers["x-request-id"] == s.fake.state.headers[-1]["x-request-id"]


def test_id_is_the_proxys_and_model_the_served_one_both_documented_in_ttc(stack):
    resp, _ = stack().chat(model="gpt-4o")
    ttc = resp.model_extra["ttc"]
    assert resp.id.startswith("chatcmpl-ttc-") and resp.model == ttc["model"] in MODELS
    assert ttc["requested_model"] == "gpt-4o" and ttc["upstream_ids"] == ["fake"] * ttc["upstream_requests"]


def test_upstream_key_comes_from_the_environment_and_reaches_the_engine(stack, monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-upstream")
    s = stack(upstream_kw={"api_key": "sk-upstream"}, keys=[f"{m}=TEST_UPSTREAM_KEY" for m in MODELS])
    resp, _ = s.chat(extra_headers={"Authorization": "Bearer client-key-not-forwarded"})
    assert resp.model_extra["ttc"]["answer"] == "42"
    assert s.fake.state.headers[-1]["authorization"] == "Bearer sk-upstream"


def test_an_engine_refusing_the_proxys_credentials_is_a_502_naming_the_flag(stack):
    s = stack(upstream_kw={"api_key": "sk-upstream"})
    with pytest.raises(openai.APIStatusError) as err:
        s.chat()
    assert err.value.status_code == 502 and "--upstream-key" in err.value.message


@pytest.mark.parametrize(
    ("spec", "match"),
    [("tiny-135m", "MODEL=ENV_VAR"), ("gpt-9=X_KEY", "no --upstream"), ("tiny-135m=TTC_SURELY_UNSET_VAR", "unset")],
)
def test_bad_upstream_keys_name_the_fix(spec, match, monkeypatch):
    monkeypatch.setenv("X_KEY", "k")
    with pytest.raises(UsageError, match=match):
        parse_upstream_keys([spec], parse_upstreams(["tiny-135m=http://127.0.0.1:9/v1"]))


def test_the_proxys_own_key_gives_401_in_the_openai_format(stack, policy):
    s = stack(api_key="s3cret", client_key="wrong")
    with pytest.raises(openai.AuthenticationError) as err:
        s.chat()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key" and s.seen == []
    assert httpx.get(f"{s.url}/v1/models").status_code == 401
    assert httpx.get(f"{s.url}/health").status_code == 200 and httpx.get(f"{s.url}/metrics").status_code == 200
    ok = openai.OpenAI(base_url=f"{s.url}/v1", api_key="s3cret", max_retries=0)
    resp = ok.chat.completions.create(model="ttc", messages=[{"role": "user", "content": QUESTION}])
    assert resp.model_extra["ttc"]["answer"] == "42"


def test_stream_true_gets_the_voted_reply_as_one_chunk_then_done(stack):
    texts = ["The answer is 7.", "The answer is 9.", "The answer is 7."]
    s = stack(upstream_kw={"texts": texts})
    chunks = list(
        s.client.chat.completions.create(
            model="ttc",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ttc": {"lam": 0.0}},
        )
    )
    voted, usage = chunks[0], chunks[-1]
    assert len(chunks) == 2 and voted.object == "chat.completion.chunk"
    assert voted.choices[0].delta.content == "The answer is 7." and voted.choices[0].finish_reason == "stop"
    assert voted.model_extra["ttc"]["answer"] == "7" and usage.choices == [] and usage.usage.completion_tokens > 0
    assert "stream" not in s.seen[-1]  # the engine was asked for whole samples
    with httpx.stream(
        "POST", f"{s.url}/v1/completions", json={"model": "ttc", "prompt": QUESTION, "stream": True, "n": 2}
    ) as r:
        events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert r.headers["content-type"].startswith("text/event-stream") and events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["index"] for e in events[:-1]] == [0, 1]


def test_a_broken_engine_stream_ends_with_an_error_event_and_counts_as_502(stack):
    s = stack(upstream_kw={"break_stream_after": 2})
    stream = s.client.chat.completions.create(
        model="tiny-135m",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"ttc": {"mode": "passthrough"}},
    )
    got = []
    with pytest.raises(openai.APIError, match="stream"):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["The", " answer"]  # what arrived before the break was relayed
    text = s.metrics()
    labels = {"endpoint": "chat/completions", "mode": "passthrough"}
    assert _metric(text, "ttc_requests_total", **labels, status="502") == 1.0
    assert _metric(text, "ttc_requests_total", **labels, status="200") == 0.0
    assert _metric(text, "ttc_errors_total", kind="stream_broken") == 1.0
    assert _metric(text, "ttc_upstream_requests_total", model="tiny-135m", outcome="stream_broken") == 1.0


def test_a_whole_engine_stream_counts_as_200(stack):
    s = stack()
    stream = s.client.chat.completions.create(
        model="tiny-135m",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"ttc": {"mode": "passthrough"}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "The answer is 42."
    text = s.metrics()
    assert _metric(text, "ttc_requests_total", mode="passthrough", status="200") == 1.0


def test_ready_is_503_naming_the_engine_that_is_down_while_health_stays_live(stack):
    s = stack(dead=("tiny-360m",))
    r = httpx.get(f"{s.url}/health/ready")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    ups = r.json()["upstreams"]
    assert ups["tiny-135m"]["ready"] and not ups["tiny-360m"]["ready"]
    assert httpx.get(f"{s.url}/health").status_code == 200
    text = s.metrics()
    assert _metric(text, "ttc_upstream_ready", model="tiny-135m") == 1.0
    assert _metric(text, "ttc_upstream_ready", model="tiny-360m") == 0.0


def test_ready_is_200_when_every_engine_answers(stack):
    r = httpx.get(f"{stack().url}/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_metrics_count_engine_requests_samples_tokens_latency_and_agreement_per_task(stack):
    texts = ["The answer is 7.", "The answer is 7.", "The answer is 9.", "The answer is 7."]
    s = stack(upstream_kw={"texts": texts, "supports_n": False})
    resp, _ = s.chat(n=4, extra_body={"ttc": {"lam": 0.0, "task": "gsm8k"}})
    ttc = resp.model_extra["ttc"]
    model, n = ttc["model"], ttc["n"]
    s.chat(extra_body={"ttc": {"task": "no-such-task"}})  # a client's task name does not become a label
    text = s.metrics()
    assert _metric(text, "ttc_upstream_requests_total", model=model, outcome="ok") >= n
    assert _metric(text, "ttc_samples_total", model=model, task="gsm8k") == n
    assert _metric(text, "ttc_tokens_total", model=model, kind="completion") >= 5 * n
    assert _metric(text, "ttc_request_duration_seconds_count", mode="policy", task="gsm8k") == 1.0
    assert _metric(text, "ttc_request_duration_seconds_count", mode="policy", task="other") == 1.0
    agree = ttc["votes"][ttc["answer"]] / n
    assert _metric(text, "ttc_vote_agreement_sum", task="gsm8k") == pytest.approx(agree)
    assert "no-such-task" not in text


def test_separate_sample_requests_run_concurrently_and_their_latency_cost_is_reported(stack):
    s = stack(upstream_kw={"supports_n": False, "delay_s": 0.4})
    s.chat(n=4)  # the first request learns that the engine ignores n (one extra round trip)
    resp, headers = s.chat(n=4, extra_body={"ttc": {"lam": 0.0}})
    ttc = resp.model_extra["ttc"]
    assert ttc["upstream_requests"] == ttc["n"] >= 4
    # n requests of 0.4 s each in well under n x 0.4 s: they were in flight together
    assert ttc["upstream_ms"] < 0.4e3 * ttc["n"] / 2
    assert 1.0 <= ttc["latency_ratio"] < 2.0 and float(headers["x-ttc-latency-ratio"]) == pytest.approx(
        ttc["latency_ratio"], abs=1e-3
    )
    assert _metric(s.metrics(), "ttc_sampling_latency_ratio_count", model=ttc["model"]) >= 1.0


def test_ttc_serve_refuses_an_unset_upstream_key_before_listening(bundle_dir):
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle_dir), "--port", "1"]
    cmd += ["--upstream", "tiny-135m=http://127.0.0.1:9/v1", "--upstream-key", "tiny-135m=TTC_SURELY_UNSET_VAR"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "TTC_SURELY_UNSET_VAR" in r.stderr and "export" in r.stderr


def test_n_above_the_openai_limit_is_refused_before_any_sample(stack):
    s = stack()
    with pytest.raises(openai.BadRequestError, match="<= 128"):
        s.chat(n=129)
    assert s.seen == []
