"""A fake OpenAI-compatible engine that answers from a collection's stored samples (a replay engine).

For each request it finds the question (the last user message, or the last
"Question: ... Answer:" block of a plain prompt) among the stored samples of
the requested model, and returns the next stored samples at that temperature
(temperature 0: the greedy sample), cut at the largest graded cap not above
`max_tokens`. The reply text is the sample's own when that cap covers it;
when the cap cut it, the store holds no text at the cut, so the reply is
"The answer is X." with X the grader's stored answer at that cap (or "I do
not know." when it had none): the proxy's extraction then recovers the graded
answer exactly, while a cut share of the text's characters would not (the
answer's last digits fall off). `answers_only` makes every text so.
`finish_reason`, `usage.completion_tokens` and per-token `logprobs`
(chosen-token and top-1, token strings empty) are the sample's own up to
that cap. `app.state.reset()` starts every question's samples from the first
again (so two passes over the same questions see the same samples). It does not
generate anything and measures nothing: it lets the proxy's decisions, votes
and look-then-decide run on real recorded outcomes. `correct_answers` gives,
per question, the answers the grader marked correct, to score voted replies.

Test and benchmark infrastructure only: never imported by the package.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.openai_upstream import openai_routes


def _question(body: dict[str, Any]) -> str | None:
    if isinstance(body.get("messages"), list):
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1].get("content")) if users else None
    prompt = body.get("prompt")
    if isinstance(prompt, str):  # plain few-shot text: the last block's question
        last = prompt.rsplit("Question: ", 1)[-1]
        return last[: -len("\nAnswer:")] if last.endswith("\nAnswer:") else prompt
    return None


def correct_answers(samples: pd.DataFrame) -> dict[str, set[str]]:
    """Per question, every graded answer (any model, any cap) that the grader marked correct."""
    out: dict[str, set[str]] = defaultdict(set)
    for q, answers, oks in zip(samples["question"], samples["level_answer"], samples["level_correct"], strict=True):
        for a, ok in zip(answers, oks, strict=True):
            if ok and a is not None:
                out[q].add(str(a))
    return dict(out)


def make_replay_upstream(samples: pd.DataFrame, delay_s: float = 0.0, answers_only: bool = False) -> FastAPI:
    """The replay engine over `samples` (store rows with levels, level answers and token log-probs)."""
    keep = ["question", "model", "temperature", "sample_index", "finished", "output_tokens", "levels", "text",
            "level_answer", "level_output_tokens", "token_logprob", "token_top1_logprob", "prompt_tokens"]  # fmt: skip
    rows = samples[keep].sort_values(["model", "question", "temperature", "sample_index"])
    index: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows.to_dict("records"):
        index[(r["model"], r["question"], float(r["temperature"]))].append(r)
    cycles = {k: itertools.cycle(v) for k, v in index.items()}
    app = FastAPI()
    app.state.seen = []

    def reset() -> None:
        cycles.update({k: itertools.cycle(v) for k, v in index.items()})

    app.state.reset = reset

    def sample(model: str, question: str, temperature: float, cap: int, kind: str, i: int) -> dict[str, Any]:
        key = (model, question, 0.0 if temperature == 0 else temperature)
        r = next(cycles[key])
        levels = list(r["levels"])
        k = max([j for j, L in enumerate(levels) if L <= cap] or [0])
        tokens = int(r["level_output_tokens"][k])
        answer, out_tokens, full = r["level_answer"][k], int(r["output_tokens"]), str(r["text"] or "")
        if answers_only or tokens < out_tokens:
            text = f"The answer is {answer}." if answer is not None else "I do not know."
        else:
            text = full
        finished = bool(r["finished"]) and tokens >= out_tokens
        lps = [float(x) for x in list(r["token_logprob"])[:tokens]]
        tops = [float(x) for x in list(r["token_top1_logprob"])[:tokens]]
        if kind == "chat":
            content = [
                {"token": "", "logprob": lp, "top_logprobs": [{"token": "", "logprob": t}]}
                for lp, t in zip(lps, tops, strict=True)
            ]
            item: dict[str, Any] = {"message": {"role": "assistant", "content": text}, "logprobs": {"content": content}}
        else:
            lp = {"tokens": [""] * len(lps), "token_logprobs": lps, "top_logprobs": [{"": t} for t in tops]}
            item = {"text": text, "logprobs": lp}
        return {"index": i, **item, "finish_reason": "stop" if finished else "length", "_tokens": tokens,
                "_prompt": int(r["prompt_tokens"])}  # fmt: skip

    async def answer(kind: str, request: Request) -> Response:
        body = await request.json()
        app.state.seen.append(body)
        if delay_s:
            await asyncio.sleep(delay_s)
        model, question = body.get("model"), _question(body)
        t = float(body.get("temperature", 1.0))
        if (model, question, 0.0 if t == 0 else t) not in cycles:
            msg = f"no stored sample of model {model!r} at temperature {t} for question {str(question)[:80]!r}"
            return JSONResponse({"error": {"message": msg}}, status_code=400)
        n = int(body.get("n") or 1)
        choices = [sample(model, question, t, int(body.get("max_tokens") or 64), kind, i) for i in range(n)]
        completion = sum(c.pop("_tokens") for c in choices)
        prompt = max(c.pop("_prompt") for c in choices)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return JSONResponse({"id": "replay", "object": "x", "model": model, "choices": choices, "usage": usage})

    return openai_routes(app, answer, sorted(set(rows["model"])))
