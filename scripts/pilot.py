"""Pilot a candidate task mix: where does test-time compute buy accuracy for a model?

For each candidate config (a registered task name, or a reasoning-gym setting
with its prompt that is not registered yet, from `CANDIDATES`), draws a few
queries, generates `--n` samples at `--temperature` (0.7) and one greedy sample per
query with the collect code's model adapter (collect.models.LoadedModel), grades
each sample at every cap in `--levels`, and prints one markdown row per config:

- `p1`: per-sample accuracy (the expected accuracy of the n=1 arm);
- `greedy`: the greedy sample's accuracy;
- `v4`, `v8` (`v16`): majority-vote accuracy of the first 4, 8 (16) samples,
  voted as the arm view votes (store.views.vote);
- `gain`: v8 - p1, the mean accuracy the vote of 8 buys over one sample;
- `band`: share of queries whose per-sample success rate is in [0.1, 0.9];
- `never`: share of queries no sample answered right;
- `p1@L`: per-sample accuracy at each cap (where a longer output buys accuracy).

Every figure is at the largest cap unless named `@L`. A JSON line per config is
appended to `--out` so tables can be rebuilt. Nothing is written to a store and
no energy is measured: this only chooses the mix.

    .venv/bin/python scripts/pilot.py --model smollm2-135m --queries 12 --levels 32,64 rg.arith_1d_pm ...
    .venv/bin/python scripts/pilot.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasoning_gym.logic.aiw import TaskType  # noqa: E402

from collect.tasks import RG_SPECS, TASKS, AtomicNumberTask, Item, ReasoningGymTask, RGSpec, Task, make_task  # noqa: E402
from collect.tasks.rg_specs import arith_config  # noqa: E402
from store.views import vote  # noqa: E402

_AIW_SIBLINGS = TaskType.SIBLINGS

_MUL = "Solve the following multiplication: {}. Give only the result as your final answer."
_GCD = "Find the Greatest Common Divisor (GCD) of these numbers: {}. Give only the GCD as your final answer."
_CHAIN = "State the final answer to the following arithmetic problem: {} ="
_LEGS = (
    "Your task is to count how many legs there are in total when given a list of animals.\n\n"
    "Now, how many legs are there in total if you have {}?\n"
)
_TRI = (
    "A convex polygon has 3 sides. The measures of the first 2 interior angles are: {}. Find the measure of the "
    "last interior angle.Return only the angle as your answer.Do not give the units in your answer."
)
_ZEBRA = (
    "This is a logic puzzle. There are 2 houses (numbered 1 on the left, 2 on the right), from the perspective of "
    "someone standing across the street from them. Each has a different person in them. They have different "
    "characteristics:\n - Each person has a unique name: {}\n - {}\n\n1. {}\n\nWhat is Name of the person who "
    "lives in House 1?? Provide only the name of the person as your final answer."
)

# Candidate settings and prompts not (yet) registered. "steps" prompts make the
# model write intermediate results before the answer: the place where a longer
# output can buy accuracy.
CANDIDATES: dict[str, RGSpec] = {
    "c.add3_1d": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("+",), terms=3),
        "number",
        [
            ("Calculate 2 + 6 + 3.", "2 + 6 + 3 = 11. The answer is 11."),
            ("Calculate 7 + 5 + 8.", "7 + 5 + 8 = 20. The answer is 20."),
        ],
    ),
    "c.add3_1d_steps": RG_SPECS["rg.add3_1d_steps"],  # promoted to the registry under that name (same spec)
    "c.add4_1d_steps": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("+",), terms=4),
        "number",
        [
            ("Calculate 2 + 6 + 3 + 9.", "2 + 6 = 8. 8 + 3 = 11. 11 + 9 = 20. The answer is 20."),
            ("Calculate 7 + 5 + 8 + 4.", "7 + 5 = 12. 12 + 8 = 20. 20 + 4 = 24. The answer is 24."),
        ],
    ),
    "c.pm3_1d_steps": RGSpec(
        "chain_sum",
        {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1},
        "number",
        [
            (_CHAIN.format("8 + 6 - 3"), "8 + 6 = 14. 14 - 3 = 11. The answer is 11."),
            (_CHAIN.format("9 - 2 + 5"), "9 - 2 = 7. 7 + 5 = 12. The answer is 12."),
        ],
    ),
    "c.add_2d2d": RGSpec(
        "basic_arithmetic",
        arith_config(2, ("+",)) | {"min_digits": 2},
        "number",
        [
            ("Calculate 23 + 41.", "23 + 41 = 64. The answer is 64."),
            ("Calculate 58 + 37.", "58 + 37 = 95. The answer is 95."),
        ],
    ),
    "c.add_2d2d_steps": RGSpec(
        "basic_arithmetic",
        arith_config(2, ("+",)) | {"min_digits": 2},
        "number",
        [
            ("Calculate 23 + 41.", "20 + 40 = 60. 3 + 1 = 4. 60 + 4 = 64. The answer is 64."),
            ("Calculate 58 + 37.", "50 + 30 = 80. 8 + 7 = 15. 80 + 15 = 95. The answer is 95."),
        ],
    ),
    "c.mul_2x1": RGSpec(
        "products",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        "number",
        [
            (_MUL.format("23 * 4"), "23 * 4 = 92. The answer is 92."),
            (_MUL.format("7 * 16"), "7 * 16 = 112. The answer is 112."),
        ],
    ),
    "c.mul_2x1_steps": RGSpec(
        "products",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        "number",
        [
            (_MUL.format("23 * 4"), "20 * 4 = 80. 3 * 4 = 12. 80 + 12 = 92. The answer is 92."),
            (_MUL.format("7 * 16"), "7 * 10 = 70. 7 * 6 = 42. 70 + 42 = 112. The answer is 112."),
        ],
    ),
    "c.needle_4_5": RGSpec(
        "needle_haystack",
        {"min_num_statements": 4, "max_num_statements": 5},
        "name",
        RG_SPECS["rg.needle_haystack"].demos,
    ),
    "c.needle_2": RGSpec(
        "needle_haystack",
        {"min_num_statements": 2, "max_num_statements": 2},
        "name",
        RG_SPECS["rg.needle_haystack"].demos,
    ),
    "c.lcm_12": RGSpec(
        "lcm",
        {"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 12},
        "number",
        RG_SPECS["rg.lcm_small"].demos,
    ),
    "c.letter_count_2w": RGSpec(
        "letter_counting",
        {"min_words": 2, "max_words": 2},
        "number",
        [
            (
                'How many times does the letter "e" appear in the text: "seven trees"?',
                "s, e, v, e, n, t, r, e, e, s: 4 times. The answer is 4.",
            ),
            (
                'How many times does the letter "a" appear in the text: "a banana"?',
                "a, b, a, n, a, n, a: 4 times. The answer is 4.",
            ),
        ],
    ),
    "c.gcd_small": RGSpec(
        "gcd",
        {"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 20},
        "number",
        [
            (
                _GCD.format("12, 18"),
                "12 = 2 * 6 and 18 = 3 * 6. The answer is 6.",
            ),
            (
                _GCD.format("8, 20"),
                "8 = 2 * 4 and 20 = 5 * 4. The answer is 4.",
            ),
        ],
    ),
    "c.lcm_small": RG_SPECS["rg.lcm_small"],  # promoted to the registry under that name (same spec)
    "c.letter_count_1w": RG_SPECS["rg.letter_count_1w"],  # promoted to the registry under that name (same spec)
    # Pilot 4: short-answer tasks where a vote of 8 might concentrate scattered errors.
    "c.count_bits_63": RGSpec(
        "count_bits",
        {"min_n": 1, "max_n": 63},
        "number",
        [
            (
                "How many 1 bits are there in the binary representation of the number 11?",
                "11 in binary is 1011. 1, 0, 1, 1: 3 ones. The answer is 3.",
            ),
            (
                "How many 1 bits are there in the binary representation of the number 36?",
                "36 in binary is 100100. 1, 0, 0, 1, 0, 0: 2 ones. The answer is 2.",
            ),
        ],
    ),
    "c.count_primes_12": RGSpec(
        "count_primes",
        {"min_n": 1, "max_n": 12},
        "number",
        [
            (
                "Count how many prime numbers there are between 2 and 9 (inclusive) ?",
                "The primes between 2 and 9 are 2, 3, 5, 7: 4 primes. The answer is 4.",
            ),
            (
                "Count how many prime numbers there are between 8 and 12 (inclusive) ?",
                "The primes between 8 and 12 are 11: 1 prime. The answer is 1.",
            ),
        ],
    ),
    "c.legs_1kind": RGSpec(
        "leg_counting",
        {"min_animals": 1, "max_animals": 1, "min_instances": 1, "max_instances": 3},
        "number",
        [
            (
                _LEGS.format("2 dogs"),
                "A dog has 4 legs. 2 * 4 = 8. The answer is 8.",
            ),
            (
                _LEGS.format("3 ducks"),
                "A duck has 2 legs. 3 * 2 = 6. The answer is 6.",
            ),
        ],
    ),
    "c.legs_2kinds": RGSpec(
        "leg_counting",
        {"min_animals": 2, "max_animals": 2, "min_instances": 1, "max_instances": 1},
        "number",
        [
            (
                _LEGS.format("1 dog, 1 spider"),
                "A dog has 4 legs. A spider has 8 legs. 4 + 8 = 12. The answer is 12.",
            ),
            (
                _LEGS.format("1 duck, 1 cat"),
                "A duck has 2 legs. A cat has 4 legs. 2 + 4 = 6. The answer is 6.",
            ),
        ],
    ),
    "c.eq_add_1d": RGSpec(
        "simple_equations",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_value": 1,
            "max_value": 9,
            "operators": ("+",),
            "operators_weights": [1.0],
        },
        "number",
        [
            ("Solve for x: x + 3 = 11", "x = 11 - 3 = 8. The answer is 8."),
            ("Find the value of y in the equation: 7 + y = 9", "y = 9 - 7 = 2. The answer is 2."),
        ],
    ),
    "c.eq_sub_1d": RGSpec(
        "simple_equations",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_value": 1,
            "max_value": 9,
            "operators": ("-",),
            "operators_weights": [1.0],
        },
        "number",
        [
            ("Solve for x: x - 3 = 4", "x = 4 + 3 = 7. The answer is 7."),
            ("Find the value of y in the equation: 9 - y = 5", "y = 9 - 5 = 4. The answer is 4."),
        ],
    ),
    "c.eq_mul_1d": RGSpec(
        "simple_equations",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_value": 1,
            "max_value": 9,
            "operators": ("*",),
            "operators_weights": [1.0],
        },
        "number",
        [
            ("Solve for x: 3*x = 21", "x = 21 / 3 = 7. The answer is 7."),
            ("Find the value of y in the equation: 4*y = 24", "y = 24 / 4 = 6. The answer is 6."),
        ],
    ),
    "c.aiw_siblings": RGSpec(
        "aiw",
        {"task_types": [_AIW_SIBLINGS], "task_type_weights": [1.0], "max_entities": 4},
        "number",
        [
            (
                "Emma has 2 brothers and she also has 3 sisters. How many sisters does Emma's brother have?",
                "Emma's brother has Emma's 3 sisters and Emma herself: 3 + 1 = 4. The answer is 4.",
            ),
            (
                "Linda has 4 brothers and she also has 1 sisters. How many sisters does Linda's brother have?",
                "Linda's brother has Linda's 1 sister and Linda herself: 1 + 1 = 2. The answer is 2.",
            ),
        ],
    ),
    "c.zebra_2": RGSpec(
        "zebra_puzzles",
        {"num_people": 2, "num_characteristics": 2},
        "name",
        [
            (
                _ZEBRA.format(
                    "bob, carol",
                    "The people keep different animals: dog, fish",
                    "Bob is the dog owner.\n2. The fish keeper is in the first house.",
                ),
                "The fish keeper is in the first house, and Bob keeps the dog, so Carol lives in House 1. "
                "The answer is Carol.",
            ),
            (
                _ZEBRA.format(
                    "carol, bob",
                    "Everyone has a favorite color: red, blue",
                    "Carol is in the second house.\n2. Carol likes red.",
                ),
                "Carol is in the second house, so Bob lives in House 1. The answer is Bob.",
            ),
        ],
    ),
    "c.sub_1d": RGSpec(
        "basic_arithmetic",
        arith_config(1, ("-",)),
        "number",
        [("Calculate 9 - 4.", "9 - 4 = 5. The answer is 5."), ("Calculate 3 - 8.", "3 - 8 = -5. The answer is -5.")],
    ),
    "c.triangle_steps": RGSpec(
        "simple_geometry",
        {"min_sides": 3, "max_sides": 3, "min_angle": 10, "max_angle": 80},
        "number",
        [
            (
                _TRI.format("75.0°, 40.0°"),
                "75 + 40 = 115. 180 - 115 = 65. The answer is 65.",
            ),
            (
                _TRI.format("33.0°, 61.0°"),
                "33 + 61 = 94. 180 - 94 = 86. The answer is 86.",
            ),
        ],
    ),
}


# Factual recall over the first N elements only.
FACT_CANDIDATES = {"c.facts_1_30": 30, "c.facts_1_20": 20}


def build_task(name: str) -> Task:
    """A registered task, or a pilot candidate (an unregistered reasoning-gym spec)."""
    if name in FACT_CANDIDATES:
        return AtomicNumberTask(name, max_number=FACT_CANDIDATES[name])
    if name in CANDIDATES:
        return ReasoningGymTask(name, CANDIDATES[name])
    return make_task(name)


def _grade_levels(
    lm: object, task: Task, item: Item, ids: list[int], levels: list[int]
) -> list[tuple[str | None, bool]]:
    out = []
    for L in levels:
        g = task.grade(item, lm.decode(ids[:L]))
        out.append((g.answer, bool(g.correct)))
    return out


def run_config(lm: object, task: Task, args: argparse.Namespace) -> dict:
    """Generate and grade one config; returns its figures (see the module docstring)."""
    levels = sorted(args.levels)
    items = task.items(args.queries, seed=args.item_seed)
    prompts = [lm.build_prompt(it.question, task.demos) for it in items]
    per = args.queries_per_batch
    sampled: list[list[list[tuple[str | None, bool]]]] = []  # [query][sample][level]
    greedy: list[list[tuple[str | None, bool]]] = []  # [query][level]
    tokens, t0 = [], time.perf_counter()
    for i in range(0, len(items), per):
        gen = lm.generate(prompts[i : i + per], args.n, max(levels), args.temperature, args.seed + i)
        for q, it in enumerate(items[i : i + per]):
            ids_q = gen.output_ids[q * args.n : (q + 1) * args.n]
            tokens += [len(x) for x in ids_q]
            sampled.append([_grade_levels(lm, task, it, ids, levels) for ids in ids_q])
            if i + q < args.show:  # a look at what the prompt makes the model write
                print(f"  {it.question[-60:]!r} gold {it.gold}: {lm.decode(ids_q[0])!r}", flush=True)
    for i in range(0, len(items), per * 4):
        gen = lm.generate(prompts[i : i + per * 4], 1, max(levels), 0.0, args.seed)
        for it, ids in zip(items[i : i + per * 4], gen.output_ids, strict=True):
            greedy.append(_grade_levels(lm, task, it, ids, levels))
    wall_s = time.perf_counter() - t0
    return summarize(task.name, sampled, greedy, levels, tokens, wall_s)


def summarize(name, sampled, greedy, levels, tokens, wall_s) -> dict:
    """Pilot figures from graded samples: [query][sample][level] -> (answer, correct)."""
    nq, top = len(sampled), len(levels) - 1
    rates = [sum(s[top][1] for s in q) / len(q) for q in sampled]

    def vote_acc(n: int, lv: int) -> float:
        return sum(vote([s[lv][0] for s in q[:n]], [s[lv][1] for s in q[:n]])[1] for q in sampled) / nq

    res = {
        "config": name,
        "queries": nq,
        "n": len(sampled[0]),
        "p1": sum(rates) / nq,
        "greedy": sum(g[top][1] for g in greedy) / nq,
        "v4": vote_acc(4, top),
        "v8": vote_acc(8, top),
        "band": sum(0.1 <= r <= 0.9 for r in rates) / nq,
        "never": sum(r == 0 for r in rates) / nq,
        "mean_tokens": sum(tokens) / len(tokens),
        "wall_s": wall_s,
        "p1_at": {
            L: sum(s[lv][1] for q in sampled for s in q) / sum(len(q) for q in sampled) for lv, L in enumerate(levels)
        },
        "v8_at": {L: vote_acc(8, lv) for lv, L in enumerate(levels)},
    }
    if res["n"] >= 16:
        res["v16"] = vote_acc(16, top)
    res["gain"] = res["v8"] - res["p1"]
    return res


def row(model: str, r: dict) -> str:
    at = " ".join(f"{r['p1_at'][L]:.2f}" for L in sorted(r["p1_at"]))
    v16 = f" {r['v16']:.2f} |" if "v16" in r else " – |"
    return (
        f"| {r['config']} | {model} | {r['queries']} | {r['p1']:.2f} | {r['greedy']:.2f} | {r['v4']:.2f} | "
        f"{r['v8']:.2f} |{v16} {r['gain']:+.2f} | {r['band']:.2f} | {r['never']:.2f} | {at} | "
        f"{r['mean_tokens']:.0f} | {r['wall_s']:.0f} |"
    )


def store_rows(path: str) -> list[tuple[str, dict]]:
    """The same figures from a recorded store (e.g. data/reference), per (model, temperature, task)."""
    from store.loader import load_samples

    df = load_samples(path, columns=["task", "model", "temperature", "levels", "level_answer", "level_correct"])
    out = []
    for (model, temp, task), g in df[df.temperature > 0].groupby(["model", "temperature", "task"]):
        greedy_df = df[(df.temperature == 0) & (df.model == model) & (df.task == task)].set_index("query_id")
        sampled, greedy = [], []
        for qid, gq in g.sort_values("sample_index").groupby("query_id", sort=True):
            sampled.append(
                [list(zip(a, c, strict=True)) for a, c in zip(gq.level_answer, gq.level_correct, strict=True)]
            )
            gr = greedy_df.loc[qid] if qid in greedy_df.index else None
            greedy.append(
                list(zip(gr.level_answer, gr.level_correct, strict=True)) if gr is not None else sampled[-1][0]
            )
        levels = [int(x) for x in g.levels.iloc[0]]
        out.append((f"{model} t{temp:g}", summarize(str(task), sampled, greedy, levels, [0], 0.0)))
    return out


def joules_lines(path: str) -> list[str]:
    """Per model: the greedy / sampled joules per output token of the n=1 arms, metered and attributed."""
    from store.loader import load_samples

    columns = ["attribution", "model", "temperature", "sample_index", "output_tokens", "energy_j"]
    df = load_samples(path, columns=columns)
    if "metered_energy_j" not in df.columns:
        return []
    out = []
    for model, g in df.groupby("model"):
        greedy, first = g[g.temperature == 0], g[(g.temperature > 0) & (g.sample_index == 0)]
        if greedy.empty or first.empty:
            continue

        def per_token(d, col):
            return d[col].sum() / max(d.output_tokens.sum(), 1)

        ratios = [per_token(greedy, c) / per_token(first, c) for c in ("metered_energy_j", "energy_j")]
        out.append(
            f"{model}: n1 greedy/sampled joules per output token: metered window shares {ratios[0]:.2f}, "
            f"charged ({df.attribution.iloc[0]}) {ratios[1]:.2f}"
        )
    return out


def mix_line(rows: list[dict]) -> str:
    """The query-weighted mean of every figure over the rows: the mix's figures if the rows are one mix."""
    total = sum(r["queries"] for r in rows)

    def mean(key: str) -> float:
        return sum(r[key] * r["queries"] for r in rows) / total

    caps = sorted(set.intersection(*(set(r["p1_at"]) for r in rows)))
    at = " ".join(f"p1@{L} {sum(r['p1_at'][L] * r['queries'] for r in rows) / total:.3f}" for L in caps)
    return (
        f"mix of {len(rows)} rows, {total} queries: p1 {mean('p1'):.3f}, v8 {mean('v8'):.3f}, "
        f"gain {mean('gain'):+.3f}, band {mean('band'):.3f}, never {mean('never'):.3f}; {at}"
    )


