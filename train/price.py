"""The default price and the prompts of a new bundle: frontier.json and prompts.json, written at export.

`finish_bundle` reads back the bundle `write_bundle` just wrote, predicts the
training rows cross-fitted (each query by refits that never saw it: in-sample
predictions flatter the policy), sweeps the price (policy/frontier.py)
and, unless the caller fixed a rule, sets the bundle's λ (and stage 2's) to
the default price chosen on that frontier; it also records the prompt every
model was collected with and every trained task's demos (policy/prompts.py),
then writes the bundle again (fresh digest). The frontier is on training
queries: the held-out figures are eval's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from policy.allocate import DecisionRule
from policy.bundle import Policy, load_bundle
from policy.frontier import DEFAULT_MAX_ACCURACY_LOSS, FRONTIER_FILE, Frontier, sweep
from policy.prompts import PROMPTS_FILE, Prompts, build_prompts
from policy.runtime import calibrate
from policy.two_stage import STAGE2_FILE

#: query folds of the cross-fitted frontier (each training query is predicted by models that never saw it)
FOLDS = 3


def cross_fitted(fitted: Any, folds: int = FOLDS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(p, joules) of every training row of `fitted`, each from a refit (same settings) on the other query folds.

    In-sample predictions flatter the policy (its trees have seen these outcomes), so a price chosen on
    them would promise more accuracy than unseen queries get; the refits use the tuned parameters and
    no calibration. Rows come in `np.sort(fitted.train_idx)` order.
    """
    import pandas as pd
    from sklearn.base import clone

    data, pos = fitted.data, np.sort(np.asarray(fitted.train_idx))
    groups = data.groups[pos]
    queries = np.unique(groups)
    fold_of = dict(zip(queries, np.random.default_rng(seed).permutation(len(queries)) % folds, strict=True))
    fold = np.asarray([fold_of[g] for g in groups])
    p, e = np.empty(len(pos)), np.empty(len(pos))
    for k in range(folds):
        tr, te = pos[fold != k], pos[fold == k]
        x_tr = pd.DataFrame(data.X[tr], columns=data.feature_names)
        x_te = pd.DataFrame(data.X[te], columns=data.feature_names)
        est = {}
        for name in ("success", "energy"):
            f = fitted.predictors[name]
            y = getattr(data, f.spec.target)[tr]
            est[name] = f.spec.refit(clone(f.estimator), x_tr, y, data.groups[tr], "none")
        p[fold == k] = est["success"].predict_p(x_te)
        e[fold == k] = est["energy"].predict_j(x_te)
    return p, e


def training_frontier(
    policy: Policy, data: Any, train_idx: np.ndarray, max_accuracy_loss: float, predictions: Any = None
) -> Frontier:
    """The bundle's price frontier on the training rows of `data` (a train.dataset.TrainingData).

    `predictions`: (p, joules) per row of `np.sort(train_idx)` (`cross_fitted`); default the bundle's own.
    """
    pos = np.sort(np.asarray(train_idx))
    rows = data.rows.iloc[pos]
    col = {a: j for j, a in enumerate(policy.arm_ids)}
    # a query missing an arm cannot be swept: keep the queries that hold every arm
    full = rows.groupby("query_id")["arm_id"].transform("nunique").to_numpy() == len(col)
    pos, rows = pos[full], rows[full]
    queries = sorted(rows["query_id"].unique())
    qpos = {q: i for i, q in enumerate(queries)}
    if predictions is None:
        p_raw, log_e = policy.backend.predict_rows(np.asarray(data.X[pos], dtype=np.float32))
        p_row, e_row = calibrate(p_raw, policy.manifest.calibration), np.exp(log_e)
    else:
        p_row, e_row = (np.asarray(v, dtype=np.float64)[full] for v in predictions)
    shape = (len(queries), len(col))
    p, e, ok, ej = (np.full(shape, np.nan) for _ in range(4))
    qi = rows["query_id"].map(qpos).to_numpy()
    aj = rows["arm_id"].map(col).to_numpy()
    p[qi, aj], e[qi, aj] = p_row, e_row
    ok[qi, aj], ej[qi, aj] = rows["correct"].to_numpy(dtype=np.float64), rows["energy_j"].to_numpy(dtype=np.float64)
    f = sweep(p, e, ok, ej, policy.arm_ids, policy.energy_source, max_accuracy_loss, policy.rule.p_floor)
    how = "training (bundle predictions)" if predictions is None else f"training ({FOLDS}-fold cross-fitted)"
    return dataclasses.replace(f, queries_from=how)


def training_prompts(data: Any) -> Prompts:
    """Each model's prompt style (collect/models.py) and each trained task's demos (collect/tasks)."""
    from collect.models import prompt_style
    from collect.tasks import make_task
    from policy.errors import UsageError

    styles = {m: prompt_style(m) for m in data.models}
    demos = {}
    for t in sorted(data.rows["task"].unique()):
        try:
            demos[t] = make_task(t).demos
        except (UsageError, OSError):  # a jsonl task whose file has moved: served without demos
            continue
    return build_prompts({m: s for m, (s, _) in styles.items()}, demos, [m for m, (_, a) in styles.items() if a])


def finish_bundle(
    out_dir: Path,
    fitted: Any,
    rule_given: bool,
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS,
) -> Frontier:
    """Add frontier.json and prompts.json to the bundle at `out_dir`; without `rule_given`, price it by the frontier.

    Without `rule_given` the frontier is cross-fitted (`cross_fitted`); with it, the bundle's own predictions.
    """
    from train.export import stage_two_bytes, write_policy

    policy = load_bundle(out_dir)
    # the refits cost a few fits; a caller that fixes the rule (eval's cross-fitting folds) prices nothing
    # by the frontier, so it gets the cheap one from the bundle's own predictions (labelled as such)
    enough = len(np.unique(fitted.data.groups[fitted.train_idx])) >= 2 * FOLDS
    predictions = cross_fitted(fitted) if enough and not rule_given else None
    frontier = training_frontier(policy, fitted.data, fitted.train_idx, max_accuracy_loss, predictions)
    files = {FRONTIER_FILE: frontier.to_json(), PROMPTS_FILE: training_prompts(fitted.data).to_json()}
    if not rule_given:
        if fitted.stage_two is not None:
            # each task's first look where the default price puts its table (train.two_stage.task_looks)
            files[STAGE2_FILE] = stage_two_bytes(fitted.stage_two.fit_at(frontier.default_lam), policy.arm_ids)
        policy = policy.with_rule(DecisionRule(lam=frontier.default_lam, p_floor=policy.rule.p_floor))
    write_policy(policy.with_files(files), out_dir, force=True)
    return frontier
