"""`ttc eval`: score every allocator on held-out queries and write the report, logged to one MLflow run.

Flow: read the store and the bundle -> choose held-out queries (given ids,
held-out tasks, or train_stage's own split rebuilt from the same seed) -> the
ArmOutcome rows of `store.views.arm_outcomes` as (query x arm) matrices over
the policy's arms -> refuse to put measured and estimated joules side by side
(`check_comparable`) -> every allocator's curve (eval/allocators.py) ->
headline numbers with bootstrap intervals and the paper's findings per task
(eval/metrics.py, eval/report.py) -> eval_report.json, eval_report.md, plots,
per-query assignments -> one MLflow run holding all of them.

Realised accuracy and joules always come from the held-out queries' recorded
outcomes, never from the predictors. mlflow and matplotlib are imported inside
the stage only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collect.energy import METERS, check_comparable, make_meter
from eval.allocators import ALLOCATORS, EvalContext, Outcomes, run_allocators
from eval.metrics import Interval
from eval.report import EvalReport, axis_label, build_report, energy_label, write_outputs
from policy.errors import UsageError, unknown_name
from store.views import arm_outcomes, queries

SPLITS = ("query", "task")
#: Allocators that run the policy on the held-out queries and are charged its metered cost.
_METERED = ("learned", "difficulty_bins", "random")


def _load_samples(store: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(store, pd.DataFrame):
        samples = store
    else:
        from store.shards import read_samples

        samples = read_samples(store)
    if samples.empty:
        raise UsageError(f"the store {store if not isinstance(store, pd.DataFrame) else ''} holds no samples")
    return samples


def _load_policy(bundle: Any, backend: str) -> Any:
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


def _resolve_split(
    samples: pd.DataFrame,
    split: str,
    test_query_ids: Sequence[str] | None,
    holdout_tasks: Sequence[str] | None,
    train_query_ids: Sequence[str] | None,
    test_size: float,
    seed: int,
) -> tuple[pd.DataFrame | None, list[str], list[str], list[str]]:
    """(ArmOutcome rows if the split needed them, test ids, train ids, held-out tasks)."""
    known = set(samples["query_id"].astype(str))
    test = _ids(test_query_ids, "test query ids", known)
    tasks = sorted(set(holdout_tasks)) if holdout_tasks else []
    if tasks and split != "task":
        raise UsageError("holdout_tasks only applies to split='task'")
    store_tasks = set(samples["task"].astype(str))
    for t in tasks:
        if t not in store_tasks:
            raise unknown_name("task", t, store_tasks)
    if test is None and tasks:
        test = sorted(set(samples.loc[samples["task"].astype(str).isin(tasks), "query_id"].astype(str)))
    if test is not None:
        rows = None  # computed by the caller once the energy sources are known to be comparable
        default_train = sorted(known - set(test))
    else:
        # Rebuild train_stage's split: same rows, same seed, same test_size give the same held-out queries.
        from train.dataset import build_dataset, make_split

        data = build_dataset(samples, feature_set="text", seed=seed)
        sp = make_split(data, split, test_size=test_size, seed=seed, holdout_tasks=None)
        rows, test, default_train, tasks = (
            data.rows,
            list(sp.test_query_ids),
            list(sp.train_query_ids),
            list(sp.holdout_tasks),
        )
    train = _ids(train_query_ids, "train query ids", known)
    if train is None:
        train = default_train
    overlap = set(train) & set(test)
    if overlap:
        raise UsageError(
            f"{len(overlap)} query ids are both train and test (first: {sorted(overlap)[0]!r}); "
            "held-out queries must be unseen by the policy"
        )
    return rows, test, train, tasks


def _model_sizes(samples: pd.DataFrame, models: Sequence[str]) -> tuple[str, str | None]:
    """(small, big): the models of the grid by mean joules per sample; big is None with one model."""
    per = samples[samples["model"].isin(models)].groupby("model")["energy_j"].mean().sort_values()
    if per.empty:
        raise UsageError(f"the store holds no samples of the policy's models {list(models)}")
    if len(per) == 1:
        return str(per.index[0]), None
    return str(per.index[0]), str(per.index[-1])


def _interval(h: dict | None, key: str) -> Interval | None:
    if not h or key not in h or h[key] is None or h[key]["point"] is None:
        return None
    v = h[key]
    nan = math.nan
    return Interval(
        v["point"],
        nan if v["low"] is None else v["low"],
        nan if v["high"] is None else v["high"],
        v["n_boot"],
        v["n_valid"],
        v["confidence"],
    )


def eval_stage(
    store: str | Path | pd.DataFrame,
    bundle: Any,
    out_dir: str | Path,
    test_query_ids: Sequence[str] | None = None,
    split: str = "query",
    holdout_tasks: Sequence[str] | None = None,
    train_query_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "ttc-eval",
    allow_mixed_energy: bool = False,
    allocators: Sequence[str] | None = None,
    *,
    test_size: float = 0.2,
    backend: str = "lightgbm",
    overhead_meter: str = "estimate",
) -> EvalReport:
    """Evaluate every allocator (or the named ones) on held-out queries; see the module docstring.

    `store` is a store folder (or a samples DataFrame); `bundle` a bundle path
    or a loaded `Policy`. Held-out queries: `test_query_ids` (e.g.
    `TrainResult.test_query_ids`), else the queries of `holdout_tasks` (split
    "task"), else train_stage's split rebuilt from `seed` and `test_size`.
    Training queries (for difficulty_bins) default to every other query.
    `n_boot` bootstrap resamples of the queries (0: point estimates only);
    `overhead_meter` meters the policy's own features and predictions (a
    `collect.energy.METERS` name). Raises `UsageError` for bad input and
    `MixedEnergyError` when measured and estimated joules would meet and
    `allow_mixed_energy` is false.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    if not isinstance(n_boot, int) or n_boot < 0:
        raise UsageError(f"n_boot must be an integer >= 0 (0 = no intervals), got {n_boot!r}")
    if overhead_meter not in METERS:
        raise unknown_name("overhead meter", overhead_meter, METERS)
    if allocators is not None:
        if isinstance(allocators, str):
            raise UsageError("allocators must be a list of names, not one string")
        for name in allocators:
            if name not in ALLOCATORS:
                raise unknown_name("allocator", name, ALLOCATORS)
        if not allocators:
            raise UsageError(f"no allocator named; choose from {', '.join(ALLOCATORS)}")

    samples = _load_samples(store)
    policy = _load_policy(bundle, backend)
    rows, test_ids, train_ids, tasks = _resolve_split(
        samples, split, test_query_ids, holdout_tasks, train_query_ids, test_size, seed
    )
    # Which joules meet in this report: the store's, the policy's training joules, and the policy's own cost.
    names = list(allocators) if allocators is not None else list(ALLOCATORS)
    used = samples[samples["query_id"].astype(str).isin(set(test_ids) | set(train_ids))]
    sources = set(used["energy_source"].astype(str)) | {policy.energy_source}
    meters = set(used["meter"].astype(str))
    if any(n in _METERED for n in names):
        m = make_meter(overhead_meter)
        sources.add(m.source)
        meters.add(m.name)
        m.close()
    check_comparable(sources, allow_mixed=allow_mixed_energy)
    source = next(iter(sources)) if len(sources) == 1 else "mixed"
    meter = "+".join(sorted(meters))

    if rows is None:
        rows = arm_outcomes(samples, seed=seed)
    missing = sorted(set(policy.arm_ids) - set(rows["arm_id"]))
    if missing:
        raise UsageError(
            f"the store cannot realise {len(missing)} of the policy's arms (first: {missing[0]}); "
            "evaluate on a store collected with the policy's grid"
        )

    full = Outcomes.from_arm_rows(rows, policy.arm_ids, queries(samples))
    complete = set(full.query_ids)
    test_ok = [q for q in test_ids if q in complete]
    train_ok = [q for q in train_ids if q in complete]
    if not test_ok:
        raise UsageError("no held-out query has an outcome for every arm of the policy; nothing to evaluate")
    small, big = _model_sizes(samples, sorted({a.model for a in policy.arms}))
    keep = set(test_ok) | set(train_ok)
    ctx = EvalContext(
        test=full.subset(test_ok),
        train=full.subset(train_ok) if train_ok else None,
        samples=samples[samples["query_id"].astype(str).isin(keep)],
        policy=policy,
        big_model=big,
        seed=seed,
        overhead_meter=overhead_meter,
    )
    curves, skipped = run_allocators(ctx, allocators)
    overhead = None
    if ctx.has_predictions("test"):
        o = ctx.predictions("test").overhead
        overhead = {
            "features_per_query_j": o.features_j,
            "predict_per_query_j": o.predict_j,
            "probe_per_query_j": float(np.mean(o.probe_j)),
            "per_query_j": float(np.mean(o.per_query_j)),
            "duration_s": o.duration_s,
            "meter": o.meter,
            "source": o.source,
            "charged_to": [n for n in ("learned", "difficulty_bins") if n in curves],
        }
    meta = {
        "store": str(store) if not isinstance(store, pd.DataFrame) else "<DataFrame>",
        "bundle": str(bundle) if isinstance(bundle, str | Path) else repr(policy),
        "split": {
            "kind": split,
            "holdout_tasks": tasks,
            "test_query_ids_given": test_query_ids is not None,
            "n_test_queries": len(test_ok),
            "n_train_queries": len(train_ok),
            "n_test_dropped_incomplete": len(test_ids) - len(test_ok),
        },
        "energy": {
            "source": source,
            "meter": meter,
            "label": energy_label(source, meter),
            "axis_label": axis_label(source, meter),
            "sources_used": sorted(sources),
            "policy_trained_on": policy.energy_source,
            "allow_mixed": bool(allow_mixed_energy),
        },
        "arms": list(policy.arm_ids),
        "models": {"small": small, "big": big},
        "learned_overhead": overhead,
    }
    report = build_report(ctx, curves, skipped, full, meta, n_boot, seed)

    import mlflow

    from store.tracking import setup_tracking

    uri = setup_tracking(tracking_uri, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    out_dir = Path(out_dir)
    tags = {"stage": "eval", "energy_source": source, "energy_meter": meter, "split": split}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"eval-{split}", tags=tags) as run:
        report["mlflow"] = {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}
        paths = write_outputs(report, curves, [str(q) for q in ctx.test.query_ids], out_dir)
        mlflow.log_params(
            {
                "store": meta["store"],
                "bundle": meta["bundle"][:500],
                "split": split,
                "holdout_tasks": ",".join(tasks) or "-",
                "n_test_queries": len(test_ok),
                "n_train_queries": len(train_ok),
                "n_boot": n_boot,
                "seed": seed,
                "allocators": ",".join(curves),
                "energy_source": source,
                "energy_meter": meter,
                "allow_mixed_energy": allow_mixed_energy,
                "overhead_meter": overhead_meter,
                "small_model": small,
                "big_model": big or "-",
            }
        )
        mlflow.log_metrics(_mlflow_metrics(report, curves, source))
        for p in paths.values():
            mlflow.log_artifact(str(p), artifact_path="eval")
        run_id = run.info.run_id

    h = report.get("headline")
    return EvalReport(
        out_dir=out_dir,
        json_path=paths["json"],
        markdown_path=paths["markdown"],
        pareto_png=paths["pareto_png"],
        length_png=paths["length_png"],
        assignments_path=paths["assignments"],
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        split=split,
        n_test_queries=len(test_ok),
        energy_source=source,
        energy_meter=meter,
        allocators=tuple(curves),
        energy_saved_at_equal_accuracy=_interval(h, f"energy_saved_at_equal_accuracy_{source}"),
        accuracy_gain_at_equal_energy=_interval(h, f"accuracy_gain_at_equal_energy_{source}"),
        oracle_share_of_saving=_interval(h, f"oracle_share_of_energy_saving_{source}"),
        energy_saved_vs_model_scaling=_interval(h, f"energy_saved_vs_model_scaling_{source}"),
        learned_energy_per_correct_j=_interval(h, f"learned_energy_per_correct_{source}_j"),
        best_fixed_energy_per_correct_j=_interval(h, f"best_fixed_energy_per_correct_{source}_j"),
    )


