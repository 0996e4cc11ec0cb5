"""The exported look-then-decide rule: stage2.json in the bundle, `Policy.decide_after_look`, the pyfunc.

Synthetic (query, arm) outcomes and first samples from tests/policy_fixtures.py:
the eval simulation (eval/allocators/two_stage.py) runs on them with the
synthetic bundle as its fold policy, its fold's stage-2 model is exported, and
the bundle must then decide exactly as the simulation did at every price.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from policy_fixtures import (
    MODELS,
    build_synthetic_bundle,
    rehash_bundle,
    synthetic_arms,
    synthetic_outcomes,
    synthetic_questions,
    train_boosters,
)

from eval.allocators import EvalContext, Fold, Outcomes
from eval.allocators.two_stage import TwoStageAllocator
from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from policy.features import FIRST_SAMPLE_NAMES, STAGE2_SIGNAL_NAMES, answer_check_signals, answer_checks
from policy.two_stage import STAGE2_FILE
from train.two_stage import StageTwoFit, has_signals, stage_one_signals

ARMS = synthetic_arms()
LEVELS = sorted({a.max_new_tokens for a in ARMS})


def _world(n: int, seed: int):
    """(questions, tasks, correct, energy, samples): outcomes per arm; first samples' confidence tracks difficulty."""
    questions, tasks, hard = synthetic_questions(n, seed)
    _, energy, p_true = synthetic_outcomes(hard, ARMS, seed)
    rng = np.random.default_rng(seed + 7)
    correct = (rng.random(p_true.shape) < p_true).astype(int)
    rows = []
    for i in range(n):
        for model in MODELS:
            for temp in sorted({a.temperature for a in ARMS}):
                lp = rng.normal(-0.2 - 2.5 * hard[i], 0.3, 40)
                rows.append(dict(query_id=f"q{seed}_{i}", question=questions[i], task=tasks[i], model=model,
                                 temperature=temp, sample_index=0, levels=LEVELS, level_output_tokens=[20, 40],
                                 level_answer=[None if hard[i] > 0.7 else "1"] * 2, token_logprob=list(lp),
                                 token_entropy=list(np.abs(lp) * 0.8)))  # fmt: skip
    return questions, tasks, correct, energy, pd.DataFrame(rows)


def _outcomes(ids, questions, tasks, correct, energy) -> Outcomes:
    n = len(ids)
    return Outcomes(
        np.asarray(ids, dtype=object), np.asarray(tasks, dtype=object), list(questions), [a.arm_id for a in ARMS],
        np.asarray(correct), np.asarray(energy), np.ones((n, len(ARMS))), np.ones((n, len(ARMS)), bool),
    )  # fmt: skip


LAM = 0.01  # the exported bundle's price


def _export(tmp: Path, name: str, st: StageTwoFit, plain) -> Path:  # noqa: ANN001
    from train.export import write_bundle

    success, energy = train_boosters(seed=0)
    return write_bundle(tmp / name, success, energy, ARMS, MODELS, "text", plain.manifest.rule, {"synthetic": 1},
                        "synthetic", "estimated", reference_x=None, stage_two=st)  # fmt: skip


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The eval simulation on 30 held-out synthetic queries, and a bundle carrying its fold's stage-2 rule at LAM."""
    tmp = tmp_path_factory.mktemp("two_stage")
    plain = load_bundle(build_synthetic_bundle(tmp / "plain"))
    tr, te = _world(160, 11), _world(30, 12)
    train = _outcomes([f"q11_{i}" for i in range(160)], *tr[:4])
    test = _outcomes([f"q12_{i}" for i in range(30)], *te[:4])
    samples = pd.concat([tr[4], te[4]], ignore_index=True)
    ctx = EvalContext(test, samples=samples, folds=[Fold("f", test, train, plain)])
    alloc = TwoStageAllocator(n_lambdas=12)
    fold = alloc._fold(ctx, 0)
    fold["a1"] = fold["data"].cheapest  # the one look of a rule without per-task looks
    curve = alloc.curve(ctx)
    return ctx, fold, curve, _export(tmp, "two", fold["data"].fit_at(LAM), plain), plain, tmp


