"""Serving what was learned: the default price (frontier.json), the trained prompt (prompts.json),
the online budget controller, and look-then-decide in the proxy, against fake engines on loopback.

The proxy and the engines run under real uvicorn and are called with the official `openai` client
(tests/test_proxy_llamacpp.py runs the prompt and the look against the real llama.cpp server).
"""

from __future__ import annotations

import httpx
import lightgbm as lgb
import numpy as np
import pytest
from fastapi import FastAPI, Request

from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from policy.features import FIRST_SAMPLE_NAMES, get_feature_set, row_matrix
from policy.frontier import FRONTIER_FILE, Frontier, sweep
from policy.prompts import PLAIN_STOP, PROMPTS_FILE, build_prompts, chat_messages, plain_prompt
from policy.two_stage import STAGE2_FEATURES, STAGE2_FILE, stage_two_json
from serve.budget import BudgetController
from serve.proxy import create_app
from serve.upstream import parse_upstreams
from tests.policy_fixtures import (
    MODELS,
    build_synthetic_bundle,
    synthetic_outcomes,
    synthetic_questions,
)
from tests.proxy_helpers import proxy_stacks
from train.export import write_policy
from train.export_trees import trees_json

DEMOS = {"gsm8k": [("What is 2 + 3?", "2 + 3 = 5. The answer is 5.")], "chain_sum": [("Start with 1.", "1")]}
STYLES = {"tiny-135m": "chat", "tiny-360m": "plain"}
FIRST_ARM = "tiny-135m/n1/L32/t0.7"


def _frontier(policy, n: int = 240, seed: int = 0) -> Frontier:
    """The synthetic policy's frontier on its own training questions, outcomes drawn from the true success."""
    questions, tasks, hard = synthetic_questions(n, seed)
    _, energy, p_true = synthetic_outcomes(hard, policy.arms, seed)
    correct = np.random.default_rng(seed + 5).random(p_true.shape) < p_true
    p, e = policy.predict(questions, tasks)
    return sweep(p, e, correct, energy, policy.arm_ids, policy.energy_source)


@pytest.fixture(scope="module")
def plain_policy(tmp_path_factory):
    return load_bundle(build_synthetic_bundle(tmp_path_factory.mktemp("plain") / "b"))


@pytest.fixture(scope="module")
def priced_policy(plain_policy, tmp_path_factory):
    """The synthetic bundle with a frontier and prompts, written and loaded back (digest-checked)."""
    files = {
        FRONTIER_FILE: _frontier(plain_policy).to_json(),
        PROMPTS_FILE: build_prompts(STYLES, DEMOS).to_json(),
    }
    out = write_policy(plain_policy.with_files(files), tmp_path_factory.mktemp("priced") / "b")
    return load_bundle(out)


def _stage_two_trees(policy) -> dict:
    """A stage-2 success model: a confident first sample (mean log-prob > -0.5) is right on every arm,
    an unsure one is right mostly with 4+ votes of the larger model."""
    rng = np.random.default_rng(3)
    questions, tasks, _ = synthetic_questions(300, seed=4)
    text = get_feature_set(STAGE2_FEATURES).transform(questions, tasks)
    sig = np.zeros((len(questions), len(FIRST_SAMPLE_NAMES)), dtype=np.float32)
    sig[:, 0] = rng.uniform(-3, 0, len(questions))
    sig[:, 1], sig[:, 3], sig[:, 4] = sig[:, 0] - 1, 1.0, 20
    arms = policy.arms
    rows = row_matrix(np.hstack([text, sig]), arms, policy.models)
    sure = np.repeat(sig[:, 0] > -0.5, len(arms))
    strong = np.tile([a.model == "tiny-360m" and a.n >= 4 for a in arms], len(questions))
    p = np.where(sure, 0.95, np.where(strong, 0.9, 0.05))
    y = (rng.random(len(p)) < p).astype(float)
    params = {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 20, "verbose": -1, "num_threads": 1}
    return trees_json(lgb.train(params, lgb.Dataset(rows, y), 40), "sigmoid")


