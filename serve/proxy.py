"""`ttc serve`: the policy as a drop-in OpenAI-compatible proxy in front of real engines.

Routes: POST /v1/chat/completions and /v1/completions, GET /v1/models,
/health (liveness), /health/ready (every upstream answers) and /metrics
(Prometheus). Per request in policy mode:

1. the question (the last user message, or the prompt) and the `ttc`
   options (serve/decide.py) are read; bodies over `max_body_bytes` get 413,
   malformed ones 400 in the OpenAI error format;
2. the bundle's predictions and the price rule pick an arm (model, n,
   max_tokens, temperature), λ being the request's own, the online budget
   controller's (serve/budget.py) or the bundle's;
3. the arm's upstream is asked for n samples with those settings
   (serve/upstream.py); any failure answers 502/504 and no vote is made;
4. the samples' answers are extracted with the grader rules and
   majority-voted; the response holds `n` choices (the client's `n`, default
   1): the top-n voted answers, one sample each, the winner first, then other
   samples by their answer's votes; the client's `n` is therefore a lower bound
   on the arm's samples. Each choice keeps its sample's `logprobs`. A `ttc`
   object and `x-ttc-*` headers carry the decision (arm, p, predicted joules,
   λ, votes, energy source, the latency cost of the n samples). `stream=true`
   gets the voted reply as one chunk per choice, then `data: [DONE]`.
   `tools`, `functions` and a `response_format` other than text cannot be
   voted and are refused (400, param named); passthrough serves them.

`id` is the proxy's own (`chatcmpl-ttc-…`: the reply is built from several
engine replies, whose ids are in `ttc.upstream_ids`); `model` is the served
model that answered (the client's name is in `ttc.requested_model`). The
client's X-Request-Id (or a new one) is echoed and sent to the engines;
`api_key` makes /v1/* answer 401 without `Authorization: Bearer <key>`.

Passthrough mode (`ttc: {"mode": "passthrough"}`) forwards the request
unchanged to the upstream of its `model` (streaming included; a stream the
engine breaks ends with an OpenAI error event and is counted as a 502).
The proxy never measures energy: every joule it reports is the policy's
prediction, labelled with the bundle's energy source.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from policy import jsonsafe
from policy.bundle import Policy
from policy.errors import UsageError
from serve.budget import BudgetController
from serve.decide import (
    PASSTHROUGH,
    Choice,
    Decider,
    TTCOptions,
    Vote,
    answer_kind,
    parse_options,
    resolve_price,
    resolve_template,
    vote_texts,
)
from serve.metrics import ProxyMetrics, task_label
from serve.options import check_app_options, check_listen
from serve.plan import plan_and_sample
from serve.upstream import CHAT, COMPLETIONS, Sampled, Upstream, UpstreamError, Upstreams

MAX_BODY_BYTES = 1 << 20
MAX_CHOICES = 128  # the largest n a client may ask for (the OpenAI API's own limit)
VIRTUAL_MODEL = "ttc"
# dropped from a policy-mode request before it goes upstream: the arm sets them, or they are ours
_POLICY_OWNED = ("ttc", "n", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options")


class RequestTooLarge(Exception):
    pass


class Unvotable(UsageError):
    """A request field the vote cannot honour (tools, JSON modes): 400 naming the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


_REQUEST_ID = b"x-request-id"


class _Edge:
    """Pure ASGI middleware at the edge: the client's API key (401 in the OpenAI format) and request ids.

    The client's X-Request-Id (up to 128 visible ASCII characters) or a new UUID is put on the
    request and echoed on the response. Engines get it when it is a UUID, else a new UUID (named
    in the `x-ttc-upstream-request-id` header): llama-cpp-python's server answers 400 to any
    other form.
    Only /v1/* needs the key: health and metrics stay open to probes and scrapers.
    """

    def __init__(self, app: Any, api_key: str | None, metrics: ProxyMetrics) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = [(k, v) for k, v in scope["headers"] if k != _REQUEST_ID]
        rid = next((v for k, v in scope["headers"] if k == _REQUEST_ID), b"")
        if not (0 < len(rid) <= 128 and all(33 <= c < 127 for c in rid)):
            rid = str(uuid.uuid4()).encode()
        scope = {**scope, "headers": [*headers, (_REQUEST_ID, rid)]}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (_REQUEST_ID, rid)]}
            await send(message)

        if self.key and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                self.metrics.errors.labels("unauthorized").inc()
                msg = "missing or wrong API key: send the proxy's key as 'Authorization: Bearer <key>'"
                return await _error(401, msg, "invalid_request_error", "invalid_api_key")(scope, receive, send_with_id)
        await self.app(scope, receive, send_with_id)


