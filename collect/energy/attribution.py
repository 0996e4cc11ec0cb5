"""Splitting one batched window's energy among the samples it produced.

Rule "prefill_even+decode_by_tokens": the prefill part of the window (its share
of the window's time) is split evenly across the batch; the rest is split in
proportion to each sample's output tokens. A prefix of L tokens of a sample
costs its prefill share plus the decode share scaled by min(L, tokens)/tokens.

Batched samples are cheaper per sample than the same samples alone; the energy
recorded reflects the batching that was used. Never reads a meter itself.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE = "prefill_even+decode_by_tokens"


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
    window_energy_j: float, window_duration_s: float, prefill_s: float, output_tokens: list[int]
) -> list[Share]:
    """Each sample's share of a window; shares sum to the window's energy and duration."""
    b = len(output_tokens)
    if b == 0:
        return []
    prefill_s = min(max(prefill_s, 0.0), window_duration_s)
    frac_prefill = prefill_s / window_duration_s if window_duration_s > 0 else 0.0
    e_pre, d_pre = window_energy_j * frac_prefill / b, prefill_s / b
    e_dec, d_dec = window_energy_j - e_pre * b, window_duration_s - prefill_s
    total = sum(output_tokens)
    shares = []
    for t in output_tokens:
        w = t / total if total > 0 else 1.0 / b
        shares.append(Share(e_pre + e_dec * w, e_pre, d_pre + d_dec * w, d_pre))
    return shares
