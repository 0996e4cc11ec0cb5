"""The exported look-then-decide rule: stage 2 of the two-stage policy, read from a bundle's stage2.json.

Stage 1 draws one sample from `first_arm` (the cheapest one-sample arm of the
training queries). Its signals join the question's "text" features: the
confidence `policy.features.FIRST_SAMPLE_NAMES` and, in rules that list them
(`signals` in stage2.json; every rule `ttc train` writes since issue 18), the
checks of its own text `ANSWER_CHECK_NAMES` (equations written, equations
wrong: `policy.features.answer_checks`). A stage2.json listing only the five
confidence signals (older bundles) still loads and decides as before; a success model (plain-data trees, sigmoid output)
predicts each arm's P(correct) given them, and stage 2 takes the arm with the
most predicted accuracy minus λ x its *marginal* joules: the policy's
predicted joules, less the stage-1 joules already spent when the arm
continues the first sample (same model and temperature, cap >= stage 1's).
Choosing `first_arm` itself means "stop". Since issue 18 a rule may look first at a
different arm per task (`first_arms`: task -> arm id, chosen where the bundle's
price puts each task's per-task table arm: that arm's first sample, so
continuing to the table's choice pays nothing twice); each such first arm has
its own success model (`looks`), read after a look at it; any other task (or
none) looks at `first_arm`. A stage2.json without them (older bundles) looks at
`first_arm` for every task. `choose` and `marginal_joules` are
the very functions eval/allocators/two_stage.py simulates with, so the
exported decisions are the evaluated ones.

stage2.json is untrusted: every field's type and shape is checked on load and
any mismatch is a `BundleError`. numpy and the standard library only; never
imports lightgbm, torch or mlflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy import jsonsafe
from policy.arms import Arm
from policy.errors import BundleError, UsageError
from policy.features import FIRST_SAMPLE_NAMES, STAGE2_SIGNAL_NAMES, answer_check_signals
from policy.trees import TreeEnsemble

STAGE2_FILE = "stage2.json"
#: the query feature set stage 2 reads (before the signals and the arm columns)
STAGE2_FEATURES = "text"
#: what a stage-2 choice means for the first sample
ACTIONS = ("stop", "continue", "switch")
#: the signal lists a stage2.json may name, oldest first: the confidence alone, then with the answer checks
SIGNAL_SETS: tuple[tuple[str, ...], ...] = (FIRST_SAMPLE_NAMES, STAGE2_SIGNAL_NAMES)


def continues(arms: Sequence[Arm], first: Arm) -> np.ndarray:
    """Per arm: whether it starts from the stage-1 sample (same model and temperature, cap >= stage 1's)."""
    return np.asarray(
        [a.model == first.model and a.temperature == first.temperature and a.max_new_tokens >= first.max_new_tokens
         for a in arms]
    )  # fmt: skip


def marginal_joules(e: np.ndarray, e1: np.ndarray, cont: np.ndarray) -> np.ndarray:
    """(n, n_arms) joules still to spend: predicted joules, less stage 1's for an arm that continues its sample."""
    return np.where(cont[None, :], np.maximum(e - e1[:, None], 0.0), e)


def choose(p2: np.ndarray, marginal: np.ndarray, lam: float) -> np.ndarray:
    """(n,) arm index of most p2 - lam x marginal; ties go to the cheaper arm, then the first one."""
    score = p2 - lam * marginal
    # lexsort's last key is primary and it is stable, so equal (score, marginal) keep arm order
    return np.lexsort((marginal, -score), axis=-1)[:, 0] if len(p2) else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class StageTwoDecision:
    """Stage 2's choice for one query after the look: the arm, and whether that stops, continues or switches."""

    query_id: str
    arm_id: str
    action: str
    p_success: float
    marginal_j: float
    lam: float


@dataclass(frozen=True, eq=False)
class StageTwo:
    """The stage-2 success model and rule of a bundle (stage2.json)."""

    first_arm: str
    lam: float
    trees: TreeEnsemble | None  # None: a constant success probability (one-class training labels)
    constant: float = 0.0
    #: the first-sample signals it reads, in column order (one of `SIGNAL_SETS`)
    signals: tuple[str, ...] = FIRST_SAMPLE_NAMES
    #: task -> the arm it looks at first (absent tasks look at `first_arm`); empty in older bundles
    first_arms: Mapping[str, str] = field(default_factory=dict)
    #: first arm -> the rule read after a look at it (every value of `first_arms` but `first_arm`)
    looks: Mapping[str, StageTwo] = field(default_factory=dict)

    def rule_for(self, task: str | None) -> StageTwo:
        """The rule of `task`'s first look: its own look's rule, or this one (no hint, unknown task)."""
        arm = self.first_arms.get(str(task)) if task is not None else None
        return self if arm is None or arm == self.first_arm else self.looks[arm]

    @property
    def first_arm_ids(self) -> tuple[str, ...]:
        """Every arm this rule may look at first (`first_arm` and each task's own), sorted."""
        return tuple(sorted({self.first_arm, *self.first_arms.values()}))

    @property
    def reads_text(self) -> bool:
        """True when the rule reads checks of the first sample's text (pass `first_text` to decide)."""
        return len(self.signals) > len(FIRST_SAMPLE_NAMES)

    def predict_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> np.ndarray:
        """(n_queries, n_arms) P(correct) of every row [query_x[i] (text features, signals), arm_x[j]]."""
        if self.trees is None:
            return np.full((len(query_x), len(arm_x)), self.constant)
        # arm columns decided ahead per tree (TreeEnsemble.raw_score_grid): the same bits as on full rows
        return self.trees.transformed(self.trees.raw_score_grid(query_x, arm_x))

    @classmethod
    def from_json(cls, raw: bytes, arm_ids: Sequence[str], n_features: int) -> StageTwo:
        """Parse and check stage2.json for a bundle of `arm_ids` whose stage-2 rows, less the signals, have
        `n_features` columns (the text features and the arm columns)."""
        return cls._from_dict(
            jsonsafe.loads(raw, STAGE2_FILE, BundleError, "; re-export the bundle"), arm_ids, n_features
        )

    @classmethod
    def _from_dict(cls, d: Any, arm_ids: Sequence[str], n_features: int) -> StageTwo:
        if not isinstance(d, dict):
            raise BundleError(f"{STAGE2_FILE} must hold a JSON object")
        for key, ok, what in _FIELDS:
            if key not in d or not ok(d[key]):
                raise BundleError(f"{STAGE2_FILE} field {key!r} must be {what}; re-export the bundle")
        if tuple(d["signals"]) not in SIGNAL_SETS or d["features"] != STAGE2_FEATURES:
            raise BundleError(
                f"{STAGE2_FILE} reads {d['features']!r} + {d['signals']}; this package computes "
                f"{STAGE2_FEATURES!r} + one of {[list(s) for s in SIGNAL_SETS]}; retrain and re-export the policy"
            )
        signals = tuple(d["signals"])
        if d["first_arm"] not in arm_ids:
            raise BundleError(f"{STAGE2_FILE} names first arm {d['first_arm']!r}, which is not an arm of the bundle")
        if Arm.parse(d["first_arm"]).n != 1:
            raise BundleError(f"{STAGE2_FILE} first arm {d['first_arm']!r} draws more than one sample")
        trees = d["trees"]
        if (trees is None) == (d["constant"] is None):
            raise BundleError(f"{STAGE2_FILE} must hold either 'trees' or a 'constant', not both or neither")
        ens = None
        if trees is not None:
            ens = TreeEnsemble.from_json(trees, n_features + len(signals))
            if ens.transform != "sigmoid":
                raise BundleError(f"{STAGE2_FILE} trees must output a probability (sigmoid); re-export the bundle")
        lam = float(d["lam"])
        looks: dict[str, StageTwo] = {}
        for i, look in enumerate(_list(d, "looks")):
            if not isinstance(look, dict) or "looks" in look or "first_arms" in look:
                raise BundleError(f"{STAGE2_FILE} looks[{i}] must be an object of one rule; re-export the bundle")
            # checked as a rule first (its first arm a string of the bundle's arms), then for repeats
            rule = cls._from_dict({**look, "lam": lam, "features": d["features"], "signals": d["signals"]},
                                  arm_ids, n_features)  # fmt: skip
            if rule.first_arm == d["first_arm"] or rule.first_arm in looks:
                raise BundleError(f"{STAGE2_FILE} looks[{i}] repeats first arm {rule.first_arm!r}; re-export it")
            looks[rule.first_arm] = rule
        first_arms = d.get("first_arms", {})
        if not isinstance(first_arms, dict) or not all(
            isinstance(t, str) and isinstance(a, str) and (a == d["first_arm"] or a in looks)
            for t, a in first_arms.items()
        ):
            raise BundleError(
                f"{STAGE2_FILE} field 'first_arms' must map task names to the first arm or a look's first arm; "
                "re-export the bundle"
            )
        unused = sorted(set(looks) - set(first_arms.values()))
        if unused:
            raise BundleError(f"{STAGE2_FILE} holds a look at {unused[0]!r} that no task uses; re-export the bundle")
        return cls(d["first_arm"], lam, ens, float(d["constant"] or 0.0), signals, dict(first_arms), looks)


def stage_two_json(
    first_arm: str,
    lam: float,
    trees: dict[str, Any] | None,
    constant: float | None,
    signals: Sequence[str] = STAGE2_SIGNAL_NAMES,
    first_arms: Mapping[str, str] | None = None,
    looks: Sequence[tuple[str, dict[str, Any] | None, float | None]] = (),
) -> bytes:
    """stage2.json bytes (the writer's half of `StageTwo.from_json`); `looks`: (first arm, trees, constant)."""
    if tuple(signals) not in SIGNAL_SETS:
        raise UsageError(f"stage-2 signals must be one of {[list(s) for s in SIGNAL_SETS]}, got {list(signals)}")
    d: dict[str, Any] = {"first_arm": first_arm, "lam": float(lam), "features": STAGE2_FEATURES,
                         "signals": list(signals), "trees": trees,
                         "constant": None if constant is None else float(constant)}  # fmt: skip
    if first_arms:
        d["first_arms"] = dict(sorted(first_arms.items()))
        d["looks"] = [{"first_arm": a, "trees": t, "constant": None if c is None else float(c)} for a, t, c in looks]
    return (json.dumps(d, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def _list(d: dict[str, Any], key: str) -> list[Any]:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise BundleError(f"{STAGE2_FILE} field {key!r} must be a list; re-export the bundle")
    return v


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_FIELDS = (
    ("first_arm", lambda v: isinstance(v, str), "an arm id string"),
    ("lam", lambda v: _num(v) and v >= 0, "a finite number >= 0 (accuracy per joule)"),
    ("features", lambda v: isinstance(v, str), "a feature set name"),
    ("signals", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of signal names"),
    ("trees", lambda v: v is None or isinstance(v, dict), "null or a plain-data tree ensemble"),
    ("constant", lambda v: v is None or (_num(v) and 0 <= v <= 1), "null or a probability in [0, 1]"),
)


def check_signals(
    first_sample: Any,
    n: int,
    signals: Sequence[str] = FIRST_SAMPLE_NAMES,
    first_text: Sequence[str | None] | None = None,
) -> np.ndarray:
    """(n, len(signals)) float32 first-sample signals; `UsageError` naming the columns when wrong.

    `first_sample` holds the five confidence columns (`FIRST_SAMPLE_NAMES`) or every column of
    `signals`; when a rule reads the answer checks and only the five are given, they are computed
    from `first_text` (each first sample's text up to its cap).
    """
    try:
        x = np.asarray(first_sample, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"first_sample must be numbers, columns {list(signals)}: {exc}") from exc
    base = len(FIRST_SAMPLE_NAMES)
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] not in (base, len(signals)):
        raise UsageError(
            f"first_sample must have shape ({n}, {len(signals)}), columns {list(signals)} "
            f"(policy.features.first_sample_signals computes them), got {x.shape}"
        )
    if np.isinf(x).any():
        raise UsageError("first_sample holds infinite values; NaN (no token) is allowed, inf is not")
    if x.shape[1] < len(signals):
        if first_text is None:
            raise UsageError(
                f"this stage-2 rule also reads checks of the first sample's text {list(signals[base:])}: "
                f"pass first_text= (one text per question) or all {len(signals)} signal columns"
            )
        if isinstance(first_text, str) or len(first_text) != n:
            raise UsageError(f"first_text must be a list of {n} strings, one per question")
        x = np.hstack([x, answer_check_signals(list(first_text))])
    return x.astype(np.float32)