@dataclass
class ProxyState:
    policy: Policy
    decider: Decider
    upstreams: Upstreams
    metrics: ProxyMetrics
    controller: BudgetController | None
    fixed_lam: float
    max_body_bytes: int
    prompt_template: str = "client"  # serve/plan.py: "trained" rebuilds the bundle's prompt
    look: bool = False  # look-then-decide with the bundle's stage-2 rule

    def serving(self) -> str:
        """How requests are served, for the startup banner: price, prompt, look-then-decide."""
        f = self.policy.frontier
        if self.controller:
            c = self.controller
            how = f"online budget {c.target_j:g} predicted J/request, starting at lam={c.lam:.4g}"
        else:
            how = f"price lam={self.fixed_lam:.4g} acc/J"
        if f is not None:
            how += f" ({f.describe()})"
        look = "off"
        s2 = self.policy.stage_two
        if s2 is not None:
            firsts = s2.first_arm_ids
            served = [a for a in firsts if self.decider.can_look_arm(a)]
            if self.look and served:
                look = "from " + ", ".join(served)
                if len(served) < len(firsts):
                    look += f" (not served: {', '.join(a for a in firsts if a not in served)})"
            else:
                look = "off (its model is not served or --no-look)"
        return f"serving at {how}; prompt template {self.prompt_template}; look-then-decide {look}"

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
    api_key: str | None = None,
    max_accuracy_loss: float | None = None,
    prompt_template: str | None = None,
    look: bool = True,
) -> FastAPI:
    """The proxy app. Price: `lam` if given; else online budget mode at `budget_j` (or the
    bundle's own budget rule); else the price meeting `max_accuracy_loss` on the bundle's
    frontier; else the bundle's price. `api_key`: clients must send it. `prompt_template`:
    "trained" or "client" (default: trained when the bundle has prompts.json). `look`: use the
    bundle's stage-2 rule when it has one."""
    check_app_options(lam, budget_j, budget_window, timeout_s, max_body_bytes, max_accuracy_loss)
    rule, price = policy.rule, resolve_price(policy, lam, budget_j, max_accuracy_loss)
    stray = sorted(set(upstreams) - set(policy.models))
    if stray:
        raise UsageError(f"--upstream names models {stray} that the bundle does not use; its models: {policy.models}")
    template = resolve_template(policy, prompt_template)
    target = budget_j if budget_j is not None else (rule.budget_j if price is None and rule.mode == "budget" else None)
    controller = None
    if target is not None:
        f = policy.frontier
        lam0 = f.lam_for_budget(target) if f is not None else rule.lam
        controller = BudgetController(target, budget_window, lam0=lam0, min_mean_j=f and f.cheapest_mean_predicted_j)
    counters = ProxyMetrics()
    state = ProxyState(
        policy,
        Decider(policy, list(upstreams)),
        Upstreams(upstreams, timeout_s, observe=lambda m, outcome: counters.upstream_requests.labels(m, outcome).inc()),
        counters,
        controller,
        float(price if price is not None else rule.lam),
        max_body_bytes,
        template,
        bool(look),
    )
    if controller:
        state.metrics.budget(controller.state())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await state.upstreams.start()
        # warm the first decision (lazy imports, first tree walk) so no client request pays for it
        state.decider.choose("What is 7 + 5?", None, state.fixed_lam, None, None)
        if state.look:
            state.decider.policy.warm_stage_two()
        answer_kind(TTCOptions(task="gsm8k"))
        yield
        await state.upstreams.close()

    app = FastAPI(title="ttc-allocator proxy", lifespan=lifespan)
    app.state.ttc = state
    app.add_middleware(_Edge, api_key=api_key, metrics=counters)

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

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 when every upstream answers GET /models, else 503 naming the ones down."""
        checks = await state.upstreams.ready()
        for m, c in checks.items():
            state.metrics.upstream_ready.labels(m).set(1.0 if c["ready"] else 0.0)
        ok = all(c["ready"] for c in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "upstreams": checks}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    return app


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    """An error body in the OpenAI format, so clients raise their usual exceptions."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


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
    endpoint, mode, task = kind, "policy", "none"

    def finish(status: str) -> None:
        """Count the request once, when its outcome is known (a relayed stream: when it ends)."""
        state.metrics.requests.labels(endpoint, mode, status).inc()
        state.metrics.request_latency.labels(endpoint, mode, task).observe(time.perf_counter() - t0)

    try:
        body = await _read_json(request, state.max_body_bytes)
        options = parse_options(body.get("ttc"), request.headers.get("x-ttc"))
        mode, task = options.mode, task_label(options.task)
        question = _question(kind, body)
        n_max, tokens_max = _client_bounds(body)
        forward_headers = {"x-request-id": _engine_request_id(request.headers.get("x-request-id", ""))}
        if options.mode == PASSTHROUGH:
            response = await _passthrough(state, kind, body, forward_headers, finish)
        else:
            response = await _policy_answer(
                state, kind, body, options, question, n_max, tokens_max, t0, forward_headers
            )
    except RequestTooLarge:
        state.metrics.errors.labels("too_large").inc()
        finish("413")
        limit = state.max_body_bytes
        return _error(413, f"request body over {limit} bytes; send a shorter one", "invalid_request_error", "too_large")
    except UsageError as exc:
        state.metrics.errors.labels("bad_request").inc()
        finish("400")
        param = getattr(exc, "param", None)
        return _error(400, str(exc), "invalid_request_error", "unsupported_in_policy_mode" if param else None, param)
    except UpstreamError as exc:
        state.metrics.errors.labels(exc.kind).inc()
        finish(str(exc.status))
        kind_name = "upstream_timeout" if exc.status == 504 else "upstream_error"
        return _error(exc.status, f"{exc.message} (no answer was voted)", kind_name, exc.kind)
    if not isinstance(response, _RelayedStream):
        finish(str(response.status_code))
    response.headers["x-ttc-upstream-request-id"] = forward_headers["x-request-id"]
    return response


