"""Task identity in a bundle: the tasks its trees know, and the rule for every task they do not.

The trees see a task as one of `N_TASK` one-hot columns. A bundle's tasks.json
records which column each *trained* task owns (`assign_task_columns`: every
task its own column while there are at most `N_TASK`, so no two known tasks
ever share features), and what to do for a task the trees never saw:

- **unknown** (no task, or a name the bundle does not know): the trees' guess
  for such a query is a model never validated on unseen tasks (leave one task
  out it did worse than one fixed arm), so the bundle answers with its
  *global table* instead: per arm, the mean accuracy and joules over every
  training query. Under a price λ every unknown query then gets the arm of
  best accuracy − λ × joules on the training queries: the best single global
  choice at that price, never worse than it by construction
  (`unknown_rule: "global"`; `"predictor"` keeps the trees' guess).
- **adapted** (`ttc adapt`, train/adapt.py): a new task with k labelled
  queries. Its per-arm accuracy is the k-query mean shrunk toward a prior made
  for that task: the global table moved, per model, by one logit shift fitted
  to the same k queries (a task that is hard for a model is hard for all of
  its arms), with the weight of `prior_queries` pseudo-queries (empirical
  Bayes on the training tasks, `prior_strength`). Its joules are the k-query
  means. A few labelled queries thus move the whole table at once, and the
  noise of picking one of many arms from k queries is damped.

`TaskTable.route` writes these rows into the (p, joules) matrices the
allocation rule reads, so price, budget, serve and allocate all decide the
same way. numpy and the standard library only; tasks.json is plain data,
checked field by field (`BundleError`), like every bundle file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy import jsonsafe
from policy.errors import BundleError, UsageError

TASKS_FILE = "tasks.json"
#: what `TaskTable.status` says of a task name
KNOWN, ADAPTED, UNKNOWN = "known", "adapted", "unknown"
UNKNOWN_RULES = ("global", "predictor")
#: one-hot task columns of the feature sets (policy/features.py reads it from here)
N_TASK = 16
_P_CLIP = 1e-3
#: bounds of the empirical-Bayes prior weight, in pseudo-queries
PRIOR_MIN, PRIOR_MAX = 0.5, 64.0


def task_hash_column(task: str, n_columns: int = N_TASK) -> int:
    """The hashed column of a task name (crc32): the column of a bundle without tasks.json."""
    import zlib

    return zlib.crc32(task.encode("utf-8")) % n_columns


def assign_task_columns(tasks: Sequence[str], n_columns: int = N_TASK) -> dict[str, int]:
    """Task name -> its own one-hot column: its hashed column, or the next free one when that is taken.

    Tasks are placed in name order, so the same set gives the same columns. A task whose
    hashed column is free keeps it (the columns of the hashed scheme, where it had no
    collision). Beyond `n_columns` tasks the rest share their hashed columns.
    """
    out: dict[str, int] = {}
    taken: set[int] = set()
    for t in sorted(set(str(t) for t in tasks)):
        col = task_hash_column(t, n_columns)
        if len(taken) < n_columns:
            while col in taken:
                col = (col + 1) % n_columns
        out[t] = col
        taken.add(col)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _P_CLIP, 1 - _P_CLIP)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def model_shift_prior(global_acc: np.ndarray, task_acc: np.ndarray, arm_models: Sequence[str]) -> np.ndarray:
    """Per arm: the global accuracy moved by one logit shift per model so its mean matches `task_acc`'s.

    The shift s of a model solves mean_a sigmoid(logit(global_a) + s) = mean_a task_acc_a over its
    arms (bisection: the left side rises with s).
    """
    g, t = np.asarray(global_acc, dtype=np.float64), np.asarray(task_acc, dtype=np.float64)
    out = np.empty_like(g)
    models = np.asarray(list(arm_models))
    for m in sorted(set(models.tolist())):
        cols = np.flatnonzero(models == m)
        z, target = _logit(g[cols]), float(np.clip(t[cols].mean(), _P_CLIP, 1 - _P_CLIP))
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if _sigmoid(z + mid).mean() < target:
                lo = mid
            else:
                hi = mid
        out[cols] = _sigmoid(z + (lo + hi) / 2)
    return out


def shrunk_accuracy(
    task_acc: np.ndarray, n_queries: int, global_acc: np.ndarray, arm_models: Sequence[str], prior_queries: float
) -> np.ndarray:
    """(n · task mean + m · task prior) / (n + m) per arm: the adapted accuracy of a task (module docstring)."""
    prior = model_shift_prior(global_acc, task_acc, arm_models)
    n, m = float(n_queries), float(prior_queries)
    return (n * np.asarray(task_acc, dtype=np.float64) + m * prior) / (n + m)


def prior_strength(
    acc: np.ndarray, var: np.ndarray, n: np.ndarray, global_acc: np.ndarray, arm_models: Sequence[str]
) -> float:
    """Empirical-Bayes weight m of the task prior, in pseudo-queries, from training tasks.

    `acc`, `var`: (n_tasks, n_arms) per-task mean of the label and its per-query variance
    around the query's model mean (`table_from_rows`); `n` queries per task. m = that
    within-task variance / the between-task variance of the task means around their
    model-shift prior (the noise of a mean of n removed), clipped to
    [`PRIOR_MIN`, `PRIOR_MAX`]; `PRIOR_MAX` when the tasks do not differ beyond noise.
    """
    acc, var, n = np.asarray(acc, float), np.asarray(var, float), np.asarray(n, float)
    if acc.shape[0] < 2:
        return PRIOR_MAX
    resid = np.stack([acc[i] - model_shift_prior(global_acc, acc[i], arm_models) for i in range(len(acc))])
    sigma2 = float(np.mean(var))
    tau2 = float(np.mean(resid**2) - np.mean(var / n[:, None]))
    if not math.isfinite(tau2) or tau2 <= 0:
        return PRIOR_MAX
    return float(np.clip(sigma2 / tau2, PRIOR_MIN, PRIOR_MAX))


@dataclass(frozen=True)
class AdaptedTask:
    """A new task's k labelled queries, per arm in bundle order: mean label and mean joules."""

    n_queries: int
    accuracy: tuple[float, ...]
    energy_j: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "accuracy": list(self.accuracy), "energy_j": list(self.energy_j)}


