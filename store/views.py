"""The sample -> arm view: the one function train and eval both use.

The store keeps samples; an arm (model, n, max_new_tokens, temperature) applied
to a query is computed from that query's samples: the first `n` samples of the
generation with the arm's model and temperature, each graded at its first
`max_new_tokens` tokens, majority-voted. One generation thus serves every
(n, L) arm below the generated maximum.

Vote rule: the most frequent extracted answer among the n samples wins; ties go
to the answer that appeared first; samples with no extractable answer do not
vote; if none has an answer the arm is wrong. Energy, time and tokens are the
sums over the n samples' prefixes.

Never generates or grades anything itself: it only reads recorded samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from policy.arms import Arm
from policy.errors import UsageError
from store.schema import ARM_COLUMNS, ARM_DTYPES, VIEW_COLUMNS

_SOFT_DRAWS = 64


def vote(answers: list[str | None], correct: list[bool]) -> tuple[str | None, bool]:
    """Majority vote over extracted answers; returns (winning answer, its correctness).

    Ties go to the answer seen first (only a strictly larger count replaces the leader).
    Written without Counter because the arm view calls it hundreds of thousands of times.
    """
    best, best_count, best_ok = None, 0, False
    for a, ok in zip(answers, correct, strict=True):
        if a is None or a == best:
            continue
        c = answers.count(a)
        if c > best_count:
            best, best_count, best_ok = a, c, ok
    return best, bool(best_ok)


def available_arms(samples: pd.DataFrame) -> list[Arm]:
    """Every arm the store can answer: n up to the samples per generation, L in the graded levels."""
    arms: set[Arm] = set()
    for (model, temp), g in samples.groupby(["model", "temperature"]):
        n_max = int(g.groupby("query_id").size().min())
        levels = sorted(set(int(x) for lv in g["levels"] for x in lv))
        ns = [1] if temp == 0 else [n for n in (1, 2, 4, 8, 16, 32) if n <= n_max]
        arms.update(Arm(str(model), n, L, float(temp)) for n in ns for L in levels)
    return sorted(arms)


def arm_outcomes(samples: pd.DataFrame, arms: list[Arm] | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (query, arm): the arm-row schema `store.schema.ARM_COLUMNS` (ArmOutcome's fields).

    `correct_soft` resamples n-of-N subsets (N = samples available) `_SOFT_DRAWS`
    times and averages the vote's correctness: a less noisy label than one vote.
    """
    if samples.empty:
        raise UsageError("the store holds no samples; run `ttc collect` first")
    arms = arms if arms is not None else available_arms(samples)
    if not arms:
        raise UsageError("no arm can be derived from this store")
    rng = np.random.default_rng(seed)
    rows: list[tuple] = []
    by_setting: dict[tuple[str, float], list[Arm]] = {}
    for arm in arms:
        by_setting.setdefault((arm.model, arm.temperature), []).append(arm)
    # Plain lists per group, read once: per-row pandas access made this view the slowest step of training.
    for (model, temp, qid), g in samples[list(VIEW_COLUMNS)].groupby(["model", "temperature", "query_id"], sort=True):
        setting_arms = by_setting.get((str(model), float(temp)), [])
        if not setting_arms:
            continue
        g = g.sort_values("sample_index")
        levels = [int(x) for x in g["levels"].iloc[0]]
        answers_by_level = list(zip(*g["level_answer"], strict=True))
        correct_by_level = list(zip(*(map(bool, c) for c in g["level_correct"]), strict=True))
        energy_by_level = list(zip(*g["level_energy_j"], strict=True))
        duration_by_level = list(zip(*g["level_duration_s"], strict=True))
        tokens_by_level = list(zip(*g["level_output_tokens"], strict=True))
        n_avail = len(g)
        task, meter, source = g["task"].iloc[0], g["meter"].iloc[0], g["energy_source"].iloc[0]
        draws: dict[int, list[list[int]]] = {}
        for arm in setting_arms:
            if n_avail < arm.n or arm.max_new_tokens not in levels:
                continue
            li = levels.index(arm.max_new_tokens)
            answers, correct = list(answers_by_level[li]), list(correct_by_level[li])
            answer, ok = vote(answers[: arm.n], correct[: arm.n])
            if arm.n == 1:
                soft = sum(correct) / n_avail
            elif arm.n == n_avail:
                soft = float(ok)
            else:
                if arm.n not in draws:  # the same random subsets serve every level of this n
                    draws[arm.n] = rng.random((_SOFT_DRAWS, n_avail)).argsort(axis=1)[:, : arm.n].tolist()
                wins = sum(vote([answers[i] for i in d], [correct[i] for i in d])[1] for d in draws[arm.n])
                soft = wins / _SOFT_DRAWS
            rows.append(
                (
                    qid,
                    task,
                    arm.arm_id,
                    arm.model,
                    arm.n,
                    arm.max_new_tokens,
                    arm.temperature,
                    ok,
                    soft,
                    answer,
                    float(sum(energy_by_level[li][: arm.n])),
                    float(sum(duration_by_level[li][: arm.n])),
                    int(sum(tokens_by_level[li][: arm.n])),
                    meter,
                    source,
                )
            )
    out = pd.DataFrame(rows, columns=list(ARM_COLUMNS)).astype(ARM_DTYPES)
    if out.empty:
        raise UsageError("none of the requested arms can be derived from this store's samples")
    return out


def queries(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per query: query_id, task, question, gold."""
    return samples.drop_duplicates("query_id")[["query_id", "task", "question", "gold"]].reset_index(drop=True)
