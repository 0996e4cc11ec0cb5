"""Properties of eval's arithmetic that need no policy: exact scoring and ties, the convex frontier,
the headline dataclass, the peer stopping rules replayed by hand, and the cross-fitting folds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from eval.allocators import (
    EvalContext,
    OperatingPoint,
    Outcomes,
    ac_samples,
    beta_confidence,
    esc_window,
    run_allocators,
)
from eval.allocators.base import Curve
from eval.allocators.peers import AdaptiveConsistencyAllocator, ESCAllocator
from eval.crossfit import query_folds, task_folds
from eval.headline import JOULES, Headline, HeadlineInputs, compute_headline
from eval.metrics import (
    Interval,
    accuracy_at_energy,
    best_point,
    convex_frontier,
    energy_at_accuracy,
    frontier_of,
)
from policy.errors import UsageError

GREEDY, SAMPLED, BIG = "smollm2-135m/n1/L32/greedy", "smollm2-135m/n1/L32/t0.7", "gemma3-270m/n1/L64/greedy"


# ---------------------------------------------------------------- exact scoring: the tie of the issue


def _tie_outcomes(order: str, reverse_columns: bool) -> Outcomes:
    """29 queries; the greedy and t0.7 arms both get 16 right (greedy is cheaper); a costlier arm gets 14."""
    rng = np.random.default_rng(7)
    n = 29
    correct = np.zeros((n, 3), dtype=np.int64)
    correct[rng.permutation(n)[:16], 0] = 1
    correct[rng.permutation(n)[:16], 1] = 1
    correct[rng.permutation(n)[:14], 2] = 1
    energy = np.stack([rng.uniform(4.0, 6.0, n), rng.uniform(4.5, 6.5, n), rng.uniform(20.0, 30.0, n)], axis=1)
    arms = [GREEDY, SAMPLED, BIG]
    if reverse_columns:
        correct, energy, arms = correct[:, ::-1], energy[:, ::-1], arms[::-1]
    layout = np.asfortranarray if order == "F" else np.ascontiguousarray
    ids = np.asarray([f"t:{i}" for i in range(n)], dtype=object)
    return Outcomes(
        ids,
        np.asarray(["t"] * n, dtype=object),
        [""] * n,
        arms,
        layout(correct),
        layout(energy),
        layout(np.ones((n, 3))),
        layout(np.ones((n, 3), dtype=bool)),
    )


def _tie_headline(order: str, reverse_columns: bool) -> Headline:
    out = _tie_outcomes(order, reverse_columns)
    fixed = run_allocators(EvalContext(test=out), ["fixed"])[0]["fixed"]
    # a "learned" curve: the greedy arm for most queries, the big arm for every third query
    col = {a: j for j, a in enumerate(out.arm_ids)}
    rows = np.arange(out.n_queries)
    pts = []
    for every in (0, 5, 3, 2):
        idx = np.full(out.n_queries, col[GREEDY])
        if every:
            idx[::every] = col[BIG]
        pts.append(OperatingPoint(f"every {every}", {}, out.correct[rows, idx], out.energy_j[rows, idx], ()))
    x = HeadlineInputs(Curve("learned", pts).data(), fixed.data(), [p.label for p in fixed.points])
    return compute_headline(x, "estimated", n_boot=50, seed=0)


def test_tied_arms_give_the_same_reference_arm_and_headline_in_every_memory_layout():
    """Two arms with 16 of 29 right: the cheaper (greedy) is the reference, whatever the layout or column order."""
    heads = [_tie_headline(order, rev) for order in ("C", "F") for rev in (False, True)]
    assert {h.best_fixed_arm for h in heads} == {GREEDY}
    assert all(h.to_json() == heads[0].to_json() for h in heads)
    assert heads[0].best_fixed_accuracy.point == 16 / 29


def test_best_point_breaks_ties_by_energy_then_id():
    assert best_point([2.0, 1.0, 1.0], [5, 5, 5], ["b", "c", "a"]) == 2
    assert best_point([2.0, 1.0], [6, 5]) == 0
    assert best_point([1.0, 1.0], [5, 5], ["z", "y"]) == 1


def test_accuracies_are_exact_fractions_of_hits():
    p = OperatingPoint("x", {}, np.array([3, 0, 2]), np.zeros(3), (), draws=4)
    assert p.hits == 5 and p.accuracy_exact.numerator == 5 and p.accuracy_exact.denominator == 12


# ---------------------------------------------------------------- one frontier rule: the convex hull


def test_convex_frontier_drops_points_under_a_chord():
    e, hits = [1.0, 2.0, 3.0, 2.5], [1, 2, 5, 1]
    # (2, 2) lies under the chord from (1, 1) to (3, 5); (2.5, 1) is dominated
    assert convex_frontier(e, hits).tolist() == [0, 2]


def test_adding_a_point_never_makes_a_frontier_worse():
    """Any added point (dominated, non-convex or not) leaves the curve at least as good everywhere."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 8))
        e, h = rng.uniform(1, 10, k), rng.integers(0, 30, k)
        e2, h2 = np.append(e, rng.uniform(0.5, 12)), np.append(h, rng.integers(0, 30))
        fe, fa = frontier_of(e, h, 30)
        ge, ga = frontier_of(e2, h2, 30)
        for a in np.linspace(0, 1, 31):
            old, new = energy_at_accuracy(fe, fa, a), energy_at_accuracy(ge, ga, a)
            assert math.isnan(old) or new <= old + 1e-9
        for j in np.linspace(0.5, 12, 40):
            old, new = accuracy_at_energy(fe, fa, j), accuracy_at_energy(ge, ga, j)
            assert math.isnan(old) or new >= old - 1e-12


