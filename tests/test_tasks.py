"""The task registry: deterministic items, stable unique ids, graders that accept gold and reject wrong answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from collect.tasks import (
    DEFAULT_TASKS,
    TASKS,
    GSM8KTask,
    Item,
    Task,
    gsm8k_gold,
    load_jsonl_task,
    make_task,
    packaged_gsm8k_path,
)
from policy.errors import UsageError


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: make_task(name) for name in TASKS}


def _wrong(task: Task, item: Item) -> str:
    if item.task == "rg.needle_haystack":
        return "The answer is Zzyzx."
    return f"The answer is {int(item.gold) + 1}."


@pytest.mark.parametrize("name", list(TASKS))
def test_items_are_deterministic_for_a_seed(name: str, tasks: dict[str, Task]) -> None:
    fresh = make_task(name)
    assert fresh.items(8, seed=3) == tasks[name].items(8, seed=3)
    assert tasks[name].items(8, seed=3) != tasks[name].items(8, seed=4)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_smaller_limit_is_a_prefix_of_a_larger_one(name: str, tasks: dict[str, Task]) -> None:
    assert tasks[name].items(5, seed=1) == tasks[name].items(10, seed=1)[:5]


@pytest.mark.parametrize("name", list(TASKS))
def test_task_metadata_is_well_formed(name: str, tasks: dict[str, Task]) -> None:
    task = tasks[name]
    assert task.name == name
    assert task.kind in ("reasoning", "factual")
    assert len(task.demos) == 2
    for question, answer in task.demos:
        assert question.strip()
        assert re.search(r"The answer is \S.*\.$", answer), answer


@pytest.mark.parametrize("name", list(TASKS))
def test_grader_accepts_gold_and_rejects_wrong(name: str, tasks: dict[str, Task]) -> None:
    task = tasks[name]
    for item in task.items(15, seed=0):
        assert task.grade(item, f"Let me think step by step. The answer is {item.gold}.").correct, item
        assert not task.grade(item, _wrong(task, item)).correct, item
        assert task.grade(item, "I cannot tell.").extraction == "none"


@pytest.mark.parametrize("name", list(TASKS))
def test_demo_answers_grade_correct_on_their_own_questions(name: str, tasks: dict[str, Task]) -> None:
    task = tasks[name]
    for question, answer in task.demos:
        gold = re.search(r"The answer is (\S+)\.$", answer).group(1)
        assert task.grade(Item(f"{name}:demo", name, question, gold), answer).correct


def test_query_ids_are_unique_across_all_tasks(tasks: dict[str, Task]) -> None:
    ids = [item.query_id for task in tasks.values() for item in task.pool()]
    assert len(ids) == len(set(ids))
    for task in tasks.values():
        assert all(item.query_id.startswith(f"{task.name}:") and item.task == task.name for item in task.pool())


def test_demo_questions_never_appear_as_items(tasks: dict[str, Task]) -> None:
    for task in tasks.values():
        questions = {item.question for item in task.pool()}
        assert not questions & {q for q, _ in task.demos}, task.name


def test_limit_beyond_the_pool_gives_the_whole_pool(tasks: dict[str, Task]) -> None:
    task = tasks["rg.products_1x1"]
    assert sorted(i.query_id for i in task.items(10_000)) == sorted(i.query_id for i in task.pool())


def test_nonpositive_limit_is_a_usage_error(tasks: dict[str, Task]) -> None:
    with pytest.raises(UsageError, match="limit"):
        tasks["gsm8k"].items(0)


def test_gsm8k_is_the_real_test_set_with_hash_gold(tasks: dict[str, Task]) -> None:
    with open(packaged_gsm8k_path(), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    pool = tasks["gsm8k"].pool()
    assert len(pool) == len(rows) == 1319
    assert pool[0] == Item("gsm8k:0", "gsm8k", rows[0]["question"], "18")
    assert all(item.gold == gsm8k_gold(row["answer"]) for item, row in zip(pool, rows, strict=True))


def test_gsm8k_hub_source_loads_openai_gsm8k(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path: str, *args: str, **kwargs: str) -> list[dict[str, str]]:
        calls.append((path, args, kwargs))
        return [{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pool = GSM8KTask(source="hub").pool()
    assert calls == [("openai/gsm8k", ("main",), {"split": "test"})]
    assert pool == [Item("gsm8k:0", "gsm8k", "What is 1 + 1?", "2")]


def test_unknown_gsm8k_source_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="hub, package"):
        GSM8KTask(source="web").pool()


def test_rg_partial_credit_does_not_count(tasks: dict[str, Task]) -> None:
    # simple_equations' default scorer gives len(gold)/len(answer) to an answer
    # containing the gold; "1<gold>" contains it but is wrong.
    task = tasks["rg.simple_equations"]
    item = task.items(1)[0]
    grade = task.grade(item, f"The answer is 1{item.gold}.")
    assert grade.answer == f"1{item.gold}"
    assert not grade.correct


def test_needle_haystack_grades_a_bare_name(tasks: dict[str, Task]) -> None:
    task = tasks["rg.needle_haystack"]
    item = task.items(1)[0]
    assert item.gold in item.question
    assert task.grade(item, f" {item.gold}\n").correct


def test_atomic_numbers_come_from_the_periodic_table(tasks: dict[str, Task]) -> None:
    task = tasks["facts.atomic_number"]
    by_id = {item.query_id: item for item in task.pool()}
    assert by_id["facts.atomic_number:6"].question == "What is the atomic number of carbon?"
    assert by_id["facts.atomic_number:6"].gold == "6"
    assert by_id["facts.atomic_number:118"].question == "What is the atomic number of oganesson?"
    assert task.kind == "factual"


def test_default_tasks_are_registered_and_mix_kinds(tasks: dict[str, Task]) -> None:
    assert set(DEFAULT_TASKS) <= set(TASKS)
    assert len(DEFAULT_TASKS) == len(set(DEFAULT_TASKS))
    assert {tasks[name].kind for name in DEFAULT_TASKS} == {"reasoning", "factual"}


def test_unknown_task_error_lists_known_names() -> None:
    with pytest.raises(UsageError) as err:
        make_task("gsm8")
    message = str(err.value)
    assert "'gsm8'" in message
    for name in TASKS:
        assert name in message
    assert "jsonl:PATH" in message


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_task_reads_ids_questions_and_answers(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"id": "a", "question": "What is 6 * 7?", "answer": 42}),
            "",
            json.dumps({"question": "Capital of Italy?", "answer": "Rome"}),
        ],
    )
    task = make_task(f"jsonl:{path}")
    assert task.name == "jsonl.mine"
    assert task.pool() == [
        Item("jsonl.mine:a", "jsonl.mine", "What is 6 * 7?", "42"),
        Item("jsonl.mine:3", "jsonl.mine", "Capital of Italy?", "Rome"),
    ]
    numeric, text = task.pool()
    assert task.grade(numeric, "6 * 7 = 42").correct
    assert task.grade(text, "The answer is rome.").correct
    assert not task.grade(text, "The answer is Milan.").correct
    assert load_jsonl_task(path, name="custom").pool()[0].query_id == "custom:a"


@pytest.mark.parametrize(
    "lines, match",
    [
        ([json.dumps({"question": "q1", "answer": "1"}), json.dumps({"answer": "2"})], "line 2: missing 'question'"),
        ([json.dumps({"question": "q1"})], "line 1: missing 'answer'"),
        ([json.dumps({"question": "q1", "answer": "1"}), "{not json"], "line 2: not valid JSON"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        ([json.dumps({"id": 1, "question": "q", "answer": "1"})] * 2, "line 2: duplicate id '1'"),
        ([""], "holds no questions"),
    ],
)
def test_bad_jsonl_lines_are_usage_errors_naming_the_line(tmp_path: Path, lines: list[str], match: str) -> None:
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UsageError, match=match):
        load_jsonl_task(path)


def test_missing_jsonl_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        make_task(f"jsonl:{tmp_path / 'absent.jsonl'}")


def test_recorded_reference_queries_are_still_generated_identically(reference_store: Path) -> None:
    # Stores refer to tasks by name and to questions by query id: a refactor or a
    # new registration must never change what an old id asks.
    from store.loader import load_samples

    recorded = load_samples(reference_store, columns=["task", "question", "gold"]).drop_duplicates("query_id")
    for name, rows in recorded.groupby("task"):
        by_id = {item.query_id: item for item in make_task(str(name)).pool()}
        for row in rows.itertuples():
            assert (by_id[row.query_id].question, by_id[row.query_id].gold) == (row.question, row.gold), row.query_id


def test_steps_tasks_show_intermediate_results_before_the_answer(tasks: dict[str, Task]) -> None:
    # The length-sensitive family: each demo writes at least two partial results
    # ("a = b.") before "The answer is", so the model's answer comes late.
    steps = [name for name in TASKS if name.endswith("_steps")]
    assert steps
    for name in steps:
        for _, answer in tasks[name].demos:
            before = answer.split("The answer is")[0]
            assert before.count("=") >= 2, (name, answer)


def test_three_term_sums_grade_the_written_steps_by_their_final_answer(tasks: dict[str, Task]) -> None:
    task = tasks["rg.add3_1d_steps"]
    item = task.items(1)[0]
    a, b, c = (int(x) for x in re.findall(r"\d+", item.question))
    assert item.gold == str(a + b + c)
    steps = f"{a} + {b} = {a + b}. {a + b} + {c} ="
    assert task.grade(item, f"{steps} {a + b + c}. The answer is {a + b + c}.").correct
    assert not task.grade(item, f"{steps} {a + b + c + 1}. The answer is {a + b + c + 1}.").correct
    # cut off before the answer (a 16-token cap): the last partial sum is not the answer
    assert not task.grade(item, steps).correct


def test_default_mix_keeps_the_papers_contrast_and_a_length_task(tasks: dict[str, Task]) -> None:
    assert "gsm8k" in DEFAULT_TASKS
    assert any(tasks[name].kind == "factual" for name in DEFAULT_TASKS)
    assert any(name.endswith("_steps") for name in DEFAULT_TASKS)
