"""`ttc eval`: score every allocator on held-out queries and write the report, logged to one MLflow run.

Flow: read the store (store.loader) and the bundle -> the held-out queries
(eval/inputs.py: given ids, held-out tasks, train's split file, or
cross-fitting folds with one policy trained per fold, eval/crossfit.py) ->
the ArmOutcome rows of `store.views.arm_outcomes` as (query x arm) matrices
over the policy's arms -> refuse to put measured and estimated joules side by
side (`check_comparable`) -> every allocator's curve (eval/allocators/) ->
the headline with paired bootstrap intervals, per fold and per task
(eval/headline.py, eval/report.py) -> eval_report.json, eval_report.md,
plots, per-query assignments (eval/outputs.py) -> one MLflow run.

`evaluate` is the work (config in, `Evaluation` out; it writes only the fold
bundles into a work folder); `eval_stage` adds the files, MLflow and the
returned `EvalReport`. Realised accuracy and joules always come from the
held-out queries' recorded outcomes, never from the predictors. mlflow and
matplotlib are imported inside the stage only.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from collect.energy import METERS, check_comparable, make_meter
from eval.allocators import ALLOCATORS, EvalContext, Fold, Outcomes, run_allocators
from eval.crossfit import FOLD_TRIALS, train_fold_policies
from eval.inputs import (
    HeldOut,
    check_bundle_store,
    check_split_kind,
    cross_fitted,
    load_policy,
    model_sizes,
    single_split,
)
from eval.plots import axis_label, energy_label
from eval.report import EvalReport, build_report
from policy.errors import UsageError, unknown_name
from policy.runtime import DEFAULT_BACKEND
from store.paths import check_replaceable_folder, staged_folder
from store.splits import check_seed
from store.tracking import check_tracking_uri
from store.views import arm_outcomes, queries


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; validated on construction."""

    split: str = "query"
    n_boot: int = 1000
    seed: int = 0
    allow_mixed_energy: bool = False
    allocators: tuple[str, ...] | None = None
    backend: str = DEFAULT_BACKEND
    overhead_meter: str = "estimate"
    folds: int = 1
    fold_trials: int = FOLD_TRIALS
    num_threads: int = 2

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_split_kind(self.split)
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise UsageError(f"n_boot must be an integer >= 0 (0 = no intervals), got {self.n_boot!r}")
        if self.overhead_meter not in METERS:
            raise unknown_name("overhead meter", self.overhead_meter, METERS)
        if self.folds < 1 or self.fold_trials < 0:
            raise UsageError(f"folds must be >= 1 and fold_trials >= 0, got {self.folds} and {self.fold_trials}")
        if self.allocators is not None:
            if isinstance(self.allocators, str):
                raise UsageError("allocators must be a list of names, not one string")
            for name in self.allocators:
                if name not in ALLOCATORS:
                    raise unknown_name("allocator", name, ALLOCATORS)
            if not self.allocators:
                raise UsageError(f"no allocator named; choose from {', '.join(ALLOCATORS)}")
            object.__setattr__(self, "allocators", tuple(self.allocators))

    @property
    def cross_fitting(self) -> bool:
        return self.folds > 1


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The work's result: the context and curves, the JSON-ready report, and how long it took."""

    ctx: EvalContext
    curves: dict[str, Any]
    report: dict[str, Any]
    held: HeldOut
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def headline(self) -> Any:
        """The `Headline` over all held-out queries (None when learned or fixed did not run)."""
        return self.report["headline"]


def _energy(samples: pd.DataFrame, policies: Sequence[Any], held: HeldOut, cfg: EvalConfig) -> dict[str, Any]:
    """Which joules meet in this report (store, policies' training joules, the overhead meter); refuses a mix."""
    used = samples[samples["query_id"].astype(str).isin(set(held.test_query_ids) | set(held.train_query_ids))]
    sources = set(used["energy_source"].astype(str)) | {p.energy_source for p in policies}
    meters = set(used["meter"].astype(str))
    if any(ALLOCATORS[n].runs_policy for n in (cfg.allocators or ALLOCATORS)):
        m = make_meter(cfg.overhead_meter)
        sources.add(m.source)
        meters.add(m.name)
        m.close()
    check_comparable(sources, allow_mixed=cfg.allow_mixed_energy)
    source = next(iter(sources)) if len(sources) == 1 else "mixed"
    meter = "+".join(sorted(meters))
    return {
        "source": source,
        "meter": meter,
        "label": energy_label(source, meter),
        "axis_label": axis_label(source, meter),
        "sources_used": sorted(sources),
        "policy_trained_on": sorted({p.energy_source for p in policies}),
        "allow_mixed": bool(cfg.allow_mixed_energy),
    }