def _engine_request_id(rid: str) -> str:
    """The id the engines see: the client's when it is a UUID, else a new one."""
    try:
        return str(uuid.UUID(rid))
    except ValueError:
        return str(uuid.uuid4())


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
    """The client's n (choices wanted: a lower bound on the arm's samples) and max_tokens (an upper bound)."""
    out = []
    for key in ("n", "max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f'"{key}" must be an integer >= 1, got {v!r}')
        out.append(v)
    n, max_tokens, max_completion = out
    if n is not None and n > MAX_CHOICES:
        # n is a lower bound on the samples drawn: unbounded, one request could queue the engine for hours
        raise UsageError(f'"n" must be <= {MAX_CHOICES} (as in the OpenAI API), got {n}')
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
    forward_headers: dict[str, str] | None = None,
) -> Response:
    _refuse_unvotable(body)
    extraction = answer_kind(options)
    # a request naming one served model keeps to it; any other name ("ttc", "gpt-4o") lets the policy pick
    model = body.get("model") if body.get("model") in state.upstreams.by_model else None
    forward = {k: v for k, v in body.items() if k not in _POLICY_OWNED}
    # the trained prompt, and look-then-decide when the bundle has a stage-2 rule (serve/plan.py)
    planned = await plan_and_sample(
        state, kind, forward, options.task, question, state.price(options), extraction, n_max, tokens_max, model,
        options.arm, forward_headers,
    )  # fmt: skip
    choice, sampled = planned.choice, planned.sampled
    state.metrics.task_rule.labels(state.decider.policy.task_status(options.task)).inc()
    state.metrics.upstream_latency.labels(choice.arm.model).observe(sampled.upstream_s)
    v = vote_texts(sampled.texts, extraction)
    _count_decision(state, choice)
    _count_samples(state, choice.arm.model, options.task, sampled, v)
    proxy_ms = (time.perf_counter() - t0 - sampled.upstream_s) * 1e3
    ttc = _ttc_object(state, choice, v, sampled, extraction)
    ttc.update(prompt=planned.prompt, look=planned.look)
    headers = _headers(ttc, sampled, proxy_ms)
    headers["x-ttc-prompt"] = planned.prompt["template"]
    if planned.look is not None:
        headers["x-ttc-look"] = planned.look["action"]
        state.metrics.look_actions.labels(planned.look["action"]).inc()
    return _reply(kind, body, v, sampled, ttc, headers)


_UNVOTABLE = {
    "tools": "tool calls",
    "functions": "function calls",
    "tool_choice": "tool calls",
    "function_call": "function calls",
}


