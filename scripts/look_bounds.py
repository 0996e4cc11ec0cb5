"""How far can the look-then-decide rule go with the detectors it has? A hindsight bound, cross-fitted.

Issue 18's second piece of evidence for its missed +3 points (scripts/look_oracle.py is the first: a
*perfect* detector of the look's correctness). Here the detector is the stage-2 model itself, fitted
per fold as eval fits it (train.two_stage: text features + the look's signals + arm columns, soft
labels, the fold's training queries), once per one-sample arm as the look. Each held-out query looks
at A, then takes the arm with the most predicted accuracy minus λ x marginal joules (`choose`, as the
bundle does; joules: the fold's training mean of each arm on the query's task, less the look's own
when the arm continues its sample) and is charged as eval charges it (an arm that continues the look
pays its own joules; any other pays the look's on top). Then, in hindsight, each task takes the (look,
λ) that is best on that task's *held-out* outcomes; summed over tasks that is a frontier, read at
`--joules`. The per-task table gets the same hindsight (each task's best arm on all its queries).
Choosing each task's look and price on the answers themselves bounds what any better rule for
choosing them could add. Reads only; writes nothing; ~2 min on reference v2 (12 looks x 5 folds).

    python scripts/look_bounds.py [--store data/reference] [--joules 4.45] [--folds 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from look_oracle import arguments, best_at, frontier, outcome_matrices, report, table_at  # noqa: E402

from policy.arms import Arm  # noqa: E402
from policy.errors import TTCError  # noqa: E402
from policy.two_stage import choose, continues  # noqa: E402

#: the prices each look is swept over (0, then a log grid across the reference's range of slopes)
LAMS = np.concatenate([[0.0], np.geomspace(1e-4, 0.3, 80)])


def look_options(
    p: dict[int, np.ndarray], correct: np.ndarray, joules: np.ndarray, expected_j: np.ndarray, arms: list[Arm],
    tasks: np.ndarray, lams: np.ndarray = LAMS,
) -> dict[str, list[tuple[int, float, str]]]:  # fmt: skip
    """Per task, (hits, joules, label) of every (look A, price λ): the held-out queries' stage-2 choices.

    `p[A]` (queries x arms): held-out P(correct) of every arm after a look at A; `expected_j`
    (queries x arms): the joules the choice expects (the fold's training means).
    """
    ids, q = [a.arm_id for a in arms], np.arange(len(correct))
    out: dict[str, list[tuple[int, float, str]]] = {str(t): [] for t in np.unique(tasks)}
    for a, pa in sorted(p.items()):
        cont = continues(arms, arms[a])
        marginal = np.where(cont[None, :], np.maximum(expected_j - joules[:, a : a + 1], 0.0), expected_j)
        for lam in lams:
            idx = choose(pa, marginal, float(lam))
            spent = np.where(cont[idx], joules[q, idx], joules[q, a] + joules[q, idx])
            hits = correct[q, idx]
            for t in out:
                m = tasks == t
                out[t].append((int(hits[m].sum()), float(spent[m].sum()), f"look {ids[a]}, lam={lam:.3g}"))
    return out


def cross_fitted(samples, ids, questions, tasks, soft, arms, folds, seed=0):  # noqa: ANN001, ANN201
    """{look A: (queries x arms) held-out P(correct) after a look at A}, per fold as eval fits it."""
    from train.two_stage import fit_stage_two_model, predict_stage_two, stage_one_signals, stage_two_rows

    models = sorted({a.model for a in arms})
    n, k = len(ids), len(arms)
    p = {}
    for a in [j for j, arm in enumerate(arms) if arm.n == 1]:
        sig = stage_one_signals(samples, ids, arms[a])
        rows = stage_two_rows(questions, list(tasks), sig, arms, models).reshape(n, k, -1)
        p[a] = np.zeros((n, k))
        for te in folds:
            tr = np.setdiff1d(np.arange(n), te)
            model = fit_stage_two_model(rows[tr].reshape(len(tr) * k, -1), soft[tr].reshape(-1), seed)
            p[a][te] = predict_stage_two(model, rows[te].reshape(len(te) * k, -1)).reshape(len(te), k)
        print(f"  fitted the look at {arms[a].arm_id}", flush=True)
    return p


def main() -> None:
    ap = arguments(__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    if args.folds < 2:
        ap.error(f"--folds must be >= 2, got {args.folds}")
    from eval.crossfit import query_folds
    from store.loader import load_samples
    from store.views import arm_outcomes

    samples = load_samples(args.store)
    rows = arm_outcomes(samples)
    c, s, j = outcome_matrices(rows, ("correct", "correct_soft", "energy_j"))
    ids = [str(x) for x in c.index]
    arms = [Arm.parse(a) for a in c.columns]
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids]
    tasks = q["task"].astype(str).to_numpy()
    cm, jm, n = c.to_numpy(dtype=np.int64), j.to_numpy(dtype=np.float64), len(ids)
    pos = {x: i for i, x in enumerate(ids)}
    folds = [np.asarray([pos[x] for x in f.test_query_ids]) for f in query_folds(ids, args.folds, 0)]
    expected = np.zeros_like(jm)
    for te in folds:
        tr = np.setdiff1d(np.arange(n), te)
        for t in np.unique(tasks[te]):
            mt = tasks[tr] == t
            expected[te[tasks[te] == t]] = (jm[tr][mt] if mt.any() else jm[tr]).mean(axis=0)
    print(f"{n} queries, {len(arms)} arms, {args.folds} query folds; fitting one stage-2 model per look and fold")
    p = cross_fitted(samples, ids, q["question"].tolist(), tasks, s.to_numpy(dtype=np.float64), arms, folds)
    table = table_at(cm, jm, tasks, arms, args.joules)
    looks = best_at(frontier(look_options(p, cm, jm, expected, arms, tasks), n), args.joules)
    source = rows["energy_source"].iloc[0]
    print(f"({source} joules) hindsight per-task table at <= {args.joules:g} J: {table[0]:.3f} at {table[1]:.2f} J")
    report("hindsight per-task look and price, cross-fitted stage 2", looks, table, args.joules)


if __name__ == "__main__":
    try:
        main()
    except TTCError as exc:  # a bad store or option: the message, not a traceback
        sys.exit(f"error: {exc}")
