"""How far can one look, then one more arm, go above the per-task table? An in-sample upper bound.

Issue 18's evidence for why its +3-point target was missed. Per task, a cascade draws arm A (any arm:
its joules are paid), and when A's answer is wrong, and only then, runs arm B (charged what B adds:
B's joules less A's when B continues A's sample, same model, temperature and a cap >= A's; all of B's
otherwise). The cascade *knows* whether A is right: a perfect detector, so this bounds every
look-then-decide rule over these arms from above. Per task the best (A, B) (or A alone) at each price
λ, summed over tasks, is the bound's frontier; the per-task table (A alone) is computed the same way,
on all queries, in sample. Both are read at `--joules` per query. Reads only; writes nothing.

    python scripts/look_oracle.py [--store data/reference] [--joules 4.45]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policy.arms import Arm  # noqa: E402
from policy.errors import TTCError  # noqa: E402
from policy.two_stage import continues  # noqa: E402
from store.loader import load_samples  # noqa: E402
from store.views import arm_outcomes  # noqa: E402


def options(correct: np.ndarray, joules: np.ndarray, arms: list[Arm], cascades: bool) -> list[tuple[int, float, str]]:
    """(hits, joules, label) of every choice for one task's queries: each arm, and each (A, then B if A is wrong)."""
    ids = [a.arm_id for a in arms]
    out = [(int(correct[:, a].sum()), float(joules[:, a].sum()), ids[a]) for a in range(len(arms))]
    if not cascades:
        return out
    for a in range(len(arms)):
        wrong = correct[:, a] == 0
        cont = continues(arms, arms[a])
        for b in range(len(arms)):
            if b == a:
                continue
            extra = np.maximum(joules[wrong, b] - joules[wrong, a], 0.0) if cont[b] else joules[wrong, b]
            hits = int(correct[:, a].sum() + correct[wrong, b].sum())
            out.append((hits, float(joules[:, a].sum() + extra.sum()), f"{ids[a]} -> {ids[b]}"))
    return out


def frontier(per_task: dict[str, list[tuple[int, float, str]]], n: int) -> list[tuple[float, float, dict]]:
    """(accuracy, joules per query, choices) at each price of a dense grid: per task the best hits - λ x joules."""
    pts = []
    for lam in np.concatenate([[0.0], np.geomspace(1e-4, 2.0, 600)]):
        pick = {t: max(opts, key=lambda o: (o[0] - lam * o[1], o[0], -o[1])) for t, opts in per_task.items()}
        pts.append((sum(p[0] for p in pick.values()) / n, sum(p[1] for p in pick.values()) / n, pick))
    return pts


def best_at(pts: list[tuple[float, float, dict]], joules: float) -> tuple[float, float, dict]:
    return max((p for p in pts if p[1] <= joules + 1e-9), key=lambda p: p[0])


def arguments(description: str) -> argparse.ArgumentParser:
    """--store and --joules, shared with scripts/look_bounds.py."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--store", default=str(ROOT / "data" / "reference"))
    ap.add_argument("--joules", type=float, default=4.45,
                    help="read both at this many joules per query (default: the cross-fitted table's top point "
                         "on reference v2, `python benchmarks/eval.py`)")  # fmt: skip
    return ap


def outcome_matrices(rows: pd.DataFrame, values: Sequence[str] = ("correct", "energy_j")) -> list[pd.DataFrame]:
    """Per value, the (query x arm) pivot of the arm rows, kept to the queries with every arm's outcome in
    every value (a store collected model by model may be mid-way); rows and columns aligned across values."""
    piv = [rows.pivot(index="query_id", columns="arm_id", values=v) for v in values]
    keep = ~pd.concat([m.isna().any(axis=1) for m in piv], axis=1).any(axis=1)
    return [m.loc[keep, piv[0].columns] for m in piv]


def table_at(correct: np.ndarray, joules: np.ndarray, task: np.ndarray, arms: list[Arm], at_j: float) -> tuple:
    """The in-sample per-task table's best point at <= `at_j` joules per query (`best_at`)."""
    opts = {t: options(correct[task == t], joules[task == t], arms, False) for t in np.unique(task)}
    return best_at(frontier(opts, len(correct)), at_j)


def report(name: str, at: tuple, table: tuple, joules: float) -> None:
    """One bound's point beside the table's, its gain in points, and each task's choice."""
    print(f"{name} at <= {joules:g} J: {at[0]:.3f} at {at[1]:.2f} J ({100 * (at[0] - table[0]):+.1f} points)")
    for t, (_, _, label) in sorted(at[2].items()):
        print(f"    {t:28s} {label}")


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    rows = arm_outcomes(load_samples(args.store))
    c, j = outcome_matrices(rows)
    task = rows.groupby("query_id")["task"].first().loc[c.index].to_numpy()
    arms = [Arm.parse(a) for a in c.columns]
    cm, jm, n = c.to_numpy(dtype=np.int64), j.to_numpy(dtype=np.float64), len(c)
    top = table_at(cm, jm, task, arms, args.joules)
    bound = frontier({t: options(cm[task == t], jm[task == t], arms, True) for t in np.unique(task)}, n)
    source = rows["energy_source"].iloc[0]
    print(f"{n} queries, {len(arms)} arms, {len(np.unique(task))} tasks (in sample; {source} joules)")
    print(f"per-task table at <= {args.joules:g} J: {top[0]:.3f} at {top[1]:.2f} J per query")
    report("perfect-look cascade", best_at(bound, args.joules), top, args.joules)


if __name__ == "__main__":
    try:
        main()
    except TTCError as exc:  # a bad store or option: the message, not a traceback
        sys.exit(f"error: {exc}")
