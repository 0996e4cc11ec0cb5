"""Query features: the numbers a predictor sees for a query, named and versioned.

The exported policy computes exactly these features at run time, so they live
here, in the light layer: numpy and the standard library only. A feature set
has a name and a version; trained artefacts record both, and a bundle whose
feature set does not match is refused.

Feature set "text" (version 1):
- text statistics: characters, words, whitespace tokens, digits, numbers and
  their size, arithmetic operators, question words, sentences;
- hashed word uni- and bi-grams (crc32, so stable across processes and
  languages; `N_HASH` buckets, counts scaled by 1/sqrt(words));
- the task name as one of `N_TASK` one-hot columns (all zero when unknown), so
  a new task needs no new column and the ONNX graph stays a plain matrix input.
  A bundle with tasks.json names each trained task's column (`task_columns`:
  one column per task, policy/tasks.py), so no two known tasks share features;
  without it (older bundles) the column is the name's crc32 bucket, where
  rg.products_1x1 and rg.letter_count_1w collide.

Feature set "text+probe" (version 2): the text features, then `PROBE_DIMS`
columns `probe_pc_*`: one model's prefill hidden state (store/probes.py)
reduced by the PCA the bundle stores (policy/probe.py). The reduction happens
in `Policy.query_features`; `transform` here takes the reduced values.
Never import torch, transformers or mlflow here.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from policy.arms import Arm, arm_feature_names, arm_features
from policy.errors import unknown_name
from policy.probe import PROBE_DIMS
from policy.tasks import N_TASK, task_hash_column

N_HASH = 64
_WORD = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPS = re.compile(r"[+\-*/×÷=^%]")
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
_QWORDS = ("how", "what", "which", "who", "when", "where", "why", "many", "much", "total", "each", "more", "less")
#: the text statistics' columns (`_stats`: ten counts, then one per question word); the n-grams follow, then the tasks
_N_STATS = 10 + len(_QWORDS)
PROBE_NAMES = tuple(f"probe_pc_{i}" for i in range(PROBE_DIMS))


def _h(s: str, buckets: int) -> int:
    return zlib.crc32(s.encode("utf-8")) % buckets


@dataclass(frozen=True)
class FeatureSet:
    name: str
    version: int
    probe: bool = False

    def names(self) -> list[str]:
        stats = [
            "n_chars",
            "n_words",
            "n_tokens_ws",
            "n_digits",
            "n_numbers",
            "max_number_log10",
            "mean_number_digits",
            "n_operators",
            "n_sentences",
            "n_question_marks",
        ] + [f"qword_{w}" for w in _QWORDS]
        grams = [f"ngram_{i}" for i in range(N_HASH)]
        tasks = [f"task_bucket_{i}" for i in range(N_TASK)]
        probe = list(PROBE_NAMES) if self.probe else []
        return stats + grams + tasks + probe

    def transform(
        self,
        questions: Sequence[str],
        tasks: Sequence[str | None] | None = None,
        probe: np.ndarray | None = None,
        task_columns: Mapping[str, int] | None = None,
    ) -> np.ndarray:
        """(n_queries, len(names())) float32 matrix.

        `task_columns`: the one-hot column of each known task (a task not in it gets none);
        None hashes every task name into its column (the scheme of bundles without tasks.json).
        """
        tasks = list(tasks) if tasks is not None else [None] * len(questions)
        if len(tasks) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(tasks)} task names")
        x = _text_features(list(questions), tasks, task_columns)
        if self.probe:
            if probe is None or np.shape(probe) != (len(questions), len(PROBE_NAMES)):
                raise ValueError(
                    f"feature set {self.name!r} needs reduced probe values of shape "
                    f"({len(questions)}, {len(PROBE_NAMES)})"
                )
            x = np.hstack([x, np.asarray(probe, dtype=np.float32)])
        return x


def with_hashed_tasks(text_x: np.ndarray, tasks: Sequence[str | None] | None) -> np.ndarray:
    """A copy of "text" feature rows with the task block rewritten as hashed one-hot columns.

    The same bits as `transform(questions, tasks)` without `task_columns`, from rows made with a
    bundle's named task columns (tasks.json), without reading the questions again.
    """
    out = np.array(text_x, dtype=np.float32, copy=True)
    start = _N_STATS + N_HASH
    out[:, start : start + N_TASK] = 0.0
    for i, task in enumerate(tasks if tasks is not None else [None] * len(out)):
        if task:
            out[i, start + task_hash_column(task, N_TASK)] = 1.0
    return out


def _text_features(
    questions: list[str], tasks: list[str | None], task_columns: Mapping[str, int] | None = None
) -> np.ndarray:
    """The text columns of a batch, float32 (n, _N_STATS + N_HASH + N_TASK).

    Hot path of `ttc allocate` (100,000 queries): statistics per query in plain
    Python, hashed n-grams counted for the whole batch at once with bincount.
    The values must stay bit-identical to version 1 of this feature set.
    """
    n = len(questions)
    stats = []
    gram_buckets: list[int] = []
    gram_counts = np.zeros(n, dtype=np.intp)
    scale = np.ones(n, dtype=np.float64)
    task_cols = np.zeros((n, N_TASK), dtype=np.float64)
    for i, (question, task) in enumerate(zip(questions, tasks, strict=True)):
        text = question or ""
        words = _WORD.findall(text.lower())
        stats.append(_stats(text, words))
        toks = ["<num>" if w[0].isdigit() else w for w in words]
        grams = toks + [a + " " + b for a, b in zip(toks, toks[1:], strict=False)]
        gram_buckets.extend(map(_GRAM_BUCKETS.__getitem__, grams))
        gram_counts[i] = len(grams)
        scale[i] = 1.0 / math.sqrt(max(len(toks), 1))
        col = (task_hash_column(task, N_TASK) if task_columns is None else task_columns.get(task)) if task else None
        if col is not None:
            task_cols[i, col] = 1.0
    owner = np.repeat(np.arange(n, dtype=np.intp), gram_counts)
    flat = owner * N_HASH + np.asarray(gram_buckets, dtype=np.intp)
    grams_x = np.bincount(flat, minlength=n * N_HASH).reshape(n, N_HASH) * scale[:, None]
    if len(_GRAM_BUCKETS) > _GRAM_CACHE_MAX:
        _GRAM_BUCKETS.clear()
    stats_x = np.asarray(stats, dtype=np.float64).reshape(n, _N_STATS)
    return np.hstack([stats_x, grams_x, task_cols]).astype(np.float32)


def _stats(text: str, words: list[str]) -> list[float]:
    numbers = _NUMBER.findall(text)
    values = []
    for n in numbers:
        try:
            values.append(abs(float(n.replace(",", ""))))
        except ValueError:
            continue
    return [
        len(text),
        len(words),
        len(text.split()),
        sum(map(str.isdigit, text)),
        len(numbers),
        math.log10(max(values) + 1) if values else 0.0,
        # the mean of a few small integers: exact in float64, so equal to np.mean's result
        sum(map(len, numbers)) / len(numbers) if numbers else 0.0,
        len(_OPS.findall(text)),
        max(1, len(_SENTENCE_END.findall(text))),
        text.count("?"),
    ] + [words.count(q) for q in _QWORDS]


class _BucketCache(dict):
    """gram -> hash bucket; word and bigram vocabularies repeat across queries, crc32 needs an encode."""

    def __missing__(self, gram: str) -> int:
        self[gram] = bucket = _h(gram, N_HASH)
        return bucket


_GRAM_BUCKETS = _BucketCache()
_GRAM_CACHE_MAX = 1 << 20


FEATURE_SETS: dict[str, FeatureSet] = {
    "text": FeatureSet("text", 1),
    "text+probe": FeatureSet("text+probe", 2, probe=True),
}


def get_feature_set(name: str) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise unknown_name("feature set", name, FEATURE_SETS)
    return FEATURE_SETS[name]


def row_names(fs: FeatureSet, models: list[str]) -> list[str]:
    """Column names of a (query, arm) row: query features, then arm features."""
    return fs.names() + arm_feature_names(models)


def arm_block(arms: Sequence[Arm], models: list[str]) -> np.ndarray:
    """(n_arms, n_arm_features) float32: the arm columns of every arm, in order."""
    return np.asarray([arm_features(arm, models) for arm in arms], dtype=np.float32)


def row_matrix(query_x: np.ndarray, arms: Sequence[Arm], models: list[str]) -> np.ndarray:
    """Rows for every (query, arm) pair, query-major: row i*len(arms)+j is query i with arm j."""
    return row_matrix_from_block(query_x, arm_block(arms, models))


def row_matrix_from_block(query_x: np.ndarray, arm_x: np.ndarray) -> np.ndarray:
    """`row_matrix` from the arm columns already computed (`arm_block`)."""
    nq, na = query_x.shape[0], arm_x.shape[0]
    return np.hstack([np.repeat(query_x, na, axis=0), np.tile(arm_x, (nq, 1))]).astype(np.float32)


#: First-sample confidence signals of the two-stage rule (eval/allocators/two_stage.py), in column order.
FIRST_SAMPLE_NAMES = ("first_mean_logprob", "first_min_logprob", "first_mean_entropy", "first_answered", "first_tokens")


#: Checks of the first sample's own text (`answer_checks`), read by stage-2 rules that list them (issue 18).
ANSWER_CHECK_NAMES = ("first_equations", "first_wrong_equations")
#: Every first-sample signal a stage-2 rule may read, in column order: the confidence, then the checks.
STAGE2_SIGNAL_NAMES = (*FIRST_SAMPLE_NAMES, *ANSWER_CHECK_NAMES)


def first_sample_signals(
    token_logprob: Sequence[Sequence[float]],
    token_entropy: Sequence[Sequence[float]],
    answered: Sequence[bool],
    tokens: Sequence[int],
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """(n, 5) float32 `FIRST_SAMPLE_NAMES` of n first samples, each given up to its cap's tokens.

    Mean and minimum chosen-token log-probability and mean entropy (nats, the model's
    temperature-1 distribution; NaN when the sample has no token), whether an answer
    was extracted, and its length in tokens. With `texts` (each sample's text up to
    its cap) the result is (n, 7), `STAGE2_SIGNAL_NAMES`: the `answer_checks` added.
    """
    rows = []
    for lp, ent, ok, n in zip(token_logprob, token_entropy, answered, tokens, strict=True):
        lp, ent = np.asarray(lp, dtype=np.float64), np.asarray(ent, dtype=np.float64)
        stats = (lp.mean(), lp.min()) if lp.size else (math.nan, math.nan)
        rows.append([*stats, ent.mean() if ent.size else math.nan, float(bool(ok)), float(n)])
    out = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FIRST_SAMPLE_NAMES))
    return out if texts is None else np.hstack([out, answer_check_signals(texts)])


_EQUATION = re.compile(r"((?:-?\d+(?:\.\d+)?\s*[-+*/×x]\s*)+-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_EQ_TOKEN = re.compile(r"\d+(?:\.\d+)?|[-+*/×x]")


def _evaluate(expr: str) -> float:
    """A chain of numbers joined by + - * / (× and x read as *), * and / binding first."""
    toks = _EQ_TOKEN.findall(expr)
    nums, ops = [float(t) for t in toks[0::2]], [{"×": "*", "x": "*"}.get(t, t) for t in toks[1::2]]
    terms, signs = [nums[0]], []
    for op, v in zip(ops, nums[1:], strict=False):
        if op == "*":
            terms[-1] *= v
        elif op == "/":
            terms[-1] = terms[-1] / v if v else math.nan
        else:
            signs.append(op)
            terms.append(v)
    out = terms[0]
    for op, v in zip(signs, terms[1:], strict=True):
        out = out + v if op == "+" else out - v
    return out


def answer_checks(text: str | None) -> tuple[int, int]:
    """(equations "a op b ... = c" written in an answer's text, how many of them are arithmetically wrong).

    A free verifier of the model's own working: "6 + 3 = 9. 9 + 0 = 10." holds two
    equations, one wrong. Within a task, an answer whose equations check out is right
    far more often (scripts/signals.py measures it). Regular expressions only.
    """
    checked = wrong = 0
    for m in _EQUATION.finditer(text or ""):
        checked += 1
        wrong += not abs(_evaluate(m.group(1)) - float(m.group(2))) < 1e-6
    return checked, wrong


def answer_check_signals(texts: Sequence[str | None]) -> np.ndarray:
    """(n, 2) float32 `ANSWER_CHECK_NAMES` of n answer texts (`answer_checks`)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return np.asarray([answer_checks(t) for t in texts], dtype=np.float32).reshape(len(texts), len(ANSWER_CHECK_NAMES))
