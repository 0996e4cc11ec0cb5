"""Benchmark unseen tasks: leave one task out, then adapt from k labelled queries of it (issue 19).

For every task of the store (default: the reference v2, data/reference, estimated joules), a
policy is trained on the other tasks (`train.fit.fit_policy`, `--trials` Optuna trials, default
0: LightGBM's defaults) and exported as a bundle with its tasks.json. Then, for k in `--ks`:

- k = 0: the held-out task is unknown to the bundle; `Policy.predict` answers with the bundle's
  k = 0 rule (the global table of policy/tasks.py). It is compared with the global fallback of
  the per-task table (train.task_table: one arm for every training query at each price) and,
  as evidence for the guard, with the trees' own guess for the unseen task ("predictor").
- k > 0 (`--draws` random draws of the k labelled queries per task; the task's other queries
  are the test set): `train.adapt.adapt_policy` adds the k queries to the bundle's table (the
  path of `ttc adapt`); compared with (b) a per-task table from the same k queries (hard labels,
  train.task_table, and the same with soft labels), and (c) the ceiling: per test query, the
  per-task table of all of the task's *other* queries (leave one query out).

Every rule is swept over prices; each curve pools all held-out tasks at a price and is read on its
convex frontier (eval.metrics) at the best fixed arm's joules of the same test queries ("accuracy
at equal energy"). Figures are means over the draws, with 95% percentile intervals over
`--n-boot` paired resamples of the queries (every rule and every draw sees the same resample).
Joules are the store's, ESTIMATED for the reference (no RAPL/GPU meter). Writes `--plot`
(adapt_curve.png) and prints a table and the issue's targets, with misses by how much.

    python benchmarks/adapt.py [--store data/reference] [--ks 0 8 16 32] [--draws 5] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from eval.allocators.base import hull_slopes, lambda_grid  # noqa: E402
from eval.metrics import (  # noqa: E402
    CurveData,
    accuracy_at_energy,
    best_point,
    bootstrap,
    energy_at_accuracy,
    exact_mean,
    saved_fraction,
)
from policy.allocate import allocate_price  # noqa: E402
from train.task_table import breakpoints_from_matrices, grid_from_slopes, tables_from_matrices  # noqa: E402

#: test queries a task must keep at k to take part (a task of 28 queries sits out k = 32)
MIN_TEST = 8
SOFT_SCALE = 64  # correct_soft is a multiple of 1/64 (store/views.py): the soft table counts 64ths


def matrices(samples):  # noqa: ANN001, ANN201
    """(query ids, tasks, questions, arm ids, correct, correct_soft x 64, joules): the arm view as matrices."""
    from store.views import arm_outcomes, queries

    rows = arm_outcomes(samples)
    arm_ids = sorted(rows["arm_id"].unique())

    def mat(col: str) -> np.ndarray:
        return rows.pivot(index="query_id", columns="arm_id", values=col).reindex(columns=arm_ids)

    c = mat("correct").dropna()
    qids = c.index.to_numpy().astype(str)
    q = queries(samples).set_index("query_id").loc[qids]
    soft = np.rint(mat("correct_soft").loc[qids].to_numpy(dtype=np.float64) * SOFT_SCALE).astype(np.int64)
    return (qids, q["task"].astype(str).to_numpy(), q["question"].tolist(), arm_ids,
            c.to_numpy(dtype=np.int64), soft, mat("energy_j").loc[qids].to_numpy(dtype=np.float64))  # fmt: skip


def fold_policies(samples, tasks: list[str], work: Path, trials: int, threads: int) -> dict:  # noqa: ANN001
    """One bundle per held-out task, trained on every other task, loaded back."""
    from policy.bundle import load_bundle
    from train.fit import TrainConfig, fit_policy

    cfg = TrainConfig(n_trials=trials, two_stage="off", num_threads=threads)
    out = {}
    for t in tasks:
        train_ids = sorted(set(samples.loc[samples["task"].astype(str) != t, "query_id"].astype(str)))
        out[t] = load_bundle(fit_policy(samples, train_ids, cfg, work / t.replace("/", "_")))
    return out


def price_idx(p: np.ndarray, e: np.ndarray, arm_ids: list[str], lams: np.ndarray, p_floor: float) -> np.ndarray:
    """(n_lams, n_queries) arm columns of the bundle's price rule at each price."""
    col = {a: j for j, a in enumerate(arm_ids)}
    ids = [str(i) for i in range(len(p))]
    return np.asarray(
        [[col[d.arm_id] for d in allocate_price(p, e, arm_ids, ids, float(lam), p_floor)] for lam in lams]
    )


