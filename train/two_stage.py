"""Training the look-then-decide rule: first-sample signals from the samples, the stage-2 success model.

Shared by `ttc train` (train/fit.py writes the result into the bundle's
stage2.json through train/export.py) and the eval simulation
(eval/allocators/two_stage.py), so both learn the same model from the same
rows: (question's "text" features, the first sample's `STAGE2_SIGNAL_NAMES`:
its confidence and the checks of its own text, arm features) labelled with the
arm's expected correctness (the arm view's `correct_soft`; the realised vote
when a caller has no soft labels). Stage 1 is the most accurate of the (equally) cheapest
one-sample arms (`stage_one_index`). The store keeps each sample's whole text, not its text at
each cap: for a cap that cut the sample, the text's first (cap tokens / output
tokens) share of characters stands in for it (serving passes the exact text). Stage 1 is the one-sample
arm with the lowest mean joules on the training queries. Never writes files,
never logs; lightgbm is imported only when a model is fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from policy.arms import Arm
from policy.errors import UsageError
from policy.features import STAGE2_SIGNAL_NAMES, first_sample_signals, get_feature_set, row_matrix
from policy.two_stage import STAGE2_FEATURES
from train.task_table import TableSweep, TaskTable, tables_from_matrices

#: the sample columns the signals are read from (collection stores them per token)
SIGNAL_COLUMNS = ("token_logprob", "token_entropy")


@dataclass(frozen=True, eq=False)
class StageTwoFit:
    """A fitted stage-2 rule: the first arm, the price, and the model (a LightGBM classifier or a constant);
    since issue 18 also each training task's own first arm (`first_arms`) and the model read after a look
    at it (`looks`: first arm id -> model, for every first arm but `first_arm`)."""

    first_arm: str
    lam: float
    model: Any
    #: the first-sample signal columns the model reads (policy.two_stage.SIGNAL_SETS)
    signals: tuple[str, ...] = STAGE2_SIGNAL_NAMES
    first_arms: Mapping[str, str] = field(default_factory=dict)
    looks: Mapping[str, Any] = field(default_factory=dict)


def has_signals(samples: pd.DataFrame) -> bool:
    """True when the samples hold per-token log-probabilities (collections before issue 12 do not)."""
    if not all(c in samples.columns for c in SIGNAL_COLUMNS) or samples.empty:
        return False
    return bool(samples["token_logprob"].map(lambda v: v is not None and len(v) > 0).any())


#: one-sample arms within this share of the cheapest one's mean joules count as equally cheap first looks
CHEAP_TOLERANCE = 0.05


def stage_one_index(mean_j: np.ndarray, arms: Sequence[Arm], mean_acc: np.ndarray | None = None) -> int:
    """The first look: of the one-sample arms within `CHEAP_TOLERANCE` of the lowest mean training joules,
    the most accurate on the training queries (`mean_acc`; without it, or on ties: the cheaper, then arm order).

    On the reference the greedy and the temperature-1 sample of the small model at the shortest cap cost
    the same to 0.3%, and the greedy one is right more often (0.345 against 0.308) and continues into
    the longer greedy caps for their extra tokens only.
    """
    ones = [j for j, a in enumerate(arms) if a.n == 1]
    if not ones:
        raise UsageError("two_stage needs a one-sample arm in the grid (n=1) for its first look")
    cheapest = min(mean_j[j] for j in ones)
    near = [j for j in ones if mean_j[j] <= cheapest * (1 + CHEAP_TOLERANCE)]
    acc = np.zeros(len(arms)) if mean_acc is None else np.asarray(mean_acc, dtype=np.float64)
    return min(near, key=lambda j: (-acc[j], mean_j[j], j))


def stage_one_signals(samples: pd.DataFrame, query_ids: Any, arm: Arm) -> np.ndarray:
    """(n, 7) `STAGE2_SIGNAL_NAMES` of `arm` (n=1) for `query_ids`: the generation's first sample, cut at the cap."""
    g = samples[(samples["model"] == arm.model) & (samples["temperature"] == arm.temperature)]
    first = g.sort_values("sample_index", kind="stable").drop_duplicates("query_id").set_index("query_id")
    missing = [q for q in query_ids if q not in first.index]
    if missing:
        raise UsageError(f"{len(missing)} queries have no sample of {arm.arm_id}; evaluate on the store's queries")
    lps, ents, answered, tokens, texts = [], [], [], [], []
    for q in query_ids:
        r = first.loc[q]
        li = [int(x) for x in r["levels"]].index(arm.max_new_tokens)
        k = int(r["level_output_tokens"][li])
        lps.append(list(r.get("token_logprob", []))[:k])
        ents.append(list(r.get("token_entropy", []))[:k])
        answered.append(r["level_answer"][li] is not None)
        tokens.append(k)
        texts.append(_text_at_cap(str(r.get("text", "") or ""), k, int(r.get("output_tokens", k) or 0)))
    return first_sample_signals(lps, ents, answered, tokens, texts)


