"""Batched sampling with one prefill per prompt, and the signals that come free with it.

`generate` runs each distinct prompt through the model once (the prefill),
reads the probe from that pass (the final layer's state at the last prompt
token and its mean over the prompt), repeats the prompt's KV cache for its n
samples, and decodes all rows step by step. At every step it keeps, per row,
the chosen token's log-probability, the most likely token's, and the entropy
of the model's temperature-1 distribution: the first-sample confidence signals.

Sampling draws from softmax(logits / temperature) with no top-k or top-p, by
inverting the cumulative distribution at one uniform number per row and step
(`torch.multinomial` draws one exponential per vocabulary entry, which cost
more than ten times as much CPU per step here). `_Sampler` does a step's work
over the vocabulary a few rows at a time in float32 buffers allocated once per
call and small enough to stay in the core's cache, and inverts the CDF in two
levels (blocks of the vocabulary, then one block), so no full-vocabulary
cumulative sum or temporary is made per step: with Gemma 3's 262,144 tokens a
(32 rows x vocabulary) float32 temporary is 33.5 MB, above glibc's largest mmap
threshold, so each of the ~8 temporaries the straightforward code made per step
was a fresh mapping, page-faulted and zeroed. All rows draw at every step
(finished rows are padded), so with one seed a generation capped at L is the
prefix of one capped higher. Greedy is the argmax. A row ends at a
token of `lm.end_ids` (an EOS counts as an output token, a pad does not) or,
for plain prompts, once its text contains a stop string.

This module never measures energy, grades answers or writes files.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from collect.generation import Generation


class LoadedModel(Protocol):
    """What the decode loop reads of a loaded model (`collect.models.LoadedModel` is one)."""

    tokenizer: Any
    model: Any
    device: Any
    prompt_style: str
    cache: str
    end_ids: set[int]
    eos_ids: set[int]
    stop_strings: list[str]

    def _step(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any: ...


def generate(
    lm: LoadedModel, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int, meter: Any = None
) -> Any:
    """n samples of each prompt; sequence i*n+j is prompt i's sample j (a `Generation`).

    `meter`: if given, the prefill is metered in a window of its own (nested in
    the caller's), so its joules are measured rather than inferred from its
    share of the wall time, which misleads wherever other processes share the CPU;
    a window too short for the meter's counter falls back to the time share.
    """
    import torch

    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=lm.prompt_style == "plain")
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    width = ids.shape[1]
    window = f"prefill:{id(ids)}"
    if meter is not None:
        meter.begin_window(window)
    start = time.perf_counter()
    with torch.inference_mode():
        logits, cache, probe_last, probe_mean = _prefill(lm, ids, mask)
        prefill_s = time.perf_counter() - start
        prefill_j = _metered(meter.end_window(window)) if meter is not None else None
        cache = _share(lm, cache, n, width + max_new_tokens)
        full_mask = torch.zeros((len(prompts) * n, width + max_new_tokens), dtype=mask.dtype, device=mask.device)
        full_mask[:, :width] = mask.repeat_interleave(n, 0)
        positions = mask.long().sum(-1).repeat_interleave(n, 0)  # the next position of each row
        torch.manual_seed(seed)
        tokens, stats = _decode(
            lm, logits.repeat_interleave(n, 0), cache, full_mask, positions, max_new_tokens, temperature
        )
    prompt_tokens = mask.sum(dim=1).tolist()
    out = _finish(lm, tokens, stats)
    return Generation(
        output_ids=out[0],
        finished=out[1],
        prompt_tokens=[int(prompt_tokens[i // n]) for i in range(len(out[0]))],
        prefill_s=prefill_s,
        prefill_energy_j=prefill_j,
        token_logprob=out[2],
        token_top1_logprob=out[3],
        token_entropy=out[4],
        probe_last=probe_last,
        probe_mean=probe_mean,
        n=n,
    )


def _metered(m: Any) -> float | None:
    """The prefill window's joules, or None (attribute by time instead) when the counter cannot resolve it.

    An NVML counter updates about every 100 ms, so a short GPU prefill can read 0 J.
    """
    from collect.energy.base import COUNTER_NOT_TICKED, SHORTER_THAN_COUNTER_UPDATE

    return None if {SHORTER_THAN_COUNTER_UPDATE, COUNTER_NOT_TICKED} & set(m.flags) else m.energy_j


def _prefill(lm: LoadedModel, ids: Any, mask: Any) -> tuple[Any, Any, Any, Any]:
    """One pass over every prompt token: (last-token logits, KV cache, probe_last, probe_mean).

    The base model (without the LM head) is called so that logits are computed
    for the last position only; positions follow the attention mask, as
    generate() computes them, so left padding does not shift them.
    """
    import numpy as np
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    base = lm.model.base_model
    h = base(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    h = h.last_hidden_state
    last = h[:, -1]
    m = mask.unsqueeze(-1).to(torch.float32)
    mean = (h.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
    logits = lm.model.get_output_embeddings()(last)
    cap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    as16 = lambda t: t.float().cpu().numpy().astype(np.float16)  # noqa: E731
    return logits, cache, as16(last), as16(mean)


def _share(lm: LoadedModel, cache: Any, n: int, max_len: int) -> Any:
    """The prompt's cache repeated for its n rows, as the KV cache kind `lm.cache` names."""
    if lm.cache == "dynamic":
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache
    from transformers import StaticCache

    static = StaticCache(config=lm.model.config, max_cache_len=max_len)
    for layer, src in zip(static.layers, cache.layers, strict=True):
        # `update` writes the prompt at positions 0..T-1 exactly as a static prefill would
        layer.update(src.keys.repeat_interleave(n, 0), src.values.repeat_interleave(n, 0))
    return static


def _decode(
    lm: LoadedModel, logits: Any, cache: Any, mask: Any, positions: Any, max_new_tokens: int, temperature: float
) -> tuple[Any, Any]:
    """Decode every row; returns (tokens (rows, steps), stats (3, rows, steps): chosen, top-1 logprob, entropy)."""
    import torch

    rows, width = logits.shape[0], mask.shape[1] - max_new_tokens
    pad = int(lm.tokenizer.pad_token_id)
    end = torch.tensor(sorted(lm.end_ids), device=logits.device)
    done = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    sampler = _Sampler(rows, logits.shape[1], logits.device)
    tokens, stats = [], []
    for t in range(max_new_tokens):
        nxt, chosen, top1, entropy = sampler.step(logits, temperature)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        stats.append(torch.stack([chosen, top1, entropy]))
        done = done | torch.isin(nxt, end)
        if lm.stop_strings:
            done = done | _stopped(lm, torch.stack(tokens, 1), done)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask[:, width + t] = 1
        step_mask = mask if lm.cache == "static" else mask[:, : width + t + 1]
        logits = lm._step(nxt.unsqueeze(1), step_mask, positions.unsqueeze(1), cache)
        positions = positions + 1
    return torch.stack(tokens, 1), torch.stack(stats, 2)


class _Sampler:
    """One decode step's draw and statistics over the vocabulary, for every row.

    Per row, under the temperature-1 distribution p = softmax(x): the chosen
    token's log-probability, the top-1 log-probability (-log sum exp(x - max)) and
    the entropy (log s - sum(exp(x - max) (x - max)) / s, s = sum exp(x - max));
    the token is drawn from softmax(x / temperature) (argmax when it is 0) by
    inverting its CDF at one uniform number per row: the block of `BLOCK` tokens
    from the block sums' cumulative sum, then the token inside that block.
    Rows are taken `chunk` at a time (about `CACHE_BYTES` of float32 per buffer),
    in buffers allocated once, whatever the logits' dtype.
    """

    BLOCK = 1024
    CACHE_BYTES = 1 << 20

    def __init__(self, rows: int, vocab: int, device: Any) -> None:
        import torch

        self.vocab = vocab
        self.blocks = -(-vocab // self.BLOCK)
        self.chunk = max(1, min(rows, self.CACHE_BYTES // (4 * self.blocks * self.BLOCK)))
        shape = (self.chunk, self.blocks * self.BLOCK)
        # the tail past `vocab` stays 0 in `p` and `q`: no probability there
        self.x, self.p, self.q = (torch.zeros(shape, device=device) for _ in range(3))

    def step(self, logits: Any, temperature: float) -> tuple[Any, Any, Any, Any]:
        """(token, chosen log-prob, top-1 log-prob, entropy), each of shape (rows,)."""
        import torch

        rows = logits.shape[0]
        u = torch.rand((rows, 1), device=logits.device) if temperature > 0 else None
        parts = [self._rows(logits[a : a + self.chunk], u, a, temperature) for a in range(0, rows, self.chunk)]
        nxt, chosen, top1, entropy = (torch.cat(col) for col in zip(*parts, strict=True))
        return nxt, chosen, top1, entropy

    def _rows(self, logits: Any, u: Any, first: int, temperature: float) -> tuple[Any, Any, Any, Any]:
        import torch

        k, v = logits.shape[0], self.vocab
        x, p = self.x[:k, :v], self.p[:k, :v]
        x.copy_(logits)  # float32, whatever the model computes in
        x.sub_(x.amax(dim=-1, keepdim=True)).clamp_(min=-1e4)  # max 0; a -inf logit gives p = 0, not NaN below
        torch.exp(x, out=p)
        s = p.sum(dim=-1, keepdim=True)
        log_s = s.log()
        q = self.q[:k, :v]
        torch.mul(p, x, out=q)
        entropy = (log_s - q.sum(dim=-1, keepdim=True) / s).squeeze(1)
        if temperature > 0:
            if temperature != 1.0:
                torch.div(x, temperature, out=q).exp_()
                nxt = self._invert(self.q[:k], u[first : first + k])
            else:
                nxt = self._invert(self.p[:k], u[first : first + k])
        else:
            nxt = x.argmax(dim=-1)
        chosen = (x.gather(1, nxt.unsqueeze(1)) - log_s).squeeze(1)
        return nxt, chosen, (-log_s).squeeze(1), entropy

    def _invert(self, w: Any, u: Any) -> Any:
        """Per row, the first index whose cumulative weight reaches u x the row's total (two-level search)."""
        import torch

        k = w.shape[0]
        blocks = w.view(k, self.blocks, self.BLOCK)
        bcdf = blocks.sum(dim=-1).cumsum(dim=-1)
        target = u * bcdf[:, -1:]
        b = torch.searchsorted(bcdf, target).clamp(max=self.blocks - 1)
        before = torch.where(b > 0, bcdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
        inner = blocks[torch.arange(k, device=w.device), b.squeeze(1)].cumsum(dim=-1) + before
        i = torch.searchsorted(inner, target).clamp(max=self.BLOCK - 1)
        return (b * self.BLOCK + i).squeeze(1).clamp(max=self.vocab - 1)


def _stopped(lm: LoadedModel, tokens: Any, done: Any) -> Any:
    """Rows whose text so far contains a stop string (plain prompts only)."""
    import torch

    hit = [
        (not d) and any(s in lm.tokenizer.decode(row) for s in lm.stop_strings)
        for row, d in zip(tokens.tolist(), done.tolist(), strict=True)
    ]
    return torch.tensor(hit, dtype=torch.bool, device=done.device)


def _finish(lm: LoadedModel, tokens: Any, stats: Any) -> tuple[list, list, list, list, list]:
    """Per row: its output ids, whether it stopped, and its per-token statistics (float16-rounded)."""
    import numpy as np

    ids_all, finished, chosen, top1, entropy = [], [], [], [], []
    st = stats.cpu().numpy().astype(np.float16).astype(float)
    for r, seq in enumerate(tokens.tolist()):
        end = next((i for i, t in enumerate(seq) if t in lm.end_ids), None)
        stop = end is not None
        # an EOS was generated (and counts); a pad after a stop string or a pad-as-end token does not
        ids = seq if end is None else seq[: end + 1] if seq[end] in lm.eos_ids else seq[:end]
        if not stop and lm.stop_strings:
            stop = any(s in lm.tokenizer.decode(ids) for s in lm.stop_strings)
        k = len(ids)
        ids_all.append(ids)
        finished.append(stop)
        chosen.append(st[0, r, :k].tolist())
        top1.append(st[1, r, :k].tolist())
        entropy.append(st[2, r, :k].tolist())
    return ids_all, finished, chosen, top1, entropy