def _refuse_unvotable(body: dict[str, Any]) -> None:
    """Refuse what a majority vote over answers cannot honour: tool calls and structured (JSON) replies."""
    for key, what in _UNVOTABLE.items():
        if body.get(key) not in (None, [], "none"):
            raise Unvotable(
                f'"{key}": {what} cannot be majority-voted; send ttc: {{"mode": "passthrough"}} '
                "with a served model's name to use them",
                key,
            )
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type", "text") == "text"):
        raise Unvotable(
            '"response_format": a JSON reply cannot be majority-voted on its answer; send ttc: '
            '{"mode": "passthrough"} with a served model\'s name for JSON mode',
            "response_format",
        )


def _count_samples(state: ProxyState, model: str, task: str | None, sampled: Sampled, v: Vote) -> None:
    m, label = state.metrics, task_label(task)
    m.samples.labels(model, label).inc(len(sampled.texts))
    for key, kind in (("prompt_tokens", "prompt"), ("completion_tokens", "completion")):
        if sampled.usage.get(key):
            m.tokens.labels(model, kind).inc(sampled.usage[key])
    if sampled.texts:
        m.vote_agreement.labels(label).observe(v.counts.get(v.answer, 0) / len(sampled.texts) if v.answer else 0.0)
    if sampled.latency_ratio is not None:
        m.latency_ratio.labels(model).observe(sampled.latency_ratio)


def _reply(
    kind: str, body: dict[str, Any], v: Vote, sampled: Sampled, ttc: dict[str, Any], headers: dict[str, str]
) -> Response:
    """The voted reply: the client's n choices, best voted first; JSON, or one SSE chunk per choice."""
    ranked = v.ranked()[: body.get("n") or 1]
    choices = []
    for index, i in enumerate(ranked):
        text, finish, logprobs = sampled.texts[i], sampled.finish_reasons[i], sampled.choices[i].get("logprobs")
        item = {"message": {"role": "assistant", "content": text}} if kind == CHAT else {"text": text}
        choices.append({"index": index, **item, "finish_reason": finish, "logprobs": logprobs})
    ttc["choice_answers"] = [v.answers[i] if i < len(v.answers) else None for i in ranked]
    ttc["requested_model"] = body.get("model")
    payload = {
        "id": f"{'chatcmpl' if kind == CHAT else 'cmpl'}-ttc-{uuid.uuid4().hex}",
        "object": "chat.completion" if kind == CHAT else "text_completion",
        "created": int(time.time()),
        "model": ttc["model"],
        "choices": choices,
        "usage": sampled.usage,
        "ttc": ttc,
    }
    if not body.get("stream"):
        return JSONResponse(payload, headers=headers)
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    return StreamingResponse(
        _voted_events(kind, payload, include_usage), media_type="text/event-stream", headers=headers
    )


def _voted_events(kind: str, payload: dict[str, Any], include_usage: bool):
    """The voted reply as server-sent events: one chunk per choice (its whole text), usage if asked, [DONE]."""
    head = {k: payload[k] for k in ("id", "created", "model")}
    obj = "chat.completion.chunk" if kind == CHAT else "text_completion"
    for c in payload["choices"]:
        if kind == CHAT:
            delta = {"role": "assistant", "content": c["message"]["content"]}
            item = {"index": c["index"], "delta": delta, "logprobs": c["logprobs"], "finish_reason": c["finish_reason"]}
        else:
            item = c
        chunk = {**head, "object": obj, "choices": [item], "ttc": payload["ttc"]}
        if include_usage:
            chunk["usage"] = None
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        yield f"data: {json.dumps({**head, 'object': obj, 'choices': [], 'usage': payload['usage']})}\n\n"
    yield "data: [DONE]\n\n"


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
        "upstream_ids": sampled.reply_ids,
        "upstream_ms": round(sampled.upstream_s * 1e3, 3),
        "latency_ratio": None if sampled.latency_ratio is None else round(sampled.latency_ratio, 3),
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
        **({"x-ttc-latency-ratio": f"{sampled.latency_ratio:.3f}"} if sampled.latency_ratio is not None else {}),
    }