@pytest.fixture(scope="module")
def look_policy(priced_policy, tmp_path_factory):
    s2 = stage_two_json(FIRST_ARM, 0.0, _stage_two_trees(priced_policy), None, FIRST_SAMPLE_NAMES)
    out = write_policy(priced_policy.with_files({STAGE2_FILE: s2}), tmp_path_factory.mktemp("look") / "b")
    return load_bundle(out)


@pytest.fixture
def stack():
    """`stack(policy, **kw)`: a fake engine and the proxy in front (tests/proxy_helpers.py), closed after the test."""
    with proxy_stacks() as make:
        yield make


# ---------------------------------------------------------------- the default price


def test_default_price_is_the_highest_within_one_point_of_the_most_accurate_arm(plain_policy):
    f = _frontier(plain_policy)
    # the reference: the most accurate arm, or the policy's own best on the sweep when higher
    assert f.reference == max(f.best_arm.accuracy, *(q.accuracy for q in f.points))
    floor = f.reference - 0.01
    assert f.criterion_met and f.default_point.accuracy >= floor >= f.best_arm.accuracy - 0.01
    # every dearer price (more accuracy per joule demanded) falls below the floor: it is the highest that meets it
    assert all(q.accuracy < floor for q in f.points if q.lam > f.default_lam)
    assert f.default_point.mean_predicted_j < f.best_arm.mean_predicted_j
    assert f.lam_for_loss(0.0) <= f.lam_for_loss(0.01) == f.default_lam <= f.lam_for_loss(0.2)
    # a budget between the cheapest and the dearest point maps to a price whose spend fits it
    mid = (f.points[0].mean_predicted_j + f.cheapest_mean_predicted_j) / 2
    lam = f.lam_for_budget(mid)
    assert next(q for q in f.points if q.lam == lam).mean_predicted_j <= mid


def test_frontier_json_round_trips_and_a_malformed_one_is_a_bundle_error(priced_policy):
    f = priced_policy.frontier
    assert Frontier.from_json(f.to_json(), priced_policy.arm_ids) == f
    with pytest.raises(BundleError, match="frontier.json"):
        Frontier.from_json(b'{"points": "nope"}', priced_policy.arm_ids)
    bad = f.to_json().replace(f.best_arm.arm_id.encode(), b"ghost/n1/L1/t1")
    with pytest.raises(BundleError, match="arms"):
        Frontier.from_json(bad, priced_policy.arm_ids)


def test_a_trained_bundle_is_priced_on_its_frontier_and_records_its_prompts(reference_samples, tmp_path):
    from collect.tasks import make_task
    from train.fit import TrainConfig, fit_policy

    queries = sorted(reference_samples["query_id"].unique())
    out = fit_policy(reference_samples, queries[:96], TrainConfig(n_trials=0, num_threads=1), tmp_path / "b")
    policy = load_bundle(out)
    f = policy.frontier
    assert policy.rule.lam == f.default_lam and f.queries == 96 and "cross-fitted" in f.queries_from
    assert f.energy_source == policy.energy_source
    assert policy.prompts.models["smollm2-135m"].style == "chat"
    assert policy.prompts.models["gemma3-270m"].style == "plain"
    assert policy.prompts.models["gemma3-270m"].stop == list(PLAIN_STOP)
    tasks = set(reference_samples["task"])  # every collected task's demos, held-out queries' too
    assert set(policy.prompts.demos) == tasks
    assert all(policy.prompts.demos[t] == [tuple(d) for d in make_task(t).demos] for t in tasks)


# ---------------------------------------------------------------- the trained prompt


