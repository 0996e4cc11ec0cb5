"""Properties of the allocation rule (policy/allocate.py) on small explicit and random instances."""

from __future__ import annotations

import numpy as np
import pytest

from policy.allocate import DecisionRule, allocate, allocate_budget, allocate_price
from policy.errors import UsageError
from policy.hulls import upper_hull

ARMS = [f"m/n{n}/L64/t0.7" for n in (1, 2, 4, 8, 16)]


def _random_instance(seed: int, nq: int = 30, na: int = 5) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    e = rng.uniform(1.0, 100.0, size=(nq, na))
    p = rng.uniform(0.0, 1.0, size=(nq, na))
    arms = [f"m/n{2**j}/L{32 * (j + 1)}/t0.7" for j in range(na)]
    return p, e, arms, [f"q{i}" for i in range(nq)]


def _by_id(arms: list[str], decisions) -> list[int]:
    return [arms.index(d.arm_id) for d in decisions]


def test_hull_drops_an_arm_that_costs_more_and_predicts_no_better():
    e = [1.0, 2.0, 3.0]
    p = [0.5, 0.5, 0.9]
    assert upper_hull(e, p) == [0, 2]


def test_hull_drops_a_point_under_the_chord_of_its_neighbours():
    e = [1.0, 2.0, 3.0]
    p = [0.1, 0.3, 0.9]  # slope 0.2 then 0.6: the middle point is concave-violating
    assert upper_hull(e, p) == [0, 2]


def test_hull_keeps_the_better_of_two_equally_expensive_arms():
    assert upper_hull([1.0, 1.0, 2.0], [0.2, 0.4, 0.5]) == [1, 2]


@pytest.mark.parametrize("seed", range(20))
def test_hull_slopes_strictly_decrease_and_energy_and_p_strictly_increase(seed):
    p, e, _, _ = _random_instance(seed, nq=1, na=12)
    h = upper_hull(e[0].tolist(), p[0].tolist())
    he, hp = e[0][h], p[0][h]
    assert np.all(np.diff(he) > 0) and np.all(np.diff(hp) > 0)
    slopes = np.diff(hp) / np.diff(he)
    assert np.all(np.diff(slopes) < 0)
    # every arm lies on or under the hull's piecewise-linear envelope
    for x, y in zip(e[0], p[0], strict=True):
        assert y <= np.interp(x, he, hp, left=-np.inf, right=hp[-1]) + 1e-12


@pytest.mark.parametrize("lam", [0.0, 1e-3, 5e-3, 2e-2, 1.0])
def test_price_choice_maximises_p_minus_lam_e_over_all_arms(lam):
    p, e, arms, qids = _random_instance(1)
    decisions = allocate_price(p, e, arms, qids, lam, p_floor=0.0)
    chosen = _by_id(arms, decisions)
    value = p - lam * e
    for q, j in enumerate(chosen):
        assert value[q, j] >= value[q].max() - 1e-12


def test_price_tie_goes_to_the_cheaper_arm():
    # p - 0.01 e: 0.5 - 0.1 = 0.4 and 0.6 - 0.2 = 0.4: a tie
    p = np.array([[0.5, 0.6]])
    e = np.array([[10.0, 20.0]])
    (d,) = allocate_price(p, e, ARMS[:2], ["q"], lam=0.01)
    assert d.arm_id == ARMS[0]


def test_equal_arms_break_ties_by_arm_order_deterministically():
    p = np.array([[0.7, 0.7, 0.7]])
    e = np.array([[5.0, 5.0, 5.0]])
    for _ in range(3):
        (d,) = allocate_price(p, e, ARMS[:3], ["q"], lam=0.0)
        assert d.arm_id == ARMS[0]


def test_price_never_picks_an_arm_that_costs_more_and_predicts_no_better():
    p = np.array([[0.4, 0.8, 0.8]])
    e = np.array([[1.0, 2.0, 50.0]])
    (d,) = allocate_price(p, e, ARMS[:3], ["q"], lam=0.0)
    assert d.arm_id == ARMS[1]


