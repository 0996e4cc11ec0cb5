"""What the proxy sends upstream for one policy-mode request: the trained prompt, and look-then-decide.

- `prompt_body`: with `--prompt-template trained` (the default when the bundle
  has prompts.json) the client's messages or prompt are replaced by the prompt
  the policy was trained on (policy/prompts.py): the task's demos as chat
  turns for a chat model, or plain "Question:/Answer:" text with its stop
  strings on /v1/completions for a base model, the question being the
  client's last user message. Only the question, the task hint and the
  sampling parameters the arm does not set (seed, top_p, ...) survive; the
  client's system text and earlier turns do not, because the predictions do
  not hold for them. `client` forwards the client's messages unchanged.
- `plan_and_sample`: one stage (the policy's arm, n samples) or, when the
  bundle has a stage-2 rule, look-then-decide: one sample of the first arm
  with token log-probabilities, its signals (policy.features), then
  `Policy.decide_after_look` at the request's price: stop (the first sample is
  the answer), continue (the same model: the remaining samples, reusing the
  first when it finished or the cap is unchanged) or switch (the decided
  arm's samples; the first sample is spent, not voted).

Every reply says which prompt and which stage-2 action it used (serve/proxy.py).
Engines report no token entropy, so that signal is NaN here (the stage-2 trees
treat it as missing), and no joules: all joules are the policy's predictions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from collect.engine import choice_tokens
from policy.features import FIRST_SAMPLE_NAMES, first_sample_signals
from policy.prompts import PLAIN, Prompts
from serve.decide import EXTRACTORS, Choice
from serve.upstream import CHAT, COMPLETIONS, Sampled

TRAINED, CLIENT = "trained", "client"


def prompt_body(
    prompts: Prompts | None,
    template: str,
    kind: str,
    forward: dict[str, Any],
    model: str,
    question: str,
    task: str | None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(upstream endpoint, body, what was used) for `model`: the trained prompt, or the client's as sent."""
    if template != TRAINED or prompts is None:
        return kind, dict(forward), {"template": CLIENT}
    style, fields = prompts.request(model, question, task)
    body = {k: v for k, v in forward.items() if k not in ("messages", "prompt")}
    lp, top = body.pop("logprobs", None), body.pop("top_logprobs", None)
    if style == PLAIN:
        body.pop("stop", None)  # the plain format's own stop strings end a completion at the next demo
        if lp:  # chat's logprobs=true/top_logprobs=k is /v1/completions' logprobs=k
            body["logprobs"] = max(int(top or 0), 1) if isinstance(lp, bool) else lp
        endpoint = COMPLETIONS
    else:
        if lp:
            body["logprobs"] = True
            body["top_logprobs"] = top if top is not None else (lp if not isinstance(lp, bool) else 0)
        endpoint = CHAT
    body.update(fields)
    demos = len(prompts.demos.get(task or "", []))
    info = {"template": TRAINED, "style": style, "demos_task": task if demos else None, "demos": demos}
    return endpoint, body, info


def with_logprobs(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body asking for each token's log-probability (the look's signals need them)."""
    if endpoint == COMPLETIONS:
        return {**body, "logprobs": max(int(body.get("logprobs") or 0), 1)}
    return {**body, "logprobs": True, "top_logprobs": max(int(body.get("top_logprobs") or 0), 1)}


def merge(a: Sampled, b: Sampled, vote_a: bool = True) -> Sampled:
    """One `Sampled` of two upstream calls: their times, requests and usage added; `a`'s samples kept if `vote_a`."""
    out = {}
    for f in dataclasses.fields(Sampled):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("texts", "finish_reasons", "choices"):
            out[f.name] = (list(x) if vote_a else []) + list(y)
        elif isinstance(x, list):
            out[f.name] = list(x) + list(y)
        elif isinstance(x, dict):
            out[f.name] = {k: x.get(k, 0) + y.get(k, 0) for k in {*x, *y}}
        else:
            out[f.name] = x + y
    return Sampled(**out)