# ---------------------------------------------------------------- the headline dataclass


def test_headline_keys_and_metric_names_come_from_its_field_names():
    iv = Interval(0.25, 0.1, 0.4, 10, 10)
    h = Headline("measured", 10, "a", energy_saved_at_equal_accuracy=iv, accuracy_gain_at_equal_energy=iv)
    doc = h.to_json()
    assert set(doc) == {f.name for f in dataclasses.fields(h)}
    assert doc["energy_source"] == "measured" and doc["energy_saved_at_equal_accuracy"]["point"] == 0.25
    m = h.mlflow_metrics()
    assert m["energy_measured/energy_saved_at_equal_accuracy"] == 0.25
    assert m["energy_measured/energy_saved_at_equal_accuracy_low"] == 0.1
    assert m["accuracy/accuracy_gain_at_equal_energy_high"] == 0.4
    joules = {f.name for f in dataclasses.fields(h) if f.metadata == JOULES}
    assert "accuracy_gain_at_equal_energy" not in joules and "best_fixed_energy_j" in joules


# ---------------------------------------------------------------- peer rules, replayed by hand


def _beta_tail_by_hand(a: int, b: int) -> float:
    """1 - I_0.5(a+1, b+1) for integers: P(Binomial(a+b+1, 1/2) <= a)."""
    n = a + b + 1
    return sum(math.comb(n, j) for j in range(a + 1)) / 2**n


@pytest.mark.parametrize("a, b", [(3, 0), (4, 0), (6, 1), (7, 2), (2, 1), (5, 3)])
def test_beta_confidence_matches_the_binomial_identity(a, b):
    assert beta_confidence(a, b) == pytest.approx(_beta_tail_by_hand(a, b), abs=1e-12)