def test_zero_price_gives_the_best_arm_and_a_huge_price_the_cheapest():
    p, e, arms, qids = _random_instance(2)
    top = allocate_price(p, e, arms, qids, 0.0, p_floor=0.0)
    cheap = allocate_price(p, e, arms, qids, 1e9, p_floor=0.0)
    for q in range(len(qids)):
        assert top[q].p_success == p[q].max()
        assert cheap[q].energy_j == e[q].min()


def test_price_stops_where_the_next_hull_move_is_worth_no_more_than_the_price():
    p, e, arms, qids = _random_instance(3)
    lam = 0.004
    for d in allocate_price(p, e, arms, qids, lam, p_floor=0.0):
        if d.next_arm_id is None:
            continue
        j = arms.index(d.next_arm_id)
        q = int(d.query_id[1:])
        assert e[q, j] > d.energy_j and p[q, j] > d.p_success
        assert d.marginal_acc_per_j == pytest.approx((p[q, j] - d.p_success) / (e[q, j] - d.energy_j))
        assert d.marginal_acc_per_j <= lam


def test_decisions_do_not_depend_on_the_order_of_the_arm_columns():
    p, e, arms, qids = _random_instance(4)
    perm = np.random.default_rng(0).permutation(len(arms))
    a = allocate_price(p, e, arms, qids, 0.003)
    b = allocate_price(p[:, perm], e[:, perm], [arms[i] for i in perm], qids, 0.003)
    assert [d.arm_id for d in a] == [d.arm_id for d in b]
    a = allocate_budget(p, e, arms, qids, budget_j=30.0)
    b = allocate_budget(p[:, perm], e[:, perm], [arms[i] for i in perm], qids, budget_j=30.0)
    assert [d.arm_id for d in a] == [d.arm_id for d in b]


@pytest.mark.parametrize("mode", ["price", "budget"])
def test_hopeless_query_gets_its_cheapest_arm(mode):
    p = np.array([[0.01, 0.02, 0.04], [0.3, 0.6, 0.9]])
    e = np.array([[3.0, 1.0, 9.0], [1.0, 2.0, 4.0]])
    rule = DecisionRule(mode, lam=0.0, budget_j=100.0 if mode == "budget" else None, p_floor=0.05)
    d0, d1 = allocate(p, e, ARMS[:3], ["a", "b"], rule)
    assert (d0.arm_id, d0.rule) == (ARMS[1], "hopeless")
    assert d1.rule == mode and d1.arm_id == ARMS[2]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("factor", [1.0, 1.3, 2.0, 3.0])
def test_budget_mean_energy_stays_within_the_budget(seed, factor):
    p, e, arms, qids = _random_instance(seed)
    budget_j = factor * e.min(axis=1).mean()
    decisions = allocate_budget(p, e, arms, qids, budget_j=budget_j, p_floor=0.0)
    assert np.mean([d.energy_j for d in decisions]) <= budget_j * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_budget_leaves_no_affordable_hull_move_untaken(seed):
    p, e, arms, qids = _random_instance(seed)
    budget_j = 35.0
    decisions = allocate_budget(p, e, arms, qids, budget_j=budget_j, p_floor=0.0)
    left = budget_j * len(qids) - sum(d.energy_j for d in decisions)
    assert left >= -1e-6
    for q, d in enumerate(decisions):
        if d.next_arm_id is not None:
            assert e[q, arms.index(d.next_arm_id)] - d.energy_j > left


@pytest.mark.parametrize("seed", range(6))
def test_budget_beats_every_price_allocation_that_fits_the_same_budget(seed):
    p, e, arms, qids = _random_instance(seed)
    budget_j = 30.0
    best = sum(d.p_success for d in allocate_budget(p, e, arms, qids, budget_j=budget_j, p_floor=0.0))
    for lam in np.geomspace(1e-5, 1.0, 60):
        price = allocate_price(p, e, arms, qids, float(lam), p_floor=0.0)
        if np.mean([d.energy_j for d in price]) <= budget_j:
            assert best >= sum(d.p_success for d in price) - 1e-9


