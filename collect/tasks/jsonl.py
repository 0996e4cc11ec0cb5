"""A user's task file: one {"id"?, "question", "answer"} JSON object per line (`jsonl:PATH`).

Never calls a model; the file is read eagerly so a bad line fails at construction.
"""

from __future__ import annotations

from pathlib import Path

from collect.tasks.base import REASONING, Item, Task
from policy.answers import Grade, grade_number, grade_text, normalize_number
from policy.errors import UsageError
from store.jsonl import read_jsonl

JSONL_PREFIX = "jsonl:"

JSONL_DEMOS = [
    ("What is 2 + 3?", "2 + 3 = 5. The answer is 5."),
    ("What is the capital of France?", "The capital of France is Paris. The answer is Paris."),
]


class JsonlTask(Task):
    """A user's file: one {"id"?, "question", "answer"} object per line.

    Numeric gold answers are graded as numbers, others as normalised text.
    The query id is "<name>:<id>", with the line number (from 1) when a line
    has no "id".
    """

    def __init__(self, path: str, name: str | None = None, kind: str = REASONING) -> None:
        self.path = path
        self.name = name or f"jsonl.{Path(path).stem}"
        self.kind = kind
        self.demos = JSONL_DEMOS
        self._pool_cache = self._load_pool()

    def _load_pool(self) -> list[Item]:
        pool: list[Item] = []
        ids: set[str] = set()
        for lineno, row in read_jsonl(self.path, "'question' and 'answer'"):
            question, answer = row.get("question"), row.get("answer")
            if not isinstance(question, str) or not question.strip():
                raise UsageError(f"{self.path} line {lineno}: missing 'question' (a non-empty string)")
            if answer is None or str(answer).strip() == "":
                raise UsageError(f"{self.path} line {lineno}: missing 'answer'")
            item_id = str(row.get("id", lineno))
            if item_id in ids:
                raise UsageError(f"{self.path} line {lineno}: duplicate id {item_id!r}; ids must be unique")
            ids.add(item_id)
            pool.append(Item(f"{self.name}:{item_id}", self.name, question, str(answer).strip()))
        if not pool:
            raise UsageError(f"task file {self.path!r} holds no questions")
        return pool

    def grade(self, item: Item, completion: str) -> Grade:
        if normalize_number(item.gold) is not None:
            return grade_number(completion, item.gold)
        return grade_text(completion, item.gold)


def load_jsonl_task(path: str, name: str | None = None) -> Task:
    """A task from a user's JSONL file; see `JsonlTask`."""
    return JsonlTask(path, name=name)
