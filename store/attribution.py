"""The declared attribution train and eval charge: a sample's tokens at its model's metered rates.

The collector meters whole generate calls (windows) and writes each sample its
window share (`collect.energy.attribution`, rule `WINDOW_RULE`). Those shares
carry the collector's batching, not the arm: a batch decodes until its longest
row, so a window with one rambling row charges its idle steps to the rows still
running, and on this CPU a sampled decoding step costs more than a greedy one
(the sampler's pass over a 262k-token vocabulary). Measured on reference v2
(15,786 samples): the greedy n=1 arm's metered joules per output token were
0.73x the sampled one's for Gemma-3-270M and 0.83x for SmolLM2 (`scripts/pilot.py
--store data/reference` prints both ratios).

So every stage charges one declared regime, `RULE` ("model_rate"), derived here
from the metered shares and nothing else:

    energy_j(sample, first L tokens) = prompt_tokens * P[g]  (first sample of a generation only)
                                     + min(L, tokens) * D[g]

with P[g] = the metered prefill joules of group g over its prefilled prompt
tokens, and D[g] = its metered decode joules over its output tokens, pooled
over every sample of the group: g = (model, meter, energy_source, dtype), so
measured and estimated joules, or two dtypes, never share a rate. Within a
group the totals are conserved: the attributed joules sum to the metered ones.
An arm is then charged what its tokens cost on its model in this collection,
as a continuously batching engine (a finished row's slot is refilled at once)
would charge it; what the collector's windows cost beyond that is its own.
The window share stays in `metered_energy_j`; durations stay as metered.

Only samples written under `WINDOW_RULE` with finite joules are re-attributed;
others (older stores, synthetic frames, samples already attributed, samples
whose joules were not measured) pass unchanged.
This module never reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: the rule `collect.energy.attribution` writes window shares under
WINDOW_RULE = "prefill_first_sample+decode_by_tokens"
RULE = "model_rate"
GROUP = ("model", "meter", "energy_source", "dtype")
NEEDS = (
    "attribution",
    "model",
    "sample_index",
    "prompt_tokens",
    "output_tokens",
    "energy_j",
    "prefill_energy_j",
    "energy_above_idle_j",
    "level_output_tokens",
    "level_energy_j",
)


def model_rates(samples: pd.DataFrame) -> pd.DataFrame:
    """Per group of `GROUP`: prefill joules per prompt token (P) and decode joules per output token (D)."""
    keys = [k for k in GROUP if k in samples.columns]
    first = samples["sample_index"].to_numpy() == 0
    pre = samples["prefill_energy_j"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(
        {
            **{k: samples[k].to_numpy() for k in keys},
            "prefill_j": pre,
            "prompt_tokens": np.where(first, samples["prompt_tokens"].to_numpy(dtype=np.float64), 0.0),
            "decode_j": samples["energy_j"].to_numpy(dtype=np.float64) - pre,
            "output_tokens": samples["output_tokens"].to_numpy(dtype=np.float64),
        }
    )
    sums = frame.groupby(keys, dropna=False, sort=True)[["prefill_j", "prompt_tokens", "decode_j", "output_tokens"]]
    out = sums.sum().reset_index()
    out["P"] = np.where(out.prompt_tokens > 0, out.prefill_j / out.prompt_tokens.where(out.prompt_tokens > 0, 1), 0.0)
    out["D"] = np.where(out.output_tokens > 0, out.decode_j / out.output_tokens.where(out.output_tokens > 0, 1), 0.0)
    return out


def attribute_by_model_rate(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples charged by `RULE` (a new frame); samples not written under `WINDOW_RULE` pass unchanged."""
    if any(c not in samples.columns for c in NEEDS):
        return samples
    finite = np.isfinite(samples["energy_j"].to_numpy(dtype=np.float64)) & np.isfinite(
        samples["prefill_energy_j"].to_numpy(dtype=np.float64)
    )
    # a sample without metered joules (an engine on another machine, a hostile NaN) keeps them missing
    mine = (samples["attribution"] == WINDOW_RULE).to_numpy() & finite
    if not mine.any():
        return samples
    out = samples.copy()
    part = out.loc[mine]
    rates = model_rates(part)
    keys = [k for k in GROUP if k in part.columns]
    # a group whose decode has no tokens cannot be charged by tokens: it keeps its metered shares
    rates = rates[rates.output_tokens > 0]
    joined = part[keys].merge(rates[[*keys, "P", "D"]], on=keys, how="left")
    ok = joined["D"].notna().to_numpy()
    if not ok.any():
        return samples
    idx = part.index[ok]
    p, d = joined["P"].to_numpy()[ok], joined["D"].to_numpy()[ok]
    first = part["sample_index"].to_numpy()[ok] == 0
    prefill = np.where(first, part["prompt_tokens"].to_numpy(dtype=np.float64)[ok] * p, 0.0)
    tokens = part["output_tokens"].to_numpy(dtype=np.float64)[ok]
    metered = part["energy_j"].to_numpy(dtype=np.float64)[ok]
    energy = prefill + tokens * d
    above = part["energy_above_idle_j"].to_numpy(dtype=np.float64)[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        above_ratio = np.where(metered > 0, above / np.where(metered > 0, metered, 1.0), 0.0)
    levels = [
        [float(pf + min(int(t), n) * dd) for t in lv]
        for pf, n, dd, lv in zip(prefill, tokens, d, part["level_output_tokens"].to_numpy()[ok], strict=True)
    ]
    out["metered_energy_j"] = out["energy_j"].astype(np.float64)
    out.loc[idx, "energy_j"] = energy
    out.loc[idx, "prefill_energy_j"] = prefill
    out.loc[idx, "energy_above_idle_j"] = energy * above_ratio
    level_col = out["level_energy_j"].astype(object).copy()
    for i, lv in zip(idx, levels, strict=True):
        level_col.at[i] = lv
    out["level_energy_j"] = level_col
    out.loc[idx, "attribution"] = RULE
    return out