def test_budget_and_the_same_total_budget_agree():
    p, e, arms, qids = _random_instance(5)
    a = allocate_budget(p, e, arms, qids, budget_j=33.0)
    b = allocate_budget(p, e, arms, qids, total_budget_j=33.0 * len(qids))
    assert a == b


def test_budget_above_every_top_arm_gives_each_query_its_best_arm():
    p, e, arms, qids = _random_instance(6)
    decisions = allocate_budget(p, e, arms, qids, budget_j=1e6, p_floor=0.0)
    assert [d.p_success for d in decisions] == p.max(axis=1).tolist()
    assert all(d.lam == 0.0 for d in decisions)


def test_budget_equal_to_the_cheapest_arms_is_feasible():
    p, e, arms, qids = _random_instance(7)
    decisions = allocate_budget(p, e, arms, qids, total_budget_j=float(e.min(axis=1).sum()))
    assert [d.energy_j for d in decisions] == e.min(axis=1).tolist()


def test_infeasible_budget_names_the_minimum_feasible_budget():
    p, e, arms, qids = _random_instance(8)
    floor_mean = e.min(axis=1).mean()
    with pytest.raises(UsageError, match=rf"mean {floor_mean:.6g} J per query"):
        allocate_budget(p, e, arms, qids, budget_j=floor_mean * 0.5)


def test_infeasible_budget_with_the_cheapest_flag_returns_cheapest_arms():
    p, e, arms, qids = _random_instance(8)
    decisions = allocate_budget(p, e, arms, qids, budget_j=0.1, on_infeasible="cheapest", p_floor=0.0)
    assert [d.energy_j for d in decisions] == e.min(axis=1).tolist()
    assert all(d.rule == "budget" for d in decisions)


def test_budget_tie_between_queries_is_resolved_deterministically():
    # two identical queries, budget for one upgrade only: the first query gets it, every time
    p = np.array([[0.2, 0.8], [0.2, 0.8]])
    e = np.array([[1.0, 5.0], [1.0, 5.0]])
    for _ in range(3):
        a, b = allocate_budget(p, e, ARMS[:2], ["a", "b"], total_budget_j=6.0)
        assert (a.arm_id, b.arm_id) == (ARMS[1], ARMS[0])


def test_decisions_are_returned_in_query_order_with_their_ids():
    p, e, arms, qids = _random_instance(9)
    for decisions in (allocate_price(p, e, arms, qids, 0.01), allocate_budget(p, e, arms, qids, budget_j=30.0)):
        assert [d.query_id for d in decisions] == qids


@pytest.mark.parametrize(
    "p, e, arms, qids, match",
    [
        (np.ones((2, 3)), np.ones((2, 2)), ARMS[:3], ["a", "b"], "one shape"),
        (np.ones((2, 3)), np.ones((2, 3)), ARMS[:2], ["a", "b"], "3 arm columns"),
        (np.ones((2, 3)), np.ones((2, 3)), ARMS[:3], ["a"], "2 query rows"),
        (np.full((1, 3), np.nan), np.ones((1, 3)), ARMS[:3], ["a"], "NaN"),
        (np.full((1, 3), 1.5), np.ones((1, 3)), ARMS[:3], ["a"], r"\[0, 1\]"),
        (np.ones((1, 2)), np.ones((1, 2)), [ARMS[0], ARMS[0]], ["a"], "unique"),
    ],
)
def test_bad_inputs_raise_usage_errors_that_say_what_is_wrong(p, e, arms, qids, match):
    with pytest.raises(UsageError, match=match):
        allocate_price(p, e, arms, qids, 0.01)


def test_decision_rule_rejects_unknown_modes_and_missing_budgets():
    with pytest.raises(UsageError, match="known: budget, price"):
        DecisionRule("cheapest")
    with pytest.raises(UsageError, match="budget_j"):
        DecisionRule("budget")
    with pytest.raises(UsageError, match="exactly one"):
        allocate_budget(np.ones((1, 1)) / 2, np.ones((1, 1)), ARMS[:1], ["a"])


def test_decision_rule_round_trips_through_a_dict():
    r = DecisionRule("budget", lam=0.0, budget_j=12.5, p_floor=0.1)
    assert DecisionRule.from_dict(r.to_dict()) == r


