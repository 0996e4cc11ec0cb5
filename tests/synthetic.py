"""A synthetic Sample table with known structure, for the few checks the real data cannot make.

The train and eval tests run on the real reference collection (data/reference/v1,
the `reference_samples` fixture of conftest.py). This generator stays for what
needs controlled structure or scale: checks that the learned policy finds
structure *where structure is known to exist* (the reference's 39 held-out
queries carry too little for that), the report's model-scaling verdict on a
factual task the bigger model knows, and benchmarks/train.py's store when the
reference is too small. Never use it where the reference collection would do.

Shape: exactly collect's Sample columns; two models (smollm2-135m, the bigger
gemma3-270m), levels 16/32/64, `samples_per_query` samples at temperature 0.7
plus one greedy sample per (query, model). Per query a latent difficulty that
the question text partly reveals (more and longer numbers: harder) sets the
chance that a sample is right and the tokens its answer needs, so votes help
the queries a model half knows and short caps cut long answers off. Two
reasoning tasks and the factual task facts.atomic_number, where a model either
knows the fact or repeats the same wrong number, so votes barely help and the
bigger model does. Energy: a prefill share plus joules per output token, per
model, with noise, labelled as the estimate meter's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from policy.records import ESTIMATED, SAMPLE_SCHEMA_VERSION, sample_fields

MODELS = {
    # name: (skill in logits, decode joules per token, prefill joules per prompt token)
    "smollm2-135m": (-0.3, 0.05, 0.004),
    "gemma3-270m": (0.9, 0.12, 0.009),
}
LEVELS = [16, 32, 64]
TASKS = ("rg.chain_sum", "rg.basic_arithmetic_1d", "facts.atomic_number")
_ELEMENTS = ["sodium", "argon", "iron", "zinc", "silver", "tin", "xenon", "gold", "lead", "radon", "iodine", "cobalt"]


def _reasoning(task: str, rng: np.random.Generator) -> tuple[str, str, float, float]:
    """(question, gold, difficulty, tokens needed) of an arithmetic item."""
    k = int(rng.integers(2, 7))
    digits = int(rng.integers(1, 4))
    nums = [int(x) for x in rng.integers(10 ** (digits - 1), 10**digits, size=k)]
    if task == "rg.chain_sum":
        question = "What is " + " + ".join(map(str, nums)) + "?"
    else:
        question = f"Tom has {nums[0]} apples. " + " ".join(f"He gets {n} more." for n in nums[1:]) + " How many now?"
    difficulty = 0.8 * (k - 2) + 0.6 * (digits - 1) - 1.0 + rng.normal(0, 0.4)
    return question, str(sum(nums)), difficulty, 8 + 8 * k + 3 * digits + rng.normal(0, 3)


def synthetic_samples(n_queries: int = 150, seed: int = 0, samples_per_query: int = 8) -> pd.DataFrame:
    """A Sample table with the collect stage's exact columns and learnable per-query structure."""
    rng = np.random.default_rng(seed)
    rows = []
    for qi in range(n_queries):
        task = TASKS[qi % len(TASKS)]
        if task == "facts.atomic_number":
            number = int(rng.integers(1, 100))
            question = f"What is the atomic number of {_ELEMENTS[number % len(_ELEMENTS)]}-{number}?"
            gold, difficulty, need = str(number), number / 25.0 - 1.5, 10 + rng.normal(0, 2)
        else:
            question, gold, difficulty, need = _reasoning(task, rng)
        qid = f"{task}:{qi}"
        prompt_tokens = int(len(question.split()) * 1.3 + 30)
        for model, (skill, j_tok, j_prefill) in MODELS.items():
            logit = skill + 1.0 - difficulty
            if task == "facts.atomic_number":
                knows = rng.random() < 1 / (1 + math.exp(-(2.5 * skill + 0.5 - difficulty)))
                fixed_wrong = str(number + int(rng.choice([-2, -1, 1, 2])))
            for temperature, index in [(0.0, 0)] + [(0.7, i) for i in range(samples_per_query)]:
                if task == "facts.atomic_number":
                    ok = rng.random() < (0.95 if knows else 0.05)
                    answer = gold if ok else (fixed_wrong if rng.random() < 0.85 else str(number + 3))
                else:
                    ok = rng.random() < 1 / (1 + math.exp(-(logit + (0.3 if temperature == 0 else 0.0))))
                    answer = gold if ok else str(int(gold) + int(rng.integers(-20, 21)) or 1)
                tokens = int(min(max(round(need * rng.lognormal(0, 0.2)), 3), 64))
                prefill_j = prompt_tokens * j_prefill
                per_tok = j_tok * rng.lognormal(0, 0.1)
                lv_tokens = [min(tokens, L) for L in LEVELS]
                lv_answer = [answer if tokens <= L else None for L in LEVELS]
                lv_energy = [prefill_j + t * per_tok for t in lv_tokens]
                rows.append(
                    {
                        "query_id": qid,
                        "task": task,
                        "question": question,
                        "gold": gold,
                        "model": model,
                        "temperature": temperature,
                        "max_new_tokens": 64,
                        "seed": seed,
                        "sample_index": index,
                        "batch_id": f"{qid}/{model}/{temperature}",
                        "prompt_tokens": prompt_tokens,
                        "output_tokens": tokens,
                        "finished": tokens < 64,
                        "text": f"... The answer is {answer}.",
                        "answer": answer,
                        "extraction": "answer_is",
                        "correct": bool(ok),
                        "duration_s": lv_energy[-1] / 30.0,
                        "energy_j": lv_energy[-1],
                        "energy_above_idle_j": lv_energy[-1],
                        "prefill_energy_j": prefill_j,
                        "window_energy_j": lv_energy[-1] * samples_per_query,
                        "window_duration_s": lv_energy[-1] / 30.0,
                        "window_samples": samples_per_query,
                        "window_output_tokens": tokens * samples_per_query,
                        "meter": "estimate",
                        "energy_source": ESTIMATED,
                        "attribution": "prefill_even+decode_by_tokens",
                        "levels": list(LEVELS),
                        "level_output_tokens": lv_tokens,
                        "level_answer": lv_answer,
                        "level_correct": [bool(ok and tokens <= L) for L in LEVELS],
                        "level_energy_j": lv_energy,
                        "level_duration_s": [e / 30.0 for e in lv_energy],
                        "collect_run": "synthetic",
                        "schema_version": SAMPLE_SCHEMA_VERSION,
                    }
                )
    return pd.DataFrame(rows)[sample_fields()]
