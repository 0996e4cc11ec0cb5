"""Collection through an OpenAI-compatible engine: `--model openai:MODEL@URL`.

`URL` is the engine's `/v1` base (vLLM, SGLang, TGI, llama.cpp's server). The
stored `model` (and so every arm id) is `MODEL` with "/" written "--"; the URL
stays in the collection's run parameters (the config's `models`).

`EngineModel` stands in for `collect.models.LoadedModel` in the collect stage:
`generate` sends every prompt's n samples at once (the API's `n`, else
concurrent single requests, learned per engine as `serve/upstream.py` does),
so one meter window spans one batch of concurrent requests, attributed by
tokens (collect/energy/attribution.py; engines report no prefill time, so the
whole window is split by output tokens). Per-token log-probabilities are asked
for (`logprobs`, `top_logprobs=1`); their token strings are what a completion
is cut at for each level L. An engine that returns no token list cannot be cut:
its output tokens come from `usage` (split evenly among the choices of one
request) and the collection must grade one level only, the generated cap.
The engine gives no hidden states, so no probe rows, and no full distribution,
so no per-token entropy.

Energy (`engine_meter`): on a loopback URL the engine shares this machine, so
`nvml`/`rapl`/`auto` read its board and socket counters and `estimate` becomes
`estimate-machine` (the whole machine's busy CPU time, collect/energy/machine.py).
On any other host nothing here can see the engine's power: samples get NaN
joules, meter and energy_source "unmeasured", and `ttc train` refuses them
(README "Collecting through an engine" says how to attribute them).
This module never grades, and never writes the store.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from collect.engine_ref import EngineRef
from collect.generation import Generation
from policy.errors import UsageError
from policy.prompts import PLAIN, PLAIN_STOP, chat_messages, plain_prompt
from policy.records import EnergyMeasurement

UNMEASURED = "unmeasured"


class UnmeasuredMeter:
    """The window interface of `collect.energy.base.Meter`, for an engine on another machine: NaN joules."""

    name = UNMEASURED
    source = UNMEASURED
    idle_power_w = 0.0

    def __init__(self) -> None:
        self._open: dict[str, float] = {}

    def begin_window(self, name: str, sync: bool = True) -> None:
        self._open[name] = time.perf_counter()

    def end_window(self, name: str, sync: bool = True) -> EnergyMeasurement:
        d = time.perf_counter() - self._open.pop(name)
        return EnergyMeasurement(name, math.nan, d, UNMEASURED, UNMEASURED, idle_energy_j=math.nan)

    def measure_idle(self, seconds: float = 3.0) -> float:
        raise UsageError("the engine runs on another machine: there is no idle baseline to take here; drop it")

    def close(self) -> None:
        pass


def engine_meter(meter: str, watts_per_core: float, refs: list[EngineRef]) -> Any:
    """The meter for a collection from `refs`, or None when no model is an engine (the usual meter then)."""
    from collect.energy import make_meter

    if not refs:
        return None
    remote = [r.base_url for r in refs if not r.loopback]
    if remote:
        if len(remote) < len(refs):
            raise UsageError("collect from engines on this machine and on others in separate stores")
        return UnmeasuredMeter()
    if meter == "estimate":  # the engine is another process: count the whole machine's CPU time
        return make_meter("estimate-machine", watts_per_core=watts_per_core)
    return make_meter(meter, **({"watts_per_core": watts_per_core} if meter == "estimate-machine" else {}))


@dataclass
class _Seq:
    """One returned completion: its text, token strings (None: the engine gave none), statistics."""

    text: str
    pieces: list[str] | None
    tokens: int
    finished: bool
    prompt_tokens: int
    logprob: list[float]
    top1: list[float]


def choice_tokens(choice: dict[str, Any]) -> tuple[list[str], list[float], list[float]] | None:
    """Token strings, chosen-token and top-1 log-probabilities of a chat or completions choice (None: none given)."""
    lp = choice.get("logprobs") or {}
    if isinstance(lp.get("content"), list):  # chat: [{token, logprob, top_logprobs: [...]}]
        items = lp["content"]
        top = [max((t["logprob"] for t in i.get("top_logprobs") or []), default=i["logprob"]) for i in items]
        return [i["token"] for i in items], [float(i["logprob"]) for i in items], [float(t) for t in top]
    if isinstance(lp.get("tokens"), list) and isinstance(lp.get("token_logprobs"), list):  # completions
        toks, lps = lp["tokens"], [float(x) if x is not None else 0.0 for x in lp["token_logprobs"]]
        tops = lp.get("top_logprobs") or [None] * len(toks)
        pairs = zip(tops, lps, strict=False)
        top = [max((float(v) for v in t.values()), default=x) if isinstance(t, dict) else x for t, x in pairs]
        return [str(t) for t in toks], lps, top
    return None


def _seqs(reply: dict[str, Any]) -> list[_Seq]:
    usage = reply.get("usage") or {}
    choices = reply["choices"]
    out = []
    for c in choices:
        text = str((c.get("message") or {}).get("content") or c.get("text") or "")
        toks = choice_tokens(c)
        pieces, lp, top = toks if toks else (None, [], [])
        count = len(pieces) if pieces is not None else int(usage.get("completion_tokens", 0)) // len(choices)
        out.append(
            _Seq(text, pieces, count, c.get("finish_reason") == "stop", int(usage.get("prompt_tokens", 0)), lp, top)
        )
    return out


class EngineModel:
    """An engine behind `LoadedModel`'s interface (build_prompt, generate, decode) for the collect stage.

    `generate` returns per-sequence "ids" that are handles into this call's
    token strings, so the stage's `decode(ids[:L])` cuts a completion at its
    first L returned tokens; the full handle list decodes to the engine's own text.
    """

    dtype = "engine"
    probe_layer = -1

    def __init__(self, ref: EngineRef, levels: tuple[int, ...] | list[int], timeout_s: float = 600.0) -> None:
        from collect.models import prompt_style
        from serve.upstream import Upstream

        self.ref = ref
        self.levels = sorted(levels)
        self.timeout_s = timeout_s
        self.upstream = Upstream(ref.label, ref.base_url)
        #: the built-in model's prompt style when the label names one (gemma3-270m: plain), else chat
        self.prompt_style = prompt_style(ref.label)[0]
        self._pieces: list[str] = []
        self._full: dict[tuple[int, int], str] = {}

    def build_prompt(self, question: str, demos: list[tuple[str, str]]) -> list[dict[str, str]] | str:
        """The in-process collector's prompt (policy/prompts.py): chat turns, or plain text for a base model."""
        if self.prompt_style == PLAIN:
            return plain_prompt(question, demos)
        return chat_messages(question, demos)

    def decode(self, ids: list[int]) -> str:
        full = self._full.get((ids[0], len(ids))) if ids else None
        return (full if full is not None else "".join(self._pieces[i] for i in ids)).strip()

    def generate(
        self, prompts: list[Any], n: int, max_new_tokens: int, temperature: float, seed: int, meter: Any = None
    ) -> Any:
        """n samples of each prompt, all requests in flight at once (one meter window spans them)."""
        seqs = asyncio.run(self._all(prompts, n, max_new_tokens, temperature, seed))
        if any(s.pieces is None for s in seqs) and len(self.levels) > 1:
            raise UsageError(
                f"the engine at {self.ref.base_url} returned no per-token log-probabilities, so a completion "
                f"cannot be cut at L tokens; collect one level only (--level {max_new_tokens})"
            )
        self._pieces, self._full = [], {}
        ids = [self._handles(s) for s in seqs]
        return Generation(
            output_ids=ids,
            finished=[s.finished for s in seqs],
            prompt_tokens=[s.prompt_tokens for s in seqs],
            prefill_s=0.0,  # engines do not report it: the window is split by output tokens alone
            prefill_energy_j=None,
            token_logprob=[s.logprob for s in seqs],
            token_top1_logprob=[s.top1 for s in seqs],
            token_entropy=[[] for _ in seqs],  # top-1 only: no full distribution to take an entropy of
            probe_last=None,
            probe_mean=None,
            n=n,
        )

    def _handles(self, s: _Seq) -> list[int]:
        base = len(self._pieces)
        pieces = s.pieces if s.pieces is not None else [s.text] + [""] * max(s.tokens - 1, 0)
        self._pieces += pieces
        self._full[(base, len(pieces))] = s.text
        return list(range(base, base + len(pieces)))

    async def _all(self, prompts: list[Any], n: int, cap: int, temperature: float, seed: int) -> list[_Seq]:
        from serve.upstream import Upstreams

        ups = Upstreams({self.ref.label: self.upstream}, timeout_s=self.timeout_s)
        await ups.start()
        try:
            bodies = [self._body(p, cap, temperature, seed + 1000 * i) for i, p in enumerate(prompts)]
            per_prompt = await asyncio.gather(*(self._n(ups, b, n) for b in bodies))
        finally:
            await ups.close()
        return [s for seqs in per_prompt for s in seqs]

    def _body(self, prompt: list[Any] | str, cap: int, temperature: float, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.ref.model, "max_tokens": cap, "temperature": temperature, "seed": seed}
        if isinstance(prompt, str):  # plain: /v1/completions, cut at the next demo block as in-process
            return body | {"prompt": prompt, "stop": list(PLAIN_STOP), "logprobs": 1}
        return body | {"messages": prompt, "logprobs": True, "top_logprobs": 1}

    async def _n(self, ups: Any, body: dict[str, Any], n: int) -> list[_Seq]:
        """n completions of one prompt: the API's n where the engine honours it, else n single requests."""
        from serve.upstream import CHAT, COMPLETIONS, UpstreamError

        up, label, out = self.upstream, self.ref.label, []
        kind = COMPLETIONS if "prompt" in body else CHAT
        try:
            if n > 1 and up.supports_n is not False:
                try:
                    out += _seqs(await ups.post(label, kind, {**body, "n": n}))
                    up.supports_n = len(out) >= n
                except UpstreamError as exc:
                    if up.supports_n is not None or exc.status not in (400, 422):
                        raise
                    up.supports_n = False
            singles = [{**body, "n": 1, "seed": body["seed"] + k} for k in range(len(out), n)]
            for reply in await asyncio.gather(*(ups.post(label, kind, b) for b in singles)):
                out += _seqs(reply)
        except UpstreamError as exc:
            raise UsageError(f"{exc.message}; check that the engine serves {self.ref.model!r} there") from None
        return out[:n]
