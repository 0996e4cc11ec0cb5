"""Splitting one batched window's energy among the samples it produced.

Rule "prefill_first_sample+decode_by_tokens": a window covers one generate
call of P prompts with n samples each (sequence i*n+j is prompt i's sample j).
Each prompt is prefilled once, so the prefill part of the window (the joules
of the prefill's own nested meter window, or else its share of the window's
time) is split evenly across the P prompts and charged to each
prompt's *first* sample: an arm that votes the first k samples then pays for
its prompt's prefill exactly once, whatever k, and a greedy sample (n=1) pays
the same prefill as the first sampled one. The rest of the window (decoding)
is split in proportion to each sample's output tokens. A prefix of L tokens of
a sample costs its prefill share plus its decode share scaled by
min(L, tokens)/tokens.

The probe (store/probes.py) is read from that same prefill, so its joules are
the first sample's `prefill_energy_j`: free for an arm on the same model,
one prefill for an arm on another.

Batched samples are cheaper per token than the same samples alone; every call
of a collection has the same number of rows (its batch regime, recorded in
each sample). These window shares are what the store keeps; train and eval
charge the declared attribution the loader derives from them
(`store.attribution`). Never reads a meter itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.errors import UsageError
from store.attribution import WINDOW_RULE

RULE = WINDOW_RULE  # the window-share rule, named once in the data layer that re-attributes it


@dataclass(frozen=True)
class Share:
    energy_j: float
    prefill_energy_j: float
    duration_s: float
    prefill_duration_s: float

    def prefix(self, tokens: int, prefix_tokens: int) -> tuple[float, float]:
        """(energy_j, duration_s) of this sample's first `prefix_tokens` output tokens."""
        frac = 1.0 if tokens <= 0 else min(prefix_tokens, tokens) / tokens
        e = self.prefill_energy_j + (self.energy_j - self.prefill_energy_j) * frac
        d = self.prefill_duration_s + (self.duration_s - self.prefill_duration_s) * frac
        return e, d


def attribute(
    window_energy_j: float,
    window_duration_s: float,
    prefill_s: float,
    output_tokens: list[int],
    n: int = 1,
    prefill_energy_j: float | None = None,
) -> list[Share]:
    """Each sample's share of a window of `len(output_tokens) // n` prompts; shares sum to the window's totals.

    `prefill_energy_j`: the prefill's metered joules; without it the prefill gets
    its share of the window's time (`prefill_s`), which is exact only when the
    device's power is the same during prefill and decoding.
    """
    b = len(output_tokens)
    if b == 0:
        return []
    if n < 1 or b % n:
        raise UsageError(f"a window of {b} samples cannot hold n={n} samples per prompt; pass the call's n")
    prompts = b // n
    prefill_s = min(max(prefill_s, 0.0), window_duration_s)
    if prefill_energy_j is None:
        prefill_energy_j = window_energy_j * (prefill_s / window_duration_s if window_duration_s > 0 else 0.0)
    prefill_energy_j = min(max(prefill_energy_j, 0.0), window_energy_j)
    e_pre, d_pre = prefill_energy_j / prompts, prefill_s / prompts
    e_dec, d_dec = window_energy_j - e_pre * prompts, window_duration_s - prefill_s
    total = sum(output_tokens)
    shares = []
    for k, t in enumerate(output_tokens):
        w = t / total if total > 0 else 1.0 / b
        first = k % n == 0
        pe, pd = (e_pre, d_pre) if first else (0.0, 0.0)
        shares.append(Share(pe + e_dec * w, pe, pd + d_dec * w, pd))
    return shares