def _looked(ctx, policy):  # noqa: ANN001, ANN202
    """Each held-out query's first look under `policy`, its signals (7 columns) and its joules."""
    test = ctx.test
    a1 = np.asarray([policy.arm_ids.index(policy.first_arm_for(t)) for t in test.tasks])
    sig = np.zeros((len(a1), len(STAGE2_SIGNAL_NAMES)), dtype=np.float32)
    for a in np.unique(a1):
        m = a1 == a
        sig[m] = stage_one_signals(ctx.samples, list(np.asarray(test.query_ids)[m]), ARMS[a])
    return a1, sig, test.energy_j[np.arange(len(a1)), a1]


def test_the_exported_stage_two_decides_as_the_eval_simulation_at_every_price(simulated):
    ctx, fold, curve, _, plain, tmp = simulated
    test = ctx.test
    assert len(curve.points) >= 3
    looked_at = set()
    for i, pt in enumerate(curve.points):
        lam = pt.params["lam"]
        policy = load_bundle(_export(tmp, f"at{i}", fold["data"].fit_at(lam), plain))
        a1, sig, e1 = _looked(ctx, policy)
        assert a1.tolist() == fold["looks"](lam).tolist()  # the bundle's looks are the simulation's
        looked_at |= set(a1.tolist())
        got = policy.decide_after_look(test.questions, sig, list(test.tasks), first_energy_j=e1, lam=lam)
        assert tuple(d.arm_id for d in got) == tuple(pt.arm_ids)
        # the numpy trees give the simulation's own probabilities
        chosen = np.asarray([policy.arm_ids.index(d.arm_id) for d in got])
        p_sim = np.asarray([fold["p2_after"](int(a))[q, c] for q, (a, c) in enumerate(zip(a1, chosen, strict=True))])
        assert np.allclose([d.p_success for d in got], p_sim, atol=1e-9)
    assert len(looked_at) >= 2  # the prices of the curve move some task's look


def test_stage_two_actions_say_stop_continue_or_switch(simulated):
    ctx, _, _, bundle, _, _ = simulated
    policy = load_bundle(bundle)
    a1, sig, _ = _looked(ctx, policy)
    for lam in (0.0, 1e3):
        for d, first in zip(policy.decide_after_look(ctx.test.questions, sig, list(ctx.test.tasks), lam=lam),
                            a1, strict=True):  # fmt: skip
            arm, first = ARMS[policy.arm_ids.index(d.arm_id)], ARMS[first]
            want = (
                "stop"
                if arm == first
                else "continue"
                if arm.model == first.model and arm.temperature == first.temperature
                else "switch"
            )  # noqa: E501
            assert d.action == want
    stops = policy.decide_after_look(ctx.test.questions, sig, list(ctx.test.tasks), lam=1e3)
    assert {d.action for d in stops} == {"stop"}  # at a very high price nothing is worth more joules


def test_bad_first_sample_input_is_a_usage_error_naming_the_columns(simulated):
    bundle = simulated[3]
    policy = load_bundle(bundle)
    with pytest.raises(UsageError, match="first_mean_logprob"):
        policy.decide_after_look(["What is 2 + 2?"], np.zeros((1, 4)))
    with pytest.raises(UsageError, match="first_text"):
        policy.decide_after_look(["What is 2 + 2?"], np.zeros((1, 5)))
    with pytest.raises(UsageError, match="first_energy_j"):
        policy.decide_after_look(["What is 2 + 2?"], np.zeros((1, 5)), first_energy_j=[-1.0], first_text=["4"])
    plain = load_bundle(build_synthetic_bundle(Path(bundle).parent / "p2"))
    assert plain.first_arm is None
    with pytest.raises(UsageError, match="no stage-2 rule"):
        plain.decide_after_look(["What is 2 + 2?"], np.zeros((1, 5)))


