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
- the task name hashed into `N_TASK` one-hot buckets (all zero when unknown), so
  a new task needs no new column and the ONNX graph stays a plain matrix input.

Probe features (computed by the answering model from one prefill, see
collect/probe.py) are not computed here: a policy that uses them takes them as
input columns named `probe_*`, appended after the text features.
Never import torch, transformers or mlflow here.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policy.arms import Arm, arm_feature_names, arm_features
from policy.errors import unknown_name

N_HASH = 64
N_TASK = 16
_WORD = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPS = re.compile(r"[+\-*/×÷=^%]")
_QWORDS = ("how", "what", "which", "who", "when", "where", "why", "many", "much", "total", "each", "more", "less")
PROBE_NAMES = ("probe_first_entropy", "probe_first_top_p", "probe_prompt_mean_logprob")


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
    ) -> np.ndarray:
        """(n_queries, len(names())) float32 matrix."""
        tasks = list(tasks) if tasks is not None else [None] * len(questions)
        if len(tasks) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(tasks)} task names")
        rows = [self._row(q, t) for q, t in zip(questions, tasks, strict=True)]
        x = np.asarray(rows, dtype=np.float32).reshape(len(questions), -1)
        if self.probe:
            if probe is None or np.shape(probe) != (len(questions), len(PROBE_NAMES)):
                raise ValueError(
                    f"feature set {self.name!r} needs probe values of shape ({len(questions)}, {len(PROBE_NAMES)})"
                )
            x = np.hstack([x, np.asarray(probe, dtype=np.float32)])
        return x

    @staticmethod
    def _row(question: str, task: str | None) -> list[float]:
        text = question or ""
        lower = text.lower()
        words = _WORD.findall(lower)
        numbers = _NUMBER.findall(text)
        values = []
        for n in numbers:
            try:
                values.append(abs(float(n.replace(",", ""))))
            except ValueError:
                continue
        stats = [
            len(text),
            len(words),
            len(text.split()),
            sum(c.isdigit() for c in text),
            len(numbers),
            math.log10(max(values) + 1) if values else 0.0,
            float(np.mean([len(n) for n in numbers])) if numbers else 0.0,
            len(_OPS.findall(text)),
            max(1, len(re.findall(r"[.!?](\s|$)", text))),
            text.count("?"),
        ] + [float(sum(w == q for w in words)) for q in _QWORDS]
        grams = [0.0] * N_HASH
        toks = ["<num>" if w[0].isdigit() else w for w in words]
        for g in toks + [a + " " + b for a, b in zip(toks, toks[1:], strict=False)]:
            grams[_h(g, N_HASH)] += 1.0
        scale = 1.0 / math.sqrt(max(len(toks), 1))
        grams = [v * scale for v in grams]
        task_cols = [0.0] * N_TASK
        if task:
            task_cols[_h(task, N_TASK)] = 1.0
        return [float(v) for v in stats] + grams + task_cols


FEATURE_SETS: dict[str, FeatureSet] = {
    "text": FeatureSet("text", 1),
    "text+probe": FeatureSet("text+probe", 1, probe=True),
}


def get_feature_set(name: str) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise unknown_name("feature set", name, FEATURE_SETS)
    return FEATURE_SETS[name]


def row_names(fs: FeatureSet, models: list[str]) -> list[str]:
    """Column names of a (query, arm) row: query features, then arm features."""
    return fs.names() + arm_feature_names(models)


def row_matrix(query_x: np.ndarray, arms: Sequence[Arm], models: list[str]) -> np.ndarray:
    """Rows for every (query, arm) pair, query-major: row i*len(arms)+j is query i with arm j."""
    a = np.asarray([arm_features(arm, models) for arm in arms], dtype=np.float32)
    nq, na = query_x.shape[0], a.shape[0]
    return np.hstack([np.repeat(query_x, na, axis=0), np.tile(a, (nq, 1))]).astype(np.float32)
