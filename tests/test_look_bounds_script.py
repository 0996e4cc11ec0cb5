"""scripts/look_bounds.py: each held-out query's stage-2 choice after a look, charged as eval charges it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from policy.arms import Arm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "look_bounds.py"


def _module():
    spec = importlib.util.spec_from_file_location("look_bounds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_choice_that_continues_the_look_pays_its_own_joules_and_a_switch_pays_the_look_on_top() -> None:
    lb = _module()
    arms = [Arm("s", 1, 16, 0.0), Arm("s", 1, 32, 0.0), Arm("g", 1, 16, 0.0)]
    correct = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    joules = np.array([[2.0, 3.0, 5.0], [2.0, 3.0, 5.0], [2.0, 3.0, 5.0]])
    tasks = np.array(["a", "a", "b"])
    # after the look at arm 0: query 0 sure of it (stop), query 1 goes on to the longer cap, query 2 switches
    p0 = np.array([[0.9, 0.9, 0.1], [0.1, 0.8, 0.2], [0.0, 0.1, 0.9]])
    opts = lb.look_options({0: p0}, correct, joules, joules, arms, tasks, lams=np.array([0.0, 10.0]))
    free = {label: (hits, j) for hits, j, label in opts["a"]}["look s/n1/L16/greedy, lam=0"]
    # query 0 stops (2 J, right); query 1 continues to L32, paying 3 J in all (not 2 + 3), and is right
    assert free == (2, 2.0 + 3.0)
    # query 2 switches to the other model: its 5 J plus the look's 2 J, and it is right
    assert {label: (hits, j) for hits, j, label in opts["b"]}["look s/n1/L16/greedy, lam=0"] == (1, 7.0)
    # at a prohibitive price every query stops at its look
    dear = {label: (hits, j) for hits, j, label in opts["a"]}["look s/n1/L16/greedy, lam=10"]
    assert dear == (1, 4.0)