def table_lams(p: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Prices reaching every decision of rows that are constant per task: midpoints of their hull slopes."""
    uniq = np.unique(np.hstack([p, e]), axis=0)
    return grid_from_slopes(hull_slopes(uniq[:, : p.shape[1]], uniq[:, p.shape[1] :]).tolist())


def table_idx(groups, correct, energy, arm_ids: list[str], scale: int = 1, max_lams: int = 400) -> np.ndarray:  # noqa: ANN001
    """(n_lams, n_queries): per group (train rows, test rows, task), the train.task_table table's arms on
    its test rows, over one price grid pooled from every group's breakpoints (prices in accuracy per joule;
    beyond `max_lams` distinct ones, their quantiles: the ceiling's hundreds of leave-one-out tables)."""
    slopes = []
    for tr, _, t in groups:
        slopes += breakpoints_from_matrices([t] * len(tr), correct[tr], energy[tr])
    lams = grid_from_slopes([s / scale for s in slopes])
    if len(lams) > max_lams:
        lams = lambda_grid(np.asarray([s / scale for s in slopes if s > 0]), max_lams)
    idx = np.zeros((len(lams), correct.shape[0]), dtype=np.int64)
    for tr, te, t in groups:
        tabs = tables_from_matrices([t] * len(tr), correct[tr], energy[tr], arm_ids, lams * scale)
        for i, tab in enumerate(tabs):
            idx[i, te] = tab.index([t] * len(te), arm_ids)
    return idx


def curve(idx: np.ndarray, correct: np.ndarray, energy: np.ndarray) -> CurveData:
    """The operating points of distinct assignments (rows of `idx`) on every query."""
    idx = np.unique(idx, axis=0)
    rows = np.arange(correct.shape[0])
    return CurveData(correct[rows, idx], energy[rows, idx])


def at_energy(c: CurveData, counts: np.ndarray, energy_j: float) -> float:
    return accuracy_at_energy(*c.frontier(counts), energy_j)


def main() -> None:  # noqa: C901, PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=str(ROOT / "data" / "reference"))
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 8, 16, 32])
    ap.add_argument("--draws", type=int, default=5, help="random draws of the k labelled queries per task")
    ap.add_argument("--n-boot", type=int, default=1000, help="paired bootstrap resamples of the queries")
    ap.add_argument("--trials", type=int, default=0, help="Optuna trials per predictor per fold (0: defaults)")
    ap.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="adapt_curve.png", help="learning-curve figure to write")
    sweep_help = "also score the adapted rule with these prior weights (pseudo-queries; point estimates)"
    ap.add_argument("--prior-sweep", type=float, nargs="*", default=[1, 3, 12, 50], help=sweep_help)
    args = ap.parse_args()

    from policy.tasks import ADAPTED, UNKNOWN
    from store.loader import load_samples
    from train.adapt import adapt_policy

    t0 = time.perf_counter()
    samples = load_samples(args.store)
    qids, tasks, questions, arm_ids, correct, soft, energy = matrices(samples)
    n = len(qids)
    task_names = sorted(set(tasks))
    by_task = {t: np.flatnonzero(tasks == t) for t in task_names}
    source = str(samples["energy_source"].iloc[0])
    print(f"store {args.store}: {n} queries x {len(arm_ids)} arms, {len(task_names)} tasks; joules {source}")
    with tempfile.TemporaryDirectory(prefix="ttc-adapt-bench-") as work:
        pols = fold_policies(samples, task_names, Path(work), args.trials, args.threads)
    t_train = time.perf_counter() - t0
    first = next(iter(pols.values()))
    if first.arm_ids != arm_ids:
        raise SystemExit("the fold policies' arms differ from the store's arm view")
    p_floor = first.rule.p_floor

    # ---- k = 0: the exported rule for an unseen task, the trees' own guess, the global fallback
    P0, E0, Pt, Et = (np.zeros((n, len(arm_ids))) for _ in range(4))
    for t, rows in by_task.items():
        pol = pols[t]
        assert pol.task_status(t) == UNKNOWN  # noqa: S101 (the fold never saw its task)
        qs, ts = [questions[i] for i in rows], [t] * len(rows)
        P0[rows], E0[rows] = pol.predict(qs, ts)
        Pt[rows], Et[rows] = pol.predict_features(pol.query_features(qs, ts))
    all_q = np.ones(n, dtype=bool)
    curves: dict[tuple[int, int], dict[str, CurveData]] = {}
    masks: dict[tuple[int, int], np.ndarray] = {}
    curves[(0, 0)] = {
        "learned": curve(price_idx(P0, E0, arm_ids, table_lams(P0, E0), p_floor), correct, energy),
        "predictor": curve(price_idx(Pt, Et, arm_ids, lambda_grid(hull_slopes(Pt, Et), 48), p_floor), correct, energy),
        "global": curve(
            table_idx([(np.flatnonzero(tasks != t), by_task[t], "all") for t in task_names], correct, energy, arm_ids),
            correct,
            energy,
        ),
    }
    masks[(0, 0)] = all_q
    # the ceiling: each query decided by the table of all of its task's other queries
    loo = [(np.setdiff1d(by_task[t], [i]), np.asarray([i]), t) for t in task_names for i in by_task[t]]
    ceiling = curve(table_idx(loo, correct, energy, arm_ids), correct, energy)

    # ---- k > 0: adapt from k labelled queries, several draws
    rng = np.random.default_rng(args.seed)
    skipped: dict[int, list[str]] = {}
    t_adapt: list[float] = []
    sweep: dict[tuple[int, float], list[tuple[CurveData, np.ndarray]]] = {}
    for k in [k for k in args.ks if k > 0]:
        skipped[k] = [t for t in task_names if len(by_task[t]) - k < MIN_TEST]
        use = [t for t in task_names if t not in skipped[k]]
        for d in range(args.draws):
            labelled = {t: np.sort(rng.choice(by_task[t], size=k, replace=False)) for t in use}
            test = {t: np.setdiff1d(by_task[t], labelled[t]) for t in use}
            mask = np.zeros(n, dtype=bool)
            Pa, Ea = np.zeros((n, len(arm_ids))), np.ones((n, len(arm_ids)))
            Pm = {m: np.zeros((n, len(arm_ids))) for m in args.prior_sweep}
            for t in use:
                mask[test[t]] = True
                s = time.perf_counter()
                sub = samples[samples["query_id"].astype(str).isin(set(qids[labelled[t]]))]
                table = adapt_policy(pols[t], sub, seed=args.seed).table
                pol = pols[t].with_task_table(table)
                t_adapt.append(time.perf_counter() - s)
                assert pol.task_status(t) == ADAPTED  # noqa: S101
                qs = [questions[i] for i in test[t]]
                Pa[test[t]], Ea[test[t]] = pol.predict(qs, [t] * len(qs))
                for m in args.prior_sweep:
                    alt = pols[t].with_task_table(dataclasses.replace(table, prior_queries=m))
                    Pm[m][test[t]] = alt.predict(qs, [t] * len(qs))[0]
            groups = [(labelled[t], test[t], t) for t in use]
            te = np.flatnonzero(mask)
            curves[(k, d)] = {
                "adapted": curve(
                    np.where(mask, price_idx(Pa, Ea, arm_ids, table_lams(Pa[te], Ea[te]), p_floor), 0), correct, energy
                ),
                "k_table": curve(table_idx(groups, correct, energy, arm_ids), correct, energy),
                "k_table_soft": curve(table_idx(groups, soft, energy, arm_ids, SOFT_SCALE), correct, energy),
                "ceiling": ceiling,
                "global": curves[(0, 0)]["global"],
            }
            masks[(k, d)] = mask
            for m, P in Pm.items():
                c = curve(
                    np.where(mask, price_idx(P, Ea, arm_ids, table_lams(P[te], Ea[te]), p_floor), 0), correct, energy
                )
                sweep.setdefault((k, m), []).append((c, mask))
    fixed = CurveData(correct.T, energy.T)
    best = {key: best_point(exact_mean(fixed.energy_j[:, m]), fixed.correct[:, m].sum(axis=1), arm_ids)
            for key, m in masks.items()}  # fmt: skip
    task_best = {(key, t): best_point(exact_mean(fixed.energy_j[:, m & (tasks == t)]),
                                      fixed.correct[:, m & (tasks == t)].sum(axis=1), arm_ids)
                 for key, m in masks.items() for t in task_names if (m & (tasks == t)).any()}  # fmt: skip
    ks = sorted({k for k, _ in curves})

    def stats(counts: np.ndarray) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for (k, d), cs in curves.items():
            c = counts * masks[(k, d)]
            fe, fh, fden = fixed.means(c)
            b = best[(k, d)]
            be, ba = float(fe[b]), float(fh[b]) / fden
            acc = {name: at_energy(cv, c, be) for name, cv in cs.items()}
            row = {f"{name}_acc": a for name, a in acc.items()} | {"best_fixed_acc": ba, "best_fixed_j": be}
            if k == 0:
                le, la = cs["learned"].frontier(c)
                row["learned_minus_global"] = acc["learned"] - acc["global"]
                row["predictor_minus_global"] = acc["predictor"] - acc["global"]
                row["learned_saving_vs_best_fixed"] = saved_fraction(energy_at_accuracy(le, la, ba), be)
                row["learned_top_acc"] = float(la[-1])
            else:
                for ref in ("ceiling", "k_table", "k_table_soft", "global"):
                    row[f"adapted_minus_{ref}"] = acc["adapted"] - acc[ref]
                per_task = {"ceiling": [], "k_table": []}
                for t in task_names:
                    ct = c * (tasks == t)
                    if not ct.any():  # a task that sits out this k
                        continue
                    tfe = fixed.means(ct)[0][task_best[((k, d), t)]]
                    a_ad = at_energy(cs["adapted"], ct, tfe)
                    for ref in per_task:
                        per_task[ref].append(a_ad - at_energy(cs[ref], ct, tfe))
                for ref, v in per_task.items():
                    row[f"adapted_minus_{ref}_task_avg"] = float(np.nanmean(v)) if v else math.nan
            for key, v in row.items():
                out.setdefault(f"k{k}/{key}", []).append(v)
        return {key: float(np.mean(v)) for key, v in out.items()}

    t1 = time.perf_counter()
    ivs = bootstrap(stats, n, args.n_boot, args.seed)
    t_boot = time.perf_counter() - t1

    def f(key: str, pct: bool = True) -> str:
        iv = ivs.get(key)
        if iv is None or not math.isfinite(iv.point):
            return "undefined"
        s = 100 if pct else 1
        return f"{s * iv.point:+.1f} [{s * iv.low:+.1f}, {s * iv.high:+.1f}]" if pct else f"{iv.point:.3g}"

    print(f"\nleave one task out over {len(task_names)} tasks; {args.draws} draws of k; B = {args.n_boot} paired "
          f"resamples; joules {source.upper()} (model_rate attribution)")  # fmt: skip
    for k, ts in skipped.items():
        if ts:
            print(f"  k = {k}: {', '.join(ts)} sit out (fewer than {MIN_TEST} test queries left)")
    print("\naccuracy (%) at the best fixed arm's joules of the same test queries, mean over draws [95% interval]")
    cols = ("learned", "predictor", "adapted", "k_table", "k_table_soft", "ceiling", "global")
    print("| k | " + " | ".join(cols) + " | best fixed arm | its J |")
    print("|---" * (len(cols) + 3) + "|")
    for k in ks:
        cells = [f(f"k{k}/{c}_acc").split(" [")[0].lstrip("+") if f"k{k}/{c}_acc" in ivs else "–" for c in cols]
        print(f"| {k} | " + " | ".join(cells) + f" | {100 * ivs[f'k{k}/best_fixed_acc'].point:.1f} | "
              f"{ivs[f'k{k}/best_fixed_j'].point:.2f} |")  # fmt: skip
    print("\ndifferences in points at equal energy (paired):")
    for key in sorted(k for k in ivs if "minus" in k):
        print(f"  {key:44s} {f(key)}")

    print("\ntargets (issue 19):")

    def target(what: str, key: str, ok: bool, miss: str) -> None:
        print(f"  [{'met' if ok else 'MISSED'}] {what}: {f(key)}" + ("" if ok else f"  (missed by {miss})"))

    lg = ivs["k0/learned_minus_global"]
    target("k=0 learned - global fallback >= 0 pt", "k0/learned_minus_global", lg.point >= 0,
           f"{-100 * lg.point:.1f} pt")  # fmt: skip
    target("k=0 its interval low >= -1 pt", "k0/learned_minus_global", lg.low >= -0.01,
           f"{-100 * (lg.low + 0.01):.1f} pt")  # fmt: skip
    sv = ivs["k0/learned_saving_vs_best_fixed"]
    top, ba = ivs["k0/learned_top_acc"].point, ivs["k0/best_fixed_acc"].point
    print(
        f"  [{'met' if math.isfinite(sv.point) else 'MISSED'}] k=0 equal-accuracy saving vs best fixed arm "
        f"defined: {f('k0/learned_saving_vs_best_fixed')}% (frontier top {100 * top:.1f}% vs best arm "
        f"{100 * ba:.1f}%)" + ("" if math.isfinite(sv.point) else f"  (missed by {100 * (ba - top):.1f} pt)")
    )
    if 16 in ks:
        for key in ("k16/adapted_minus_ceiling", "k16/adapted_minus_ceiling_task_avg"):
            iv = ivs[key]
            target(f"k=16 {key.split('/')[1]} >= -1 pt", key, iv.point >= -0.01, f"{-100 * (iv.point + 0.01):.1f} pt")
        for key in ("k16/adapted_minus_k_table", "k16/adapted_minus_k_table_task_avg"):
            iv = ivs[key]
            target(f"k=16 {key.split('/')[1]} > 0", key, iv.point > 0, f"{-100 * iv.point:.1f} pt")
    if sweep:
        print("\nthe adapted rule's prior weight (pseudo-queries), accuracy (%) at equal energy, mean over draws:")
        for k in sorted({k for k, _ in sweep}):
            cells = []
            for m in args.prior_sweep:
                accs = []
                for d, (c, mask) in enumerate(sweep[(k, m)]):
                    cnt = mask.astype(np.int64)
                    fe, _, _ = fixed.means(cnt)
                    accs.append(at_energy(c, cnt, float(fe[best[(k, d)]])))
                cells.append(f"m={m:g}: {100 * np.mean(accs):.1f}")
            print(
                f"  k = {k}: " + ", ".join(cells) + f" (the folds' own m: "
                f"{', '.join(f'{p.task_table.prior_queries:.0f}' for p in pols.values())})"
            )
    adapt_s = max(t_adapt) if t_adapt else math.nan
    print(f"\ntime: folds trained {t_train:.0f} s; adapt_policy per task {np.median(t_adapt):.2f} s median, "
          f"{adapt_s:.2f} s max; bootstrap {t_boot:.0f} s")  # fmt: skip
    plot(ivs, ks, args.plot, source)
    print(f"figure: {args.plot}")


