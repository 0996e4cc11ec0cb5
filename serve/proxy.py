"""`ttc serve`: the policy as a drop-in OpenAI-compatible proxy in front of real engines.

Routes: POST /v1/chat/completions and /v1/completions, GET /v1/models,
/health and /metrics (Prometheus). Per request in policy mode:

1. the question (the last user message, or the prompt) and the `ttc`
   options (serve/decide.py) are read; bodies over `max_body_bytes` get 413,
   malformed ones 400 in the OpenAI error format;
2. the bundle's predictions and the price rule pick an arm (model, n,
   max_tokens, temperature), λ being the request's own, the online budget
   controller's (serve/budget.py) or the bundle's;
3. the arm's upstream is asked for n samples with those settings
   (serve/upstream.py); any failure answers 502/504 and no vote is made;
4. the samples' answers are extracted with the grader rules and
   majority-voted; the response holds one choice, the text of a sample that
   gave the winning answer, plus a `ttc` object and `x-ttc-*` headers with the
   decision (arm, p, predicted joules, λ, votes, energy source).

Passthrough mode (`ttc: {"mode": "passthrough"}`) forwards the request
unchanged to the upstream of its `model` (streaming included).
The proxy never measures energy: every joule it reports is the policy's
prediction, labelled with the bundle's energy source.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from policy import jsonsafe
from policy.bundle import Policy
from policy.errors import UsageError
from serve.budget import BudgetController
from serve.decide import PASSTHROUGH, Choice, Decider, TTCOptions, Vote, answer_kind, parse_options, vote_texts
from serve.metrics import ProxyMetrics
from serve.upstream import CHAT, COMPLETIONS, Sampled, Upstream, UpstreamError, Upstreams

MAX_BODY_BYTES = 1 << 20
VIRTUAL_MODEL = "ttc"
# dropped from a policy-mode request before it goes upstream: the arm sets them, or they are ours
_POLICY_OWNED = ("ttc", "n", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options")


class RequestTooLarge(Exception):
    pass


@dataclass
class ProxyState:
    policy: Policy
    decider: Decider
    upstreams: Upstreams
    metrics: ProxyMetrics
    controller: BudgetController | None
    fixed_lam: float
    max_body_bytes: int

    def price(self, options: TTCOptions) -> float:
        if options.lam is not None:
            return options.lam
        return self.controller.price() if self.controller else self.fixed_lam


def create_app(
    policy: Policy,
    upstreams: dict[str, Upstream],
    lam: float | None = None,
    budget_j: float | None = None,
    budget_window: int = 64,
    timeout_s: float = 120.0,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The proxy app. Price: `lam` if given; else online budget mode at `budget_j` (or the
    bundle's own budget rule); else the bundle's price."""
    if lam is not None and budget_j is not None:
        raise UsageError("give --lam or --budget-j, not both")
    stray = sorted(set(upstreams) - set(policy.models))
    if stray:
        raise UsageError(f"--upstream names models {stray} that the bundle does not use; its models: {policy.models}")
    rule = policy.rule
    target = budget_j if budget_j is not None else (rule.budget_j if lam is None and rule.mode == "budget" else None)
    controller = BudgetController(target, budget_window, lam0=rule.lam) if target is not None else None
    state = ProxyState(
        policy,
        Decider(policy, list(upstreams)),
        Upstreams(upstreams, timeout_s),
        ProxyMetrics(),
        controller,
        float(lam if lam is not None else rule.lam),
        max_body_bytes,
    )
    if controller:
        state.metrics.budget(controller.state())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await state.upstreams.start()
        # warm the first decision (lazy imports, first tree walk) so no client request pays for it
        state.decider.choose("What is 7 + 5?", None, state.fixed_lam, None, None)
        answer_kind(TTCOptions(task="gsm8k"))
        yield
        await state.upstreams.close()

    app = FastAPI(title="ttc-allocator proxy", lifespan=lifespan)
    app.state.ttc = state

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(state, CHAT, request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, COMPLETIONS, request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": VIRTUAL_MODEL, "object": "model", "owned_by": "ttc-allocator"}]
        data += [{"id": m, "object": "model", "owned_by": "upstream"} for m in upstreams]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "policy": policy.describe(),
            "upstreams": {m: u.base_url for m, u in upstreams.items()},
            "budget": dataclasses.asdict(controller.state()) if controller else None,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    return app


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """An error body in the OpenAI format, so clients raise their usual exceptions."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge
    buf = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a chunked body gets no free pass
        buf += chunk
        if len(buf) > limit:
            raise RequestTooLarge
    body = jsonsafe.loads(buf, "the request body")
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


async def _complete(state: ProxyState, kind: str, request: Request) -> Response:
    t0 = time.perf_counter()
    endpoint, mode = kind, "policy"
    try:
        body = await _read_json(request, state.max_body_bytes)
        options = parse_options(body.get("ttc"), request.headers.get("x-ttc"))
        mode = options.mode
        question = _question(kind, body)
        n_max, tokens_max = _client_bounds(body)
        if options.mode == PASSTHROUGH:
            response = await _passthrough(state, kind, body)
        else:
            response = await _policy_answer(state, kind, body, options, question, n_max, tokens_max, t0)
    except RequestTooLarge:
        state.metrics.errors.labels("too_large").inc()
        state.metrics.requests.labels(endpoint, mode, "413").inc()
        limit = state.max_body_bytes
        return _error(413, f"request body over {limit} bytes; send a shorter one", "invalid_request_error", "too_large")
    except UsageError as exc:
        state.metrics.errors.labels("bad_request").inc()
        state.metrics.requests.labels(endpoint, mode, "400").inc()
        return _error(400, str(exc), "invalid_request_error")
    except UpstreamError as exc:
        state.metrics.errors.labels(exc.kind).inc()
        state.metrics.requests.labels(endpoint, mode, str(exc.status)).inc()
        kind_name = "upstream_timeout" if exc.status == 504 else "upstream_error"
        return _error(exc.status, f"{exc.message} (no answer was voted)", kind_name, exc.kind)
    state.metrics.requests.labels(endpoint, mode, str(response.status_code)).inc()
    return response


def _question(kind: str, body: dict[str, Any]) -> str:
    """The text the policy's features are computed from: the last user message, or the prompt."""
    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise UsageError('"messages" must be a non-empty list of {"role", "content"} objects')
        users = [m for m in messages if m.get("role") == "user"]
        content = (users or messages)[-1].get("content")
        if isinstance(content, list):  # content parts: the text ones, in order
            content = " ".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise UsageError("the last user message has no text content")
        return content
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise UsageError('"prompt" must be one string (the proxy decides per prompt; send several requests)')
    return prompt


def _client_bounds(body: dict[str, Any]) -> tuple[int | None, int | None]:
    """The client's n and max_tokens: upper bounds on what the arm may use."""
    out = []
    for key in ("n", "max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f'"{key}" must be an integer >= 1, got {v!r}')
        out.append(v)
    n, max_tokens, max_completion = out
    caps = [v for v in (max_tokens, max_completion) if v is not None]
    return n, min(caps) if caps else None


async def _policy_answer(
    state: ProxyState,
    kind: str,
    body: dict[str, Any],
    options: TTCOptions,
    question: str,
    n_max: int | None,
    tokens_max: int | None,
    t0: float,
) -> Response:
    if body.get("stream"):
        raise UsageError('stream=true cannot be voted on; send ttc: {"mode": "passthrough"} to stream')
    extraction = answer_kind(options)
    # a request naming one served model keeps to it; any other name ("ttc", "gpt-4o") lets the policy pick
    model = body.get("model") if body.get("model") in state.upstreams.by_model else None
    choice = state.decider.choose(question, options.task, state.price(options), n_max, tokens_max, model)
    forward = {k: v for k, v in body.items() if k not in _POLICY_OWNED}
    forward.update(model=choice.arm.model, max_tokens=choice.arm.max_new_tokens, temperature=choice.arm.temperature)
    sampled = await state.upstreams.sample(choice.arm.model, kind, forward, choice.arm.n)
    state.metrics.upstream_latency.labels(choice.arm.model).observe(sampled.upstream_s)
    v = vote_texts(sampled.texts, extraction)
    _count_decision(state, choice)
    proxy_ms = (time.perf_counter() - t0 - sampled.upstream_s) * 1e3
    ttc = _ttc_object(state, choice, v, sampled, extraction)
    text, finish = sampled.texts[v.winner_index], sampled.finish_reasons[v.winner_index]
    if kind == CHAT:
        obj, item = "chat.completion", {"message": {"role": "assistant", "content": text}}
    else:
        obj, item = "text_completion", {"text": text}
    payload = {
        "id": f"ttc-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": choice.arm.model,
        "choices": [{"index": 0, **item, "finish_reason": finish, "logprobs": None}],
        "usage": sampled.usage,
        "ttc": ttc,
    }
    return JSONResponse(payload, headers=_headers(ttc, sampled, proxy_ms))


def _count_decision(state: ProxyState, choice: Choice) -> None:
    m = state.metrics
    m.decisions.labels(choice.decided_arm_id).inc()
    m.predicted_j.labels(choice.decided_arm_id).inc(choice.predicted_j)
    m.predicted_j_hist.observe(choice.predicted_j)
    if state.controller:
        state.controller.observe_slopes(choice.slopes)
        state.controller.record(choice.predicted_j)
        m.budget(state.controller.state())


def _ttc_object(state: ProxyState, choice: Choice, v: Vote, sampled: Sampled, extraction: str) -> dict[str, Any]:
    a = choice.arm
    return {
        "mode": "policy",
        "arm": choice.decided_arm_id,
        "model": a.model,
        "n": a.n,
        "max_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "clipped": choice.clipped,
        "p": choice.p_success,
        "predicted_j": choice.predicted_j,
        "lam": choice.lam,
        "rule": choice.rule,
        "budget_mode": state.controller is not None,
        "answer": v.answer,
        "votes": v.counts,
        "no_answer": v.no_answer,
        "samples": len(sampled.texts),
        "upstream_requests": sampled.requests,
        "extraction": extraction,
        "energy_source": state.policy.energy_source,
        "energy_meter": state.policy.energy_meter,
    }


def _headers(ttc: dict[str, Any], sampled: Sampled, proxy_ms: float) -> dict[str, str]:
    return {
        "x-ttc-mode": "policy",
        "x-ttc-arm": ttc["arm"],
        "x-ttc-p": f"{ttc['p']:.4f}",
        "x-ttc-predicted-j": f"{ttc['predicted_j']:.4g}",
        "x-ttc-lambda": f"{ttc['lam']:.6g}",
        "x-ttc-votes": json.dumps(ttc["votes"], separators=(",", ":")),  # ASCII-escaped: headers are latin-1
        "x-ttc-energy-source": ttc["energy_source"],
        "x-ttc-upstream-ms": f"{sampled.upstream_s * 1e3:.3f}",
        "x-ttc-proxy-ms": f"{proxy_ms:.3f}",
    }


async def _passthrough(state: ProxyState, kind: str, body: dict[str, Any]) -> Response:
    model = body.get("model")
    ups = state.upstreams.by_model
    if model not in ups:
        raise UsageError(f'passthrough needs "model" to name an upstream, one of: {", ".join(ups)}; got {model!r}')
    forward = {k: v for k, v in body.items() if k != "ttc"}
    if body.get("stream"):
        return await _stream(state, model, kind, forward)
    t0 = time.perf_counter()
    data = await state.upstreams.post(model, kind, forward)
    upstream_s = time.perf_counter() - t0
    state.metrics.upstream_latency.labels(model).observe(upstream_s)
    data["ttc"] = {"mode": PASSTHROUGH, "model": model}
    headers = {"x-ttc-mode": PASSTHROUGH, "x-ttc-upstream-ms": f"{upstream_s * 1e3:.3f}"}
    return JSONResponse(data, headers=headers)


async def _stream(state: ProxyState, model: str, kind: str, forward: dict[str, Any]) -> Response:
    import httpx

    up = state.upstreams.by_model[model]
    client = state.upstreams.client
    req = client.build_request("POST", f"{up.base_url}/{kind}", json=forward)
    try:
        resp = await client.send(req, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamError(504, f"upstream {model} did not answer in time", "timeout") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(502, f"upstream {model} at {up.base_url} is unreachable: {exc!r}", "unreachable") from exc
    if resp.status_code >= 400:
        detail = (await resp.aread())[:300].decode("utf-8", "replace")
        await resp.aclose()
        raise UpstreamError(502, f"upstream {model} answered HTTP {resp.status_code}: {detail}", "rejected")

    async def relay():
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()

    media = resp.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), media_type=media, headers={"x-ttc-mode": PASSTHROUGH})


def serve(
    bundle: str,
    upstream_specs: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "numpy",
    **app_kw: Any,
) -> None:
    """Load the bundle, check the upstreams, and serve until interrupted (the `ttc serve` command)."""
    import uvicorn

    from policy.bundle import load_bundle
    from serve.upstream import parse_upstreams

    app = create_app(load_bundle(bundle, backend=backend), parse_upstreams(upstream_specs), **app_kw)
    print(f"ttc serve: {app.state.ttc.policy.describe()}; listening on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
