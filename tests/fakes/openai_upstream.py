"""A tiny OpenAI-compatible engine for proxy tests and the serve benchmark, and a uvicorn-in-a-thread runner.

The fake answers /v1/chat/completions and /v1/completions with scripted texts
(cycled per sample), honours `n` or ignores it like llama.cpp's servers,
can sleep or fail on demand, streams server-sent events (or breaks a stream
midway), answers `tools` with a tool call and `logprobs` with per-token
log-probs, can demand an API key, and records every request body (and the
headers) it saw.
`ThreadServer` also wraps the real llama.cpp server's logging shim in the tests.
Test infrastructure only: never imported by the package.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def make_fake_upstream(
    texts: list[str] | None = None,
    supports_n: bool = True,
    delay_s: float = 0.0,
    fail_status: int | None = None,
    fail_on_request: int | None = None,
    reject_n: bool = False,
    break_stream_after: int | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The fake engine; `app.state.seen` lists the request bodies, `app.state.fail_status` can be changed live.

    `fail_on_request` (1-based) makes that one request answer HTTP 500, to test a partial failure;
    `reject_n` answers 422 to any n > 1, as some engines do; `break_stream_after` cuts a stream's
    connection after that many chunks; `api_key` answers 401 unless "Authorization: Bearer <key>".
    """
    app = FastAPI()
    app.state.seen = []
    app.state.headers = []
    app.state.fail_status = fail_status
    app.state.delay_s = delay_s
    cycle = itertools.cycle(texts or ["The answer is 42."])

    async def answer(kind: str, request: Request) -> Response:
        body = await request.json()
        app.state.seen.append(body)
        app.state.headers.append(dict(request.headers))
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
        if app.state.delay_s:
            await asyncio.sleep(app.state.delay_s)
        if reject_n and int(body.get("n") or 1) > 1:
            return JSONResponse({"error": {"message": "n > 1 is not supported"}}, status_code=422)
        if app.state.fail_status or len(app.state.seen) == fail_on_request:
            status = app.state.fail_status or 500
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=status)
        n = int(body.get("n") or 1) if supports_n else 1
        if body.get("stream"):
            return StreamingResponse(_events(kind, next(cycle), break_stream_after), media_type="text/event-stream")
        choices = []
        for i in range(n):
            text = next(cycle)
            item = {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
            finish = "stop"
            if kind == "chat" and body.get("tools"):
                name = body["tools"][0]["function"]["name"]
                call = {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}
                item["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
                finish = "tool_calls"
            logprobs = None
            if body.get("logprobs"):
                # one entry per word, with a made-up but sample-specific value, so a test can tell samples apart
                words = text.split()
                lp = [-0.1 * (k + 1) - 0.01 * i for k in range(len(words))]
                if kind == "chat":
                    entries = [{"token": w, "logprob": v, "top_logprobs": []} for w, v in zip(words, lp, strict=True)]
                    logprobs = {"content": entries}
                else:
                    logprobs = {"tokens": words, "token_logprobs": lp}
            choices.append({"index": i, **item, "finish_reason": finish, "logprobs": logprobs})
        usage = {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n}
        return JSONResponse(
            {"id": "fake", "object": "x", "model": body.get("model"), "choices": choices, "usage": usage}
        )

    return openai_routes(app, answer, ["fake"])


def openai_routes(app: FastAPI, answer: Callable[[str, Request], Awaitable[Response]], model_ids: list[str]) -> FastAPI:
    """A fake engine's OpenAI surface: /v1/chat/completions as `answer("chat", request)`, /v1/completions
    as `answer("text", request)`, and /v1/models listing `model_ids`."""

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await answer("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer("text", request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in model_ids]}

    return app


async def _events(kind: str, text: str, break_after: int | None):
    """The text as SSE chunks, one per word, then [DONE]; a broken stream raises after `break_after` chunks."""
    import json

    for k, word in enumerate(text.split(" ")):
        if break_after is not None and k >= break_after:
            raise RuntimeError("scripted stream break")  # uvicorn drops the connection mid-body
        piece = word if k == 0 else " " + word
        if kind == "chat":
            item = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        else:
            item = {"index": 0, "text": piece, "finish_reason": None}
        chunk = {"id": "fake", "object": "chunk", "created": 0, "model": "f", "choices": [item]}
        yield f"data: {json.dumps(chunk)}\n\n"
        await asyncio.sleep(0.01)
    yield "data: [DONE]\n\n"


class ThreadServer:
    """Run an ASGI app with uvicorn on 127.0.0.1 (a free port) in a daemon thread: `with ThreadServer(app) as s`."""

    def __init__(self, app: Any, port: int = 0) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers (any status) or raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def make_recording_shim(target_base: str) -> FastAPI:
    """A logging shim in front of a real engine: forwards POST /v1/* and records (request body, choices returned).

    `app.state.log` holds one {"body", "choices"} per forwarded request, so a test sees exactly
    what the engine was asked for and how many samples it gave back.
    """
    app = FastAPI()
    app.state.log = []
    client = httpx.AsyncClient(timeout=600)

    @app.post("/v1/{path:path}")
    async def forward(path: str, request: Request) -> Response:
        body = await request.json()
        r = await client.post(f"{target_base.rstrip('/')}/{path}", json=body)
        entry = {"body": body, "status": r.status_code, "choices": None}
        if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
            entry["choices"] = len(r.json().get("choices", []))  # a stream (text/event-stream) is relayed as is
        app.state.log.append(entry)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))

    return app
