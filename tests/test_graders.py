"""Answer extraction and grading, checked on real GSM8K items from the packaged test file."""

from __future__ import annotations

import json

import pytest

from collect.tasks import gsm8k_gold, packaged_gsm8k_path
from policy.answers import (
    Grade,
    extract_answer,
    extract_name,
    extract_text,
    grade_number,
    grade_text,
    normalize_number,
)


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict[str, str]]:
    with open(packaged_gsm8k_path(), encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(40), f, strict=False)]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1,234.50", "1234.5"),
        ("$7", "7"),
        ("-3.0", "-3"),
        ("72", "72"),
        ("0.50", "0.5"),
        ("$1,000,000", "1000000"),
        ("18.", "18"),
        ("+5", "5"),
        ("-0", "0"),
        ("twelve", None),
        ("", None),
        ("nan", None),
        ("1.2.3", None),
    ],
)
def test_normalize_number_gives_canonical_text(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


def test_answer_phrase_is_strict_on_real_gsm8k_golds(gsm8k_rows: list[dict[str, str]]) -> None:
    for row in gsm8k_rows:
        gold = gsm8k_gold(row["answer"])
        assert extract_answer(f"Some reasoning with 3 numbers 12. The answer is {gold}.") == (gold, "strict")


def test_reference_solutions_grade_correct_by_hash_marker(gsm8k_rows: list[dict[str, str]]) -> None:
    # The real solutions hold many intermediate numbers and end with "#### N".
    for row in gsm8k_rows:
        grade = grade_number(row["answer"], gsm8k_gold(row["answer"]))
        assert grade.extraction == "strict"
        assert grade.correct, row["answer"]


def test_flexible_fallback_takes_the_last_number(gsm8k_rows: list[dict[str, str]]) -> None:
    gold = gsm8k_gold(gsm8k_rows[0]["answer"])  # Janet's ducks: 18
    assert gold == "18"
    completion = "She sells 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18"
    assert grade_number(completion, gold) == Grade("18", "flexible", True)


def test_first_strict_answer_wins_over_a_run_on_question() -> None:
    text = "The answer is 18.\n\nQuestion: Tom has 5 apples and eats 2. The answer is 3."
    assert extract_answer(text) == ("18", "strict")


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("The answer is $1,234.50.", "1234.5"),
        ("So she makes $18 every day.", "18"),
        ("#### 1,000", "1000"),
        ("####72", "72"),
        ("The answer is: -3.0", "-3"),
        ("The answer is 0.5 liters.", "0.5"),
        ("It costs $-4.", "-4"),
    ],
)
def test_commas_dollars_decimals_and_signs_are_normalised(completion: str, expected: str) -> None:
    assert extract_answer(completion)[0] == expected


def test_list_commas_are_not_thousands_separators() -> None:
    assert extract_answer("The numbers are 3, 4, 5") == ("5", "flexible")


def test_hyphenated_range_is_not_a_negative_number() -> None:
    assert extract_answer("somewhere between 3-4") == ("4", "flexible")


def test_digits_inside_words_are_not_numbers() -> None:
    assert extract_answer("Water is H2O.") == (None, "none")


def test_unparseable_completion_is_recorded_as_none() -> None:
    assert grade_number("I don't know, maybe a lot?", "18") == Grade(None, "none", False)
    assert grade_number("", "18") == Grade(None, "none", False)


def test_wrong_number_is_recorded_with_its_extraction() -> None:
    assert grade_number("The answer is 17.", "18") == Grade("17", "strict", False)


def test_name_after_answer_phrase_is_strict() -> None:
    assert extract_name("Ayan bears playing rugby. The answer is Ayan.") == ("Ayan", "strict")


def test_name_fallback_reads_the_first_line_that_names_someone() -> None:
    assert extract_name("Who bears playing rugby? Ayan") == ("Ayan", "flexible")
    assert extract_name("The one who bears playing rugby is Ayan.") == ("Ayan", "flexible")
    assert extract_name("Answer:\nAyan\n\nQuestion: Tayo likes tea. Who likes tea?") == ("Ayan", "flexible")
    assert extract_name("no names here") == (None, "none")


def test_text_answers_compare_after_normalising() -> None:
    assert extract_text("It is in France. The answer is the Eiffel Tower!") == ("eiffel tower", "strict")
    assert grade_text("The answer is Paris.", "paris").correct
    assert not grade_text("The answer is Lyon.", "Paris").correct
    assert grade_text("   \n", "Paris") == Grade(None, "none", False)