def _mlflow_metrics(report: dict, curves: dict, source: str) -> dict[str, float]:
    """Headline numbers (point, low, high) under `energy_<source>/`, and each allocator's best accuracy."""
    out: dict[str, float] = {}
    h = report.get("headline") or {}
    names = {
        f"energy_saved_at_equal_accuracy_{source}": "saved_frac_at_equal_accuracy",
        f"accuracy_gain_at_equal_energy_{source}": "accuracy_gain_at_equal_energy",
        f"oracle_share_of_energy_saving_{source}": "oracle_share_of_saving",
        f"energy_saved_vs_model_scaling_{source}": "saved_frac_vs_model_scaling",
        f"learned_energy_per_correct_{source}_j": "learned_j_per_correct",
        f"best_fixed_energy_per_correct_{source}_j": "best_fixed_j_per_correct",
    }
    for key, metric in names.items():
        v = h.get(key)
        if not v:
            continue
        for part in ("point", "low", "high"):
            if v.get(part) is not None:
                out[f"energy_{source}/{metric}" + ("" if part == "point" else f"_{part}")] = float(v[part])
    for name, c in curves.items():
        out[f"{name}/best_accuracy"] = float(max(p.accuracy for p in c.points))
        out[f"{name}/n_points"] = float(len(c.points))
    return out
