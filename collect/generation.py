"""`Generation`: what one batched generate call produced (collect.decode in process, collect.engine over HTTP).

Its own module so that the model loader, the decode loop and the engine client all import it
from below them. Data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    """What one batched generate call produced, before grading and energy attribution.

    Sequence i*n+j is prompt i's sample j. Per-token statistics are under the
    model's temperature-1 distribution, in nats. The probe arrays have one row
    per prompt: the final layer's state (after the final norm, the vector the
    LM head reads) at the last prompt token, and its mean over the prompt's
    tokens (padding excluded), float16.
    """

    output_ids: list[list[int]]  # per sequence, the generated tokens up to and including its end
    finished: list[bool]
    prompt_tokens: list[int]  # per sequence, its prompt's tokens (padding excluded)
    prefill_s: float  # wall time of the one prefill of all prompts (with the first token's logits)
    prefill_energy_j: float | None  # the prefill's own meter window (None: no meter was given)
    token_logprob: list[list[float]]
    token_top1_logprob: list[list[float]]
    token_entropy: list[list[float]]
    probe_last: Any  # np.ndarray (prompts, hidden), float16
    probe_mean: Any  # np.ndarray (prompts, hidden), float16
    n: int = 1