async def _passthrough(
    state: ProxyState, kind: str, body: dict[str, Any], headers: dict[str, str], finish: Callable[[str], None]
) -> Response:
    model = body.get("model")
    ups = state.upstreams.by_model
    if model not in ups:
        raise UsageError(f'passthrough needs "model" to name an upstream, one of: {", ".join(ups)}; got {model!r}')
    forward = {k: v for k, v in body.items() if k != "ttc"}
    if body.get("stream"):
        return await _stream(state, model, kind, forward, headers, finish)
    t0 = time.perf_counter()
    data = await state.upstreams.post(model, kind, forward, headers)
    upstream_s = time.perf_counter() - t0
    state.metrics.upstream_latency.labels(model).observe(upstream_s)
    state.metrics.samples.labels(model, "none").inc(len(data["choices"]))
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    for key, kind_name in (("prompt_tokens", "prompt"), ("completion_tokens", "completion")):
        if isinstance(usage.get(key), int) and usage[key] > 0:
            state.metrics.tokens.labels(model, kind_name).inc(usage[key])
    data["ttc"] = {"mode": PASSTHROUGH, "model": model}
    headers = {"x-ttc-mode": PASSTHROUGH, "x-ttc-upstream-ms": f"{upstream_s * 1e3:.3f}"}
    return JSONResponse(data, headers=headers)


class _RelayedStream(StreamingResponse):
    """An engine's stream relayed as it comes; it counts its own request when it ends."""


async def _stream(
    state: ProxyState,
    model: str,
    kind: str,
    forward: dict[str, Any],
    headers: dict[str, str],
    finish: Callable[[str], None],
) -> Response:
    import httpx

    up = state.upstreams.by_model[model]
    client = state.upstreams.client
    observe = state.upstreams.observe
    req = client.build_request("POST", f"{up.base_url}/{kind}", json=forward, headers=up.headers(headers))
    try:
        resp = await client.send(req, stream=True)
    except httpx.TimeoutException as exc:
        observe(model, "timeout")
        raise UpstreamError(504, f"upstream {model} did not answer in time", "timeout") from exc
    except httpx.HTTPError as exc:
        observe(model, "unreachable")
        raise UpstreamError(502, f"upstream {model} at {up.base_url} is unreachable: {exc!r}", "unreachable") from exc
    if resp.status_code >= 400:
        detail = (await resp.aread())[:300].decode("utf-8", "replace")
        await resp.aclose()
        observe(model, "rejected")
        raise UpstreamError(502, f"upstream {model} answered HTTP {resp.status_code}: {detail}", "rejected")
    media = resp.headers.get("content-type", "text/event-stream")
    sse = media.startswith("text/event-stream")

    async def relay():
        tail, broken = b"", None
        try:
            async for chunk in resp.aiter_bytes():
                tail = (tail + chunk)[-64:]
                yield chunk
            if sse and b"[DONE]" not in tail:
                broken = "the stream ended without [DONE]"
        except httpx.HTTPError as exc:
            broken = f"the stream broke: {exc!r}"
        finally:
            await resp.aclose()
            observe(model, "stream_broken" if broken else "ok")
            if broken:
                state.metrics.errors.labels("stream_broken").inc()
            finish("502" if broken else "200")
        if broken:
            # an OpenAI error event: the openai client raises APIError on it instead of ending quietly
            error = {"message": f"upstream {model}: {broken}", "type": "upstream_error", "code": "stream_broken"}
            yield f"\n\ndata: {json.dumps({'error': error})}\n\n".encode()

    return _RelayedStream(relay(), media_type=media, headers={"x-ttc-mode": PASSTHROUGH})


def serve(
    bundle: str,
    upstream_specs: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "numpy",
    upstream_keys: list[str] | None = None,
    **app_kw: Any,
) -> None:
    """Load the bundle, check the upstreams, and serve until interrupted (the `ttc serve` command).

    `upstream_keys`: `MODEL=ENV_VAR` strings, the API key each upstream needs (read from the environment).
    """
    import uvicorn

    from policy.bundle import load_bundle
    from serve.upstream import parse_upstream_keys, parse_upstreams

    check_listen(host, port)  # every option before the bundle loads and before anything binds
    check_app_options(**app_kw)
    upstreams = parse_upstreams(upstream_specs)
    parse_upstream_keys(upstream_keys or [], upstreams)
    if app_kw.get("api_key") == "":
        raise UsageError("--api-key is empty; give a key, or leave it out to serve without one")
    app = create_app(load_bundle(bundle, backend=backend), upstreams, **app_kw)
    print(
        f"ttc serve: {app.state.ttc.policy.describe()}\n{app.state.ttc.serving()}; listening on http://{host}:{port}/v1"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
