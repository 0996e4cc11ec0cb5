"""scripts/look_oracle.py (a perfect detector) and scripts/look_bounds.py (the rule's own, cross-fitted): both
charge a second arm as eval does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from policy.arms import Arm

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _module(name: str = "look_oracle"):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
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


def test_a_choice_that_continues_the_look_pays_its_own_joules_and_a_switch_pays_the_look_on_top() -> None:
    lb = _module("look_bounds")
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


def test_both_scripts_name_a_missing_store_and_bad_folds_without_a_traceback(tmp_path) -> None:
    import subprocess
    import sys

    for name, extra in (("look_oracle", []), ("look_bounds", []), ("look_bounds", ["--folds", "1"])):
        store = [] if extra else ["--store", str(tmp_path / "absent")]
        r = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *store, *extra], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode != 0 and "error:" in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
