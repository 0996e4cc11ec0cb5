"""Which signal tells, inside one task, whether a cheap answer is right and which model's is?

Issue 18, item 4. For every query of a store (default: the reference, data/reference) this
script builds candidate signals and scores them by **within-task macro AUC**: the ROC AUC
computed inside each task (both classes present) and averaged over tasks with equal weight,
so a per-task base rate scores 0.5 by construction. Labels (one column each):

- `cheapest`: the cheapest arm's vote (lowest mean joules over the store: the stage-1 arm of
  the two-stage rule), the first sample of its model at its cap;
- `<model> greedy@L`: each model's greedy answer at each cap the store graded.

Signals, each computed from what a cascade would have seen:

- the judged answer's own confidence: mean / min chosen-token log-prob, mean entropy,
  mean top-1 margin, output tokens, whether an answer was extracted;
- agreement: a second cheap sample of the same model (sample 1 == sample 0), the same
  model's greedy answer, the OTHER model's greedy answer at the same cap, and the vote
  share of the first 4 / 8 samples;
- checks of the answer's own text (free once it is read): whether the equations it writes
  ("6 + 3 = 9. 9 + 0 = 10.") check out (`policy.features.answer_checks`), whether the
  answer merely echoes a number of the question; the text at a cap that cut the sample is
  approximated by the same share of its characters (the store keeps the whole text);
- question features that vary inside a task (`policy.features` "text" statistics:
  characters, words, numbers, their largest magnitude and mean digits, operators).

A raw signal's direction is chosen on the training folds only (the same 5 hashed query
folds as `ttc eval --folds 5`), then scored on the held-out fold; "combined" rows are a
LightGBM classifier on the signals plus task one-hot, cross-fitted the same way (held-out
predictions only). Then the exported two-stage success model (train/two_stage.py, fitted
on every arm's rows as `ttc train` fits it) is cross-fitted with and without the answer
checks, and its column for the stage-1 (cheapest) arm scored the same way. The last lines
print the best within-task AUC any signal reached for the cheapest arm and the exported
predictor's, against the 0.70 target, and, for a sampled cheapest arm, what the query's other
draws of that arm know about its first one (hindsight: a vote's joules; what luck leaves to learn),
and what each greedy look's own correctness, known exactly, tells about that draw.
Reads only; writes nothing.

    python scripts/signals.py [--store data/reference] [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eval.crossfit import query_folds  # noqa: E402
from policy.features import answer_checks, get_feature_set  # noqa: E402
from store.loader import load_samples  # noqa: E402

QUESTION_STATS = ("n_chars", "n_words", "n_numbers", "max_number_log10", "mean_number_digits", "n_operators")


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def within_task_auc(y: np.ndarray, score: np.ndarray, tasks: np.ndarray) -> tuple[float, int]:
    """Macro mean over tasks of the ROC AUC inside each task (tasks with one class skipped), and the task count."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for t in np.unique(tasks):
        m = tasks == t
        if 0 < y[m].sum() < m.sum():
            s = np.nan_to_num(score[m], nan=np.nanmin(score[m]) - 1 if np.isfinite(score[m]).any() else 0.0)
            aucs.append(roc_auc_score(y[m], s))
    return (float(np.mean(aucs)) if aucs else math.nan), len(aucs)


def _token_stats(lp: list[float], top1: list[float], ent: list[float]) -> tuple[float, float, float, float]:
    if not len(lp):
        return math.nan, math.nan, math.nan, math.nan
    lp_a, t_a, e_a = np.asarray(lp, float), np.asarray(top1, float), np.asarray(ent, float)
    return float(lp_a.mean()), float(lp_a.min()), float(e_a.mean()), float((t_a - lp_a).mean())