def look_index(arms: Sequence[Arm], j: int) -> int | None:
    """The one-sample arm whose sample starts arm j (same model, temperature and cap), or None."""
    a = arms[j]
    same = [
        i for i, b in enumerate(arms)
        if b.n == 1 and (b.model, b.temperature, b.max_new_tokens) == (a.model, a.temperature, a.max_new_tokens)
    ]  # fmt: skip
    return same[0] if same else None


def task_looks(
    tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray, arms: Sequence[Arm], lam: float, default: int
) -> tuple[dict[str, int], int]:
    """Each training task's first look at price `lam`, and the look of every other task.

    A task looks first at the first sample of its per-task table arm at `lam` (train.task_table, on
    these training outcomes): continuing to the table's own choice then pays nothing twice, and
    stage 2 can stop early or switch from there. Any other task looks at the global table arm's first
    sample. An arm without a one-sample version in the grid looks at `default` instead.
    """
    table = tables_from_matrices(tasks, correct, energy_j, [a.arm_id for a in arms], [lam])[0]
    return table_looks(table, arms, default)


def table_looks(table: TaskTable, arms: Sequence[Arm], default: int) -> tuple[dict[str, int], int]:
    """`task_looks` of a per-task table already built: each task's table arm's first sample, and the global one's."""
    arm_ids = [a.arm_id for a in arms]

    def look(arm_id: str) -> int:
        j = look_index(arms, arm_ids.index(arm_id))
        return default if j is None else j

    return {t: look(a) for t, a in table.by_task.items()}, look(table.global_arm)


def query_looks(
    query_tasks: Sequence[Any], tasks: Sequence[str], correct: np.ndarray, energy_j: np.ndarray,
    arms: Sequence[Arm], lam: float, default: int,
) -> np.ndarray:  # fmt: skip
    """(len(query_tasks),) the first look of each query by its task (`task_looks` on these training outcomes)."""
    return _by_task(query_tasks, *task_looks(tasks, correct, energy_j, arms, lam, default))


def _by_task(query_tasks: Sequence[Any], by_task: Mapping[str, int], glob: int) -> np.ndarray:
    """(len(query_tasks),) each query's task's look, the global look for a task without one."""
    return np.asarray([by_task.get(str(t), glob) for t in query_tasks], dtype=np.int64)


@dataclass(eq=False)
class StageTwoData:
    """The training queries of a stage-2 rule, and its models per first look, fitted once each on demand."""

    samples: pd.DataFrame
    ids: list[str]
    questions: list[str]
    tasks: list[str]
    arms: list[Arm]
    models: list[str]
    label: np.ndarray  # (queries, arms) expected correctness (or the realised vote)
    correct: np.ndarray
    energy_j: np.ndarray
    seed: int
    cheapest: int  # stage_one_index: the look of a task whose table arm has no one-sample version
    fitted: dict[int, Any] = field(default_factory=dict)
    #: (each training task's look, the global look) per price asked, from one `TableSweep` of the outcomes
    _looks: dict[float, tuple[dict[str, int], int]] = field(default_factory=dict, init=False, repr=False)
    _sweep: TableSweep | None = field(default=None, init=False, repr=False)

    def looks_at(self, lam: float) -> tuple[dict[str, int], int]:
        """`task_looks` of the training queries at price `lam` (the per-task sums taken once, each price once)."""
        lam = float(lam)
        if lam not in self._looks:
            if self._sweep is None:
                self._sweep = TableSweep(self.tasks, self.correct, self.energy_j, [a.arm_id for a in self.arms])
            self._looks[lam] = table_looks(self._sweep.at(lam), self.arms, self.cheapest)
        return self._looks[lam]

    def query_looks(self, query_tasks: Sequence[Any], lam: float) -> np.ndarray:
        """(len(query_tasks),) each query's first look at `lam` by its task (`looks_at`; others: the global one)."""
        return _by_task(query_tasks, *self.looks_at(lam))

    def model_for(self, a1: int) -> Any:
        """The stage-2 success model after a look at arm `a1` (every training query's look at it)."""
        if a1 not in self.fitted:
            sig = stage_one_signals(self.samples, self.ids, self.arms[a1])
            x = stage_two_rows(self.questions, self.tasks, sig, self.arms, self.models)
            self.fitted[a1] = fit_stage_two_model(x, self.label.reshape(-1), self.seed)
        return self.fitted[a1]

    def fit_at(self, lam: float) -> StageTwoFit:
        by_task, glob = self.looks_at(lam)
        ids = [a.arm_id for a in self.arms]
        looks = {ids[a]: self.model_for(a) for a in sorted(set(by_task.values()) - {glob})}
        first_arms = {t: ids[a] for t, a in by_task.items()}
        return StageTwoFit(ids[glob], lam, self.model_for(glob), first_arms=first_arms, looks=looks)