def test_adaptive_consistency_stops_after_four_unanimous_samples_at_095_not_three():
    assert _beta_tail_by_hand(3, 0) == 15 / 16 < 0.95  # 0.9375
    assert _beta_tail_by_hand(4, 0) == 31 / 32 >= 0.95  # 0.96875
    assert ac_samples(["7"] * 8, 0.95, 8) == 4
    assert _beta_tail_by_hand(6, 1) == 1 - 9 / 256 >= 0.95  # counts (6, 1) stop
    assert _beta_tail_by_hand(7, 2) == 1 - 56 / 1024 < 0.95  # counts (7, 2) do not
    # 7 7 3 7 7 7 7: counts (6, 1) first reached at the 7th sample
    assert ac_samples(["7", "7", "3", "7", "7", "7", "7", "7"], 0.95, 8) == 7
    # never confident: returns the last available sample
    assert ac_samples(["1", "2", "1", "2", "1", "2"], 0.95, 8) == 6


def test_esc_stops_at_the_first_unanimous_window_and_answers_with_it():
    assert esc_window(["1", "2", "3", "3", "5", "5"], 2, 8) == (4, 2)
    assert esc_window(["1", "2", "3", "4"], 2, 4) == (4, None)
    assert esc_window(list("abcdefgh"), 3, 8) == (6, None)  # only whole windows are drawn
    assert esc_window([None, None, "4"], 2, 8) == (2, 0)  # unparsed answers agree too, as in their code
    # the unanimous window answers, even against the majority of everything drawn (a: 4, d: 3)
    answers = ["a", "a", "b", "a", "a", "c", "d", "d", "d"]
    oks = [a == "d" for a in answers]
    stop = ESCAllocator().decide(answers, oks, 9, 3)
    assert stop.samples_used == 9 and stop.correct is True
    stop = AdaptiveConsistencyAllocator().decide(answers, oks, 9, 0.95)
    assert stop.samples_used == 9 and stop.correct is False  # majority a


# ---------------------------------------------------------------- cross-fitting folds


def test_query_folds_hold_out_every_query_exactly_once_balanced_and_seeded():
    ids = [f"q:{i}" for i in range(103)]
    folds = query_folds(ids, 5, seed=0)
    held = [q for f in folds for q in f.test_query_ids]
    assert sorted(held) == sorted(ids) and len(held) == len(set(held))
    assert {len(f.test_query_ids) for f in folds} <= {20, 21}
    assert query_folds(list(reversed(ids)), 5, seed=0) == folds
    assert query_folds(ids, 5, seed=1) != folds
    with pytest.raises(UsageError, match="folds"):
        query_folds(ids, 1, seed=0)


def test_task_folds_leave_one_task_out():
    ids, tasks = ["a:1", "a:2", "b:1", "c:1"], ["a", "a", "b", "c"]
    folds = task_folds(ids, tasks)
    assert [(f.name, f.test_query_ids) for f in folds] == [("a", ("a:1", "a:2")), ("b", ("b:1",)), ("c", ("c:1",))]
    with pytest.raises(UsageError, match="two tasks"):
        task_folds(["a:1"], ["a"])


def test_learned_minus_peer_is_the_paired_difference_of_the_two_savings():
    """A peer that is the learned curve shifted to cost 10% more: the paired difference is exactly the gap,
    in every resample (same queries on both sides), so its interval is one point."""
    out = _tie_outcomes("C", False)
    fixed = run_allocators(EvalContext(test=out), ["fixed"])[0]["fixed"]
    learned = fixed.data().subset(np.arange(out.n_queries))
    peer = dataclasses.replace(learned, energy_j=learned.energy_j * 1.1)
    x = HeadlineInputs(learned, fixed.data(), [p.label for p in fixed.points], peers={"esc": peer})
    h = compute_headline(x, "estimated", n_boot=30, seed=1)
    (c,) = h.peers
    saved = h.energy_saved_at_equal_accuracy.point
    assert saved == pytest.approx(0.0, abs=1e-12)  # learned = fixed here: no saving
    assert c.peer_energy_saved_at_equal_accuracy.point == pytest.approx(-0.1)
    assert c.learned_minus_peer_energy_saved.point == pytest.approx(0.1)
    assert c.learned_minus_peer_energy_saved.width == pytest.approx(0.0, abs=1e-9)
