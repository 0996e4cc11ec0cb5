"""eval_report.md and the report's other files: written from the JSON report dict, one function per section.

Reads only the report dict `eval.report.build_report` made (keys as
docs/evaluation.md documents them); never recomputes a number, never reads a store or
logs to MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.allocators import Curve
from eval.plots import axis_label, plot_length, plot_pareto
from eval.report import tagged, to_document

JSON_NAME = "eval_report.json"
MARKDOWN_NAME = "eval_report.md"
PARETO_PNG = "eval_pareto.png"
LENGTH_PNG = "eval_length.png"
ASSIGNMENTS_NAME = "eval_assignments.parquet"
#: every file `write_outputs` writes: a folder of these only (with the JSON) is an earlier report of ours
REPORT_FILES = (JSON_NAME, MARKDOWN_NAME, PARETO_PNG, LENGTH_PNG, ASSIGNMENTS_NAME)


def is_report_folder(path: Path) -> bool:
    """True for a folder holding eval_report.json and nothing but report files (one `ttc eval` wrote)."""
    if path.is_symlink() or not (path / JSON_NAME).is_file():
        return False
    return all(e.name in REPORT_FILES and not e.is_symlink() and e.is_file() for e in path.iterdir())


#: Headline rows: (figure, words, shown as a percentage).
_HEADLINE_ROWS = (
    ("energy_saved_at_equal_accuracy", "energy saved at equal accuracy vs the best fixed arm", True),
    ("accuracy_gain_at_equal_energy", "accuracy gained at equal energy", True),
    ("oracle_share_of_energy_saving", "share of the oracle's saving achieved", True),
    ("energy_saved_vs_model_scaling", "energy saved vs model scaling at its accuracy", True),
    ("learned_energy_per_correct_j", "joules per correct answer, learned", False),
    ("best_fixed_energy_per_correct_j", "joules per correct answer, best fixed arm", False),
)
#: Headline rows against the second reference, the per-task table (issue 18), and the soft oracle above it.
_PER_TASK_ROWS = (
    ("per_task_energy_saved_at_equal_accuracy", "per-task table: energy saved at equal accuracy vs best fixed", True),
    ("learned_minus_per_task_energy_saved", "learned minus per-task table: energy saved (paired)", True),
    ("per_task_top_accuracy", "per-task table: top accuracy", True),
    ("per_task_top_energy_j", "per-task table: joules per query at its top", False),
    ("learned_minus_per_task_accuracy_at_equal_energy", "learned minus per-task table: accuracy at its joules", True),
    ("energy_saved_vs_per_task", "energy saved vs the per-task table at its top accuracy", True),
    ("soft_oracle_accuracy_at_per_task_energy", "soft oracle (expected accuracy) at the table's joules", True),
    ("share_of_soft_oracle_gain", "share of the soft oracle's gain over the table captured", True),
)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, Mapping) and "point" in v:
        if v["point"] is None:
            return "n/a"
        if v["low"] is None:
            return _fmt(v["point"], pct)
        return f"{_fmt(v['point'], pct)} [{_fmt(v['low'], pct)}, {_fmt(v['high'], pct)}]"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.4g}"
    return str(v)


def _intro(report: Mapping[str, Any]) -> list[str]:
    sp, cf = report["split"], report.get("cross_fitting")
    how = (
        f"cross-fitted over {sp['n_folds']} folds ({sp['kind']}): every query held out once"
        if sp.get("n_folds", 1) > 1
        else f"split **{sp['kind']}**"
    )
    return [
        "# ttc-allocator evaluation",
        "",
        f"Store `{report['store']}`, bundle `{report['bundle']}`; {how}, {sp['n_test_queries']} held-out queries. "
        f"Energy: **{report['energy']['label']}** (every joule figure below is {report['energy']['source']}). "
        f"Intervals: 95% bootstrap over queries, B = {report['bootstrap']['n_boot']}. "
        f"Frontiers: upper-left convex hulls of (energy, accuracy).{' Per-fold spread below.' if cf else ''}",
        "",
    ]


def _headline(h: Mapping[str, Any] | None, label: str) -> list[str]:
    if not h:
        return []
    out = ["## Headline", "", f"Best fixed arm: {h['best_fixed_arm']}; model scaling reference: "]
    out[-1] += f"{h.get('model_scaling_reference_arm') or 'n/a'}. Joules: {label}."
    if h.get("per_task_top_accuracy"):
        out += ["", _references(h)]
    out += ["", "| number | value [95% interval] |", "|---|---|"]
    out += [f"| {words} | {_fmt(h.get(key), pct)} |" for key, words, pct in _HEADLINE_ROWS]
    if h.get("per_task_top_accuracy"):
        out += [f"| {words} | {_fmt(h.get(key), pct)} |" for key, words, pct in _PER_TASK_ROWS]
    for name, c in (h.get("vs_per_task") or {}).items():
        gain, share = c["minus_per_task_accuracy_at_equal_energy"], c["share_of_soft_oracle_gain"]
        out.append(
            f"| {name} minus per-task table: accuracy at its joules; share of the soft oracle's gain | "
            f"{_fmt(gain, True)}; {_fmt(share, True)} |"
        )
    for peer, c in (h.get("peers") or {}).items():
        out.append(
            f"| learned minus {peer}: energy saved at equal accuracy (paired) | "
            f"{_fmt(c['learned_minus_peer_energy_saved'], True)} |"
        )
        out.append(
            f"| learned minus {peer}: accuracy at equal energy (paired) | "
            f"{_fmt(c['learned_minus_peer_accuracy_at_equal_energy'], True)} |"
        )
    return [*out, ""]


def _references(h: Mapping[str, Any]) -> str:
    """The headline sentence naming both references side by side."""

    def pct(key: str) -> str:
        return _fmt(h.get(key), True)

    return (
        f"References side by side: against the best fixed arm ({h['best_fixed_arm']}) the learned policy saves "
        f"{pct('energy_saved_at_equal_accuracy')} of the joules at equal accuracy, the per-task table (each "
        f"task's best arm on its training queries) {pct('per_task_energy_saved_at_equal_accuracy')}. At the "
        f"table's top-point joules ({_fmt(h.get('per_task_top_energy_j'))} J per query; table accuracy "
        f"{pct('per_task_top_accuracy')}) learned minus table is "
        f"{pct('learned_minus_per_task_accuracy_at_equal_energy')} accuracy (points), "
        f"{pct('share_of_soft_oracle_gain')} of the soft oracle's gain over the table "
        f"(soft oracle there: {pct('soft_oracle_accuracy_at_per_task_energy')})."
    )


def _discrimination(w: Mapping[str, Any] | None, src: str, label: str) -> list[str]:
    """Within-task AUC of each success predictor (a per-task base rate scores 0.5 by construction), at the
    strictly cheapest arm and at the arm the look-then-decide rule looks at first."""
    if not w:
        return []
    out = ["## Within-task discrimination", "", "AUC of the success predictor inside each task (a per-task base "]
    out[-1] += "rate scores 0.5 there by construction), macro-averaged over tasks; held-out queries, cross-fitted. "
    out[-1] += "The cheapest arm is the one of least mean joules; the look arm is the one-sample arm each fold's "
    out[-1] += f"look-then-decide rule draws first (its mean joules over the cheapest arm's, {label})."
    out += [
        "",
        "| predictor | cheapest arm | macro AUC, cheapest arm | look arm | look arm J / cheapest J "
        "| macro AUC, look arm | macro AUC, all arms | tasks defined (cheapest, look) |",
    ]
    out.append("|---|---|---|---|---|---|---|---|")
    ratio_key = tagged("look_arm_energy_ratio_to_cheapest", src)
    for name, v in w.items():
        who = f"{name} ({v['feature_set']})" if v.get("feature_set") else name
        look = ", ".join(v.get("look_arms") or []) or "n/a"
        ratio = v.get(ratio_key)
        out.append(
            f"| {who} | {v['cheapest_arm']} | {_fmt(v['macro_auc_cheapest_arm'])} | {look} | "
            f"{'n/a' if ratio is None else f'{ratio:.3f}'} | {_fmt(v.get('macro_auc_look_arm'))} | "
            f"{_fmt(v['macro_auc_all_arms'])} | {v['n_tasks_defined_cheapest_arm']}, "
            f"{v.get('n_tasks_defined_look_arm', 0)} |"
        )
    return [*out, ""]


def _folds(cf: Mapping[str, Any] | None) -> list[str]:
    if not cf:
        return []
    out = ["## Per fold", "", "| fold | queries | best fixed arm | energy saved at equal accuracy | accuracy gain |"]
    out.append("|---|---|---|---|---|")
    for f in cf["folds"]:
        h = f["headline"] or {}
        out.append(
            f"| {f['fold']} | {f['n_queries']} | {h.get('best_fixed_arm', 'n/a')} | "
            f"{_fmt(h.get('energy_saved_at_equal_accuracy'), True)} | "
            f"{_fmt(h.get('accuracy_gain_at_equal_energy'), True)} |"
        )
    s = cf["spread"].get("energy_saved_at_equal_accuracy")
    if s:
        out += ["", f"Spread of the saving over folds: {_fmt(s['min'], True)} to {_fmt(s['max'], True)}, "]
        out[-1] += f"sd {_fmt(s['sd'], True)} ({s['n_folds_defined']} folds where it is defined)."
    return [*out, ""]


def _allocators(report: Mapping[str, Any], src: str, label: str) -> list[str]:
    out = [f"![Frontiers]({PARETO_PNG})", "", "## Allocators", ""]
    out += [f"| allocator | points | best accuracy | its mean energy (J, {label}) | charged policy cost |"]
    out.append("|---|---|---|---|---|")
    for name, c in report["curves"].items():
        e_key = tagged("mean_energy_j", src)
        best = max(c["points"], key=lambda p: (p["n_correct"] / p["n_answers"], -p[e_key]))
        out.append(
            f"| {name} | {c['n_points']} | {_fmt(best['accuracy'])} | {_fmt(best[e_key])} | "
            f"{'yes' if c['charged_overhead'] else 'no'} |"
        )
    out += [f"| {name} | skipped: {why} | | | |" for name, why in report["allocators_skipped"].items()]
    return [*out, ""]


def _finding1(report: Mapping[str, Any], src: str) -> list[str]:
    out = ["## The paper's findings on this data", "", "### 1. Test-time compute vs model scaling, per task", ""]
    out += [
        "| task | kind | small best arm within big arm's joules | accuracy gain at equal energy | "
        "energy saved at equal accuracy | verdict | paper expects | agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, e in report["per_task"].items():
        t = e.get("ttc_vs_scaling")
        if t is not None:
            out.append(
                f"| {task} | {e['kind']} | {t['small_best_arm_within_big_joules']} | "
                f"{_fmt(t[tagged('accuracy_gain_at_big_energy', src)], True)} | "
                f"{_fmt(t[tagged('energy_saved_at_big_accuracy', src)], True)} | {t['verdict']} | "
                f"{t['paper_expects'] or 'n/a'} | {_fmt(t['agrees_with_paper'])} |"
            )
    if report["models"]["big"] is None:
        out.append("| not checked: the grid has one model | | | | | | | |")
    f1 = report["findings"]["1_ttc_vs_model_scaling"]
    out += [
        "",
        f"Agreeing with the paper: {', '.join(f1['tasks_agreeing_with_paper']) or 'none'}. "
        f"Disagreeing: {', '.join(f1['tasks_disagreeing_with_paper']) or 'none'}. "
        f"Inconclusive (tie within the intervals, or unknown kind): {', '.join(f1['tasks_inconclusive']) or 'none'}.",
        "",
    ]
    return out


def _finding2(report: Mapping[str, Any], src: str, label: str) -> list[str]:
    out = ["### 2. Output length (n=1 arms, all tasks)", "", f"![Output length]({LENGTH_PNG})", ""]
    out += [f"| model | decoding | L | accuracy | mean energy (J, {label}) | mean output tokens | no answer |"]
    out.append("|---|---|---|---|---|---|---|")
    for r in report["length_overall"]:
        out.append(
            f"| {r['model']} | {r['decoding']} | {r['max_new_tokens']} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r[tagged('mean_energy_j', src)])} | {_fmt(r['mean_output_tokens'])} | "
            f"{_fmt(r['no_answer_rate'], True)} |"
        )
    return [*out, ""]


def _finding3(report: Mapping[str, Any]) -> list[str]:
    out = ["### 3. Query-aware allocation, per task", ""]
    out += ["| task | held-out queries | energy saved at equal accuracy | accuracy gain at equal energy |"]
    out.append("|---|---|---|---|")
    for task, e in report["per_task"].items():
        s = e.get("allocation_saving") or {}
        out.append(
            f"| {task} | {e['n_test_queries']} | {_fmt(s.get('energy_saved_at_equal_accuracy'), True)} | "
            f"{_fmt(s.get('accuracy_gain_at_equal_energy'), True)} |"
        )
    return [*out, ""]


def _notes(report: Mapping[str, Any], src: str) -> list[str]:
    ov = report.get("learned_overhead")
    out = ["## Notes", ""]
    if ov:
        out.append(
            f"- {', '.join(ov['charged_to']) or 'No allocator'} are charged {_fmt(ov.get(tagged('per_query_j', src)))}"
            f" J per query for features, predictions and probe ({ov['source']}: {ov['meter']} meter)."
            + (f" The probe's share is charged only where the chosen arm runs another model than {ov['probe_model']}"
               " (on that model generation reuses the probe's prefill)." if ov.get("probe_model") else "")
        )  # fmt: skip
    out += [
        "- The oracle is not charged any policy cost; it bounds every one-arm-per-query allocator from above.",
        "- Random arms are matched to each learned point's mean joules (policy cost included).",
        "- early_stopping, adaptive_consistency and esc replay the collected samples in their order and are "
        "charged the joules of the samples they drew.",
        "- Findings 1 and 2 use every query with outcomes for all arms; the headline and finding 3 use the "
        "held-out queries (all of them when cross-fitted).",
        "",
    ]
    return out


def write_markdown(report: Mapping[str, Any], path: Path) -> Path:
    src, label = report["energy"]["source"], report["energy"]["label"]
    lines = _intro(report) + _headline(report.get("headline"), label) + _folds(report.get("cross_fitting"))
    lines += _discrimination(report.get("within_task_auc"), src, label)
    lines += _allocators(report, src, label) + _finding1(report, src) + _finding2(report, src, label)
    lines += _finding3(report) + _notes(report, src)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_assignments(curves: Mapping[str, Curve], query_ids: Sequence[str], path: Path, source: str) -> Path:
    """Per (allocator, point, query): the chosen arm, its realised correctness (of `draws`) and joules."""
    energy_col = tagged("energy_j", source)
    frames = [
        pd.DataFrame(
            {
                "allocator": name,
                "point": i,
                "label": p.label,
                "query_id": list(query_ids),
                "arm_id": list(p.arm_ids),
                "correct": p.correct,
                "draws": p.draws,
                energy_col: p.energy_j,
            }
        )
        for name, c in curves.items()
        for i, p in enumerate(c.points)
    ]
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def write_outputs(
    report: dict[str, Any], curves: Mapping[str, Curve], query_ids: Sequence[str], out_dir: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Plots, assignments, JSON and Markdown into `out_dir`; returns their paths by kind and the JSON document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src, meter = report["energy"]["source"], report["energy"]["meter"]
    report["files"] = {}
    doc = to_document(report)
    paths = {
        "pareto_png": plot_pareto(curves, out_dir / PARETO_PNG, axis_label(src, meter)),
        "length_png": plot_length(doc["length_overall"], doc["per_task"], out_dir / LENGTH_PNG, src, meter),
        "assignments": write_assignments(curves, query_ids, out_dir / ASSIGNMENTS_NAME, src),
        "json": out_dir / JSON_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
    }
    report["files"] = doc["files"] = {k: p.name for k, p in paths.items()}
    paths["json"].write_text(json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    write_markdown(doc, paths["markdown"])
    return paths, doc