def test_the_trained_prompt_replaces_the_clients_and_every_reply_says_which(stack, priced_policy):
    s = stack(priced_policy)
    q = "Start with 12, then plus 30. What is the result?"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
    resp, headers = s.chat(None, messages=msgs, extra_body={"ttc": {"task": "gsm8k", "arm": "tiny-135m/n2/L32/t0.7"}})
    assert s.seen[-1]["messages"] == chat_messages(q, DEMOS["gsm8k"])
    assert resp.model_extra["ttc"]["prompt"] == {"template": "trained", "style": "chat", "demos_task": "gsm8k",
                                                 "demos": 1}  # fmt: skip
    assert headers["x-ttc-prompt"] == "trained"
    # a base model gets the plain few-shot text on /v1/completions, with its stop strings
    resp, _ = s.chat(q, extra_body={"ttc": {"task": "gsm8k", "arm": "tiny-360m/n1/L32/greedy"}})
    body = s.seen[-1]
    assert body["prompt"] == plain_prompt(q, DEMOS["gsm8k"]) and body["stop"] == list(PLAIN_STOP)
    assert "messages" not in body and resp.object == "chat.completion"
    assert resp.model_extra["ttc"]["prompt"]["style"] == "plain"
    # a task the bundle has no demos for: the model's format, no demos
    s.chat(q, extra_body={"ttc": {"task": "unknown-task", "arm": "tiny-135m/n1/L32/greedy"}})
    assert s.seen[-1]["messages"] == chat_messages(q, [])


def test_the_client_template_forwards_the_messages_as_sent(stack, priced_policy):
    s = stack(priced_policy, prompt_template="client")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7 + 5?"}]
    resp, headers = s.chat(None, messages=msgs, extra_body={"ttc": {"task": "gsm8k"}})
    assert s.seen[-1]["messages"] == msgs and headers["x-ttc-prompt"] == "client"
    assert resp.model_extra["ttc"]["prompt"] == {"template": "client"}


def test_serving_choices_a_bundle_cannot_honour_are_refused_at_startup(plain_policy, priced_policy):
    ups = parse_upstreams([f"{m}=http://127.0.0.1:9/v1" for m in MODELS])
    with pytest.raises(UsageError, match="prompts.json"):
        create_app(plain_policy, ups, prompt_template="trained")
    with pytest.raises(UsageError, match="frontier"):
        create_app(plain_policy, ups, max_accuracy_loss=0.01)
    with pytest.raises(UsageError, match="one of --lam, --budget-j or --max-accuracy-loss"):
        create_app(priced_policy, ups, lam=0.1, max_accuracy_loss=0.01)
    with pytest.raises(UsageError, match="--prompt-template"):
        create_app(priced_policy, ups, prompt_template="mine")
    cheapest = priced_policy.frontier.cheapest_mean_predicted_j
    with pytest.raises(UsageError, match="cheapest arms"):
        create_app(priced_policy, ups, budget_j=cheapest * 0.9)
    app = create_app(priced_policy, ups, max_accuracy_loss=0.05)
    assert app.state.ttc.fixed_lam == priced_policy.frontier.lam_for_loss(0.05)
    assert create_app(plain_policy, ups).state.ttc.prompt_template == "client"  # no prompts.json: as sent


# ---------------------------------------------------------------- the online budget


@pytest.mark.parametrize("start", ["frontier", "exported price"])
@pytest.mark.parametrize("where", [0.25, 0.6])
def test_budget_mode_gets_within_ten_percent_of_its_target_in_100_requests(stack, priced_policy, plain_policy,
                                                                          start, where):  # fmt: skip
    """Through the proxy on the fake engine: the mean predicted joules of requests 51-100 within 10%.

    "frontier": the controller starts at the price the bundle's frontier gives the target;
    "exported price": a bundle without a frontier, so it starts at the bundle's own price.
    """
    f = priced_policy.frontier
    target = f.cheapest_mean_predicted_j + where * (f.points[0].mean_predicted_j - f.cheapest_mean_predicted_j)
    s = stack(priced_policy if start == "frontier" else plain_policy, budget_j=target)
    lam0 = s.proxy.server.config.app.state.ttc.controller.lam
    if start == "exported price":
        assert lam0 == plain_policy.rule.lam
    questions, tasks, _ = synthetic_questions(100, seed=11)  # not the frontier's training questions
    spent = []
    for q, t in zip(questions, tasks, strict=True):
        resp, _ = s.chat(q, extra_body={"ttc": {"task": t}})
        spent.append(resp.model_extra["ttc"]["predicted_j"])
    assert np.mean(spent[50:]) == pytest.approx(target, rel=0.10)