def _text_at_cap(text: str, k: int, output_tokens: int) -> str:
    """The sample's text at its first k tokens: all of it when k covers it, else that share of its characters."""
    return text if k >= output_tokens else text[: len(text) * k // max(output_tokens, 1)]


def stage_two_rows(
    questions: Sequence[str], tasks: Sequence[str | None], signals: np.ndarray, arms: Sequence[Arm], models: list[str]
) -> np.ndarray:
    """(query, arm) rows of the stage-2 model: text features, the signals, then the arm columns."""
    text = get_feature_set(STAGE2_FEATURES).transform(list(questions), list(tasks))
    return row_matrix(np.hstack([text, signals]), arms, models)


#: the stage-2 model's LightGBM settings (issue 18: 15 leaves x 300 trees on soft labels; on the 877-query
#: reference the former 7 x 150 on realised votes underfitted the task x arm interactions)
STAGE2_PARAMS = dict(n_estimators=300, learning_rate=0.05, num_leaves=15, min_child_samples=20, subsample=0.8)


def fit_stage_two_model(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """LightGBM on (query, signals, arm) rows with cross-entropy on labels in [0, 1]; a constant when all agree.

    `y` is each arm's expected correctness (the arm view's `correct_soft`: less noisy than one vote's luck)
    or its realised vote; the model's output is a probability (sigmoid of the raw score).
    """
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return float(y[0]) if len(y) else 0.0
    from lightgbm import LGBMRegressor

    model = LGBMRegressor(objective="cross_entropy", **STAGE2_PARAMS, subsample_freq=1, random_state=seed,
                          n_jobs=1, verbose=-1)  # fmt: skip
    return model.fit(x, y)


def predict_stage_two(model: Any, x: np.ndarray) -> np.ndarray:
    """P(correct) per row: the constant, or the cross-entropy model's sigmoid output."""
    if isinstance(model, float):
        return np.full(len(x), model)
    return model.predict_proba(x)[:, 1] if hasattr(model, "predict_proba") else model.predict(x)


def fit_stage_two(
    samples: pd.DataFrame, rows: pd.DataFrame, arms: list[Arm], models: list[str], lam: float, seed: int
) -> StageTwoFit:
    """The stage-2 rule of the training arm rows `rows` at price `lam` (`prepare_stage_two`, then `fit_at`)."""
    return prepare_stage_two(samples, rows, arms, models, seed).fit_at(float(lam))


def prepare_stage_two(
    samples: pd.DataFrame, rows: pd.DataFrame, arms: list[Arm], models: list[str], seed: int
) -> StageTwoData:
    """The training queries of the stage-2 rule (those with an outcome of every arm); nothing fitted yet."""
    ids = sorted(rows["query_id"].unique())
    arm_ids = [a.arm_id for a in arms]
    label = "correct_soft" if "correct_soft" in rows.columns else "correct"
    cols = list(dict.fromkeys(["energy_j", "correct", label]))
    grid = rows.set_index(["query_id", "arm_id"])[cols].unstack("arm_id").reindex(index=ids)
    grid = grid.reindex(columns=pd.MultiIndex.from_product([cols, arm_ids]))
    # queries with every arm's outcome only (stores collected model by model may be mid-way)
    grid = grid[~grid.isna().any(axis=1)]
    ids = list(grid.index)
    if len(ids) < 2:
        raise UsageError("the stage-2 rule needs at least 2 training queries with every arm's outcome")
    energy = grid["energy_j"][arm_ids].to_numpy(dtype=np.float64)
    correct = grid["correct"][arm_ids].to_numpy(dtype=np.float64)
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids]
    return StageTwoData(
        samples[samples["query_id"].isin(ids)], ids, q["question"].tolist(), [str(t) for t in q["task"]],
        list(arms), list(models), grid[label][arm_ids].to_numpy(dtype=np.float64), correct, energy, seed,
        stage_one_index(energy.mean(axis=0), arms, correct.mean(axis=0)),
    )  # fmt: skip