def first_signals(sampled: Sampled, extraction: str) -> tuple[list[float], bool]:
    """The first sample's `FIRST_SAMPLE_NAMES` signals, and whether the engine gave token log-probabilities."""
    choice = sampled.choices[0] if sampled.choices else {}
    toks = choice_tokens(choice)
    lps = toks[1] if toks else []
    answered = EXTRACTORS[extraction](sampled.texts[0])[0] is not None if sampled.texts else False
    tokens = len(lps) if toks else int(sampled.usage.get("completion_tokens", 0))
    row = first_sample_signals([lps], [[]], [answered], [tokens])[0]
    return [float(v) for v in row], toks is not None


@dataclass
class Planned:
    """What was run for one request: the final choice, the samples to vote, the prompt and look records."""

    choice: Choice
    sampled: Sampled
    prompt: dict[str, Any]
    look: dict[str, Any] | None = None


async def plan_and_sample(
    state: Any,
    kind: str,
    forward: dict[str, Any],
    task: str | None,
    question: str,
    lam: float,
    extraction: str,
    n_min: int | None,
    tokens_max: int | None,
    model: str | None,
    arm_id: str | None,
    headers: dict[str, str] | None,
) -> Planned:
    """Decide and sample one policy-mode request (`state` is serve.proxy.ProxyState)."""
    decider, ups, prompts = state.decider, state.upstreams, state.policy.prompts

    def body_for(c: Choice) -> tuple[str, dict[str, Any], dict[str, Any]]:
        endpoint, body, info = prompt_body(prompts, state.prompt_template, kind, forward, c.arm.model, question, task)
        body.update(model=c.arm.model, max_tokens=c.arm.max_new_tokens, temperature=c.arm.temperature)
        return endpoint, body, info

    first_id = decider.policy.first_arm_for(task)  # each task's own first look (issue 18)
    first_model = first_id.split("/", 1)[0] if decider.can_look(task) and first_id else None
    look = (
        state.look
        and first_model is not None
        and arm_id is None
        and (model is None or model == first_model)
        and (n_min or 1) == 1
        # stage 2 never saw an unknown or adapted task: with a task table (policy/tasks.py) those get its
        # k = 0 rule or their adapted table instead
        and (decider.policy.task_table is None or decider.policy.task_status(task) == "known")
    )
    if not look:
        choice = decider.choose(question, task, lam, n_min, tokens_max, model, arm_id)
        endpoint, body, info = body_for(choice)
        sampled = await ups.sample(choice.arm.model, endpoint, body, choice.arm.n, headers)
        return Planned(choice, sampled, info)

    first = decider.first_look(question, task, lam)
    endpoint, body, info = body_for(first)
    one = await ups.sample(first.arm.model, endpoint, with_logprobs(endpoint, body), 1, headers)
    signals, had_logprobs = first_signals(one, extraction)
    text = one.texts[0] if one.texts else None  # the answer checks of stage-2 rules that read them
    choice, d = decider.after_look(question, task, signals, lam, first, n_min, tokens_max, text)
    record = {
        "first_arm": first.decided_arm_id,
        "action": "stop" if choice.rule == "look:unserved" else d.action,
        "decided_arm": d.arm_id,
        "p_after_look": d.p_success,
        "marginal_j": d.marginal_j,
        "first_predicted_j": first.predicted_j,
        # NaN (engines send no entropy) is JSON null
        "signals": {k: (v if math.isfinite(v) else None) for k, v in zip(FIRST_SAMPLE_NAMES, signals, strict=True)},
        "engine_logprobs": had_logprobs,
        "first_sample_voted": True,
    }
    if choice.rule == "look:unserved":
        record["unserved_arm"] = d.arm_id
    if record["action"] == "stop":
        return Planned(choice, one, info, record)
    endpoint2, body2, _ = body_for(choice)
    same = choice.arm.model == first.arm.model and choice.arm.temperature == first.arm.temperature
    finished = one.finish_reasons[0] == "stop" or choice.arm.max_new_tokens == first.arm.max_new_tokens
    reuse = same and finished
    more = choice.arm.n - 1 if reuse else choice.arm.n
    rest = await ups.sample(choice.arm.model, endpoint2, body2, more, headers) if more > 0 else None
    record["first_sample_voted"] = reuse
    sampled = one if rest is None else merge(one, rest, vote_a=reuse)
    return Planned(choice, sampled, info, record)
