"""The small base every task family builds on: an `Item` and the `Task` contract.

A task is a fixed, deterministic pool of items (question, gold answer) with a
stable `query_id` per item; `items(limit, seed)` draws a seeded subset of that
pool, so a query id always names the same question whatever the seed or limit,
and `items(10, s)` is a prefix of `items(20, s)`.

This module must never call a model, reach the network or import a heavy
library: families import theirs only when they build a pool.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from policy.answers import Grade
from policy.errors import UsageError

REASONING = "reasoning"
FACTUAL = "factual"

DATA_DIR = Path(__file__).parent.parent / "data"


@dataclass(frozen=True)
class Item:
    """One question of one task; `query_id` is unique across tasks, e.g. "gsm8k:17"."""

    query_id: str
    task: str
    question: str
    gold: str


class Task(ABC):
    """A named pool of items plus the grader for their answers.

    Subclasses set `name`, `kind` ("reasoning" or "factual") and `demos` (two
    short few-shot (question, answer) pairs whose answers end with "The answer
    is X.", which the model adapter turns into chat turns), and implement
    `_load_pool` and `grade`.
    """

    name: str
    kind: str
    demos: list[tuple[str, str]]

    @abstractmethod
    def _load_pool(self) -> list[Item]:
        """Every item of the task, in a fixed order, with stable query ids."""

    @abstractmethod
    def grade(self, item: Item, completion: str) -> Grade:
        """Grade one completion for `item`."""

    def pool(self) -> list[Item]:
        # Cached per instance: GSM8K parses a 750 kB file and rg tasks generate
        # a thousand entries; items() and graders may ask many times.
        if not hasattr(self, "_pool_cache"):
            self._pool_cache = self._load_pool()
        return self._pool_cache

    def items(self, limit: int, seed: int = 0) -> list[Item]:
        """`limit` items drawn from the pool by a seeded shuffle (the whole pool when smaller)."""
        if limit < 1:
            raise UsageError(f"task {self.name!r}: limit must be >= 1, got {limit}")
        pool = list(self.pool())
        random.Random(seed).shuffle(pool)
        return pool[:limit]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