def test_a_gain_below_float_noise_never_buys_a_costlier_arm():
    from policy.hulls import P_TOL, upper_hull

    # ONNX and LightGBM differ by ~1e-7 and a calibration table can magnify that:
    # such a difference must not flip a decision towards spending more joules.
    assert upper_hull([1.0, 2.0], [0.5, 0.5 + P_TOL / 2]) == [0]
    assert upper_hull([1.0, 2.0], [0.5, 0.5 + 2 * P_TOL]) == [0, 1]


# ---------------------------------------------------------------- `ttc allocate` on a query file (streamed)


def _write(path, rows) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _queries(n: int = 40) -> list[dict]:
    from policy_fixtures import synthetic_questions

    questions, tasks, _ = synthetic_questions(n, seed=4)
    return [
        {"id": f"q{i}", "question": q, "task": "gsm8k"} for i, (q, t) in enumerate(zip(questions, tasks, strict=True))
    ]


@pytest.mark.parametrize("kwargs", [{}, {"lam": 0.001}, {"budget_j": 9.0}])
def test_streamed_allocation_in_small_chunks_equals_one_whole_batch(bundle_dir, kwargs):
    from policy.bundle import load_bundle
    from policy.stream import allocate_stream

    policy = load_bundle(bundle_dir)
    rows = _queries(40)
    whole = policy.allocate([r["question"] for r in rows], [r["task"] for r in rows], [r["id"] for r in rows], **kwargs)
    triples = [(r["id"], r["question"], r["task"]) for r in rows]
    assert list(allocate_stream(policy, triples, chunk=7, **kwargs)) == whole


def test_allocate_stage_writes_one_decision_per_query_in_input_order(bundle_dir, tmp_path):
    import json

    from ttc.bundle_stages import allocate_stage

    rows = _queries(30)
    n = allocate_stage(bundle_dir, _write(tmp_path / "q.jsonl", rows), tmp_path / "d.jsonl", budget_j=9.0)
    out = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert n == 30 and [d["query_id"] for d in out] == [r["id"] for r in rows]
    assert np.mean([d["energy_j"] for d in out]) <= 9.0 and {d["energy_source"] for d in out} == {"estimated"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "q.jsonl"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget_j": -1.0}, r"--budget-j .* got -1.0"),
        ({"budget_j": float("nan")}, r"--budget-j .* got nan"),
        ({"lam": -0.5}, r"--lam .* got -0.5"),
        ({"lam": 0.1, "budget_j": 5.0}, "not both"),
    ],
)
def test_a_bad_price_or_budget_is_refused_with_the_value_given(bundle_dir, tmp_path, kwargs, match):
    from ttc.bundle_stages import allocate_stage

    with pytest.raises(UsageError, match=match):
        allocate_stage(bundle_dir, _write(tmp_path / "q.jsonl", _queries(3)), tmp_path / "d.jsonl", **kwargs)
    assert not (tmp_path / "d.jsonl").exists()


def test_allocate_budget_names_the_mean_budget_given_not_the_total():
    p, e, arms, qids = _random_instance(0, nq=2)
    with pytest.raises(UsageError, match=r"budget_j .* got -1.0"):
        allocate_budget(p, e, arms, qids, budget_j=-1.0)


