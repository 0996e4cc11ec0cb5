"""Answer extraction and grading, shared by the collect stage (grading samples) and serve (voting answers).

A completion is graded in two steps: pull one normalised answer out of the
free text (`extract_answer` for numbers, `extract_name` for a single name,
`extract_text` for free-form answers), then compare it with the gold answer.
Extraction follows lm-evaluation-harness: a strict pattern first ("The answer
is N", "#### N"), then a flexible fallback (the last number). Small models
often state the right number without the closing phrase; strict-only grading
scored SmolLM2-135M at about half its lenient accuracy, so the fallback is
kept and the `Grade` records which one fired.

This module must never call a model, touch the network or import torch: it is
pure string work (the standard library only), fast enough to grade every
sample at every token cap.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

STRICT = "strict"
FLEXIBLE = "flexible"
SCORER = "scorer"
NONE = "none"
EXTRACTIONS = (STRICT, FLEXIBLE, SCORER, NONE)


@dataclass(frozen=True)
class Grade:
    """One graded completion.

    `answer` is the normalised extracted answer (None when nothing could be
    extracted); `extraction` says how it was found: "strict" (the answer
    phrase), "flexible" (fallback, e.g. the last number), "scorer" (a task's
    own scorer read the raw text) or "none".
    """

    answer: str | None
    extraction: str
    correct: bool


NO_ANSWER = Grade(None, NONE, False)

# Thousands separators only in groups of three, so a list "3, 4, 5" is three
# numbers, not 345. The lookbehind keeps "3-4" from reading as minus four and
# "H2O" or "10.5" from yielding a stray digit.
_NUM = r"(?<![\w.$])-?\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
_NUM_RE = re.compile(_NUM)
_STRICT_RE = re.compile(rf"(?:the answer is|####)\s*:?\s*({_NUM})", re.IGNORECASE)
_ANSWER_PHRASE_RE = re.compile(r"the answer is\s*:?\s*(.+)", re.IGNORECASE)
_NAME_RE = re.compile(r"\b[A-Z][a-zA-Z'-]+\b")

# Capitalised words a completion uses around a name that are never the name.
_NOT_NAMES = frozenset(
    "The A An Answer Question Q I It He She They Who What Which Reply Only Name So Therefore Thus Yes No".split()
)


def normalize_number(s: str) -> str | None:
    """Canonical text of a number: "1,234.50" -> "1234.5", "$7" -> "7", "-3.0" -> "-3".

    Returns None when `s` is not a number after stripping "$", commas,
    surrounding spaces and a trailing full stop.
    """
    t = s.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if t.startswith("--"):
        return None
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str) -> tuple[str | None, str]:
    """Numeric answer of a completion and how it was found.

    Strict: the first "The answer is N" or "#### N" (the first, because a
    completion that runs on into a made-up next question states our answer
    first). Flexible: the last number anywhere, as lm-evaluation-harness does.
    Returns (None, "none") when the text holds no number.
    """
    m = _STRICT_RE.search(text)
    if m:
        value = normalize_number(m.group(1))
        if value is not None:
            return value, STRICT
    for raw in reversed(_NUM_RE.findall(text)):
        value = normalize_number(raw)
        if value is not None:
            return value, FLEXIBLE
    return None, NONE


def extract_name(text: str) -> tuple[str | None, str]:
    """A single-name answer: the word after "The answer is", else a capitalised word of the first line naming one."""
    m = _ANSWER_PHRASE_RE.search(text)
    if m:
        words = _NAME_RE.findall(m.group(1).split("\n")[0])
        words = [w for w in words if w not in _NOT_NAMES]
        if words:
            return words[0], STRICT
    # The first line that names anyone, and its last name there: "The person who
    # craves red is Ayan." ends with the answer, and later lines are often a
    # made-up next question whose names would be wrong.
    for line in text.splitlines():
        words = [w for w in _NAME_RE.findall(line) if w not in _NOT_NAMES]
        if words:
            return words[-1], FLEXIBLE
    return None, NONE


def normalize_text(s: str) -> str:
    """SQuAD-style text key: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in string.punctuation)
    words = [w for w in s.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def extract_text(text: str) -> tuple[str | None, str]:
    """A free-form answer: the rest of the line after "The answer is", else the last non-empty line."""
    m = _ANSWER_PHRASE_RE.search(text)
    if m:
        value = normalize_text(m.group(1).split("\n")[0])
        if value:
            return value, STRICT
    for line in reversed(text.strip().splitlines()):
        value = normalize_text(line)
        if value:
            return value, FLEXIBLE
    return None, NONE


def grade_number(completion: str, gold: str) -> Grade:
    """Correct when the extracted number equals the gold number (after normalising both)."""
    answer, kind = extract_answer(completion)
    if answer is None:
        return NO_ANSWER
    return Grade(answer, kind, answer == normalize_number(gold))


def grade_text(completion: str, gold: str) -> Grade:
    """Correct when the extracted text equals the gold text under `normalize_text`."""
    answer, kind = extract_text(completion)
    if answer is None:
        return NO_ANSWER
    return Grade(answer, kind, answer == normalize_text(gold))
