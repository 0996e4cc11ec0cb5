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

from collections import Counter

import numpy as np
import pandas as pd

from policy.arms import Arm
from policy.errors import UsageError
from policy.records import ArmOutcome

ARM_COLUMNS = list(ArmOutcome.__dataclass_fields__)
_SOFT_DRAWS = 64


def vote(answers: list[str | None], correct: list[bool]) -> tuple[str | None, bool]:
    """Majority vote over extracted answers; returns (winning answer, its correctness)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, False
    best = max(counts.values())
    for a, c in zip(answers, correct, strict=True):
        if a is not None and counts[a] == best:
            return a, bool(c)
    raise AssertionError("unreachable: a counted answer was not found")


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
    """One row per (query, arm), columns = ArmOutcome fields.

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
    groups = {k: g.sort_values("sample_index") for k, g in samples.groupby(["model", "temperature", "query_id"])}
    by_setting: dict[tuple[str, float], list[Arm]] = {}
    for arm in arms:
        by_setting.setdefault((arm.model, arm.temperature), []).append(arm)
    for (model, temp, qid), g in groups.items():
        for arm in by_setting.get((str(model), float(temp)), []):
            if len(g) < arm.n:
                continue
            levels = list(g["levels"].iloc[0])
            if arm.max_new_tokens not in levels:
                continue
            li = levels.index(arm.max_new_tokens)
            answers = [lv[li] for lv in g["level_answer"]]
            correct = [bool(lv[li]) for lv in g["level_correct"]]
            energy = [float(lv[li]) for lv in g["level_energy_j"]]
            duration = [float(lv[li]) for lv in g["level_duration_s"]]
            tokens = [int(lv[li]) for lv in g["level_output_tokens"]]
            answer, ok = vote(answers[: arm.n], correct[: arm.n])
            if arm.n == len(answers) or arm.n == 1:
                soft = float(np.mean(correct)) if arm.n == 1 else float(ok)
            else:
                draws = [rng.choice(len(answers), arm.n, replace=False) for _ in range(_SOFT_DRAWS)]
                soft = float(np.mean([vote([answers[i] for i in d], [correct[i] for i in d])[1] for d in draws]))
            first = g.iloc[0]
            rows.append(
                (
                    qid,
                    first["task"],
                    arm.arm_id,
                    arm.model,
                    arm.n,
                    arm.max_new_tokens,
                    arm.temperature,
                    ok,
                    soft,
                    answer,
                    float(sum(energy[: arm.n])),
                    float(sum(duration[: arm.n])),
                    int(sum(tokens[: arm.n])),
                    first["meter"],
                    first["energy_source"],
                )
            )
    out = pd.DataFrame(rows, columns=ARM_COLUMNS)
    if out.empty:
        raise UsageError("none of the requested arms can be derived from this store's samples")
    return out


def queries(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per query: query_id, task, question, gold."""
    return samples.drop_duplicates("query_id")[["query_id", "task", "question", "gold"]].reset_index(drop=True)
