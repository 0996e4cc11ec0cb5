"""Training rows: the sample store turned into (query, arm) rows, labels and splits.

One row per (query, arm) from `store.views.arm_outcomes` (the one sample ->
arm function train and eval share; never re-implement it here). Its features
are `policy.features.row_matrix`: query features of the named feature set, then
arm features, exactly as the exported policy computes them at run time.

Labels, per row:
- success: `correct_soft` by default (the mean vote correctness over resampled
  n-of-N subsets, a less noisy target for the same probability) or the hard
  `correct`; evaluation always also scores against the hard `correct`;
- energy: `energy_j` (the predictor learns log joules);
- length: `output_tokens` (the predictor learns log1p tokens).

Splits hold out whole queries (every arm of a held-out query is held out), or
whole tasks; `make_split` returns the `store.splits.Split` that train writes
to split.json (with the seed and the store's fingerprint) and its row indices.
Never split by sample or by row: rows of one query share its features and most
of its outcome, so a row split leaks the answer.

Bad stores are refused here, at the edge, with a `UsageError` that names the
fix. This module never trains, tunes or logs anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from policy.arms import Arm
from policy.errors import MixedEnergyError, UsageError, unknown_name
from policy.features import FeatureSet, get_feature_set, row_matrix, row_names
from policy.probe import ProbeReduction, fit_reduction
from policy.tasks import assign_task_columns
from store.loader import load_samples
from store.probes import ProbeTable, load_probes
from store.schema import TRAIN_SAMPLE_COLUMNS
from store.splits import SPLIT_KINDS, Split, store_fingerprint
from store.views import arm_outcomes, queries

__all__ = [
    "ProbeTable",
    "RowSplit",
    "TrainingData",
    "build_dataset",
    "default_probe_model",
    "group_folds",
    "load_probes",
    "load_samples",
    "make_split",
]
#: Fewer queries than this cannot fill a test split and tuning folds.
MIN_QUERIES = 10
SUCCESS_LABELS = ("correct_soft", "correct")


@dataclass(frozen=True, eq=False)
class TrainingData:
    """(query, arm) rows with their feature matrix; row i of `X` is row i of `rows`.

    `rows` has the arm-row columns (`store.schema.ARM_COLUMNS`), sorted by
    (query_id, arm_id). `label` names the column the success predictor trains
    on; `store_fingerprint` identifies the samples the rows came from.
    """

    rows: pd.DataFrame
    X: np.ndarray
    feature_names: list[str]
    feature_set: FeatureSet
    arms: list[Arm]
    models: list[str]
    label: str
    energy_source: str
    meter: str
    store_fingerprint: str | None = None
    #: "text+probe": the PCA that made the probe columns (written to the bundle's probe.json)
    probe_reduction: ProbeReduction | None = None
    #: task name -> its one-hot feature column, one per task (policy.tasks.assign_task_columns)
    task_columns: dict[str, int] | None = None

    @property
    def groups(self) -> np.ndarray:
        return self.rows["query_id"].to_numpy()

    @property
    def arm_ids(self) -> np.ndarray:
        return self.rows["arm_id"].to_numpy()

    @property
    def y_success(self) -> np.ndarray:
        return self.rows[self.label].to_numpy(dtype=np.float64)

    @property
    def y_correct(self) -> np.ndarray:
        return self.rows["correct"].to_numpy(dtype=np.float64)

    @property
    def energy_j(self) -> np.ndarray:
        return self.rows["energy_j"].to_numpy(dtype=np.float64)

    @property
    def output_tokens(self) -> np.ndarray:
        return self.rows["output_tokens"].to_numpy(dtype=np.float64)

    @property
    def n_queries(self) -> int:
        return int(self.rows["query_id"].nunique())

    def frame(self, idx: np.ndarray | None = None) -> pd.DataFrame:
        """Features, arm id and labels as one table (for MLflow's dataset input and model examples)."""
        idx = np.arange(len(self.rows)) if idx is None else idx
        out = pd.DataFrame(self.X[idx], columns=self.feature_names)
        for col in ("query_id", "task", "arm_id", "correct", "correct_soft", "energy_j", "output_tokens"):
            out[col] = self.rows[col].to_numpy()[idx]
        return out


def _check_samples(samples: pd.DataFrame) -> None:
    if samples.empty:
        raise UsageError("the store holds no samples; run `ttc collect` first")
    missing = [c for c in TRAIN_SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise UsageError(f"the store lacks sample columns {', '.join(missing)}; re-collect with this version")
    energy = pd.to_numeric(samples["energy_j"], errors="coerce")
    if (samples["energy_source"].astype(str) == "unmeasured").any():  # collect/engine.py: a remote engine
        raise UsageError(
            "the store holds samples from an engine on another machine, whose energy was not measured; "
            "collect on the engine's machine (a 127.0.0.1 URL), or fill energy_j per batch_id from its meter"
        )
    if energy.isna().any():
        raise UsageError(
            f"{int(energy.isna().sum())} of {len(samples)} samples have no energy_j; "
            "re-collect with a meter (`--meter estimate` where no hardware counter can be read)"
        )
    if not (energy > 0).any():
        raise UsageError("every sample has energy_j = 0: the meter recorded nothing; re-collect with a working meter")
    sources = sorted(samples["energy_source"].astype(str).unique())
    if len(sources) > 1:
        raise MixedEnergyError(
            f"the store mixes energy sources {', '.join(sources)}; train on one: filter the store by energy_source"
        )


def default_probe_model(samples: pd.DataFrame) -> str:
    """The cheapest model by mean joules per sample: the one whose prefill the probe reads by default."""
    return str(samples.groupby("model")["energy_j"].mean().idxmin())


def _probe_features(
    probes: ProbeTable | None, query_ids: Sequence[str], fit_ids: Sequence[str] | None
) -> tuple[np.ndarray, ProbeReduction]:
    """Reduced probe columns of `query_ids`, by a PCA fitted on `fit_ids`' probes (default: all of them)."""
    if probes is None:
        raise UsageError(
            "feature set 'text+probe' needs the store's probe columns (its probe side table): "
            "pass probes=load_probes(store, model) "
            "(ttc train does so), or use feature set 'text'"
        )
    raw, _ = probes.rows(query_ids)
    fit_raw = raw if fit_ids is None else probes.rows(fit_ids)[0]
    reduction = fit_reduction(fit_raw, probes.model, probes.layer)
    return reduction.reduce(raw), reduction


def build_dataset(
    samples: pd.DataFrame,
    feature_set: str = "text",
    soft_labels: bool = True,
    seed: int = 0,
    probes: ProbeTable | None = None,
    probe_fit_ids: Sequence[str] | None = None,
) -> TrainingData:
    """Arm rows, features and labels from a store's samples; refuses stores that cannot train.

    "text+probe" needs `probes`; its PCA is fitted on the probes of
    `probe_fit_ids` (the training queries when known; else every query: the
    PCA reads no label, but it then sees the held-out queries' inputs).
    """
    fs = get_feature_set(feature_set)
    _check_samples(samples)
    rows = arm_outcomes(samples, seed=seed)
    arm_ids = sorted(rows["arm_id"].unique())
    if len(arm_ids) < 2:
        raise UsageError(
            f"the store yields one arm only ({arm_ids[0]}): nothing to choose between; "
            "collect more than one sample per query or more than one level"
        )
    bad = ~np.isfinite(rows["energy_j"].to_numpy(dtype=np.float64)) | (rows["energy_j"] <= 0)
    if bad.any():
        raise UsageError(
            f"{int(bad.sum())} of {len(rows)} arm rows have no positive energy (level_energy_j missing or 0); "
            "re-collect with a working meter"
        )
    rows = rows.sort_values(["query_id", "arm_id"], kind="stable").reset_index(drop=True)
    q = queries(samples).sort_values("query_id", kind="stable").reset_index(drop=True)
    q = q[q["query_id"].isin(rows["query_id"])].reset_index(drop=True)
    if len(q) < MIN_QUERIES:
        raise UsageError(f"the store holds {len(q)} queries; training needs at least {MIN_QUERIES}")

    arms = [Arm.parse(a) for a in arm_ids]
    models = sorted(rows["model"].unique())
    probe, reduction = _probe_features(probes, q["query_id"].tolist(), probe_fit_ids) if fs.probe else (None, None)
    task_columns = assign_task_columns(q["task"].astype(str).unique().tolist())
    query_x = fs.transform(q["question"].tolist(), q["task"].tolist(), probe, task_columns)
    # row_matrix lays out every (query, arm) pair query-major; pick the pairs the store has.
    qi = pd.Index(q["query_id"]).get_indexer(rows["query_id"])
    ai = pd.Index(arm_ids).get_indexer(rows["arm_id"])
    X = row_matrix(query_x, arms, models)[qi * len(arms) + ai]
    meters = sorted(rows["meter"].astype(str).unique())
    return TrainingData(
        rows=rows,
        X=X,
        feature_names=row_names(fs, models),
        feature_set=fs,
        arms=arms,
        models=models,
        label="correct_soft" if soft_labels else "correct",
        energy_source=str(rows["energy_source"].iloc[0]),
        meter="+".join(meters),
        store_fingerprint=store_fingerprint(samples),
        probe_reduction=reduction,
        task_columns=task_columns,
    )


# ---------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class RowSplit:
    """A `store.splits.Split` (what train writes to split.json) with its row indices into `TrainingData`."""

    split: Split
    train: np.ndarray
    test: np.ndarray

    @property
    def kind(self) -> str:
        return self.split.kind

    @property
    def train_query_ids(self) -> tuple[str, ...]:
        return self.split.train_query_ids

    @property
    def test_query_ids(self) -> tuple[str, ...]:
        return self.split.test_query_ids

    @property
    def holdout_tasks(self) -> tuple[str, ...]:
        return self.split.holdout_tasks


def _make(data: TrainingData, kind: str, test_mask: np.ndarray, seed: int, tasks: tuple[str, ...] = ()) -> RowSplit:
    g = data.groups
    split = Split(
        kind=kind,
        train_query_ids=tuple(sorted(set(g[~test_mask]))),
        test_query_ids=tuple(sorted(set(g[test_mask]))),
        holdout_tasks=tasks,
        seed=int(seed),
        store_fingerprint=data.store_fingerprint,
    )
    return RowSplit(split=split, train=np.flatnonzero(~test_mask), test=np.flatnonzero(test_mask))


def split_by_query(
    data: TrainingData, test_size: float = 0.2, seed: int = 0, holdout_tasks: Sequence[str] | None = None
) -> RowSplit:
    """Hold out a random `test_size` fraction of queries, with all their arms."""
    from sklearn.model_selection import GroupShuffleSplit

    if holdout_tasks:
        raise UsageError("holdout_tasks only applies to split='task'")
    gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    _, test = next(gss.split(data.X, groups=data.groups))
    mask = np.zeros(len(data.rows), dtype=bool)
    mask[test] = True
    return _make(data, "query", mask, seed)


def split_by_task(
    data: TrainingData, test_size: float = 0.2, seed: int = 0, holdout_tasks: Sequence[str] | None = None
) -> RowSplit:
    """Hold out whole tasks: the named ones, or seeded random tasks covering about `test_size` of queries."""
    tasks_of_rows = data.rows["task"].astype(str).to_numpy()
    known = sorted(set(tasks_of_rows))
    if len(known) < 2:
        raise UsageError(f"split='task' needs at least two tasks; the store holds only {known[0]!r}: use split='query'")
    if holdout_tasks:
        for t in holdout_tasks:
            if t not in known:
                raise unknown_name("task", t, known)
        chosen = sorted(set(holdout_tasks))
        if len(chosen) == len(known):
            raise UsageError("holdout_tasks names every task: leave at least one to train on")
    else:
        per_task = data.rows.groupby("task")["query_id"].nunique()
        order = np.random.default_rng(seed).permutation(known)
        chosen, held = [], 0
        for t in order[:-1]:  # never hold out every task
            chosen.append(str(t))
            held += int(per_task[t])
            if held >= test_size * data.n_queries:
                break
        chosen = sorted(chosen)
    mask = np.isin(tasks_of_rows, chosen)
    return _make(data, "task", mask, seed, tuple(chosen))


SPLITS = dict(zip(SPLIT_KINDS, (split_by_query, split_by_task), strict=True))


def make_split(
    data: TrainingData,
    kind: str = "query",
    test_size: float = 0.2,
    seed: int = 0,
    holdout_tasks: Sequence[str] | None = None,
) -> RowSplit:
    """Hold out whole queries (kind "query") or whole tasks ("task"); `.split` is what train writes down."""
    if kind not in SPLITS:
        raise unknown_name("split", kind, SPLITS)
    if not 0 < test_size < 1:
        raise UsageError(f"test_size must be in (0, 1), got {test_size}")
    return SPLITS[kind](data, test_size=test_size, seed=seed, holdout_tasks=holdout_tasks)


def group_folds(groups: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) row indices of `n_splits` folds that never split a query."""
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups))
