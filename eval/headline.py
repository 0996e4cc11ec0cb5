"""The headline numbers: one frozen dataclass whose fields are the figures, computed with paired bootstrap intervals.

A figure keeps one name from where it is computed to where it is shown: the
`Headline` field name is the JSON key (the headline object carries its
`energy_source` beside the figures) and the MLflow metric name is derived from
it once, in `mlflow_metrics`, at the output edge. Fields whose metadata marks
them `JOULES` are made from joules; their MLflow names sit under
`energy_<source>/` because estimated and measured joules are not alike.

All figures are "learned vs a reference" on the same queries: every resample
draws the same queries for the learned curve, the best fixed arm, the oracle,
model scaling, each peer rule, the per-task table and the soft oracle (a
paired bootstrap). The per-task table (issue 18's yardstick) is read at its
frontier's top point: "at equal energy" is the table's top-point joules, where
each contender's accuracy minus the table's top accuracy is its gain, and its
share of the soft oracle's gain is that gain over the soft oracle's at the same
joules (`VsPerTask`, one per allocator that is not a reference). The best fixed arm is
chosen once, on the queries as drawn, by exact hit counts (ties: cheaper, then
arm id; see eval.metrics.best_point). numpy only; never logs or writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from eval.metrics import (
    CurveData,
    Interval,
    accuracy_at_energy,
    best_point,
    bootstrap,
    energy_at_accuracy,
    exact_mean,
    saved_fraction,
)

#: Field metadata of a figure made from joules (its MLflow name sits under energy_<source>/).
JOULES = {"joules": True}
#: The published early-stopping rules the learned policy is compared with, beside our early_stopping.
PEER_RULES = ("early_stopping", "adaptive_consistency", "esc")
#: The curves that are references, not contenders: no share of the soft oracle's gain is reported for them.
REFERENCES = ("learned", "fixed", "model_scaling", "oracle", "soft_oracle", "per_task")


def _figure(joules: bool = False) -> Any:
    return field(default=None, metadata=JOULES if joules else {})


@dataclass(frozen=True)
class PeerComparison:
    """The learned curve against one sequential-sampling rule, at the best fixed arm's accuracy and energy."""

    peer: str
    #: the peer's own saving vs the best fixed arm at its accuracy
    peer_energy_saved_at_equal_accuracy: Interval | None = _figure(joules=True)
    #: learned saving minus the peer's saving, both at the best fixed arm's accuracy (paired)
    learned_minus_peer_energy_saved: Interval | None = _figure(joules=True)
    #: learned accuracy minus the peer's accuracy, both at the best fixed arm's joules (paired)
    learned_minus_peer_accuracy_at_equal_energy: Interval | None = _figure()


@dataclass(frozen=True)
class VsPerTask:
    """One allocator against the per-task table at the table's top-point joules (issue 18's yardstick)."""

    allocator: str
    #: its accuracy minus the per-task table's top accuracy, at the table's top-point joules (paired)
    minus_per_task_accuracy_at_equal_energy: Interval | None = _figure()
    #: that gain over the soft oracle's gain over the table, at the same joules
    share_of_soft_oracle_gain: Interval | None = _figure()


