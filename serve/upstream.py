"""The proxy's side of the wire: OpenAI-compatible upstream engines, sampled n times.

An upstream is one model name of the bundle mapped to a base URL that ends in
`/v1` (vLLM, SGLang, TGI, the llama.cpp server all serve one). `Upstreams.sample`
asks it for n completions of one request: first with the API's own `n` (one
prefill, shared by the engine), and when the engine returns fewer choices
than asked (llama.cpp's servers ignore `n`), or refuses `n` on the first
try (HTTP 400/422), it asks for the rest with concurrent single requests and
remembers, per upstream, to go straight to concurrent requests next time.

Failure is all or nothing: if any of the n requests fails, the others are
cancelled (asyncio.TaskGroup) and `UpstreamError` carries the HTTP status the
proxy should answer (502 unreachable or broken, 504 too slow, the upstream's
own 4xx when it rejected the request), so a partial vote is never passed off
as a full one. Each request carries the upstream's API key when one is set
(`--upstream-key MODEL=ENV_VAR`, read from the environment once, at startup) and
the client's X-Request-Id. `Upstreams.ready` asks every upstream's `/models`
concurrently (the proxy's /health/ready). This module never decides anything
and never reads the policy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from policy.errors import UsageError

CHAT = "chat/completions"
COMPLETIONS = "completions"


class UpstreamError(Exception):
    """An upstream call that failed; `status` is what the proxy answers with."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind  # metric label: unreachable, timeout, rejected, bad_response


@dataclass
class Upstream:
    """One model's engine. `supports_n` is None until the first multi-sample request tells."""

    model: str
    base_url: str
    supports_n: bool | None = None
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer ..."

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(extra or {})
        if self.api_key:
            out["authorization"] = f"Bearer {self.api_key}"
        return out


def parse_upstreams(specs: list[str]) -> dict[str, Upstream]:
    """`MODEL=URL` strings to upstreams, e.g. `smollm2-135m=http://127.0.0.1:8080/v1`."""
    out: dict[str, Upstream] = {}
    for spec in specs:
        model, sep, url = spec.partition("=")
        model, url = model.strip(), url.strip().rstrip("/")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise UsageError(f"--upstream {spec!r} must be MODEL=URL, e.g. smollm2-135m=http://127.0.0.1:8080/v1")
        if model in out:
            raise UsageError(f"--upstream names model {model!r} twice; give each model one URL")
        out[model] = Upstream(model, url)
    if not out:
        raise UsageError("give at least one --upstream MODEL=URL")
    return out


def parse_upstream_keys(specs: list[str], upstreams: dict[str, Upstream]) -> None:
    """`MODEL=ENV_VAR` strings: the named upstream sends the key held in that environment variable.

    The key itself never appears on a command line (where `ps` shows it); a variable that is
    unset or empty is refused here, at startup, rather than discovered as a 401 later.
    """
    seen: set[str] = set()
    for spec in specs:
        model, sep, var = (x.strip() for x in spec.partition("="))
        if not sep or not model or not var:
            raise UsageError(f"--upstream-key {spec!r} must be MODEL=ENV_VAR, e.g. gpt-4o-mini=OPENAI_API_KEY")
        if model not in upstreams:
            raise UsageError(f"--upstream-key names model {model!r} with no --upstream; upstreams: {list(upstreams)}")
        if model in seen:
            raise UsageError(f"--upstream-key names model {model!r} twice; give each model one key")
        key = os.environ.get(var, "")
        if not key:
            raise UsageError(f"--upstream-key {spec!r}: environment variable {var} is unset or empty; export it first")
        seen.add(model)
        upstreams[model].api_key = key


@dataclass
class Sampled:
    """n completions of one request: texts, finish reasons, summed usage, and the upstream's wall time.

    `choices` are the engine's own choice objects (message with any tool_calls, logprobs), one per
    sample; `request_s` the wall time of each upstream request, so `upstream_s / min(request_s)` is
    what asking for n samples cost in latency over asking for one (about 1 when the engine ran them
    in parallel, about n when it queued them).
    """

    texts: list[str]
    finish_reasons: list[str | None]
    usage: dict[str, int] = field(default_factory=dict)
    upstream_s: float = 0.0
    requests: int = 0
    choices: list[dict[str, Any]] = field(default_factory=list)
    reply_ids: list[str] = field(default_factory=list)
    request_s: list[float] = field(default_factory=list)

    @property
    def logprobs(self) -> list[Any]:
        """Each sample's `logprobs` object as the engine returned it (None where it sent none)."""
        return [c.get("logprobs") for c in self.choices]

    @property
    def latency_ratio(self) -> float | None:
        """All n samples' wall time over the fastest single request's; None for one request."""
        if self.requests < 2 or not self.request_s or min(self.request_s) <= 0:
            return None
        return self.upstream_s / min(self.request_s)


def _choice_text(choice: dict[str, Any], kind: str) -> str:
    if kind == CHAT:
        return str((choice.get("message") or {}).get("content") or "")
    return str(choice.get("text") or "")