def test_a_changed_stage_two_file_is_refused_by_the_digest(simulated, tmp_path):
    copy = _copy(simulated[3], tmp_path / "b")
    d = json.loads((copy / "stage2.json").read_text())
    d["lam"] = 5.0
    (copy / "stage2.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="stage2.json"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.__setitem__("lam", "0.1"), "'lam'"),
        (lambda d: d.__setitem__("lam", -1), "'lam'"),
        (lambda d: d.__setitem__("first_arm", 3), "'first_arm'"),
        (lambda d: d.__setitem__("first_arm", "nosuch|n=1|L=32|T=0.7"), "not an arm"),
        (lambda d: d.__setitem__("signals", ["first_mean_logprob"]), "this package computes"),
        (lambda d: d.__setitem__("trees", [1, 2]), "'trees'"),
        (lambda d: d.__setitem__("constant", 0.5), "either 'trees' or a 'constant'"),
        (lambda d: d["trees"]["trees"][0].__setitem__("split_feature", "x"), "tree model"),
        (lambda d: d["trees"].__setitem__("n_features", 7), "tree model"),
        (lambda d: d.pop("constant"), "'constant'"),
        (lambda d: d.__setitem__("first_arm", ARMS[-1].arm_id), "more than one sample"),
        # the per-task first looks (issue 18)
        (lambda d: d.__setitem__("looks", "x"), "'looks'"),
        (lambda d: d["looks"].append(7), r"looks\[1\]"),
        (lambda d: d["looks"][0].__setitem__("looks", []), "one rule"),
        (lambda d: d["looks"][0].__setitem__("first_arm", d["first_arm"]), "repeats"),
        (lambda d: d["looks"][0].__setitem__("first_arm", "nosuch/n1/L16/greedy"), "not an arm"),
        (lambda d: d["looks"][0].__setitem__("first_arm", ["x"]), "'first_arm'"),
        (lambda d: d["looks"][0].__setitem__("constant", 0.5), "either 'trees' or a 'constant'"),
        (lambda d: d.__setitem__("first_arms", {"gsm8k": "nosuch/n1/L16/greedy"}), "'first_arms'"),
        (lambda d: d.__setitem__("first_arms", {"gsm8k": ["x"]}), "'first_arms'"),
        (lambda d: d.__setitem__("first_arms", []), "'first_arms'"),
        (lambda d: d.__setitem__("first_arms", {}), "no task uses"),
    ],
)
def test_wrong_typed_stage_two_data_is_refused_even_when_rehashed(simulated, tmp_path, edit, match):
    copy = _copy(simulated[3], tmp_path / "b")
    d = json.loads((copy / "stage2.json").read_text())
    edit(d)
    (copy / "stage2.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=match):
        load_bundle(rehash_bundle(copy))


def test_each_task_looks_at_its_own_first_arm_and_any_other_task_at_the_global_one(simulated):
    policy = load_bundle(simulated[3])
    s2 = policy.stage_two
    assert s2.first_arms and set(s2.looks) == set(s2.first_arms.values()) - {s2.first_arm}
    for task, arm in s2.first_arms.items():
        assert policy.first_arm_for(task) == arm and s2.rule_for(task).first_arm == arm
    assert policy.first_arm_for(None) == policy.first_arm_for("never seen") == policy.first_arm
    assert "tasks' own" in policy.describe()


def test_a_rewritten_policy_keeps_its_stage_two(simulated, tmp_path):
    from train.export import write_policy

    policy = load_bundle(simulated[3])
    again = load_bundle(write_policy(policy.with_rule({"mode": "price", "lam": 0.5}), tmp_path / "w"))
    assert again.first_arm == policy.first_arm and again.stage_two.lam == policy.stage_two.lam
    assert dict(again.stage_two.first_arms) == dict(policy.stage_two.first_arms)


def test_signals_are_detected_only_when_samples_hold_token_logprobs():
    _, _, _, _, samples = _world(3, 1)
    assert has_signals(samples)
    assert not has_signals(samples.drop(columns=["token_logprob"]))
    assert not has_signals(samples.assign(token_logprob=[[] for _ in range(len(samples))]))


def test_the_mlflow_pyfunc_reads_the_signal_columns(simulated, tmp_path):
    import mlflow

    from serve.mlflow_log import log_policy_model

    ctx, bundle = simulated[0], simulated[3]
    test = ctx.test
    a1, sig, e1 = _looked(ctx, load_bundle(bundle))
    df = pd.DataFrame({"question": test.questions, "task": list(test.tasks)})
    df[list(STAGE2_SIGNAL_NAMES)] = sig.astype(np.float64)
    df["first_energy_j"] = e1
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("s", artifact_location=tmp_path.as_uri()))
        model = mlflow.pyfunc.load_model(log_policy_model(bundle))
        out = model.predict(df, params={"lam": 0.01})
        plain = model.predict(df[["question", "task"]])
        # the five confidence columns plus the first sample's text stand for the seven
        texts = ["2 + 2 = 5. The answer is 5." if i % 3 else "" for i in range(len(df))]
        by_text = df.drop(columns=["first_equations", "first_wrong_equations"]).assign(first_text=texts)
        out_text = model.predict(by_text, params={"lam": 0.01})
        no_text = model.predict(by_text.drop(columns=["first_text"]))
    finally:
        mlflow.set_tracking_uri(old)
    policy = load_bundle(bundle)
    want = policy.decide_after_look(test.questions, sig, list(test.tasks), first_energy_j=e1, lam=0.01)
    assert list(out["stage2_arm_id"]) == [d.arm_id for d in want]
    assert list(out["stage2_action"]) == [d.action for d in want]
    assert list(out["first_arm_id"]) == [ARMS[a].arm_id for a in a1] and "stage2_arm_id" not in plain.columns
    want_text = policy.decide_after_look(test.questions, sig[:, :5], list(test.tasks),
                                         first_energy_j=e1, lam=0.01, first_text=texts)  # fmt: skip
    assert list(out_text["stage2_arm_id"]) == [d.arm_id for d in want_text]
    assert "stage2_arm_id" not in no_text.columns  # a seven-signal rule without the text: no stage-2 columns


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in Path(src).iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_answer_checks_count_the_wrong_equations_of_the_models_own_working():
    assert answer_checks("6 + 3 = 9. 9 + 0 = 10. The answer is 10.") == (2, 1)
    assert answer_checks("4 * 9 = 36. The answer is 36.") == (1, 0)
    assert answer_checks("2 * 3 + 1 = 7, and 12 / 4 - 1 = 2") == (2, 0)  # * and / bind first
    assert answer_checks("Boron has 11 electrons. The answer is 11.") == (0, 0)
    assert answer_checks(None) == (0, 0)
    assert answer_check_signals(["1 + 1 = 3", ""]).tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_the_first_sample_text_gives_the_same_decisions_as_its_seven_signal_columns(simulated):
    ctx, bundle = simulated[0], simulated[3]
    policy = load_bundle(bundle)
    assert policy.stage_two_signals == STAGE2_SIGNAL_NAMES
    n = len(ctx.test.questions)
    texts = ["3 + 4 = 7. The answer is 7." if i % 2 else "3 + 4 = 8. The answer is 8." for i in range(n)]
    _, sig7, _ = _looked(ctx, policy)
    sig7[:, len(FIRST_SAMPLE_NAMES) :] = answer_check_signals(texts)
    for lam in (0.0, 0.01):
        by_text = policy.decide_after_look(ctx.test.questions, sig7[:, :5], list(ctx.test.tasks), lam=lam,
                                           first_text=texts)  # fmt: skip
        by_cols = policy.decide_after_look(ctx.test.questions, sig7, list(ctx.test.tasks), lam=lam)
        assert by_text == by_cols


