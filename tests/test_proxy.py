"""The OpenAI-compatible proxy (serve/proxy.py) against a fake engine: decisions, votes, errors, budget mode.

The proxy and the fake both run under real uvicorn on loopback and are called
with the official `openai` client. tests/test_proxy_llamacpp.py runs the same
proxy in front of a real llama.cpp server.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import Counter

import httpx
import openai
import pytest

from policy.bundle import load_bundle
from policy.errors import UsageError
from serve.budget import BudgetController
from serve.decide import Decider, TTCOptions, answer_kind, parse_options, vote_texts
from serve.proxy import create_app
from serve.upstream import parse_upstreams
from tests.fakes.openai_upstream import ThreadServer, make_fake_upstream
from tests.policy_fixtures import MODELS, synthetic_questions
from tests.proxy_helpers import QUESTION, proxy_stacks, ttc_serve


@pytest.fixture(scope="module")
def policy(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture
def stack(policy):
    """`stack(**kw)`: a fake engine and the proxy in front of it (tests/proxy_helpers.py), closed after the test."""
    with proxy_stacks() as make:
        yield functools.partial(make, policy)


def test_decision_is_applied_upstream_sees_the_arms_settings(stack):
    s = stack()
    resp, headers = s.chat()
    ttc = resp.model_extra["ttc"]
    assert len(resp.choices) == 1
    assert s.seen[0]["n"] == ttc["n"] and s.seen[0]["max_tokens"] == ttc["max_tokens"]
    assert s.seen[0]["temperature"] == ttc["temperature"] and s.seen[0]["model"] == ttc["model"]
    assert "ttc" not in s.seen[0]
    assert headers["x-ttc-arm"] == ttc["arm"] and ttc["arm"].startswith(ttc["model"])
    assert ttc["energy_source"] == "estimated" and ttc["predicted_j"] > 0 and 0 <= ttc["p"] <= 1
    assert float(headers["x-ttc-predicted-j"]) == pytest.approx(ttc["predicted_j"], rel=1e-3)


def test_majority_vote_wins_and_its_sample_text_is_returned(stack):
    texts = ["So it is 9. The answer is 9.", "The answer is 7.", "I get 7"]
    s = stack(upstream_kw={"texts": texts})
    resp, headers = s.chat(extra_body={"ttc": {"lam": 0.0}})  # λ = 0: the most accurate arm, many votes
    ttc = resp.model_extra["ttc"]
    n = ttc["n"]
    assert n >= 3, "the synthetic policy at λ=0 should vote over several samples"
    sent = [texts[i % 3] for i in range(n)]
    expected = Counter({"9": sum(t.endswith("9.") for t in sent), "7": n - sum(t.endswith("9.") for t in sent)})
    assert ttc["votes"] == dict(expected) and json.loads(headers["x-ttc-votes"]) == dict(expected)
    assert ttc["answer"] == "7" and resp.choices[0].message.content == "The answer is 7."
    assert ttc["samples"] == n


def test_engine_without_n_gets_concurrent_single_requests(stack):
    s = stack(upstream_kw={"supports_n": False})
    resp, _ = s.chat(extra_body={"ttc": {"lam": 0.0}})
    n = resp.model_extra["ttc"]["n"]
    assert [b["n"] for b in s.seen] == [n] + [1] * (n - 1)  # asked once with n, then topped up
    before = len(s.seen)
    resp, _ = s.chat(extra_body={"ttc": {"lam": 0.0}})
    assert [b["n"] for b in s.seen[before:]] == [1] * n  # remembered: straight to single requests
    assert resp.model_extra["ttc"]["samples"] == n and resp.model_extra["ttc"]["upstream_requests"] == n


def test_client_n_is_a_lower_bound_and_max_tokens_an_upper_bound(stack):
    s = stack()
    resp, _ = s.chat(n=2, max_tokens=40, extra_body={"ttc": {"lam": 10.0}})  # a high price alone would pick n=1
    ttc = resp.model_extra["ttc"]
    assert ttc["n"] >= 2 and ttc["max_tokens"] <= 40 and not ttc["clipped"] and len(resp.choices) == 2
    assert s.seen[-1]["n"] >= 2 and s.seen[-1]["max_tokens"] <= 40
    resp, _ = s.chat(max_tokens=10)  # below every arm's cap: the pick is clipped, and says so
    ttc = resp.model_extra["ttc"]
    assert ttc["clipped"] and ttc["max_tokens"] == 10 and s.seen[-1]["max_tokens"] == 10


def test_task_and_price_pass_through_the_header(stack):
    s = stack()
    cheap, _ = s.chat(extra_headers={"x-ttc": json.dumps({"lam": 10.0, "task": "gsm8k"})})
    rich, _ = s.chat(extra_headers={"x-ttc": json.dumps({"lam": 0.0, "task": "gsm8k"})})
    assert cheap.model_extra["ttc"]["lam"] == 10.0
    assert cheap.model_extra["ttc"]["predicted_j"] < rich.model_extra["ttc"]["predicted_j"]


def test_passthrough_forwards_the_request_unchanged(stack):
    s = stack()
    resp, headers = s.chat(
        n=3, max_tokens=7, temperature=0.3, model="tiny-360m", extra_body={"ttc": {"mode": "passthrough"}}
    )
    assert len(resp.choices) == 3 and headers["x-ttc-mode"] == "passthrough"
    sent = s.seen[-1]
    assert (sent["n"], sent["max_tokens"], sent["temperature"], sent["model"]) == (3, 7, 0.3, "tiny-360m")
    assert "ttc" not in sent


def test_passthrough_streams(stack):
    s = stack()
    with httpx.stream(
        "POST",
        f"{s.proxy.url}/v1/completions",
        json={"model": "tiny-135m", "prompt": "hi", "stream": True, "ttc": {"mode": "passthrough"}},
    ) as r:
        events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == "The answer is 42."


def test_completions_endpoint_votes_too(stack):
    s = stack()
    resp = s.client.completions.create(model="ttc", prompt=QUESTION)
    assert resp.choices[0].text == "The answer is 42." and resp.model_extra["ttc"]["answer"] == "42"


def test_upstream_down_gives_502_and_no_answer(policy):
    dead = ThreadServer(make_fake_upstream()).__enter__()
    url = dead.url
    dead.stop()  # the port is closed now
    app = create_app(policy, parse_upstreams([f"{m}={url}/v1" for m in MODELS]))
    with ThreadServer(app) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="ttc", messages=[{"role": "user", "content": QUESTION}])
    assert err.value.status_code == 502 and "unreachable" in err.value.message


def test_slow_upstream_gives_504(stack):
    s = stack(upstream_kw={"delay_s": 1.5}, timeout_s=0.3)
    with pytest.raises(openai.APIStatusError) as err:
        s.chat()
    assert err.value.status_code == 504 and "did not answer within" in err.value.message


def test_one_failed_sample_fails_the_whole_vote(stack):
    s = stack(upstream_kw={"supports_n": False, "fail_on_request": 2})
    with pytest.raises(openai.APIStatusError) as err:
        s.chat(extra_body={"ttc": {"lam": 0.0}})
    assert err.value.status_code == 502 and "no answer was voted" in err.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"model": "ttc"}).encode(),
        json.dumps({"model": "ttc", "messages": [{"role": "user", "content": "x"}], "n": 0}).encode(),
        json.dumps({"model": "ttc", "messages": [{"role": "user", "content": "x"}], "ttc": {"lamb": 1}}).encode(),
        json.dumps({"model": "ttc", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}).encode(),
        json.dumps(
            {"model": "nope", "messages": [{"role": "user", "content": "x"}], "ttc": {"mode": "passthrough"}}
        ).encode(),
    ],
)
def test_malformed_requests_get_400_in_the_openai_format(stack, body):
    s = stack()
    r = httpx.post(f"{s.proxy.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert s.seen == []  # nothing reached the engine


def test_oversized_body_gets_413(stack):
    s = stack(max_body_bytes=10_000)
    big = {"model": "ttc", "messages": [{"role": "user", "content": "x" * 20_000}]}
    r = httpx.post(f"{s.proxy.url}/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large" and s.seen == []


def test_models_health_and_metrics_report_decisions_and_budget_state(stack):
    s = stack(budget_j=5.0)
    assert {m.id for m in s.client.models.list()} == {"ttc", *MODELS}
    assert httpx.get(f"{s.proxy.url}/health").json()["status"] == "ok"
    resp, _ = s.chat()
    arm = resp.model_extra["ttc"]["arm"]
    text = httpx.get(f"{s.proxy.url}/metrics").text
    assert f'ttc_decisions_total{{arm="{arm}"}} 1.0' in text
    assert "ttc_budget_target_joules 5.0" in text and "ttc_budget_lambda" in text
    assert 'ttc_upstream_latency_seconds_count{model="' in text


@pytest.mark.parametrize("where", [0.1, 0.3, 0.6])
def test_budget_controller_holds_the_window_mean_near_the_target(policy, where):
    questions, tasks, _ = synthetic_questions(400, seed=7)
    decider = Decider(policy, MODELS)
    p, e = policy.predict(questions, tasks)
    cheapest, dearest = float(e.min(axis=1).mean()), float(e.max(axis=1).mean())
    target = cheapest + where * (dearest - cheapest)  # a fixed price spends the same whatever the target
    ctl = BudgetController(target, window=64)
    spent = []
    for q, t in zip(questions, tasks, strict=True):
        choice = decider.choose(q, t, ctl.price(), None, None)
        ctl.observe_slopes(choice.slopes)
        ctl.record(choice.predicted_j)
        spent.append(choice.predicted_j)
    late = sum(spent[200:]) / 200
    assert late == pytest.approx(target, rel=0.1)
    assert ctl.state().slope_min <= ctl.lam <= ctl.state().slope_max


def test_budget_controller_raises_the_price_when_over_budget():
    ctl = BudgetController(10.0, window=4, gain=0.5)
    ctl.observe_slopes([0.001, 0.1])
    lam0 = ctl.lam
    ctl.record(40.0)
    assert ctl.lam > lam0
    for _ in range(50):
        ctl.record(1.0)
    assert ctl.lam == pytest.approx(0.001)  # clipped at the smallest slope, no wind-up below it


def test_vote_ties_go_to_the_first_answer_and_unanswered_samples_do_not_vote():
    v = vote_texts(["no idea", "The answer is 3.", "The answer is 5."], "number")
    assert (v.answer, v.winner_index, v.counts, v.no_answer) == ("3", 1, {"3": 1, "5": 1}, 1)


@pytest.mark.parametrize(
    "specs", [[], ["tiny-135m"], ["tiny-135m=ftp://x"], ["tiny-135m=http://a/v1", "tiny-135m=http://b/v1"]]
)
def test_bad_upstream_specs_name_the_fix(specs):
    with pytest.raises(UsageError, match="--upstream"):
        parse_upstreams(specs)


def test_an_upstream_for_a_model_the_bundle_lacks_is_refused(policy):
    with pytest.raises(UsageError, match="does not use"):
        create_app(policy, parse_upstreams(["gpt-9=http://127.0.0.1:1/v1"]))


def test_unknown_ttc_mode_is_refused():
    with pytest.raises(UsageError, match="unknown ttc mode"):
        parse_options({"mode": "yolo"}, None)


@pytest.mark.slow
def test_ttc_serve_command_answers_through_the_proxy(bundle_dir):
    fake = make_fake_upstream(texts=["The answer is 37."])
    with ThreadServer(fake) as up, ttc_serve(bundle_dir, f"{up.url}/v1") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        resp = client.chat.completions.create(model="ttc", messages=[{"role": "user", "content": QUESTION}])
    assert resp.model_extra["ttc"]["answer"] == "37" and fake.state.seen


def test_ttc_serve_with_a_bad_upstream_exits_2_naming_the_fix(bundle_dir):
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle_dir), "--upstream", "tiny-135m"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "MODEL=URL" in r.stderr


def test_a_request_naming_a_served_model_keeps_to_its_arms(stack):
    s = stack()
    for model in MODELS:
        resp, _ = s.chat(model=model, extra_body={"ttc": {"lam": 0.0}})
        assert resp.model_extra["ttc"]["model"] == model and s.seen[-1]["model"] == model


def test_answer_extraction_follows_the_task_unless_the_request_names_one():
    assert answer_kind(TTCOptions(task="rg.needle_haystack")) == "name"
    assert answer_kind(TTCOptions(task="gsm8k")) == "number" and answer_kind(TTCOptions()) == "number"
    assert answer_kind(TTCOptions(task="rg.needle_haystack", answer="text")) == "text"
    v = vote_texts(["Mira loathes jogging. The answer is Mira.", "The answer is Tomas.", "Mira."], "name")
    assert v.answer == "Mira" and v.counts == {"Mira": 2, "Tomas": 1}


def test_engine_that_refuses_n_is_asked_with_single_requests(stack):
    s = stack(upstream_kw={"reject_n": True})
    resp, _ = s.chat(extra_body={"ttc": {"lam": 0.0}})
    n = resp.model_extra["ttc"]["n"]
    assert n > 1 and resp.model_extra["ttc"]["samples"] == n
    assert [b["n"] for b in s.seen] == [n] + [1] * n  # refused once, then n single requests
    resp, _ = s.chat(extra_body={"ttc": {"lam": 0.0}})
    assert [b["n"] for b in s.seen[n + 1 :]] == [1] * n