def _outcomes(samples: pd.DataFrame, arm_ids: Sequence[str], seed: int) -> Outcomes:
    rows = arm_outcomes(samples, seed=seed)
    missing = sorted(set(arm_ids) - set(rows["arm_id"]))
    if missing:
        raise UsageError(
            f"the store cannot realise {len(missing)} of the policy's arms (first: {missing[0]}); "
            "evaluate on a store collected with the policy's grid"
        )
    return Outcomes.from_arm_rows(rows, arm_ids, queries(samples))


def _folds(full: Outcomes, held: HeldOut, policies: Sequence[Any]) -> tuple[Outcomes, list[Fold]]:
    complete = {str(q) for q in full.query_ids}
    all_ids = [str(q) for q in full.query_ids]
    folds = []
    for spec, policy in zip(held.folds, policies, strict=True):
        test = [q for q in spec.test_query_ids if q in complete]
        if not test:
            raise UsageError(f"no held-out query of {spec.name!r} has an outcome for every arm; nothing to evaluate")
        train = [q for q in held.train_ids_of(spec, all_ids) if q in complete]
        folds.append(Fold(spec.name, full.subset(test), full.subset(train) if train else None, policy))
    return full.subset([q for f in folds for q in f.test.query_ids]), folds


def evaluate(
    samples: pd.DataFrame,
    policy: Any,
    held: HeldOut,
    cfg: EvalConfig,
    work_dir: Path,
    meta: dict[str, Any],
    probes: Any = None,
    feature_set: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """The work: fold policies (cross-fitting), outcome matrices, every allocator's curve, the report dict.

    `feature_set`: the fold policies' (default: the bundle's, else "text"); "text+probe" needs `probes`.
    `progress`: one live line (store/progress.py): folds trained, allocators run, elapsed, ETA.
    """
    from store.progress import ProgressLine

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    policies = [policy] * len(held.folds)
    n_folds = len(held.folds) if held.cross_fitted else 0
    line = ProgressLine("eval", progress, eta_by="folds" if n_folds else "allocators")
    steps = {"folds": 0, "allocators": 0, "n_alloc": len(cfg.allocators) if cfg.allocators else len(ALLOCATORS)}

    def show(note: str = "", force: bool = False) -> None:
        counts = [("folds", steps["folds"], n_folds)] if n_folds else []
        line.eta_by = "folds" if n_folds and steps["folds"] < n_folds else "allocators"
        line.update(counts + [("allocators", steps["allocators"], steps["n_alloc"])], note=note, force=force)

    def fold_done(done: int, total: int) -> None:
        steps["folds"] = done
        show("training fold policies" if done < total else "", force=True)

    def alloc_done(name: str, done: int, total: int) -> None:
        steps["allocators"], steps["n_alloc"] = done, total
        show(name)

    show("training fold policies" if n_folds else "", force=True)
    if held.cross_fitted:
        feature_set = feature_set or (policy.feature_set.name if policy is not None else "text")
        policies = train_fold_policies(
            samples, held.folds, work_dir, feature_set=feature_set, n_trials=cfg.fold_trials,
            seed=cfg.seed, num_threads=cfg.num_threads, rule=policy.rule if policy is not None else None,
            backend=cfg.backend, probes=probes, on_fold=fold_done,
        )  # fmt: skip
        timings["train_folds_s"] = time.perf_counter() - t0
    energy = _energy(samples, policies, held, cfg)
    full = _outcomes(samples, policies[0].arm_ids, cfg.seed)
    test, folds = _folds(full, held, policies)
    small, big = model_sizes(samples, sorted({a.model for a in policies[0].arms}))
    keep = {str(q) for q in full.query_ids}
    ctx = EvalContext(
        test=test,
        samples=samples[samples["query_id"].astype(str).isin(keep)],
        big_model=big,
        seed=cfg.seed,
        overhead_meter=cfg.overhead_meter,
        folds=folds,
        probes=probes,
    )
    curves, skipped = run_allocators(ctx, list(cfg.allocators) if cfg.allocators else None, alloc_done)
    show(f"report ({cfg.n_boot} bootstrap resamples)" if cfg.n_boot else "report", force=True)
    timings["allocators_s"] = time.perf_counter() - t0 - sum(timings.values())
    meta = {**meta, "split": _split_meta(held, folds, cfg), "energy": energy, "arms": list(policies[0].arm_ids)}
    meta["models"] = {"small": small, "big": big}
    meta["learned_overhead"] = _overhead(ctx, curves)
    named = [(f.name, [str(q) for q in f.test.query_ids]) for f in folds]
    report = build_report(ctx, curves, skipped, full, meta, cfg.n_boot, cfg.seed, named)
    timings["report_s"] = time.perf_counter() - t0 - sum(timings.values())
    done = [("folds", n_folds, n_folds)] if n_folds else []
    line.finish(done + [("allocators", steps["n_alloc"], steps["n_alloc"])])
    return Evaluation(ctx, curves, report, held, timings)


def _split_meta(held: HeldOut, folds: Sequence[Fold], cfg: EvalConfig) -> dict[str, Any]:
    n_test = sum(f.test.n_queries for f in folds)
    return {
        "kind": held.kind,
        "source": held.source,
        "cross_fitted": held.cross_fitted,
        "n_folds": len(folds),
        "fold_trials": cfg.fold_trials if held.cross_fitted else None,
        "holdout_tasks": list(held.holdout_tasks),
        "n_test_queries": n_test,
        "n_train_queries": (folds[0].train.n_queries if folds[0].train is not None else 0),
        "n_test_dropped_incomplete": len(held.test_query_ids) - n_test,
        "checks": dict(held.checks),
    }


def _overhead(ctx: EvalContext, curves: dict[str, Any]) -> dict[str, Any] | None:
    if not ctx.has_predictions("test"):
        return None
    charged = [n for n, c in curves.items() if c.charged_overhead]
    return {**ctx.predictions("test").overhead.summary(), "charged_to": charged}


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
    backend: str = DEFAULT_BACKEND,
    overhead_meter: str = "estimate",
    split_file: str | Path | None = None,
    folds: int = 1,
    fold_trials: int = FOLD_TRIALS,
    force: bool = False,
    feature_set: str | None = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate every allocator (or the named ones) on held-out queries; see the module docstring.

    `store` is a store folder (or a samples DataFrame); `bundle` a bundle path
    or a loaded `Policy` (optional when cross-fitting: then it only lends its
    feature set and rule). Held-out queries: `test_query_ids`, else the
    queries of `holdout_tasks` (split "task"), else the split in `split_file`
    (a `ttc train` folder or its split.json), else, with `folds` >= 2,
    cross-fitting: K query folds (split "query") or one fold per task (split
    "task"), a policy trained per fold with `fold_trials` Optuna trials.
    `n_boot` bootstrap resamples of the queries (0: point estimates only).
    `feature_set`: the fold policies' when cross-fitting (default: the bundle's, else "text");
    "text+probe" reads the store's probe side table of the cheapest model.
    `out_dir` must be new, empty, or an earlier report (replaced only with `force`), checked with the
    tracking URI before any work; the report is written aside and renamed into place.
    Raises `UsageError` for bad input and `MixedEnergyError` when measured and
    estimated joules would meet and `allow_mixed_energy` is false.
    """
    cfg = EvalConfig(
        split, n_boot, seed, allow_mixed_energy, allocators, backend, overhead_meter, folds, fold_trials
    )  # fmt: skip
    out_dir = _check_out(out_dir, force)
    check_tracking_uri(tracking_uri)
    from store.loader import load_samples

    samples = load_samples(store)
    policy = load_policy(bundle, backend) if bundle is not None else None
    if policy is None and not cfg.cross_fitting:
        raise UsageError("evaluating one split needs a policy bundle (--bundle); or cross-fit with --folds K")
    held = _held_out(samples, policy, cfg, test_query_ids, holdout_tasks, train_query_ids, split_file)
    meta = {
        "store": str(store) if not isinstance(store, pd.DataFrame) else "<DataFrame>",
        "bundle": str(bundle)
        if isinstance(bundle, str | Path)
        else repr(policy)
        if policy
        else "none (a policy per fold)",
    }
    probes = None
    if feature_set is not None:
        if not cfg.cross_fitting:
            raise UsageError("feature_set chooses the fold policies' features: cross-fit with folds >= 2")
        from policy.features import get_feature_set

        if get_feature_set(feature_set).probe:
            from store.probes import load_probes
            from train.dataset import default_probe_model

            if isinstance(store, pd.DataFrame):
                raise UsageError("a probe feature set is evaluated on a store folder (its probe side table)")
            probes = load_probes(store, default_probe_model(samples))
    if policy is not None and policy.needs_probe:  # the store's probe side table, of the policy's probe model
        from store.probes import load_probes

        if isinstance(store, pd.DataFrame):
            raise UsageError("a probe policy is evaluated on a store folder (its probe side table), not a DataFrame")
        probes = load_probes(store, policy.probe_model)
    with tempfile.TemporaryDirectory(prefix="ttc-eval-folds-") as work:
        ev = evaluate(samples, policy, held, cfg, Path(work), meta, probes, feature_set, progress)
    return _record(ev, cfg, out_dir, tracking_uri, experiment, force)


def _check_out(out_dir: str | Path, force: bool) -> Path:
    """Export's rule: a new or empty folder, or an earlier report of ours with `force`; nothing else is touched."""
    from eval.outputs import is_report_folder

    return check_replaceable_folder(out_dir, is_report_folder, force, "--out", "an eval report of ours")