@dataclass(frozen=True)
class Headline:
    """The headline figures on one set of queries (all, one fold, or one task), each with its 95% interval."""

    energy_source: str
    n_queries: int
    best_fixed_arm: str
    model_scaling_reference_arm: str | None = None
    energy_saved_at_equal_accuracy: Interval | None = _figure(joules=True)
    accuracy_gain_at_equal_energy: Interval | None = _figure()
    learned_energy_at_best_fixed_accuracy_j: Interval | None = _figure(joules=True)
    best_fixed_energy_j: Interval | None = _figure(joules=True)
    best_fixed_accuracy: Interval | None = _figure()
    #: the top of the learned frontier: when below best_fixed_accuracy, the equal-accuracy saving is undefined
    learned_top_accuracy: Interval | None = _figure()
    learned_energy_per_correct_j: Interval | None = _figure(joules=True)
    best_fixed_energy_per_correct_j: Interval | None = _figure(joules=True)
    oracle_energy_saved_at_equal_accuracy: Interval | None = _figure(joules=True)
    oracle_share_of_energy_saving: Interval | None = _figure(joules=True)
    oracle_accuracy: Interval | None = _figure()
    model_scaling_energy_j: Interval | None = _figure(joules=True)
    model_scaling_accuracy: Interval | None = _figure()
    energy_saved_vs_model_scaling: Interval | None = _figure(joules=True)
    #: the per-task table's own saving vs the best fixed arm at its accuracy
    per_task_energy_saved_at_equal_accuracy: Interval | None = _figure(joules=True)
    #: learned saving minus the per-task table's, both at the best fixed arm's accuracy (paired)
    learned_minus_per_task_energy_saved: Interval | None = _figure(joules=True)
    #: the per-task table's frontier top: its best accuracy and the joules it takes ("the table's energy")
    per_task_top_accuracy: Interval | None = _figure()
    per_task_top_energy_j: Interval | None = _figure(joules=True)
    #: learned accuracy minus the table's top accuracy, at the table's top-point joules (paired)
    learned_minus_per_task_accuracy_at_equal_energy: Interval | None = _figure()
    #: 1 - learned joules / the table's joules, at the table's top accuracy
    energy_saved_vs_per_task: Interval | None = _figure(joules=True)
    #: the soft oracle (expected accuracy) at the table's top-point joules, and at its own top
    soft_oracle_accuracy_at_per_task_energy: Interval | None = _figure()
    soft_oracle_top_accuracy: Interval | None = _figure()
    #: learned's gain over the table / the soft oracle's gain over the table, at the table's top-point joules
    share_of_soft_oracle_gain: Interval | None = _figure()
    peers: tuple[PeerComparison, ...] = ()
    #: every other allocator against the per-task table (same figures as the learned ones above)
    vs_per_task: tuple[VsPerTask, ...] = ()

    def figures(self) -> dict[str, Interval | None]:
        """Every interval field by its name (peers excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata is not None and _is_figure(f)}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: keys are the field names; peers keyed by rule name."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "peers":
                out["peers"] = {p.peer: {g.name: _json(getattr(p, g.name)) for g in fields(p)} for p in v}
            elif f.name == "vs_per_task":
                out[f.name] = {c.allocator: {g.name: _json(getattr(c, g.name)) for g in fields(c)} for c in v}
            else:
                out[f.name] = _json(v)
        return out

    def mlflow_metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow metrics derived from the field names: `energy_<source>/<field>` for joule figures,
        `accuracy/<field>` otherwise, with `_low`/`_high` for the interval ends; undefined ends omitted."""
        out: dict[str, float] = {}
        rows = [(f, getattr(self, f.name), "") for f in fields(self) if _is_figure(f)]
        rows += [(g, getattr(p, g.name), f"{p.peer}/") for p in self.peers for g in fields(p) if _is_figure(g)]
        rows += [
            (g, getattr(c, g.name), f"vs_per_task/{c.allocator}/")
            for c in self.vs_per_task
            for g in fields(c)
            if _is_figure(g)
        ]
        for f, iv, sub in rows:
            if iv is None:
                continue
            group = f"energy_{self.energy_source}" if f.metadata.get("joules") else "accuracy"
            for suffix, v in (("", iv.point), ("_low", iv.low), ("_high", iv.high)):
                if math.isfinite(v):
                    out[f"{prefix}{group}/{sub}{f.name}{suffix}"] = float(v)
        return out


def _is_figure(f: Any) -> bool:
    return "Interval" in str(f.type) and f.name != "peers"


def _json(v: Any) -> Any:
    if isinstance(v, Interval):
        return v.to_dict()
    return v


# ---------------------------------------------------------------- the statistics


@dataclass(frozen=True, eq=False)
class HeadlineInputs:
    """Per-query outcomes of the curves the headline compares, restricted to one set of queries."""

    learned: CurveData
    fixed: CurveData
    fixed_ids: Sequence[str]
    oracle: CurveData | None = None
    scaling_ref: CurveData | None = None
    peers: Mapping[str, CurveData] = field(default_factory=dict)
    per_task: CurveData | None = None
    soft_oracle: CurveData | None = None
    #: the allocators compared with the per-task table beside learned (VsPerTask)
    contenders: Mapping[str, CurveData] = field(default_factory=dict)

    def best_fixed(self) -> int:
        """The reference arm: most hits on the queries as drawn, then cheapest (exact sums), then arm id."""
        return best_point(exact_mean(self.fixed.energy_j), self.fixed.correct.sum(axis=1), self.fixed_ids)


