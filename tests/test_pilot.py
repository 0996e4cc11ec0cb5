"""scripts/pilot.py: the figures that choose the default mix are computed as the arm view would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from collect.tasks import TASKS, ReasoningGymTask

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pilot.py"


@pytest.fixture(scope="module")
def pilot():
    spec = importlib.util.spec_from_file_location("pilot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _q(answers: list[str | None], gold: str) -> list[list[tuple[str | None, bool]]]:
    """One query's graded samples at two caps: the short cap never has the answer yet."""
    return [[(None, False), (a, a == gold)] for a in answers]


def test_vote_gain_band_and_never_follow_their_definitions(pilot) -> None:
    sampled = [
        _q(["7", "3", "7", "5", "7", "1", "2", "4"], "7"),  # 3/8 right, plurality right: the vote fixes it
        _q(["9"] * 8, "9"),  # always right
        _q(["1", "2", "3", "4", "5", "6", "8", "0"], "7"),  # never right
        _q(["2", "2", "2", "6", "6", "6", "6", "2"], "6"),  # 4/8 right, tie broken by first seen: wrong
    ]
    greedy = [
        [(None, False), ("7", True)],
        [(None, False), ("9", True)],
        [(None, False), ("1", False)],
        [(None, False), ("2", False)],
    ]
    r = pilot.summarize("t", sampled, greedy, [16, 32], [10] * 32, 1.0)
    assert r["p1"] == pytest.approx((3 / 8 + 1 + 0 + 4 / 8) / 4)
    assert r["v8"] == pytest.approx(2 / 4)
    assert r["gain"] == pytest.approx(r["v8"] - r["p1"])
    assert r["band"] == pytest.approx(2 / 4) and r["never"] == pytest.approx(1 / 4)
    assert r["greedy"] == pytest.approx(2 / 4)
    assert r["p1_at"] == {16: 0.0, 32: pytest.approx(r["p1"])}


@pytest.mark.parametrize("name", ["c.add3_1d_steps", "rg.chain_sum"])
def test_candidates_and_registered_names_both_build(pilot, name: str) -> None:
    task = pilot.build_task(name)
    assert task.name == name and task.items(3) == task.items(3)


def test_candidates_are_not_registered_under_the_same_name(pilot) -> None:
    assert not set(pilot.CANDIDATES) & set(TASKS)
    assert all(isinstance(pilot.build_task(c), ReasoningGymTask) for c in pilot.CANDIDATES)


def test_mix_figures_weight_each_config_by_its_queries(pilot) -> None:
    a = {"queries": 12, "p1": 0.5, "v8": 0.75, "gain": 0.25, "band": 1.0, "never": 0.0, "p1_at": {16: 0.25, 32: 0.5}}
    b = {"queries": 4, "p1": 0.0, "v8": 0.0, "gain": 0.0, "band": 0.0, "never": 1.0, "p1_at": {32: 0.0, 64: 0.0}}
    line = pilot.mix_line([a, b])
    assert "16 queries" in line and "gain +0.188" in line and "never 0.250" in line
    assert "p1@32 0.375" in line and "p1@16" not in line  # only caps every row was graded at


def test_store_figures_agree_with_the_arm_view(pilot, reference_store: Path, reference_samples) -> None:
    # The pilot's vote must be the arm view's vote: the same stored samples give
    # the same vote-of-8 and vote-of-1 accuracy as the n=8 and n=1 arms.
    from policy.arms import Arm
    from store.views import arm_outcomes

    rows = [r for label, r in pilot.store_rows(str(reference_store)) if label == "smollm2-135m t0.7"]
    queries = sum(r["queries"] for r in rows)
    v8 = sum(r["v8"] * r["queries"] for r in rows) / queries
    arms = arm_outcomes(reference_samples, [Arm("smollm2-135m", 8, 64, 0.7), Arm("smollm2-135m", 1, 64, 0.7)])
    by_n = arms.groupby("n").correct.mean()
    assert v8 == pytest.approx(by_n[8])
    assert len(arms) == 2 * queries
    p1_first = by_n[1]  # one sample; p1 averages all 8, so the two agree only on average
    assert abs(p1_first - sum(r["p1"] * r["queries"] for r in rows) / queries) < 0.1
