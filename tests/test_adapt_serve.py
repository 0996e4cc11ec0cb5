"""`ttc serve` with a task table: no hint and an unknown hint both get the k = 0 rule, and the metrics count them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from policy.bundle import load_bundle
from policy.tasks import TaskTable, assign_task_columns
from tests.policy_fixtures import build_synthetic_bundle
from tests.proxy_helpers import ProxyStack
from tests.test_serve_policy import look_policy, plain_policy, priced_policy, stack  # noqa: F401 (fixtures)
from train.export import write_policy

LAM = 0.002


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    base = load_bundle(build_synthetic_bundle(tmp_path_factory.mktemp("bundle") / "b"))
    n = len(base.arm_ids)
    # a global table whose best arm at LAM is the most expensive one: unmistakable in a response
    energy = np.linspace(1.0, 30.0, n)
    acc = np.clip(0.1 + LAM * energy + np.linspace(0.0, 0.05, n), 0, 1)
    table = TaskTable(tuple(base.arm_ids), assign_task_columns(["chain_sum", "gsm8k"]), 240,
                      tuple(acc.tolist()), tuple(energy.tolist()), 8.0)  # fmt: skip
    out = write_policy(base.with_task_table(table), tmp_path_factory.mktemp("tasks") / "b")
    return load_bundle(out)


def test_no_hint_and_an_unknown_hint_get_the_k0_rule_and_are_counted(policy):
    s = ProxyStack(policy)
    try:
        g = np.asarray(policy.task_table.global_accuracy) - LAM * np.asarray(policy.task_table.global_energy_j)
        want = policy.arm_ids[int(np.argmax(g))]
        arms = []
        for hint in (None, {"task": "my.own.task"}, {"task": "gsm8k"}):
            headers = {"x-ttc": json.dumps({**(hint or {}), "lam": LAM})}
            resp, _ = s.chat(extra_headers=headers)
            arms.append(resp.model_extra["ttc"]["arm"])
        assert arms[0] == arms[1] == want
        text = httpx.get(f"{s.proxy.url}/metrics").text
        assert 'ttc_task_rule_total{status="unknown"} 2.0' in text
        assert 'ttc_task_rule_total{status="known"} 1.0' in text
    finally:
        s.close()


def test_look_then_decide_is_for_known_tasks_only(look_policy, stack, tmp_path):  # noqa: F811 (fixtures)
    """Stage 2 never saw an unknown task: with a task table, such a request takes the k = 0 rule, no look."""
    from tests.test_serve_policy import _logprob_engine

    n = len(look_policy.arm_ids)
    energy = np.linspace(1.0, 30.0, n)
    table = TaskTable(tuple(look_policy.arm_ids), assign_task_columns(["chain_sum", "gsm8k"]), 240,
                      tuple(np.full(n, 0.5).tolist()), tuple(energy.tolist()), 8.0)  # fmt: skip
    pol = load_bundle(write_policy(look_policy.with_task_table(table), tmp_path / "b"))
    s = stack(pol, fake=_logprob_engine(-0.05), lam=0.01)
    q = "Start with 4, then plus 9, then times 3. What is the result?"
    known, _ = s.chat(q, extra_body={"ttc": {"task": "gsm8k"}})
    unknown, _ = s.chat(q, extra_body={"ttc": {"task": "my.own.task"}})
    assert known.model_extra["ttc"]["look"] is not None
    assert unknown.model_extra["ttc"]["look"] is None
    assert unknown.model_extra["ttc"]["arm"] == pol.arm_ids[int(np.argmin(energy))]  # equal accuracy: cheapest