HEADER = (
    "| config | model | q | p1 | greedy | v4 | v8 | v16 | gain v8-p1 | band | never | p1@caps | tokens | s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="*", help="registered task names or pilot candidates (see --list)")
    p.add_argument("--list", action="store_true", help="print the known configs and exit")
    p.add_argument(
        "--table",
        action="store_true",
        help="print the rows recorded in --out (comma-separated files; only the configs named, if any) and exit",
    )
    p.add_argument("--store", help="print the figures of a recorded store (e.g. data/reference) instead and exit")
    p.add_argument("--model", default="smollm2-135m", help="built-in model name or path")
    p.add_argument("--queries", type=int, default=12, help="queries per config")
    p.add_argument("--n", type=int, default=8, help="samples per query at temperature 0.7")
    p.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[32, 64],
        help="token caps to grade at, comma-separated; the largest is generated",
    )
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the n samples")
    p.add_argument("--queries-per-batch", type=int, default=4, help="queries per generate call")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--item-seed", type=int, default=0, help="seed of the query draw (collect's item_seed)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed")
    p.add_argument("--show", type=int, default=0, help="print the first sample of this many queries")
    p.add_argument("--out", default="/tmp/pilot.jsonl", help="JSON lines file the figures are appended to")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("registered:", ", ".join(TASKS))
        print("candidates:", ", ".join([*CANDIDATES, *FACT_CANDIDATES]))
        return 0
    if args.store:
        rows = store_rows(args.store)
        print(HEADER)
        for label, r in rows:
            print(row(label, r))
        for label in sorted({lb for lb, _ in rows}):
            print(label, mix_line([r for lb, r in rows if lb == label]))
        for line in joules_lines(args.store):
            print(line)
        return 0
    if args.table:
        rows = [json.loads(line) for path in args.out.split(",") for line in Path(path).read_text().splitlines()]
        rows = [r for r in rows if not args.configs or r["config"] in args.configs]
        print(HEADER)
        for r in rows:
            r["p1_at"] = {int(k): v for k, v in r["p1_at"].items()}
            print(row(f"{r['model']} t{r['temperature']:g}", r))
        print(mix_line(rows))
        return 0
    tasks = [build_task(c) for c in args.configs]  # fail on a bad name before loading the model
    from collect.models import LoadedModel, resolve_model

    lm = LoadedModel(resolve_model(args.model), "cpu", args.threads)
    print(HEADER, flush=True)
    for task in tasks:
        r = run_config(lm, task, args)
        print(row(f"{args.model} t{args.temperature:g}", r), flush=True)
        with open(args.out, "a") as f:
            f.write(
                json.dumps(
                    {
                        "model": args.model,
                        "temperature": args.temperature,
                        "item_seed": args.item_seed,
                        "levels": args.levels,
                        **r,
                    }
                )
                + "\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
