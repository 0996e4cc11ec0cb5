"""Scaffolding the proxy tests share.

`ProxyStack` runs a fake engine (tests/fakes/openai_upstream.py) serving every model of the
synthetic bundle and the proxy in front of it, both under real uvicorn on loopback, with the
official `openai` client; `proxy_stacks` makes them for a test and closes them all after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai

from serve.proxy import create_app
from serve.upstream import parse_upstream_keys, parse_upstreams
from tests.fakes.openai_upstream import ThreadServer, make_fake_upstream
from tests.policy_fixtures import MODELS

QUESTION = "Start with 12, then plus 30, then minus 5. What is the result?"
#: where a `dead` model's upstream points: a closed port
DEAD_URL = "http://127.0.0.1:9/v1"


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
