"""What `ttc eval` reads and checks before any allocator runs: samples, bundle, held-out queries, energy sources.

Held-out queries come, in this order of precedence, from explicit test ids,
the held-out tasks of a task split, the split file `ttc train` wrote
(`store.splits.read_split`; eval never redraws train's split), or
cross-fitting folds (eval/crossfit.py). Whether the bundle, the split and the
store belong together is checked where the files record it (the split's store
fingerprint; a bundle's training fingerprint when its manifest has one) and
reported as "checked", "not recorded" or "not applicable": never silently.

Never logs, never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.crossfit import FoldSpec, query_folds, task_folds
from policy.errors import UsageError, unknown_name
from store.splits import SPLIT_KINDS, read_split, store_fingerprint


@dataclass(frozen=True)
class HeldOut:
    """The held-out queries as folds (one fold without cross-fitting), and how they were chosen."""

    kind: str
    folds: tuple[FoldSpec, ...]
    #: training queries of the single fold (cross-fitted folds train on every other query)
    train_query_ids: tuple[str, ...]
    holdout_tasks: tuple[str, ...]
    source: str
    cross_fitted: bool
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def test_query_ids(self) -> list[str]:
        return [q for f in self.folds for q in f.test_query_ids]

    def train_ids_of(self, fold: FoldSpec, all_ids: Sequence[str]) -> list[str]:
        if not self.cross_fitted:
            return list(self.train_query_ids)
        held = set(fold.test_query_ids)
        return [q for q in all_ids if q not in held]


def load_policy(bundle: Any, backend: str) -> Any:
    from policy.bundle import Policy, load_bundle

    if isinstance(bundle, Policy):
        return bundle
    return load_bundle(bundle, backend)


def _ids(values: Sequence[str] | None, what: str, known: set[str]) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise UsageError(f"{what} must be a list of query ids, not one string")
    ids = list(dict.fromkeys(str(v) for v in values))
    if not ids:
        raise UsageError(f"{what} is empty; pass None to use the default split")
    unknown = [q for q in ids if q not in known]
    if unknown:
        raise UsageError(
            f"{len(unknown)} of {len(ids)} {what} are not in the store (first: {unknown[0]!r}); "
            "pass ids from the train run of this same store"
        )
    return ids


def _check_tasks(samples: pd.DataFrame, split: str, holdout_tasks: Sequence[str] | None) -> list[str]:
    tasks = sorted(set(holdout_tasks)) if holdout_tasks else []
    if tasks and split != "task":
        raise UsageError("holdout_tasks only applies to split='task'")
    store_tasks = set(samples["task"].astype(str))
    for t in tasks:
        if t not in store_tasks:
            raise unknown_name("task", t, store_tasks)
    return tasks


def cross_fitted(samples: pd.DataFrame, split: str, folds: int, seed: int) -> HeldOut:
    """K hashed query folds (split "query") or one fold per task (split "task")."""
    q = samples.drop_duplicates("query_id")
    ids, tasks = q["query_id"].astype(str).tolist(), q["task"].astype(str).tolist()
    specs = query_folds(ids, folds, seed) if split == "query" else task_folds(ids, tasks)
    held = tuple(f.name for f in specs) if split == "task" else ()
    how = f"{len(specs)} query folds (seed {seed})" if split == "query" else "leave one task out"
    return HeldOut(split, tuple(specs), (), held, how, True)


def single_split(
    samples: pd.DataFrame,
    split: str,
    test_query_ids: Sequence[str] | None,
    holdout_tasks: Sequence[str] | None,
    train_query_ids: Sequence[str] | None,
    split_file: str | Path | None,
) -> HeldOut:
    """One held-out set: given ids, held-out tasks, or the split file train wrote (checked against the store)."""
    known = set(samples["query_id"].astype(str))
    test = _ids(test_query_ids, "test query ids", known)
    tasks = _check_tasks(samples, split, holdout_tasks)
    checks: dict[str, str] = {"split_vs_store": "not applicable: no split file"}
    source = "test query ids given"
    train = _ids(train_query_ids, "train query ids", known)
    if test is None and tasks:
        in_tasks = samples["task"].astype(str).isin(tasks)
        test, source = sorted(set(samples.loc[in_tasks, "query_id"].astype(str))), "held-out tasks"
    elif test is None and split_file is not None:
        sp = read_split(split_file)
        checks["split_vs_store"] = "checked: fingerprints match" if sp.check_store(samples) else "not recorded"
        test, split, tasks = list(sp.test_query_ids), sp.kind, list(sp.holdout_tasks)
        source = f"split file {split_file}"
        train = train if train is not None else list(sp.train_query_ids)
    elif test is None:
        raise UsageError(
            "no held-out queries: give the split `ttc train` wrote (--train-dir), test query ids, "
            "held-out tasks (--split task --holdout-task T), or cross-fit (--folds K)"
        )
    train = train if train is not None else sorted(known - set(test))
    overlap = set(train) & set(test)
    if overlap:
        raise UsageError(
            f"{len(overlap)} query ids are both train and test (first: {sorted(overlap)[0]!r}); "
            "held-out queries must be unseen by the policy"
        )
    return HeldOut(split, (FoldSpec("all", tuple(test)),), tuple(train), tuple(tasks), source, False, checks)


def check_bundle_store(policy: Any, samples: pd.DataFrame) -> str:
    """Whether the bundle was trained on this store: compared when its manifest records a store fingerprint."""
    recorded = getattr(getattr(policy, "manifest", None), "store_fingerprint", None)
    if recorded is None:
        return "not recorded: the bundle does not name its training store"
    if recorded != store_fingerprint(samples):
        raise UsageError("the bundle was trained on a different store; give its training store or retrain")
    return "checked: fingerprints match"


def model_sizes(samples: pd.DataFrame, models: Sequence[str]) -> tuple[str, str | None]:
    """(small, big): the models of the grid by mean joules per sample; big is None with one model."""
    per = samples[samples["model"].isin(models)].groupby("model")["energy_j"].mean().sort_values()
    if per.empty:
        raise UsageError(f"the store holds no samples of the policy's models {list(models)}")
    if len(per) == 1:
        return str(per.index[0]), None
    return str(per.index[0]), str(per.index[-1])


def check_split_kind(split: str) -> None:
    if split not in SPLIT_KINDS:
        raise unknown_name("split", split, SPLIT_KINDS)
