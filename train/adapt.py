"""Task tables for a bundle: built from the training queries at export, and adapted to a new task from k labelled ones.

    training_task_table(data, train_idx) -> TaskTable     (ttc train writes it as tasks.json)
    adapt_policy(policy, samples, tasks=None) -> Adaptation  (ttc adapt)

`training_task_table` records each trained task's one-hot column, the global
table (per arm: mean label and mean joules over every training query), and the
empirical-Bayes weight of the task prior (policy/tasks.py explains the rule).
`adapt_policy` reads the arm view of a small store of a new task (`ttc collect
--task jsonl:mine.jsonl --items-per-task k`) and adds the task's per-arm means
to the table: no tree is refitted and the reference is not read again, so it
takes seconds. The labels are the arm view's `correct_soft` (the expected
accuracy over the collected samples, the label the trees train on), the joules
its charged joules. Writing the new bundle is the export path's job
(ttc/bundle_stages.adapt_stage). Never touches MLflow; prints nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from policy.errors import MixedEnergyError, UsageError
from policy.tasks import AdaptedTask, TaskTable, prior_strength, table_from_rows

#: the arm view's column the tables average (the expected accuracy of the arm on the query)
LABEL = "correct_soft"


def training_task_table(
    rows: pd.DataFrame, arm_ids: list[str], task_columns: dict[str, int], label: str = LABEL
) -> TaskTable:
    """The tasks.json of a policy trained on arm rows `rows` (its training queries only)."""
    per_task, var = table_from_rows(
        rows["query_id"], rows["task"], rows["arm_id"], rows[label], rows["energy_j"], arm_ids
    )
    n = np.asarray([a.n_queries for a in per_task.values()], dtype=np.float64)
    acc = np.asarray([a.accuracy for a in per_task.values()])
    e = np.asarray([a.energy_j for a in per_task.values()])
    g_acc = (acc * n[:, None]).sum(axis=0) / n.sum()  # every training query weighs the same
    g_e = (e * n[:, None]).sum(axis=0) / n.sum()
    models = [a.split("/", 1)[0] for a in arm_ids]
    m = prior_strength(acc, np.stack([var[t] for t in per_task]), n, g_acc, models)
    missing = sorted(set(per_task) - set(task_columns))
    if missing:
        raise UsageError(f"tasks {missing[:3]} have no feature column; build the dataset with build_dataset")
    columns = {t: int(task_columns[t]) for t in per_task}
    return TaskTable(tuple(arm_ids), columns, int(n.sum()), tuple(g_acc.tolist()), tuple(g_e.tolist()), m)


@dataclass(frozen=True)
class Adaptation:
    """What `adapt_policy` produced: the new table and, per adapted task, its labelled query count."""

    table: TaskTable
    n_queries: dict[str, int]
    energy_source: str


def adapt_policy(policy, samples: pd.DataFrame, tasks: list[str] | None = None, seed: int = 0) -> Adaptation:  # noqa: ANN001
    """Add each new task of `samples` (or the named `tasks`) to the policy's task table.

    Refuses a bundle without tasks.json, a task the trees were trained on, arms the store
    cannot give, and joules of another kind (measured vs estimated) than the policy's.
    """
    from store.views import arm_outcomes

    table = policy.task_table
    if table is None:
        raise UsageError(
            "this bundle has no tasks.json (it predates task tables); retrain it with `ttc train` to adapt it"
        )
    if samples.empty:
        raise UsageError("the store holds no samples; collect the new task first (`ttc collect --task jsonl:...`)")
    present = sorted(samples["task"].astype(str).unique())
    chosen = sorted(set(tasks)) if tasks else [t for t in present if t not in table.columns]
    for t in chosen:
        if t not in present:
            raise UsageError(f"task {t!r} is not in the store; it holds {', '.join(present)}")
        if t in table.columns:
            raise UsageError(
                f"task {t!r} is one the policy was trained on (known: {', '.join(table.known_tasks)}); "
                "adapt a new task, or retrain"
            )
    if not chosen:
        raise UsageError(
            f"every task of the store ({', '.join(present)}) is one the policy was trained on; "
            "collect queries of a new task (`ttc collect --task jsonl:mine.jsonl --items-per-task 16`)"
        )
    sub = samples[samples["task"].astype(str).isin(chosen)]
    have = set(zip(sub["model"].astype(str), sub["temperature"].astype(float), strict=True))
    lacking = sorted({a.model for a in policy.arms if (a.model, a.temperature) not in have})
    if lacking:
        raise UsageError(
            f"the store has no samples of {', '.join(lacking)} (or of its temperatures) for {', '.join(chosen)}; "
            f"collect the new task with the policy's models ({', '.join(policy.models)}) and its grid"
        )
    rows = arm_outcomes(sub, arms=list(policy.arms), seed=seed)
    sources = sorted(rows["energy_source"].astype(str).unique())
    if sources != [policy.energy_source]:
        raise MixedEnergyError(
            f"the store's joules are {'/'.join(sources)}, the policy's {policy.energy_source}; "
            "adapt with a store collected the way the policy's training data was"
        )
    per_task, _ = table_from_rows(
        rows["query_id"], rows["task"], rows["arm_id"], rows[LABEL], rows["energy_j"], policy.arm_ids
    )
    for t, a in per_task.items():
        table = table.with_adapted(t, AdaptedTask(a.n_queries, a.accuracy, a.energy_j))
    return Adaptation(table, {t: a.n_queries for t, a in per_task.items()}, sources[0])