def headline_stats(x: HeadlineInputs, best: int, counts: np.ndarray) -> dict[Any, float]:
    """The headline figures under query draw `counts`, keyed by Headline field name ((peer, field) for peers).

    The learned, oracle and peer frontiers are recomputed on every resample;
    the best fixed arm stays the one chosen on the queries as drawn (near-tied
    arms of very different cost would otherwise swap places between resamples
    and the interval would measure the swap, not the saving).
    """
    le, la = x.learned.frontier(counts)
    fe, fhits, fden = x.fixed.means(counts)
    best_e, best_a = float(fe[best]), float(fhits[best]) / fden
    learned_e = energy_at_accuracy(le, la, best_a)
    saved = saved_fraction(learned_e, best_e)
    learned_a_at_e = accuracy_at_energy(le, la, best_e)
    out: dict[Any, float] = {
        "energy_saved_at_equal_accuracy": saved,
        "accuracy_gain_at_equal_energy": learned_a_at_e - best_a,
        "learned_energy_at_best_fixed_accuracy_j": learned_e,
        "best_fixed_energy_j": best_e,
        "best_fixed_accuracy": best_a,
        "learned_top_accuracy": float(la[-1]),
        "learned_energy_per_correct_j": learned_e / best_a if best_a > 0 else math.nan,
        "best_fixed_energy_per_correct_j": best_e / best_a if best_a > 0 else math.nan,
    }
    if x.oracle is not None:
        oe, oa = x.oracle.frontier(counts)
        oracle_saved = saved_fraction(energy_at_accuracy(oe, oa, best_a), best_e)
        out["oracle_energy_saved_at_equal_accuracy"] = oracle_saved
        out["oracle_share_of_energy_saving"] = saved / oracle_saved if oracle_saved > 1e-12 else math.nan
        out["oracle_accuracy"] = float(oa[-1])
    if x.scaling_ref is not None:
        se, shits, sden = x.scaling_ref.means(counts)
        s_acc = float(shits[0]) / sden
        out["model_scaling_energy_j"] = float(se[0])
        out["model_scaling_accuracy"] = s_acc
        out["energy_saved_vs_model_scaling"] = saved_fraction(energy_at_accuracy(le, la, s_acc), float(se[0]))
    if x.per_task is not None:
        out.update(_vs_per_task(x, counts, le, la, saved, best_a, best_e))
    for name, peer in x.peers.items():
        pe, pa = peer.frontier(counts)
        peer_saved = saved_fraction(energy_at_accuracy(pe, pa, best_a), best_e)
        out[(name, "peer_energy_saved_at_equal_accuracy")] = peer_saved
        out[(name, "learned_minus_peer_energy_saved")] = saved - peer_saved
        out[(name, "learned_minus_peer_accuracy_at_equal_energy")] = learned_a_at_e - accuracy_at_energy(pe, pa, best_e)
    return out


def _share(gain: float, ceiling: float) -> float:
    return gain / ceiling if math.isfinite(gain) and math.isfinite(ceiling) and ceiling > 1e-12 else math.nan


def _vs_per_task(
    x: HeadlineInputs, counts: np.ndarray, le: np.ndarray, la: np.ndarray, saved: float, best_a: float, best_e: float
) -> dict[Any, float]:
    """The per-task table's figures, and each curve's gain over it at the table's top-point joules."""
    te, ta = x.per_task.frontier(counts)
    top_e, top_a = float(te[-1]), float(ta[-1])
    table_saved = saved_fraction(energy_at_accuracy(te, ta, best_a), best_e)
    out: dict[Any, float] = {
        "per_task_energy_saved_at_equal_accuracy": table_saved,
        "learned_minus_per_task_energy_saved": saved - table_saved,
        "per_task_top_accuracy": top_a,
        "per_task_top_energy_j": top_e,
        "energy_saved_vs_per_task": saved_fraction(energy_at_accuracy(le, la, top_a), top_e),
    }
    ceiling = math.nan
    if x.soft_oracle is not None:
        se, sa = x.soft_oracle.frontier(counts)
        soft_a = accuracy_at_energy(se, sa, top_e)
        out["soft_oracle_accuracy_at_per_task_energy"] = soft_a
        out["soft_oracle_top_accuracy"] = float(sa[-1])
        ceiling = soft_a - top_a
    gain = accuracy_at_energy(le, la, top_e) - top_a
    out["learned_minus_per_task_accuracy_at_equal_energy"] = gain
    if x.soft_oracle is not None:
        out["share_of_soft_oracle_gain"] = _share(gain, ceiling)
    for name, curve in x.contenders.items():
        ce, ca = curve.frontier(counts)
        g = accuracy_at_energy(ce, ca, top_e) - top_a
        out[(name, "minus_per_task_accuracy_at_equal_energy", "vs_per_task")] = g
        if x.soft_oracle is not None:
            out[(name, "share_of_soft_oracle_gain", "vs_per_task")] = _share(g, ceiling)
    return out


def compute_headline(
    x: HeadlineInputs,
    energy_source: str,
    n_boot: int,
    seed: int,
    scaling_arm: str | None = None,
) -> Headline:
    """The `Headline` of `x` with percentile intervals over `n_boot` paired resamples of its queries."""
    best = x.best_fixed()
    n = x.fixed.correct.shape[1]
    ivs = bootstrap(lambda c: headline_stats(x, best, c), n, n_boot, seed)
    peers = tuple(
        PeerComparison(
            name, **{k[1]: v for k, v in ivs.items() if isinstance(k, tuple) and len(k) == 2 and k[0] == name}
        )
        for name in x.peers
    )
    vs_per_task = tuple(
        VsPerTask(name, **{k[1]: v for k, v in ivs.items() if isinstance(k, tuple) and len(k) == 3 and k[0] == name})
        for name in x.contenders
        if x.per_task is not None
    )
    return Headline(
        energy_source=energy_source,
        n_queries=n,
        best_fixed_arm=str(x.fixed_ids[best]),
        model_scaling_reference_arm=scaling_arm,
        peers=peers,
        vs_per_task=vs_per_task,
        **{k: v for k, v in ivs.items() if isinstance(k, str)},
    )