def test_a_stage_two_file_of_five_signals_from_older_bundles_still_loads_and_decides(simulated, tmp_path):
    """stage2.json written before the answer checks (five signals, trees over 5 signal columns) keeps working."""
    from policy_fixtures import train_boosters as _boosters

    from train.export import write_bundle
    from train.two_stage import fit_stage_two_model, predict_stage_two, stage_two_rows

    ctx, fold = simulated[0], simulated[1]
    first = ARMS[fold["a1"]]
    train = ctx.folds[0].train
    sig = stage_one_signals(ctx.samples, list(train.query_ids), first)[:, : len(FIRST_SAMPLE_NAMES)]
    x = stage_two_rows(train.questions, list(train.tasks), sig, ARMS, MODELS)
    model = fit_stage_two_model(x, train.correct.reshape(-1).astype(int), seed=0)
    success, energy = _boosters(seed=0)
    ref = load_bundle(simulated[3]).manifest
    st = StageTwoFit(first.arm_id, 0.01, model, FIRST_SAMPLE_NAMES)
    out = write_bundle(tmp_path / "old", success, energy, ARMS, MODELS, "text", ref.rule, {"synthetic": 1},
                       "synthetic", "estimated", reference_x=None, stage_two=st)  # fmt: skip
    assert json.loads((Path(out) / STAGE2_FILE).read_text())["signals"] == list(FIRST_SAMPLE_NAMES)
    old = load_bundle(out)
    assert old.stage_two_signals == FIRST_SAMPLE_NAMES
    test = ctx.test
    tsig = stage_one_signals(ctx.samples, list(test.query_ids), first)[:, : len(FIRST_SAMPLE_NAMES)]
    got = old.decide_after_look(test.questions, tsig, list(test.tasks), lam=0.0, first_text=["ignored"] * len(tsig))
    p = predict_stage_two(model, stage_two_rows(test.questions, list(test.tasks), tsig, ARMS, MODELS))
    chosen = [old.arm_ids.index(d.arm_id) for d in got]
    assert np.allclose([d.p_success for d in got], p.reshape(len(tsig), len(ARMS))[np.arange(len(tsig)), chosen])