@pytest.mark.parametrize(
    "lines, match",
    [
        ([b'{"id": "a", "question": "1+1?"}', b'{"id": "a", "question": "2+2?"}'], "line 2 repeats id 'a' of line 1"),
        ([b'{"question": "1+1?", "task": 5}'], '"task" must be a task name string'),
        ([b'{"question": "1+1?", "id": [1]}'], '"id" must be a string or an integer'),
        ([b'{"question": "caf\xe9?"}'], "not UTF-8 text"),
        ([b'{"question": ""}'], 'no "question" string'),
        ([b""], "holds no queries"),
    ],
)
def test_bad_query_files_are_one_line_usage_errors(bundle_dir, tmp_path, lines, match):
    from ttc.bundle_stages import allocate_stage

    (tmp_path / "q.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UsageError, match=match) as err:
        allocate_stage(bundle_dir, tmp_path / "q.jsonl", tmp_path / "d.jsonl")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def test_an_unknown_task_is_warned_about_once_and_uses_the_unknown_task_features(bundle_dir, tmp_path):
    import json

    from ttc.bundle_stages import allocate_stage

    rows = _queries(6)
    for r in rows[:3]:
        r["task"] = "gsm8"
    rows[3]["task"] = "another-typo"
    warnings: list[str] = []
    allocate_stage(bundle_dir, _write(tmp_path / "q.jsonl", rows), tmp_path / "d.jsonl", warn=warnings.append)
    assert len(warnings) == 1 and "'gsm8'" in warnings[0] and "gsm8k" in warnings[0]
    as_none = [{**r, "task": None} if r["task"] != "gsm8k" else r for r in rows]
    allocate_stage(bundle_dir, _write(tmp_path / "n.jsonl", as_none), tmp_path / "n_out.jsonl", warn=warnings.append)
    assert len(warnings) == 1
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert read(tmp_path / "d.jsonl") == read(tmp_path / "n_out.jsonl")


def test_an_output_that_is_a_folder_is_refused_and_leaves_no_temp_file(bundle_dir, tmp_path):
    from ttc.bundle_stages import allocate_stage

    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        allocate_stage(bundle_dir, _write(tmp_path / "q.jsonl", _queries(3)), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out", "q.jsonl"]


@pytest.mark.parametrize(
    "args",
    [["--budget-j", "-1"], ["--output", "{tmp}"], ["--input", "{tmp}/missing.jsonl"], ["--backend", "tensorrt"]],
)
def test_the_cli_turns_bad_allocate_input_into_exit_2_and_one_line(bundle_dir, tmp_path, args):
    from typer.testing import CliRunner

    from ttc.cli import app

    q = _write(tmp_path / "q.jsonl", _queries(3))
    base = {"--bundle": str(bundle_dir), "--input": q, "--output": str(tmp_path / "d.jsonl")}
    base.update({args[0]: args[1].format(tmp=tmp_path)})
    r = CliRunner().invoke(app, ["allocate", *[x for kv in base.items() for x in kv]])
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("seed", range(30))
def test_the_vectorised_hulls_equal_upper_hull_row_by_row(seed):
    from policy.hulls import hulls

    rng = np.random.default_rng(seed)
    p, e, _, _ = _random_instance(seed, nq=60, na=int(rng.integers(1, 12)))
    if p.shape[1] > 3:
        p[:, 1] = p[:, 3]  # ties in p
        e[:, 0] = e[:, 2]  # ties in e
        p[:5, :] = p[:5, :1] + rng.uniform(0, 2e-4, size=(5, p.shape[1]))  # gains around P_TOL
    p[6, :] = 0.5  # a flat row
    h = hulls(p, e)
    for row in range(len(p)):
        want = upper_hull(e[row].tolist(), p[row].tolist())
        assert h.idx[row, : h.length[row]].tolist() == want
        hp, he = p[row, want], e[row, want]
        assert np.array_equal(h.steps_j[row, : len(want) - 1], np.diff(he))
        assert np.array_equal(h.slopes[row, : len(want) - 1], np.diff(hp) / np.diff(he))


@pytest.mark.parametrize("seed", range(10))
def test_a_one_query_hull_is_the_same_as_that_row_of_a_batch(seed):
    """hulls() takes the scalar chain for a few rows and the vectorised one for many: the same arrays."""
    from policy.hulls import hulls

    p, e, _, _ = _random_instance(seed, nq=40, na=9)
    p[:, 1] = p[:, 3]
    e[:, 0] = e[:, 2]
    batch = hulls(p, e)
    for row in (0, 7, 39):
        one = hulls(p[row : row + 1], e[row : row + 1])
        n = int(one.length[0])
        assert n == batch.length[row] and one.idx[0, :n].tolist() == batch.idx[row, :n].tolist()
        for field in ("slopes", "steps_j"):
            assert np.array_equal(getattr(one, field)[0], getattr(batch, field)[row], equal_nan=True)
        assert one.e0_j[0] == batch.e0_j[row]
