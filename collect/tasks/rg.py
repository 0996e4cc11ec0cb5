"""Procedural tasks from `reasoning_gym`: named configurations of its generators.

Each `RGSpec` (rg_specs.py) names a generator, its difficulty settings and the two few-shot
demos that set the answer format (a one-line answer or written intermediate
steps). Items are graded by the generator's own scorer, counting only a full
score. `reasoning_gym` is imported only when a pool is built; this module never
calls a model.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

from collect.tasks.base import REASONING, Item, Task
from collect.tasks.rg_specs import RG_SPECS, RGSpec
from policy.answers import NO_ANSWER, Grade, extract_answer, extract_name
from policy.errors import unknown_name

# Pool size per rg configuration before de-duplication; small configurations
# (1-digit sums) collapse to their ~100 distinct questions.
RG_POOL_SIZE = 1000


class ReasoningGymTask(Task):
    """One reasoning-gym configuration, graded by the dataset's own scorer (full score only).

    `spec` defaults to the registered one; the pilot passes candidate specs
    that are not (yet) registered.
    """

    def __init__(self, name: str, spec: RGSpec | None = None) -> None:
        if spec is None and name not in RG_SPECS:
            raise unknown_name("reasoning-gym task", name, RG_SPECS)
        self.spec = spec or RG_SPECS[name]
        self.name = name
        self.kind = REASONING
        self.demos = self.spec.demos

    @functools.cached_property
    def _dataset(self) -> Any:
        import reasoning_gym

        # A pool seed derived from the name, so two configurations of one
        # dataset (e.g. 1-digit and 2-digit sums) do not draw correlated numbers.
        pool_seed = zlib.crc32(self.name.encode())
        return reasoning_gym.create_dataset(self.spec.dataset, size=RG_POOL_SIZE, seed=pool_seed, **self.spec.config)

    def _load_pool(self) -> list[Item]:
        seen = {q for q, _ in self.demos}
        pool: list[Item] = []
        for entry in self._dataset:
            if entry["question"] in seen:
                continue
            seen.add(entry["question"])
            pool.append(Item(f"{self.name}:{len(pool)}", self.name, entry["question"], str(entry["answer"])))
        return pool

    def grade(self, item: Item, completion: str) -> Grade:
        extract = extract_name if self.spec.answer == "name" else extract_answer
        answer, kind = extract(completion)
        if answer is None:
            return NO_ANSWER
        # The registered configurations' scorers read only entry["answer"]. Some
        # scorers give partial credit to an answer that merely contains the gold
        # (e.g. "17" for gold "7"), so only a full score counts as correct.
        entry = {"question": item.question, "answer": item.gold, "metadata": {}}
        score = self._dataset.score_answer(answer, entry)
        return Grade(answer, kind, score >= 1.0)