def per_query_table(samples: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per query: its task, question, and per (model, decoding, sample, cap) answer, correctness, signals."""
    out: dict[str, dict] = {}
    for r in samples.itertuples(index=False):
        d = out.setdefault(r.query_id, {"task": r.task, "question": r.question})
        dec = "greedy" if r.temperature == 0 else f"t{r.temperature:g}"
        for li, cap in enumerate(int(x) for x in r.levels):
            k = int(r.level_output_tokens[li])
            lp = list(r.token_logprob)[:k]
            top = list(r.token_top1_logprob)[:k]
            ent = list(r.token_entropy)[:k]
            # the text at the cap: the stored text is the whole generation; a prefix of k of its
            # output_tokens is approximated by the same share of its characters
            text = r.text if k >= r.output_tokens else r.text[: len(r.text) * k // max(r.output_tokens, 1)]
            d[(r.model, dec, int(r.sample_index), cap)] = (
                r.level_answer[li],
                bool(r.level_correct[li]),
                *_token_stats(lp, top, ent),
                k,
                float(r.level_energy_j[li]),
                text,
            )
    return pd.DataFrame.from_dict({q: {"task": d["task"], "question": d["question"]} for q, d in out.items()},
                                  orient="index"), out  # fmt: skip


def cheapest_look(samples: pd.DataFrame) -> tuple[str, str, int]:
    """(model, decoding, cap) of the one-sample look with the lowest mean joules (the two-stage stage-1 arm)."""
    best = None
    for (model, temp), g in samples.groupby(["model", "temperature"]):
        first = g[g["sample_index"] == 0]
        caps = [int(x) for x in first["levels"].iloc[0]]
        e = np.stack(first["level_energy_j"].to_numpy()).mean(axis=0)
        for cap, ej in zip(caps, e, strict=True):
            dec = "greedy" if temp == 0 else f"t{temp:g}"
            if best is None or ej < best[0]:
                best = (float(ej), str(model), dec, cap)
    assert best is not None
    return best[1], best[2], best[3]


def signal_columns(
    ids: list[str], looks: dict[str, dict], model: str, dec: str, cap: int, models: list[str]
) -> dict[str, np.ndarray]:
    """Candidate signals for the answer (model, dec, sample 0, cap) of each query."""
    cols: dict[str, list[float]] = {}

    def put(name: str, v: float) -> None:
        cols.setdefault(name, []).append(v)

    for q in ids:
        d = looks[q]
        a, _ok, mlp, minlp, ment, margin, k, _e, text = d[(model, dec, 0, cap)]
        put("own: mean log-prob", mlp)
        put("own: min log-prob", minlp)
        put("own: -mean entropy", -ment if not math.isnan(ment) else math.nan)
        put("own: -mean top-1 margin", -margin if not math.isnan(margin) else math.nan)
        put("own: answer parses", float(a is not None))
        put("own: -output tokens", -float(k))
        checked, wrong = answer_checks(text)
        put("answer: its equations check out", float(checked > 0 and wrong == 0) - float(wrong > 0))
        put("answer: -wrong equations in its text", -float(wrong))
        nums = {x.replace(",", "") for x in _NUMBER.findall(d["question"])}
        put("answer: -echoes a question number", -float(a is not None and a in nums))
        second = d.get((model, "t1", 1, cap)) if dec == "t1" else d.get((model, "t1", 0, cap))
        if second is not None:
            put("agree: a second cheap sample", float(a is not None and second[0] == a))
        own_greedy = d.get((model, "greedy", 0, cap))
        if dec != "greedy" and own_greedy is not None:
            put("agree: own greedy", float(a is not None and own_greedy[0] == a))
        for other in models:
            if other == model:
                continue
            og = d.get((other, "greedy", 0, cap))
            if og is not None:
                put(f"agree: {other} greedy", float(a is not None and og[0] == a))
                put(f"agree: {other} greedy, conf-weighted", float(a is not None and og[0] == a) * math.exp(og[2]))
        for n in (4, 8):
            votes = [d.get((model, "t1", i, cap), (None,))[0] for i in range(n)]
            put(f"agree: share of {n} t1 samples", sum(v is not None and v == a for v in votes) / n)
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if len(v) == len(ids)}


def other_draws_mean(ids: list[str], looks: dict[str, dict], model: str, cap: int) -> np.ndarray:
    """Per query, the share right of its model's other temperature-1 draws at `cap` (samples 1, 2, ...):
    what more draws of the same query know about draw 0. Hindsight, not a signal (they cost a vote's
    joules); as a score for draw 0 it bounds what any signal can reach on a sampled arm, from below."""
    out = []
    for q in ids:
        right = [looks[q][k][1] for k in other_draws(looks[q], model, cap)]
        out.append(float(np.mean(right)) if right else math.nan)
    return np.asarray(out, dtype=np.float64)


def other_draws(look: dict, model: str, cap: int) -> list[tuple]:
    """The keys of one query's temperature-1 draws of `model` at `cap` after its first (samples 1, 2, ...)."""
    return [k for k in look if isinstance(k, tuple) and k[:2] == (model, "t1") and k[2] > 0 and k[3] == cap]


def question_columns(questions: list[str], tasks: list[str]) -> dict[str, np.ndarray]:
    fs = get_feature_set("text")
    x = fs.transform(questions, tasks)
    names = fs.names()
    return {f"question: {n}": x[:, names.index(n)].astype(np.float64) for n in QUESTION_STATS}


def crossfit_direction(y: np.ndarray, s: np.ndarray, tasks: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """The signal, its sign flipped per held-out fold when the training folds' within-task AUC is below 0.5."""
    out = s.copy()
    for f in np.unique(fold_of):
        tr = fold_of != f
        auc, _ = within_task_auc(y[tr], s[tr], tasks[tr])
        if not math.isnan(auc) and auc < 0.5:
            out[~tr] = -s[~tr]
    return out


def crossfit_combined(x: np.ndarray, y: np.ndarray, tasks: np.ndarray, fold_of: np.ndarray, seed: int) -> np.ndarray:
    """Held-out P(correct) of a LightGBM classifier on the signals plus task one-hot, fitted per fold."""
    from lightgbm import LGBMClassifier

    task_x = pd.get_dummies(pd.Series(tasks)).to_numpy(dtype=np.float64)
    xx = np.hstack([x, task_x])
    p = np.zeros(len(y))
    for f in np.unique(fold_of):
        tr = fold_of != f
        if len(np.unique(y[tr])) < 2:
            p[~tr] = y[tr].mean()
            continue
        m = LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=7, min_child_samples=20,
                           subsample=0.8, subsample_freq=1, random_state=seed, n_jobs=1, verbose=-1)  # fmt: skip
        p[~tr] = m.fit(xx[tr], y[tr]).predict_proba(xx[~tr])[:, 1]
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=str(ROOT / "data" / "reference"))
    ap.add_argument("--folds", type=int, default=5, help="hashed query folds (as `ttc eval --folds`)")
    ap.add_argument("--seed", type=int, default=0, help="fold hash seed and LightGBM seed")
    args = ap.parse_args()

    samples = load_samples(args.store)
    qtab, looks = per_query_table(samples)
    models = sorted(samples["model"].unique())
    ids = sorted(q for q in qtab.index if all((m, "greedy", 0, 16) in looks[q] for m in models))
    tasks = qtab.loc[ids, "task"].to_numpy()
    fold_of = np.zeros(len(ids), dtype=int)
    pos = {q: i for i, q in enumerate(ids)}
    for j, f in enumerate(query_folds(ids, args.folds, args.seed)):
        fold_of[[pos[q] for q in f.test_query_ids]] = j
    qcols = question_columns(qtab.loc[ids, "question"].tolist(), list(tasks))
    caps = sorted({k[3] for k in looks[ids[0]] if isinstance(k, tuple)})
    cm, cd, cc = cheapest_look(samples)
    labels = [(f"cheapest ({cm} {cd} L{cc})", cm, cd, cc)]
    labels += [(f"{m} greedy@L{c}", m, "greedy", c) for m in models for c in caps]
    print(f"{len(ids)} queries, {len(np.unique(tasks))} tasks, {args.folds} hashed query folds (seed {args.seed})")
    print("within-task macro AUC (held-out folds; raw signals oriented on the training folds)\n")
    best_cheapest = (-1.0, "")
    for title, m, dec, cap in labels:
        y = np.asarray([looks[q][(m, dec, 0, cap)][1] for q in ids], dtype=int)
        cols = {**signal_columns(ids, looks, m, dec, cap, models), **qcols}
        rows = []
        for name, s in cols.items():
            auc, nt = within_task_auc(y, crossfit_direction(y, s, tasks, fold_of), tasks)
            rows.append((name, auc, nt))
        cheap_names = [n for n in cols if n.split(":")[0] in ("own", "question", "answer")]
        for combo, names in (
            ("combined: own confidence + question", [n for n in cheap_names if not n.startswith("answer")]),
            ("combined: own confidence + question + answer", cheap_names),
            ("combined: + a second cheap sample", cheap_names + [n for n in cols if "second" in n]),
            ("combined: + other model's greedy", cheap_names + [n for n in cols if "greedy" in n and "own" not in n]),
            ("combined: every signal", list(cols)),
        ):
            x = np.column_stack([cols[n] for n in names])
            auc, nt = within_task_auc(y, crossfit_combined(x, y, tasks, fold_of, args.seed), tasks)
            rows.append((combo, auc, nt))
        print(f"== {title}: {y.mean():.3f} right ==")
        for name, auc, nt in sorted(rows, key=lambda r: -np.nan_to_num(r[1])):
            print(f"  {name:48s} {auc:6.3f}  ({nt} tasks)")
            if title.startswith("cheapest") and auc > best_cheapest[0]:
                best_cheapest = (auc, name)
        print()
    print("== the exported stage-2 success model (train/two_stage.py, every arm's rows), its cheapest-arm column ==")
    exported = stage_two_aucs(samples, ids, tasks, fold_of, args.seed)
    for title, auc in exported:
        print(f"  {title:48s} {auc:6.3f}")
    print(f"\nbest within-task macro AUC for the cheapest arm, any signal: {best_cheapest[0]:.3f} ({best_cheapest[1]})")
    if cd == "t1":  # a sampled arm: its label is one draw's luck, which no signal before it can know
        y = np.asarray([looks[q][(cm, cd, 0, cc)][1] for q in ids], dtype=int)
        others = other_draws_mean(ids, looks, cm, cc)
        n_other = len(other_draws(looks[ids[0]], cm, cc))
        auc, _ = within_task_auc(y, others, tasks)
        print(f"hindsight, not a signal: the share right of the {n_other} other t1 draws of each query scores the "
              f"cheapest arm's draw at {auc:.3f}")  # fmt: skip
        # a rule that looks at another arm first: even knowing that look's correctness exactly
        for _title, m, dec, cap in labels[1:]:
            look = np.asarray([looks[q][(m, dec, 0, cap)][1] for q in ids], dtype=np.float64)
            auc, _ = within_task_auc(y, look, tasks)
            print(f"hindsight: whether {m} {dec} L{cap} is right scores the cheapest arm's draw at {auc:.3f}")
    # rows 2 and 4 (or 2 alone when the exported look is the strictly cheapest arm): with the answer checks
    for what, (title, auc) in zip(
        ("the exported rule's look", "the strictly cheapest arm"), exported[1::2], strict=False
    ):
        verdict = "met" if auc >= 0.70 else f"missed by {0.70 - auc:.3f}"
        print(f"stage-2 success model, {what} ({title}): {auc:.3f}; target 0.70 {verdict}")


