"""Records that flow between the stages, each defined once.

collect writes `Sample`s; the arm view turns them into `ArmOutcome`s; train and
the policy produces `Decision`s; meters return
`EnergyMeasurement`s. Every record that holds joules also says where they came
from (`meter`, `energy_source`), because estimated and measured energy must
never be mixed silently.

Units live in the field names: `_j` joules, `_s` seconds, `_w` watts.
This module must stay standard-library only: the exported policy imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Version of the Sample layout in the store. Bump it when a field changes meaning.
#: 2: prefill joules charged to each prompt's first sample (was: spread over the batch); the fields of
#: `SAMPLE_FIELDS_ADDED_V2` added.
SAMPLE_SCHEMA_VERSION = 2

MEASURED = "measured"
ESTIMATED = "estimated"
ENERGY_SOURCES = (MEASURED, ESTIMATED)


@dataclass(frozen=True)
class EnergyMeasurement:
    """What one meter window measured.

    `energy_j` is the raw reading over the window; `idle_energy_j` is the idle
    baseline power times the window's duration (0 when no baseline was taken).
    `source` is "measured" (a hardware counter) or "estimated" (a model of power).
    `flags` lists caveats, e.g. "shorter_than_counter_update".
    """

    name: str
    energy_j: float
    duration_s: float
    meter: str
    source: str
    idle_energy_j: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def energy_above_idle_j(self) -> float:
        return max(self.energy_j - self.idle_energy_j, 0.0)


@dataclass(frozen=True)
class Sample:
    """One generated answer: the store's unit of record.

    One sample is generated once with `max_new_tokens` and graded at each cap in
    `levels` (its first L tokens, decoded and graded for real): the `level_*`
    lists are aligned with `levels`. Energy is this sample's attributed share of
    the window that covered its batched generate call (`attribution` names the
    rule); the window totals are kept beside it.

    Fields after `collect_run` came with schema 2 and have defaults, so samples
    of older stores still build: the batch regime (`dtype`, `batch_rows`: the
    sequences per generate call every arm of the collection shared) and the
    answer's per-token confidence under the model's own (temperature 1)
    distribution, in nats, rounded to float16: the chosen token's log-probability,
    the most likely token's, and the entropy, one entry per output token, with
    their summaries (None where the lists are empty).
    """

    query_id: str
    task: str
    question: str
    gold: str
    model: str
    temperature: float
    max_new_tokens: int
    seed: int
    sample_index: int
    batch_id: str
    prompt_tokens: int
    output_tokens: int
    finished: bool
    text: str
    answer: str | None
    extraction: str
    correct: bool
    duration_s: float
    energy_j: float
    energy_above_idle_j: float
    prefill_energy_j: float
    window_energy_j: float
    window_duration_s: float
    window_samples: int
    window_output_tokens: int
    meter: str
    energy_source: str
    attribution: str
    levels: list[int]
    level_output_tokens: list[int]
    level_answer: list[str | None]
    level_correct: list[bool]
    level_energy_j: list[float]
    level_duration_s: list[float]
    collect_run: str = ""
    schema_version: int = SAMPLE_SCHEMA_VERSION
    dtype: str = ""
    batch_rows: int = 0
    token_logprob: list[float] = field(default_factory=list)
    token_top1_logprob: list[float] = field(default_factory=list)
    token_entropy: list[float] = field(default_factory=list)
    mean_logprob: float | None = None
    min_logprob: float | None = None
    mean_entropy: float | None = None
    #: where it was generated (`ttc collect --ray`): the node's host name, and "gpuN" (the GPU index Ray
    #: assigned on that node) or "cpu"; "" when collected in one process
    node: str = ""
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Sample fields a store written before schema 2 lacks; readers of them must expect them missing.
SAMPLE_FIELDS_ADDED_V2 = (
    "dtype",
    "batch_rows",
    "token_logprob",
    "token_top1_logprob",
    "token_entropy",
    "mean_logprob",
    "min_logprob",
    "mean_entropy",
)


#: Sample fields added later still (placement, written by `ttc collect --ray`); older stores lack them.
SAMPLE_FIELDS_ADDED_PLACEMENT = ("node", "device")


def sample_fields() -> list[str]:
    """The columns every store holds (schema 1 and later); see `SAMPLE_FIELDS_ADDED_*` for the rest."""
    optional = (*SAMPLE_FIELDS_ADDED_V2, *SAMPLE_FIELDS_ADDED_PLACEMENT)
    return [f.name for f in dataclasses.fields(Sample) if f.name not in optional]


@dataclass(frozen=True)
class ArmOutcome:
    """One arm applied to one query, derived from that query's samples.

    `correct` is the majority vote of the first `n` samples graded at
    `max_new_tokens`; `correct_soft` is the mean vote correctness over random
    subsets of `n` of the available samples (a softer training label).
    Energy and duration are summed over the `n` samples.
    """

    query_id: str
    task: str
    arm_id: str
    model: str
    n: int
    max_new_tokens: int
    temperature: float
    correct: bool
    correct_soft: float
    answer: str | None
    energy_j: float
    duration_s: float
    output_tokens: int
    meter: str
    energy_source: str


@dataclass(frozen=True)
class Decision:
    """The allocator's choice for one query, with the reason a caller can inspect.

    `next_arm_id` is the next bigger arm on the query's convex hull (None at
    the top), and `marginal_acc_per_j` the accuracy it would add per extra joule.
    `rule` is "price", "budget" or "hopeless".
    """

    query_id: str
    arm_id: str
    p_success: float
    energy_j: float
    next_arm_id: str | None
    marginal_acc_per_j: float | None
    rule: str
    lam: float