def plot(ivs: dict, ks: list[int], path: str, source: str) -> None:
    """Left: accuracy at equal energy per rule against k. Right: the adapted rule minus each reference, paired."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"adapted": ("C0", "o-"), "k_table": ("C1", "s--"), "k_table_soft": ("C4", "^:"),
              "ceiling": ("C2", "-"), "global": ("C7", "-")}  # fmt: skip
    for name, (color, style) in styles.items():
        xs = [k for k in ks if f"k{k}/{name}_acc" in ivs and (k > 0 or name == "global")]
        if name == "adapted" and "k0/learned_acc" in ivs:
            xs = [0, *xs]  # at k = 0 the adapted rule is the bundle's unknown-task rule
        key = {0: "k0/learned_acc"} if name == "adapted" else {}
        _errorbar(ax, xs, [ivs[key.get(k, f"k{k}/{name}_acc")] for k in xs], style, color, name.replace("_", " "))
    ax.set_ylabel("accuracy at the best fixed arm's joules (%)")
    ax.set_title(f"Leave one task out ({source} joules)")
    for ref, (color, style) in {"ceiling": ("C2", "o-"), "k_table": ("C1", "s--"), "global": ("C7", "^:")}.items():
        xs = [k for k in ks if f"k{k}/adapted_minus_{ref}" in ivs]
        _errorbar(bx, xs, [ivs[f"k{k}/adapted_minus_{ref}"] for k in xs], style, color, f"adapted - {ref}")
    bx.axhline(0, color="k", lw=0.8)
    bx.axhline(-1, color="C3", lw=0.8, ls="--", label="target vs ceiling: -1 point")
    bx.set_ylabel("points at equal energy, paired 95% interval")
    bx.set_title("Adapted rule minus references")
    for a in (ax, bx):
        a.set_xlabel("labelled queries of the held-out task (k)")
        a.set_xticks(ks)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _errorbar(ax, xs: list[int], ivs: list, style: str, color: str, label: str) -> None:  # noqa: ANN001
    y = np.asarray([100 * iv.point for iv in ivs])
    err = np.asarray([[100 * (iv.point - iv.low), 100 * (iv.high - iv.point)] for iv in ivs]).T.reshape(2, -1)
    ax.errorbar(xs, y, yerr=err, fmt=style, color=color, capsize=3, label=label)


if __name__ == "__main__":
    main()