@dataclass(frozen=True)
class TaskTable:
    """tasks.json: known task columns, the global table, the unknown-task rule and the adapted tasks."""

    arms: tuple[str, ...]
    columns: dict[str, int]
    global_queries: int
    global_accuracy: tuple[float, ...]
    global_energy_j: tuple[float, ...]
    prior_queries: float
    unknown_rule: str = "global"
    adapted: dict[str, AdaptedTask] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unknown_rule not in UNKNOWN_RULES:
            raise UsageError(f"unknown_rule must be one of {UNKNOWN_RULES}, got {self.unknown_rule!r}")

    # ------------------------------------------------------------ reading a task name

    @property
    def known_tasks(self) -> tuple[str, ...]:
        """The tasks the trees were trained on, in name order."""
        return tuple(sorted(self.columns))

    def status(self, task: str | None) -> str:
        """`KNOWN` (trained on), `ADAPTED` (`ttc adapt`) or `UNKNOWN` (no task, or a name never seen)."""
        if task is not None and task in self.columns:
            return KNOWN
        if task is not None and task in self.adapted:
            return ADAPTED
        return UNKNOWN

    def arm_models(self) -> list[str]:
        return [a.split("/", 1)[0] for a in self.arms]

    def adapted_rows(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, joules) per arm of an adapted task: the shrunk estimate of the module docstring."""
        a = self.adapted[task]
        acc = shrunk_accuracy(
            np.asarray(a.accuracy), a.n_queries, np.asarray(self.global_accuracy), self.arm_models(), self.prior_queries
        )
        return acc, np.asarray(a.energy_j, dtype=np.float64)

    def route(self, p: np.ndarray, e: np.ndarray, tasks: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """(p, joules) with each unknown task's row replaced by the global table (`unknown_rule` "global")
        and each adapted task's row by its own table; rows of known tasks are the trees' predictions."""
        n = len(p)
        tasks = list(tasks) if tasks is not None else [None] * n
        p, e = np.array(p, dtype=np.float64), np.array(e, dtype=np.float64)
        cache: dict[str | None, tuple[np.ndarray, np.ndarray] | None] = {}
        for i, t in enumerate(tasks):
            if t not in cache:
                s = self.status(t)
                if s == ADAPTED:
                    cache[t] = self.adapted_rows(str(t))
                elif s == UNKNOWN and self.unknown_rule == "global":
                    cache[t] = (np.asarray(self.global_accuracy), np.asarray(self.global_energy_j))
                else:
                    cache[t] = None
            rows = cache[t]
            if rows is not None:
                p[i], e[i] = rows
        return p, e

    # ------------------------------------------------------------ JSON

    def with_adapted(self, task: str, adapted: AdaptedTask) -> TaskTable:
        if task in self.columns:
            raise UsageError(f"task {task!r} is one the policy was trained on; adapt a new task, or retrain")
        return TaskTable(**{**self.__dict__, "adapted": {**self.adapted, task: adapted}})

    def to_json(self) -> bytes:
        d = {
            "arms": list(self.arms),
            "columns": dict(sorted(self.columns.items())),
            "global": {
                "n_queries": self.global_queries,
                "accuracy": list(self.global_accuracy),
                "energy_j": list(self.global_energy_j),
            },
            "prior_queries": self.prior_queries,
            "unknown_rule": self.unknown_rule,
            "adapted": {t: a.to_dict() for t, a in sorted(self.adapted.items())},
        }
        return (json.dumps(d, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, arm_ids: Sequence[str]) -> TaskTable:
        """Parse and check tasks.json against the bundle's arms; `BundleError` naming the bad field."""
        d = jsonsafe.loads(raw, TASKS_FILE, BundleError, "; re-export the bundle")
        if not isinstance(d, dict) or set(d) != _KEYS:
            raise BundleError(f"{TASKS_FILE} must be an object with keys {sorted(_KEYS)}; re-export the bundle")
        if d["arms"] != list(arm_ids):
            raise BundleError(f"{TASKS_FILE} lists other arms than policy.json; re-export the bundle")
        n_arms = len(arm_ids)
        cols = d["columns"]
        if not isinstance(cols, dict) or not all(
            isinstance(k, str) and type(v) is int and 0 <= v < N_TASK for k, v in cols.items()
        ):
            raise BundleError(f"{TASKS_FILE} 'columns' must map task names to columns 0..{N_TASK - 1}")
        if len(cols) <= N_TASK and len(set(cols.values())) != len(cols):
            raise BundleError(f"{TASKS_FILE} gives two known tasks one column; re-export the bundle")
        g = d["global"]
        if not isinstance(g, dict) or set(g) != {"n_queries", "accuracy", "energy_j"}:
            raise BundleError(f"{TASKS_FILE} 'global' must hold n_queries, accuracy and energy_j")
        glob = _table(g, n_arms, "global")
        if not (_num(d["prior_queries"]) and d["prior_queries"] > 0):
            raise BundleError(f"{TASKS_FILE} 'prior_queries' must be a number > 0")
        if d["unknown_rule"] not in UNKNOWN_RULES:
            raise BundleError(f"{TASKS_FILE} 'unknown_rule' must be one of {UNKNOWN_RULES}")
        if not isinstance(d["adapted"], dict):
            raise BundleError(f"{TASKS_FILE} 'adapted' must map task names to tables")
        adapted = {}
        for t, a in d["adapted"].items():
            if not isinstance(a, dict) or set(a) != {"n_queries", "accuracy", "energy_j"}:
                raise BundleError(f"{TASKS_FILE} adapted task {t!r} must hold n_queries, accuracy and energy_j")
            adapted[t] = AdaptedTask(*_table(a, n_arms, f"adapted task {t!r}"))
            if t in cols:
                raise BundleError(f"{TASKS_FILE} lists {t!r} as known and as adapted")
        return cls(tuple(arm_ids), dict(cols), *glob, float(d["prior_queries"]), d["unknown_rule"], adapted)