def test_the_budget_controller_refuses_a_target_below_the_cheapest_arms():
    with pytest.raises(UsageError, match="cheapest arms"):
        BudgetController(2.0, min_mean_j=3.0)
    assert BudgetController(3.0, min_mean_j=3.0).target_j == 3.0


# ---------------------------------------------------------------- look, then decide


def _logprob_engine(mean_logprob: float) -> FastAPI:
    """A fake chat engine whose every sample's tokens have log-probability `mean_logprob`."""
    app = FastAPI()
    app.state.seen = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.seen.append(body)
        n = int(body.get("n") or 1)
        content = [{"token": "x", "logprob": mean_logprob, "top_logprobs": []}] * 12
        choice = {"message": {"role": "assistant", "content": "The answer is 37."}, "finish_reason": "stop"}
        choices = [{"index": i, **choice, "logprobs": {"content": content}} for i in range(n)]
        return {"id": "lp", "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 12 * n}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        app.state.seen.append(body)
        n = int(body.get("n") or 1)
        lp = {"tokens": ["x"] * 12, "token_logprobs": [mean_logprob] * 12, "top_logprobs": [{"x": mean_logprob}] * 12}
        choices = [{"index": i, "text": "The answer is 37.", "logprobs": lp, "finish_reason": "stop"} for i in range(n)]
        return {"id": "lp", "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 12 * n}}

    return app


def test_look_stops_on_a_sure_first_sample_and_votes_more_after_an_unsure_one(stack, look_policy):
    q = "Start with 4, then plus 9, then times 3. What is the result?"
    sure = stack(look_policy, fake=_logprob_engine(-0.05), lam=0.01)
    resp, headers = sure.chat(q, extra_body={"ttc": {"task": "gsm8k"}})
    look = resp.model_extra["ttc"]["look"]
    assert look["first_arm"] == FIRST_ARM and look["action"] == "stop" and headers["x-ttc-look"] == "stop"
    assert len(sure.seen) == 1 and sure.seen[0]["logprobs"] is True and sure.seen[0]["n"] == 1
    assert look["signals"]["first_mean_logprob"] == pytest.approx(-0.05) and look["engine_logprobs"]
    assert resp.model_extra["ttc"]["samples"] == 1 and resp.model_extra["ttc"]["arm"] == FIRST_ARM

    unsure = stack(look_policy, fake=_logprob_engine(-2.5), lam=0.01)
    resp, headers = unsure.chat(q, extra_body={"ttc": {"task": "gsm8k"}})
    ttc = resp.model_extra["ttc"]
    assert ttc["look"]["action"] in ("continue", "switch") and headers["x-ttc-look"] == ttc["look"]["action"]
    assert ttc["arm"] == ttc["look"]["decided_arm"] != FIRST_ARM
    assert ttc["samples"] == ttc["n"] and len(unsure.seen) >= 2  # the first sample voted along, or drawn anew
    # the reply's predicted joules are the first sample's plus what the decision adds
    assert ttc["predicted_j"] == pytest.approx(ttc["look"]["first_predicted_j"] + ttc["look"]["marginal_j"])
    text = httpx.get(f"{unsure.proxy.url}/metrics").text
    assert f'ttc_look_actions_total{{action="{ttc["look"]["action"]}"}} 1.0' in text


def test_each_task_looks_first_at_its_own_first_arm(stack, look_policy, tmp_path, monkeypatch):
    """A rule with a per-task first look (issue 18): the task's first request goes to that arm, any other
    task's to the global first arm; both decide from there, on trees the proxy specialised as it started."""
    from policy import trees as tree_module

    own = next(a.arm_id for a in look_policy.arms if a.n == 1 and a.arm_id != FIRST_ARM and a.model == "tiny-360m")
    trees = _stage_two_trees(look_policy)
    s2 = stage_two_json(FIRST_ARM, 0.0, trees, None, FIRST_SAMPLE_NAMES, {"chain_sum": own}, [(own, trees, None)])
    policy = load_bundle(write_policy(look_policy.with_files({STAGE2_FILE: s2}), tmp_path / "b"))
    assert policy.first_arm_for("chain_sum") == own and policy.first_arm_for("gsm8k") == FIRST_ARM
    s = stack(policy, fake=_logprob_engine(-0.05), lam=0.01)
    monkeypatch.setattr(tree_module, "specialise", lambda *a: pytest.fail("a client's decision specialised trees"))
    q = "Start with 4, then plus 9, then times 3. What is the result?"
    resp, _ = s.chat(q, extra_body={"ttc": {"task": "chain_sum"}})
    look = resp.model_extra["ttc"]["look"]
    assert look["first_arm"] == own and look["action"] == "stop" and resp.model_extra["ttc"]["arm"] == own
    assert s.seen[0]["model"] == "tiny-360m" and s.seen[0]["max_tokens"] == int(own.split("/L")[1].split("/")[0])
    resp, _ = s.chat(q, extra_body={"ttc": {"task": "gsm8k"}})
    assert resp.model_extra["ttc"]["look"]["first_arm"] == FIRST_ARM and s.seen[1]["model"] == "tiny-135m"


def test_no_look_serves_one_stage_and_a_forced_arm_skips_the_look(stack, look_policy):
    s = stack(look_policy, fake=_logprob_engine(-2.5), look=False)
    resp, headers = s.chat("What is 7 + 5?")
    assert resp.model_extra["ttc"]["look"] is None and "x-ttc-look" not in headers
    s = stack(look_policy, fake=_logprob_engine(-2.5))
    resp, _ = s.chat("What is 7 + 5?", extra_body={"ttc": {"arm": "tiny-360m/n4/L128/t0.7"}})
    assert resp.model_extra["ttc"]["look"] is None and resp.model_extra["ttc"]["rule"] == "forced"
    assert resp.model_extra["ttc"]["samples"] == 4


def test_the_serve_command_refuses_a_price_the_bundle_cannot_give_in_one_line(plain_policy, priced_policy, tmp_path):
    from typer.testing import CliRunner

    from ttc.cli import app

    plain = write_policy(plain_policy, tmp_path / "plain")
    ups = [a for m in MODELS for a in ("--upstream", f"{m}=http://127.0.0.1:9/v1")]
    r = CliRunner().invoke(app, ["serve", "--bundle", str(plain), *ups, "--max-accuracy-loss", "0.01"])
    assert r.exit_code == 2 and "frontier.json" in r.output and len(r.output.strip().splitlines()) == 1
    priced = write_policy(priced_policy, tmp_path / "priced")
    r = CliRunner().invoke(app, ["serve", "--bundle", str(priced), *ups, "--budget-j", "0.001"])
    assert r.exit_code == 2 and "cheapest arms" in r.output
    r = CliRunner().invoke(app, ["serve", "--bundle", str(priced), *ups, "--prompt-template", "nope"])
    assert r.exit_code == 2 and "--prompt-template" in r.output


def test_export_prints_the_default_price_and_what_it_buys(priced_policy, tmp_path):
    from typer.testing import CliRunner

    from ttc.cli import app

    src = write_policy(priced_policy, tmp_path / "src")
    r = CliRunner().invoke(app, ["export", "--from", str(src), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert priced_policy.frontier.describe() in r.output and "most accurate arm" in r.output
    assert load_bundle(tmp_path / "out").frontier == priced_policy.frontier  # carried through export


def test_a_rule_given_at_training_is_kept_and_its_frontier_is_labelled_in_sample(reference_samples, tmp_path):
    from policy.allocate import DecisionRule
    from train.fit import TrainConfig, fit_policy

    queries = sorted(reference_samples["query_id"].unique())[:48]
    cfg = TrainConfig(n_trials=0, num_threads=1)
    out = fit_policy(reference_samples, queries, cfg, tmp_path / "b", rule=DecisionRule(lam=0.5))
    policy = load_bundle(out)
    assert policy.rule.lam == 0.5 and policy.frontier is not None and policy.prompts is not None
    assert "bundle predictions" in policy.frontier.queries_from  # not cross-fitted: nothing is priced by it