def _held_out(
    samples: pd.DataFrame,
    policy: Any,
    cfg: EvalConfig,
    test_query_ids: Sequence[str] | None,
    holdout_tasks: Sequence[str] | None,
    train_query_ids: Sequence[str] | None,
    split_file: str | Path | None,
) -> HeldOut:
    """The held-out queries (folds, or one split) with the store/split/bundle checks recorded."""
    if cfg.cross_fitting:
        if test_query_ids is not None or holdout_tasks:
            raise UsageError("--folds chooses the held-out queries itself; drop the test ids and held-out tasks")
        held = cross_fitted(samples, cfg.split, cfg.folds, cfg.seed)
    else:
        held = single_split(samples, cfg.split, test_query_ids, holdout_tasks, train_query_ids, split_file)
    bundle_check = check_bundle_store(policy, samples) if policy is not None else "no bundle given"
    return replace(held, checks={**held.checks, "bundle_vs_store": bundle_check})


def _record(
    ev: Evaluation, cfg: EvalConfig, out_dir: Path, tracking_uri: str | None, experiment: str, force: bool
) -> EvalReport:
    """The side effects: files, one MLflow run holding them, and the returned `EvalReport`."""
    import mlflow

    from eval.outputs import write_outputs
    from store.tracking import setup_tracking

    report, sp, energy = ev.report, ev.report["split"], ev.report["energy"]
    uri = setup_tracking(tracking_uri, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    tags = {"stage": "eval", "energy_source": energy["source"], "energy_meter": energy["meter"], "split": sp["kind"]}
    name = f"eval-{sp['kind']}" + (f"-{sp['n_folds']}folds" if sp["cross_fitted"] else "")
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        report["mlflow"] = {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri}
        # written aside and renamed at the end: a failure leaves an earlier report whole, and nothing half-written
        with staged_folder(out_dir, recheck=lambda: _check_out(out_dir, force)) as tmp:
            staged, _ = write_outputs(report, ev.curves, [str(q) for q in ev.ctx.test.query_ids], tmp)
            mlflow.log_params(_params(report, cfg))
            mlflow.log_metrics(_metrics(ev))
            for p in staged.values():
                mlflow.log_artifact(str(p), artifact_path="eval")
        paths = {kind: out_dir / p.name for kind, p in staged.items()}
        run_id = run.info.run_id
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
        split=sp["kind"],
        n_folds=sp["n_folds"],
        n_test_queries=sp["n_test_queries"],
        energy_source=energy["source"],
        energy_meter=energy["meter"],
        allocators=tuple(ev.curves),
        headline=ev.headline,
    )


