"""scripts/look_oracle.py: the perfect-look cascade pays the second arm only where the look was wrong."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from policy.arms import Arm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "look_oracle.py"


def _module():
    spec = importlib.util.spec_from_file_location("look_oracle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_second_arm_is_paid_and_counted_only_on_the_looks_wrong_queries() -> None:
    lo = _module()
    arms = [Arm("s", 1, 16, 0.0), Arm("s", 1, 32, 0.0), Arm("g", 1, 16, 0.0)]
    correct = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]])
    joules = np.array([[2.0, 2.0, 5.0], [2.0, 3.0, 5.0], [2.0, 3.5, 5.0], [2.0, 3.0, 5.0]])
    opts = {label: (hits, j) for hits, j, label in lo.options(correct, joules, arms, True)}
    assert opts["s/n1/L16/greedy"] == (1, 8.0)  # one arm alone: its own hits and joules
    # continuing the look's own sample to the longer cap pays only the extra tokens' joules, on the 3 wrong ones
    assert opts["s/n1/L16/greedy -> s/n1/L32/greedy"] == (2, 8.0 + 1.0 + 1.5 + 1.0)
    # the other model pays all its joules, on the 3 wrong ones, and adds the 2 it gets right there
    assert opts["s/n1/L16/greedy -> g/n1/L16/greedy"] == (3, 8.0 + 15.0)
    table = {label for _, _, label in lo.options(correct, joules, arms, False)}
    assert table == {a.arm_id for a in arms}
    # the frontier picks per task at each price; the cheapest point of a dense grid is the cheapest arm
    pts = lo.frontier({"t": lo.options(correct, joules, arms, True)}, 4)
    assert min(p[1] for p in pts) == 2.0 and max(p[0] for p in pts) == 0.75