def test_the_first_look_is_the_most_accurate_of_the_equally_cheap_one_sample_arms():
    from policy.arms import Arm
    from train.two_stage import stage_one_index

    arms = [Arm("m", 1, 16, 1.0), Arm("m", 1, 16, 0.0), Arm("m", 1, 32, 0.0), Arm("m", 2, 16, 1.0)]
    mean_j = np.array([2.946, 2.954, 3.6, 1.0])  # the two-sample arm is cheaper still, but no look
    assert stage_one_index(mean_j, arms) == 0  # without accuracies: the cheapest
    assert stage_one_index(mean_j, arms, np.array([0.31, 0.35, 0.41, 0.9])) == 1  # 0.3% dearer, more accurate
    assert stage_one_index(np.array([2.0, 2.2, 3.6, 1.0]), arms, np.array([0.31, 0.35, 0.41, 0.9])) == 0  # 10%


def test_the_stage_two_model_learns_expected_correctness_from_soft_labels():
    from train.two_stage import fit_stage_two_model, predict_stage_two

    rng = np.random.default_rng(0)
    group = rng.integers(0, 2, 600)
    x = np.column_stack([group, rng.random(600)]).astype(np.float32)
    y = np.where(group == 1, 0.8, 0.2)  # soft labels: no single row is 0 or 1
    p = predict_stage_two(fit_stage_two_model(x, y, seed=0), np.asarray([[0, 0.5], [1, 0.5]], dtype=np.float32))
    assert abs(p[0] - 0.2) < 0.05 and abs(p[1] - 0.8) < 0.05
    assert predict_stage_two(fit_stage_two_model(x, np.full(600, 0.3), seed=0), x[:2]).tolist() == [0.3, 0.3]


def test_the_memoised_table_sweep_gives_the_looks_task_looks_computes_afresh_at_any_price(simulated):
    from train.two_stage import task_looks

    ctx, fold, curve, _, _, _ = simulated
    data = fold["data"]
    prices = [pt.params["lam"] for pt in curve.points] + [0.0, 1e-6, 0.05, 1e3, 0.0]
    for lam in prices:  # asked again: served from the memo, still equal
        want = task_looks(data.tasks, data.correct, data.energy_j, data.arms, lam, data.cheapest)
        assert data.looks_at(lam) == want
        glob = want[1]
        assert data.query_looks(list(ctx.test.tasks) + ["a task never trained on"], lam).tolist() == [
            want[0].get(str(t), glob) for t in ctx.test.tasks
        ] + [glob]


def test_warming_specialises_every_looks_trees_so_no_later_decision_does(simulated, monkeypatch):
    from policy import trees

    pol = load_bundle(simulated[3])
    s2 = pol.stage_two
    assert s2.looks, "the rule must have several looks for this test"
    calls = []
    real = trees.specialise
    monkeypatch.setattr(trees, "specialise", lambda *a: calls.append(1) or real(*a))
    pol.warm_stage_two()
    assert len(calls) == 2 + len(s2.looks)  # the joules trees, the default look's rule and each other look's
    monkeypatch.setattr(trees, "specialise", lambda *a: pytest.fail("specialised after warming"))
    sig = np.zeros((1, len(s2.signals)), dtype=np.float32)
    for task in (None, "never seen", *s2.first_arms):
        pol.decide_after_look(["How many apples are left?"], sig, [task])
    monkeypatch.undo()
    plain = load_bundle(build_synthetic_bundle(simulated[5] / "no_look"))
    assert plain.stage_two is None
    plain.warm_stage_two()  # no rule: nothing to do, no error