def _params(report: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    sp, energy, models = report["split"], report["energy"], report["models"]
    return {
        "store": report["store"],
        "bundle": report["bundle"][:500],
        "split": sp["kind"],
        "split_source": sp["source"][:500],
        "n_folds": sp["n_folds"],
        "fold_trials": cfg.fold_trials if sp["cross_fitted"] else "-",
        "holdout_tasks": ",".join(sp["holdout_tasks"])[:500] or "-",
        "n_test_queries": sp["n_test_queries"],
        "n_train_queries": sp["n_train_queries"],
        "n_boot": cfg.n_boot,
        "seed": cfg.seed,
        "allocators": ",".join(report["allocators_run"]),
        "energy_source": energy["source"],
        "energy_meter": energy["meter"],
        "allow_mixed_energy": cfg.allow_mixed_energy,
        "overhead_meter": cfg.overhead_meter,
        "small_model": models["small"],
        "big_model": models["big"] or "-",
    }


def _metrics(ev: Evaluation) -> dict[str, float]:
    """The headline's metrics (names derived from its fields), each allocator's best accuracy, the timings."""
    out = ev.headline.mlflow_metrics() if ev.headline is not None else {}
    for name, c in ev.curves.items():
        out[f"{name}/best_accuracy"] = float(max(p.accuracy for p in c.points))
        out[f"{name}/n_points"] = float(len(c.points))
    for name, w in (ev.report.get("within_task_auc") or {}).items():
        for key in ("macro_auc_cheapest_arm", "macro_auc_look_arm", "macro_auc_all_arms"):
            if w.get(key) is not None and math.isfinite(w[key]):
                out[f"within_task/{name}/{key}"] = float(w[key])
    out.update({f"time/{k}": v for k, v in ev.timings_s.items()})
    return out
