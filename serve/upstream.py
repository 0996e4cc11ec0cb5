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
as a full one. This module never decides anything and never reads the policy.
"""

from __future__ import annotations

import asyncio
import time
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


@dataclass
class Sampled:
    """n completions of one request: texts, finish reasons, summed usage, and the upstream's wall time."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: dict[str, int] = field(default_factory=dict)
    upstream_s: float = 0.0
    requests: int = 0


def _choice_text(choice: dict[str, Any], kind: str) -> str:
    if kind == CHAT:
        return str((choice.get("message") or {}).get("content") or "")
    return str(choice.get("text") or "")


class Upstreams:
    """The upstream engines and one shared async HTTP client (connection pooling, one timeout)."""

    def __init__(self, upstreams: dict[str, Upstream], timeout_s: float = 120.0) -> None:
        self.by_model = upstreams
        self.timeout_s = timeout_s
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

    async def post(self, model: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """One POST to the model's upstream; its JSON object, or `UpstreamError`."""
        up = self.by_model[model]
        url = f"{up.base_url}/{kind}"
        try:
            resp = await self.client.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                504, f"upstream {model} at {url} did not answer within {self.timeout_s:g} s", "timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"upstream {model} at {url} is unreachable: {exc!r}", "unreachable") from exc
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

    async def sample(self, model: str, kind: str, body: dict[str, Any], n: int) -> Sampled:
        """n completions of `body` (its `n` is set here); all of them, or `UpstreamError`."""
        up = self.by_model[model]
        t0 = time.perf_counter()
        replies: list[dict[str, Any]] = []
        if n > 1 and up.supports_n is not False:
            try:
                replies.append(await self.post(model, kind, {**body, "n": n}))
                up.supports_n = len(replies[0]["choices"]) >= n
            except UpstreamError as exc:
                # some engines refuse n > 1 outright (HTTP 400/422) instead of ignoring it; learn that once,
                # and if the request itself was bad, the single requests below fail the same way
                if up.supports_n is not None or exc.status not in (400, 422):
                    raise
                up.supports_n = False
        have = sum(len(r["choices"]) for r in replies)
        if have < n:
            replies += await self._concurrent(model, kind, body, n - have, seed_offset=have)
        out = Sampled([], [], upstream_s=time.perf_counter() - t0, requests=len(replies))
        for r in replies:
            for choice in r["choices"]:
                out.texts.append(_choice_text(choice, kind))
                out.finish_reasons.append(choice.get("finish_reason"))
            for key, value in (r.get("usage") or {}).items():
                if isinstance(value, int):
                    out.usage[key] = out.usage.get(key, 0) + value
        # an engine that returned more than asked: keep the first n, the vote is over n samples
        out.texts, out.finish_reasons = out.texts[:n], out.finish_reasons[:n]
        return out

    async def _concurrent(
        self, model: str, kind: str, body: dict[str, Any], k: int, seed_offset: int
    ) -> list[dict[str, Any]]:
        single = {**body, "n": 1}
        bodies = []
        for i in range(k):
            b = dict(single)
            if isinstance(body.get("seed"), int):
                # a client's seed makes the run reproducible; the same seed k times would give one sample k times
                b["seed"] = body["seed"] + seed_offset + i
            bodies.append(b)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.post(model, kind, b)) for b in bodies]
        except* UpstreamError as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]