_KEYS = {"arms", "columns", "global", "prior_queries", "unknown_rule", "adapted"}


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _table(d: Mapping[str, Any], n_arms: int, what: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    n, acc, e = d["n_queries"], d["accuracy"], d["energy_j"]
    if type(n) is not int or n < 1:
        raise BundleError(f"{TASKS_FILE} {what}: n_queries must be an integer >= 1")
    for name, v, ok in (("accuracy", acc, lambda x: 0 <= x <= 1), ("energy_j", e, lambda x: x > 0)):
        if not isinstance(v, list) or len(v) != n_arms or not all(_num(x) and ok(x) for x in v):
            raise BundleError(f"{TASKS_FILE} {what}: {name} must be {n_arms} numbers, one per arm, in range")
    return n, tuple(float(x) for x in acc), tuple(float(x) for x in e)


def table_from_rows(
    query: Sequence[str],
    task: Sequence[str],
    arm: Sequence[str],
    label: Sequence[float],
    energy_j: Sequence[float],
    arm_ids: Sequence[str],
) -> tuple[dict[str, AdaptedTask], dict[str, np.ndarray]]:
    """Per task of (query, arm) rows: its `AdaptedTask` (means per arm) and the per-query variance of the
    label around its model's mean on the same query (the noise left once the task prior's shift is fitted).

    Every query must hold every arm (the arm view of a complete collection).
    """
    query, task, arm = (np.asarray(v, dtype=object) for v in (query, task, arm))
    label, energy = np.asarray(label, dtype=np.float64), np.asarray(energy_j, dtype=np.float64)
    col = {a: j for j, a in enumerate(arm_ids)}
    stray = sorted(set(arm.tolist()) - set(col))
    if stray:
        raise UsageError(f"the rows hold arms {stray[:3]} that the policy does not have")
    models = np.asarray([a.split("/", 1)[0] for a in arm_ids])
    out, var = {}, {}
    for t in sorted(set(task.tolist())):
        m = task == t
        qs, qi = np.unique(query[m].astype(str), return_inverse=True)
        j = np.asarray([col[a] for a in arm[m]])
        seen = np.zeros((len(qs), len(arm_ids)), dtype=bool)
        seen[qi, j] = True
        if not seen.all() or m.sum() != seen.size:
            missing = [arm_ids[i] for i in np.flatnonzero(~seen.all(axis=0))][:3] or ["an arm twice"]
            raise UsageError(f"task {t!r}: not every query has every arm once (e.g. {missing}); collect the full grid")
        y, e = np.zeros(seen.shape), np.zeros(seen.shape)
        y[qi, j], e[qi, j] = label[m], energy[m]
        centred = y.copy()
        for mod in set(models.tolist()):
            c = models == mod
            centred[:, c] -= y[:, c].mean(axis=1, keepdims=True)
        out[str(t)] = AdaptedTask(len(qs), tuple(y.mean(axis=0).tolist()), tuple(e.mean(axis=0).tolist()))
        var[str(t)] = centred.var(axis=0)
    return out, var
