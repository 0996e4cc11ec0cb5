"""The registered reasoning-gym configurations (see collect/tasks/rg.py for how they run).

Names are stable: recorded stores refer to them, so a configuration is never
changed in place; a new setting or prompt gets a new name. Demo questions copy
each dataset's phrasing but use values the pools are filtered against, so no
item is answered by its own demo. This module is data only (and the `RGSpec` type
and `arith_config` helper the data is written in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RGSpec:
    """One named reasoning-gym configuration: dataset name, config kwargs, answer type, demos."""

    dataset: str
    config: dict[str, Any]
    answer: str  # "number" or "name"
    demos: list[tuple[str, str]]


def arith_config(digits: int, operators: tuple[str, ...], terms: int = 2) -> dict[str, Any]:
    """`basic_arithmetic` settings: `terms` numbers of 1 to `digits` digits, no parentheses."""
    return {
        "min_terms": terms,
        "max_terms": terms,
        "min_digits": 1,
        "max_digits": digits,
        "operators": operators,
        "allow_parentheses": False,
        "allow_negation": False,
    }


RG_SPECS: dict[str, RGSpec] = {
    "rg.basic_arithmetic_1d": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("+",)),
        "number",
        [("Calculate 2 + 6.", "2 + 6 = 8. The answer is 8."), ("Calculate 7 + 5.", "7 + 5 = 12. The answer is 12.")],
    ),
    "rg.arith_1d_pm": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("+", "-")),
        "number",
        [("Calculate 9 - 4.", "9 - 4 = 5. The answer is 5."), ("Calculate 3 + 8.", "3 + 8 = 11. The answer is 11.")],
    ),
    "rg.basic_arithmetic_2d": RGSpec(
        "basic_arithmetic",
        arith_config(2, ("+",)),
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
    # Written intermediate steps: SmolLM2-135M answers three-term sums far more
    # often when it writes the partial sum first (pilot: 0.34 per sample against
    # 0.10 with a one-line answer), and the answer lands after ~20 tokens, so a
    # 16-token cap cuts it off: the mix's task where output length buys accuracy.
    "rg.add3_1d_steps": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("+",), terms=3),
        "number",
        [
            ("Calculate 2 + 6 + 3.", "2 + 6 = 8. 8 + 3 = 11. The answer is 11."),
            ("Calculate 7 + 5 + 8.", "7 + 5 = 12. 12 + 8 = 20. The answer is 20."),
        ],
    ),
    # Small least common multiples: SmolLM2 gets about a quarter of samples
    # right and a vote of 8 about half (pilot), so samples pay here.
    "rg.lcm_small": RGSpec(
        "lcm",
        {"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 10},
        "number",
        [
            (
                "Find the Least Common Multiple (LCM) of these numbers: 4, 6",
                "4 * 3 = 12 and 6 * 2 = 12. The answer is 12.",
            ),
            (
                "Find the Least Common Multiple (LCM) of these numbers: 3, 5",
                "3 * 5 = 15 and 5 * 3 = 15. The answer is 15.",
            ),
        ],
    ),
    # Counting one letter in one word, spelled out letter by letter in the demos.
    "rg.letter_count_1w": RGSpec(
        "letter_counting",
        {"min_words": 1, "max_words": 1},
        "number",
        [
            (
                'How many times does the letter "e" appear in the text: "seven"?',
                "s, e, v, e, n: 2 times. The answer is 2.",
            ),
            (
                'How many times does the letter "a" appear in the text: "banana"?',
                "b, a, n, a, n, a: 3 times. The answer is 3.",
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
