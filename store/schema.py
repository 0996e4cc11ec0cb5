"""The data layer's column lists, each defined once: sample keys, the arm view's inputs, arm rows.

- `GROUP_KEY`: one generation group (every sample of one query from one
  generate call); the store never writes a group twice.
- `SAMPLE_KEY`: one sample; no two rows of a store may share it.
- `VIEW_COLUMNS`: the `Sample` columns the arm view reads.
- `TRAIN_SAMPLE_COLUMNS`: the `Sample` columns training reads (the view's plus
  the question text and the sample's joules).
- `ARM_COLUMNS` / `ARM_DTYPES`: one arm row (`policy.records.ArmOutcome`), the
  rows of the arm view and of training.

Standard library only (plus `policy.records`); never reads or writes data.
"""

from __future__ import annotations

import dataclasses

from policy.records import ArmOutcome

GROUP_KEY: tuple[str, ...] = ("query_id", "model", "temperature", "max_new_tokens", "seed")
SAMPLE_KEY: tuple[str, ...] = (*GROUP_KEY, "sample_index")

VIEW_COLUMNS: tuple[str, ...] = (
    "model",
    "temperature",
    "query_id",
    "sample_index",
    "task",
    "levels",
    "level_answer",
    "level_correct",
    "level_energy_j",
    "level_duration_s",
    "level_output_tokens",
    "meter",
    "energy_source",
)
TRAIN_SAMPLE_COLUMNS: tuple[str, ...] = (*VIEW_COLUMNS, "question", "energy_j")

#: One arm applied to one query: the columns of `store.views.arm_outcomes` and of training rows.
ARM_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ArmOutcome))
#: The pandas dtype of each arm-row column ("object" = str, or None for `answer`).
ARM_DTYPES: dict[str, str] = {
    f.name: {"str": "object", "str | None": "object", "int": "int64", "float": "float64", "bool": "bool"}[f.type]
    for f in dataclasses.fields(ArmOutcome)
}

#: How held-out queries are chosen: whole queries, or whole tasks (the split file's `kind`).
SPLIT_KINDS = ("query", "task")
