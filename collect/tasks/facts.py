"""Factual recall: the atomic number of each element, from `collect/data/elements.csv`.

The table was built from the `periodictable` package. This is the paper's
contrast to the reasoning tasks: more samples cannot recall a fact the model
does not hold. Never calls a model or the network.
"""

from __future__ import annotations

import csv

from collect.tasks.base import DATA_DIR, FACTUAL, Item, Task
from policy.answers import Grade, grade_number

FACT_DEMOS = [
    ("What is the atomic number of helium?", "Helium has 2 protons. The answer is 2."),
    ("What is the atomic number of oxygen?", "Oxygen has 8 protons. The answer is 8."),
]


def _read_elements() -> list[dict[str, str]]:
    with open(DATA_DIR / "elements.csv", newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


class AtomicNumberTask(Task):
    """Factual recall: "What is the atomic number of carbon?" -> "6", for elements 1 to `max_number`.

    Hydrogen to neon are common knowledge even for small models; the heavy
    elements are not, which gives the per-query spread the allocator needs.
    A variant over the light elements only (`max_number`) keeps the factual
    contrast out of the hopeless tier.
    """

    def __init__(self, name: str = "facts.atomic_number", max_number: int = 118) -> None:
        self.name = name
        self.max_number = max_number
        self.kind = FACTUAL
        self.demos = FACT_DEMOS

    def _load_pool(self) -> list[Item]:
        demo_questions = {q for q, _ in self.demos}
        pool = []
        for row in _read_elements():
            question = f"What is the atomic number of {row['name']}?"
            if question in demo_questions or int(row["number"]) > self.max_number:
                continue
            # Keyed by atomic number, not position, so ids survive any filtering.
            pool.append(Item(f"{self.name}:{row['number']}", self.name, question, row["number"]))
        return pool

    def grade(self, item: Item, completion: str) -> Grade:
        return grade_number(completion, item.gold)
