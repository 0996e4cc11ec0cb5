"""The task registry of the collect stage: which questions a model is asked, and how its answers are graded.

One module per task family on a small base (`base.Task`, `base.Item`):

- `gsm8k`: the real GSM8K test set (collect/tasks/gsm8k.py).
- `rg.*`: procedural reasoning-gym configurations (rg.py runs them, rg_specs.py names them).
- `facts.atomic_number`: factual recall from the periodic table (facts.py).
- `jsonl:PATH`: a user's file (jsonl.py).

Tasks are looked up by name in `TASKS`, which the CLI's choices come from;
`DEFAULT_TASKS` is the mix `ttc collect` uses when none is given. Importing
this package must stay cheap and must never call a model or the network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from collect.tasks.base import DATA_DIR, FACTUAL, REASONING, Item, Task
from collect.tasks.facts import FACT_DEMOS, AtomicNumberTask
from collect.tasks.gsm8k import GSM8K_DEMOS, GSM8KTask, gsm8k_gold, packaged_gsm8k_path
from collect.tasks.jsonl import JSONL_DEMOS, JSONL_PREFIX, JsonlTask, load_jsonl_task
from collect.tasks.rg import RG_POOL_SIZE, ReasoningGymTask
from collect.tasks.rg_specs import RG_SPECS, RGSpec
from policy.errors import unknown_name

__all__ = [
    "DATA_DIR",
    "DEFAULT_TASKS",
    "FACTUAL",
    "FACT_DEMOS",
    "GSM8K_DEMOS",
    "JSONL_DEMOS",
    "JSONL_PREFIX",
    "REASONING",
    "RG_POOL_SIZE",
    "RG_SPECS",
    "TASKS",
    "AtomicNumberTask",
    "GSM8KTask",
    "Item",
    "JsonlTask",
    "RGSpec",
    "ReasoningGymTask",
    "Task",
    "gsm8k_gold",
    "load_jsonl_task",
    "make_task",
    "packaged_gsm8k_path",
]

TASKS: dict[str, Callable[[], Task]] = {
    "gsm8k": GSM8KTask,
    **{name: functools.partial(ReasoningGymTask, name) for name in RG_SPECS},
    "facts.atomic_number": AtomicNumberTask,
    "facts.atomic_number_1_30": functools.partial(AtomicNumberTask, "facts.atomic_number_1_30", max_number=30),
}

# Chosen by measurement (scripts/pilot.py; tables in data/reference/README.md):
# for SmolLM2-135M at temperature 1.0, tasks where a vote of 8 beats one
# sample (three-term sums with written steps, needle-in-haystack, small LCMs,
# 2-digit sums), an easy tier (1-digit sums, 1x1 products), the length-
# sensitive rg.add3_1d_steps, the paper's contrasts (facts over the light
# elements: known or not, sampling does not help; GSM8K) and GSM8K as the
# hopeless tier (~0.01 per sample for both models). rg.chain_sum and
# rg.arith_1d_pm stay registered but out of the mix: a second hopeless task
# and a task whose errors are systematic (no vote gain).
DEFAULT_TASKS: list[str] = [
    "rg.basic_arithmetic_1d",
    "rg.products_1x1",
    "rg.basic_arithmetic_2d",
    "rg.needle_haystack",
    "rg.add3_1d_steps",
    "rg.lcm_small",
    "rg.letter_count_1w",
    "facts.atomic_number_1_30",
    "gsm8k",
]


def make_task(name: str) -> Task:
    """The task registered as `name`, or a user file given as "jsonl:/path/file.jsonl"."""
    if name.startswith(JSONL_PREFIX):
        return load_jsonl_task(name[len(JSONL_PREFIX) :])
    if name not in TASKS:
        raise unknown_name("task", name, list(TASKS) + ["jsonl:PATH"])
    return TASKS[name]()