def stage_two_aucs(
    samples: pd.DataFrame, ids: list[str], tasks: np.ndarray, fold_of: np.ndarray, seed: int
) -> list[tuple[str, float]]:
    """Within-task AUC of the two-stage success model, cross-fitted, for its look's own success.

    Two looks: the strictly cheapest one-sample arm, and the one `ttc train` now takes
    (`stage_one_index`: the most accurate of the equally cheap ones); each with the five
    confidence signals (rules before issue 18) and with the answer checks (now). The last
    row is the strictly cheapest arm with the answer checks.
    """
    from policy.arms import Arm
    from policy.features import FIRST_SAMPLE_NAMES, STAGE2_SIGNAL_NAMES
    from store.views import arm_outcomes
    from train.two_stage import (
        fit_stage_two_model,
        predict_stage_two,
        stage_one_index,
        stage_one_signals,
        stage_two_rows,
    )

    rows = arm_outcomes(samples)
    arm_ids = sorted(rows["arm_id"].unique())
    arms = [Arm.parse(a) for a in arm_ids]
    models = sorted({a.model for a in arms})
    correct = rows.pivot(index="query_id", columns="arm_id", values="correct").loc[ids, arm_ids].to_numpy(int)
    energy = rows.pivot(index="query_id", columns="arm_id", values="energy_j").loc[ids, arm_ids].to_numpy()
    soft = rows.pivot(index="query_id", columns="arm_id", values="correct_soft").loc[ids, arm_ids].to_numpy()
    strict = min((j for j, a in enumerate(arms) if a.n == 1), key=lambda j: (energy[:, j].mean(), j))
    chosen = stage_one_index(energy.mean(axis=0), arms, correct.mean(axis=0))
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids]
    out = []
    for a1 in dict.fromkeys([chosen, strict]):
        sig = stage_one_signals(samples, ids, arms[a1])
        for title, width in (("five signals", len(FIRST_SAMPLE_NAMES)), ("+ answer checks", len(STAGE2_SIGNAL_NAMES))):
            x = stage_two_rows(q["question"].tolist(), q["task"].tolist(), sig[:, :width], arms, models)
            x = x.reshape(len(ids), len(arms), -1)
            p = np.zeros(len(ids))
            for f in np.unique(fold_of):
                tr = fold_of != f
                model = fit_stage_two_model(x[tr].reshape(-1, x.shape[2]), soft[tr].reshape(-1), seed)  # as trained
                p[~tr] = predict_stage_two(model, x[~tr][:, a1, :])
            out.append((f"look {arm_ids[a1]}, {title}", within_task_auc(correct[:, a1], p, tasks)[0]))
    return out


if __name__ == "__main__":
    main()