class Upstreams:
    """The upstream engines and one shared async HTTP client (connection pooling, one timeout)."""

    def __init__(
        self,
        upstreams: dict[str, Upstream],
        timeout_s: float = 120.0,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self.by_model = upstreams
        self.timeout_s = timeout_s
        #: called once per finished upstream request with (model, outcome): "ok" or an UpstreamError kind
        self.observe = observe or (lambda _model, _outcome: None)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=5.0), limits=limits)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("Upstreams.start() was not awaited (the app's lifespan did not run)")
        return self._client

    async def post(
        self, model: str, kind: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One POST to the model's upstream; its JSON object, or `UpstreamError`."""
        try:
            data = await self._post(model, kind, body, headers)
        except UpstreamError as exc:
            self.observe(model, exc.kind)
            raise
        self.observe(model, "ok")
        return data

    async def _post(
        self, model: str, kind: str, body: dict[str, Any], headers: dict[str, str] | None
    ) -> dict[str, Any]:
        up = self.by_model[model]
        url = f"{up.base_url}/{kind}"
        try:
            resp = await self.client.post(url, json=body, headers=up.headers(headers))
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                504, f"upstream {model} at {url} did not answer within {self.timeout_s:g} s", "timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"upstream {model} at {url} is unreachable: {exc!r}", "unreachable") from exc
        if resp.status_code in (401, 403):
            # the engine refused the proxy's credentials: a 401 passed on would blame the client's key
            hint = "its key is wrong" if up.api_key else "give it a key with --upstream-key MODEL=ENV_VAR"
            raise UpstreamError(
                502, f"upstream {model} answered HTTP {resp.status_code} (unauthorized): {hint}", "unauthorized"
            )
        if resp.status_code >= 400:
            detail = resp.text[:300]
            status = resp.status_code if 400 <= resp.status_code < 500 and resp.status_code != 408 else 502
            raise UpstreamError(status, f"upstream {model} answered HTTP {resp.status_code}: {detail}", "rejected")
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamError(
                502, f"upstream {model} answered with something that is not JSON", "bad_response"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise UpstreamError(502, f"upstream {model} answered without choices", "bad_response")
        return data

    async def sample(
        self, model: str, kind: str, body: dict[str, Any], n: int, headers: dict[str, str] | None = None
    ) -> Sampled:
        """n completions of `body` (its `n` is set here); all of them, or `UpstreamError`."""
        up = self.by_model[model]
        t0 = time.perf_counter()
        replies: list[dict[str, Any]] = []
        request_s: list[float] = []
        if n > 1 and up.supports_n is not False:
            try:
                replies.append(await self.post(model, kind, {**body, "n": n}, headers))
                request_s.append(time.perf_counter() - t0)
                up.supports_n = len(replies[0]["choices"]) >= n
            except UpstreamError as exc:
                # some engines refuse n > 1 outright (HTTP 400/422) instead of ignoring it; learn that once,
                # and if the request itself was bad, the single requests below fail the same way
                if up.supports_n is not None or exc.status not in (400, 422):
                    raise
                up.supports_n = False
        have = sum(len(r["choices"]) for r in replies)
        if have < n:
            more = await self._concurrent(model, kind, body, n - have, have, headers)
            replies += [r for r, _ in more]
            request_s += [dt for _, dt in more]
        out = Sampled([], [], upstream_s=time.perf_counter() - t0, requests=len(replies), request_s=request_s)
        for r in replies:
            out.reply_ids.append(str(r.get("id") or ""))
            for choice in r["choices"]:
                choice = choice if isinstance(choice, dict) else {}
                out.choices.append(choice)
                out.texts.append(_choice_text(choice, kind))
                out.finish_reasons.append(choice.get("finish_reason"))
            for key, value in (r.get("usage") or {}).items():
                if isinstance(value, int):
                    out.usage[key] = out.usage.get(key, 0) + value
        # an engine that returned more than asked: keep the first n, the vote is over n samples
        out.texts, out.finish_reasons, out.choices = out.texts[:n], out.finish_reasons[:n], out.choices[:n]
        return out

    async def _concurrent(
        self, model: str, kind: str, body: dict[str, Any], k: int, seed_offset: int, headers: dict[str, str] | None
    ) -> list[tuple[dict[str, Any], float]]:
        single = {**body, "n": 1}
        bodies = []
        for i in range(k):
            b = dict(single)
            if isinstance(body.get("seed"), int):
                # a client's seed makes the run reproducible; the same seed k times would give one sample k times
                b["seed"] = body["seed"] + seed_offset + i
            bodies.append(b)

        async def timed(b: dict[str, Any]) -> tuple[dict[str, Any], float]:
            t0 = time.perf_counter()
            return await self.post(model, kind, b, headers), time.perf_counter() - t0

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(timed(b)) for b in bodies]
        except* UpstreamError as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]

    async def ready(self, timeout_s: float = 2.0) -> dict[str, dict[str, Any]]:
        """Per model: whether its upstream answers GET /models with 2xx within `timeout_s`, and how fast.

        Upstreams that share a base URL and key are asked once.
        """

        async def probe(up: Upstream) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                r = await self.client.get(f"{up.base_url}/models", headers=up.headers(), timeout=timeout_s)
            except httpx.HTTPError as exc:
                return {"ready": False, "url": up.base_url, "error": type(exc).__name__}
            ms = round((time.perf_counter() - t0) * 1e3, 3)
            if r.status_code >= 300:
                return {"ready": False, "url": up.base_url, "error": f"HTTP {r.status_code}", "ms": ms}
            return {"ready": True, "url": up.base_url, "ms": ms}

        groups: dict[tuple[str, str | None], list[str]] = {}
        for m, up in self.by_model.items():
            groups.setdefault((up.base_url, up.api_key), []).append(m)
        results = await asyncio.gather(*(probe(self.by_model[ms[0]]) for ms in groups.values()))
        return {m: res for ms, res in zip(groups.values(), results, strict=True) for m in ms}
