"""Difficulty from the model itself: the probe reduction in the bundle, probe policies on a real store,
the probe's joules in eval, and the two-stage (look, then decide) simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from policy_fixtures import build_synthetic_bundle, rehash_bundle, synthetic_probe, synthetic_questions

from eval.allocators import EvalContext, Outcomes, PolicyOverhead
from eval.allocators.two_stage import TwoStageAllocator, continues, stage_one_arm, stage_one_signals
from policy.arms import Arm
from policy.bundle import load_bundle
from policy.errors import BundleError, UsageError
from policy.features import FEATURE_SETS, FIRST_SAMPLE_NAMES, STAGE2_SIGNAL_NAMES, get_feature_set
from policy.probe import PROBE_DIMS, fit_reduction

SMALL = dict(
    models=["smollm2-135m"],
    tasks=["rg.basic_arithmetic_1d", "rg.products_1x1"],
    items_per_task=6,
    n_samples=2,
    levels=[4, 12],
    greedy=True,
    queries_per_batch=6,
    track=False,
    device="cpu",
)


@pytest.fixture(scope="module")
def probe_bundle(tmp_path_factory) -> Path:
    return build_synthetic_bundle(tmp_path_factory.mktemp("probe") / "policy", feature_set="text+probe")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A real store: SmolLM2 on 12 queries of two tasks, with its probe side table."""
    from collect.config import make_config
    from collect.observers import collect_stage

    store = tmp_path_factory.mktemp("probe_store")
    collect_stage(make_config(None, store=str(store), **SMALL).validate(), progress=False)
    return store


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# ---------------------------------------------------------------- the reduction in the bundle


def test_the_probe_reduction_round_trips_through_the_bundle(probe_bundle):
    from policy_fixtures import synthetic_reduction

    policy = load_bundle(probe_bundle)
    r, want = policy.probe_reduction, synthetic_reduction(0)
    assert (r.model, r.layer, r.components.shape) == (want.model, want.layer, (PROBE_DIMS, want.width))
    assert np.array_equal(r.mean, want.mean) and np.array_equal(r.components, want.components)
    questions, tasks, hard = synthetic_questions(6, seed=3)
    raw = synthetic_probe(hard, 3)
    x = policy.query_features(questions, tasks, raw)
    expected = get_feature_set("text+probe").transform(questions, tasks, want.reduce(raw))
    assert np.array_equal(x, expected)
    assert policy.probe_model == "smollm2-135m" and "probe of smollm2-135m layer 30" in policy.describe()


def test_a_changed_probe_file_is_refused_by_the_digest(probe_bundle, tmp_path):
    copy = _copy(probe_bundle, tmp_path / "b")
    d = json.loads((copy / "probe.json").read_text())
    d["mean"][0] += 1.0
    (copy / "probe.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="probe.json"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["mean"].pop(), "'mean'"),
        (lambda d: d["components"].pop(), "'components'"),
        (lambda d: d["components"][0].append(0.5), "'components'"),
        (lambda d: d["mean"].__setitem__(0, "x"), "'mean'"),
        (lambda d: d.__setitem__("layer", "30"), "'layer'"),
        (lambda d: d.__setitem__("dims", 8), "to 8 dims"),
    ],
)
def test_probe_arrays_of_the_wrong_shape_or_type_are_refused_even_when_rehashed(probe_bundle, tmp_path, edit, match):
    copy = _copy(probe_bundle, tmp_path / "b")
    d = json.loads((copy / "probe.json").read_text())
    edit(d)
    (copy / "probe.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=match):
        load_bundle(rehash_bundle(copy))


def test_a_nan_in_the_probe_arrays_is_refused(probe_bundle, tmp_path):
    copy = _copy(probe_bundle, tmp_path / "b")
    text = (copy / "probe.json").read_text()
    d = json.loads(text)
    d["mean"][1] = float("nan")
    (copy / "probe.json").write_text(json.dumps(d))  # json writes NaN, which json.loads reads back
    with pytest.raises(BundleError, match="finite"):
        load_bundle(rehash_bundle(copy))


def test_a_probe_policy_without_its_probe_file_and_a_text_policy_with_one_are_refused(probe_bundle, tmp_path):
    copy = _copy(probe_bundle, tmp_path / "p")
    (copy / "probe.json").unlink()
    d = json.loads((copy / "policy.json").read_text())
    del d["files"]["probe.json"]
    (copy / "policy.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="needs probe.json"):
        load_bundle(rehash_bundle(copy))
    text = _copy(build_synthetic_bundle(tmp_path / "t"), tmp_path / "t2")
    (text / "probe.json").write_bytes((probe_bundle / "probe.json").read_bytes())
    d = json.loads((text / "policy.json").read_text())
    d["files"]["probe.json"] = ""
    (text / "policy.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="reads no probe"):
        load_bundle(rehash_bundle(text))


def test_allocating_without_probes_or_with_the_wrong_width_names_the_fix(probe_bundle):
    policy = load_bundle(probe_bundle)
    questions, tasks, hard = synthetic_questions(4, seed=1)
    with pytest.raises(UsageError, match="--probe-model smollm2-135m"):
        policy.allocate(questions, tasks)
    with pytest.raises(UsageError, match=r"shape \(n_questions, 24\)"):
        policy.allocate(questions, tasks, probe=np.zeros((4, 23)))
    assert len(policy.allocate(questions, tasks, probe=synthetic_probe(hard, 1))) == 4


def test_the_pca_keeps_sixteen_dims_is_deterministic_and_centres_the_training_vectors():
    x = np.random.default_rng(0).normal(size=(9, 40))  # fewer vectors than dims: padded with zero rows
    a, b = fit_reduction(x, "m", 3), fit_reduction(x.copy(), "m", 3)
    assert a.components.shape == (PROBE_DIMS, 40) and np.array_equal(a.components, b.components)
    assert not a.components[9:].any()
    assert np.allclose(a.reduce(x).mean(axis=0), 0, atol=1e-5)
    with pytest.raises(UsageError, match="at least 2"):
        fit_reduction(x[:1], "m", 3)


def test_every_declared_feature_set_trains_exports_and_predicts(tmp_path):
    """No feature set is declared without being computed: each one's bundle loads and predicts."""
    for name, fs in FEATURE_SETS.items():
        policy = load_bundle(build_synthetic_bundle(tmp_path / name.replace("+", "_"), feature_set=name))
        questions, tasks, hard = synthetic_questions(3, seed=2)
        p, e = policy.predict(questions, tasks, probe=synthetic_probe(hard, 2) if fs.probe else None)
        assert p.shape == (3, len(policy.arms)) and (e > 0).all()


# ---------------------------------------------------------------- a real store


def test_a_probe_policy_trained_on_a_real_small_store_predicts(small_store, tmp_path):
    from store.loader import load_samples
    from train.dataset import load_probes
    from train.fit import TrainConfig, fit_policy

    samples = load_samples(small_store)
    probes = load_probes(small_store, "smollm2-135m")
    ids = sorted(samples["query_id"].unique())
    assert len(ids) == 12 and probes.vectors.shape == (12, 2 * 576)
    cfg = TrainConfig(feature_set="text+probe", n_trials=0, num_threads=1)
    policy = load_bundle(fit_policy(samples, ids[:10], cfg, tmp_path / "b", probes=probes))
    r = policy.probe_reduction
    assert (r.model, r.layer) == ("smollm2-135m", probes.layer)
    # the PCA was fitted on the training queries only
    assert np.allclose(r.mean, probes.rows(ids[:10])[0].astype(np.float64).mean(axis=0))
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids[10:]]
    decisions = policy.allocate(q["question"].tolist(), q["task"].tolist(), probe=probes.rows(ids[10:])[0])
    assert [d.arm_id in policy.arm_ids for d in decisions] == [True, True]
    assert all(0.0 <= d.p_success <= 1.0 for d in decisions)


# ---------------------------------------------------------------- the probe's joules in eval


def test_the_probe_prefill_is_charged_only_when_the_chosen_arm_runs_another_model():
    arms = [Arm("small", 1, 16, 0.7), Arm("big", 1, 16, 0.7)]
    o = PolicyOverhead(np.full(3, 0.1), np.full(3, 0.01), np.array([1.0, 2.0, 3.0]), 0.0, "estimate", "estimated",
                       probe_model="small")  # fmt: skip
    assert np.allclose(o.charged(np.array([0, 1, 1]), arms), [0.11, 2.11, 3.11])
    assert np.allclose(o.charged(np.array([0, 0, 0]), arms), [0.11, 0.11, 0.11])
    text = PolicyOverhead(np.full(3, 0.1), np.full(3, 0.01), np.zeros(3), 0.0, "estimate", "estimated")
    assert np.allclose(text.charged(np.array([0, 1, 1]), arms), 0.11)


# ---------------------------------------------------------------- two-stage, on hand-built outcomes

ARMS = [Arm("small", 1, 16, 0.7), Arm("small", 2, 32, 0.7), Arm("big", 1, 16, 0.0)]


def _outcomes(qids: list[str], correct: list[list[int]], energy: list[list[float]]) -> Outcomes:
    n = len(qids)
    return Outcomes(
        np.asarray(qids, dtype=object), np.asarray(["t"] * n, dtype=object), [f"What is {q}?" for q in qids],
        [a.arm_id for a in ARMS], np.asarray(correct), np.asarray(energy), np.ones((n, 3)), np.ones((n, 3), bool),
    )  # fmt: skip


def _samples(qids: list[str], confident: list[bool]) -> pd.DataFrame:
    rows = []
    for q, ok in zip(qids, confident, strict=True):
        for k in (1, 0):  # stored out of order: the first sample is sample_index 0, not the first row
            lp = [-0.01, -0.02, -0.05] if ok else [-2.0, -3.0, -1.5]
            rows.append(dict(query_id=q, model="small", temperature=0.7, sample_index=k, levels=[16, 32],
                             level_output_tokens=[3, 3], level_answer=["1" if ok else None] * 2,
                             token_logprob=lp if k == 0 else [-9.0] * 3, token_entropy=[-x for x in lp],
                             # the cap cuts a confident sample's text at half: its wrong second sum is unseen
                             text="2 + 2 = 4. 4 + 4 = 9" if ok else "1 + 1 = 3",
                             output_tokens=6 if ok else 3))  # fmt: skip
    return pd.DataFrame(rows)


class _StubPolicy:
    """A fold policy whose predicted joules are the realised ones (the two-stage rule reads only those)."""

    needs_probe, probe_model = False, None

    def __init__(self, e: dict[str, list[float]]) -> None:
        self.arm_ids, self.arms, self._e = [a.arm_id for a in ARMS], ARMS, e

    def query_features(self, questions, tasks, probe=None):
        return np.asarray([self._e[q.split()[-1].rstrip("?")] for q in questions])

    def predict_features(self, x):
        return np.full(x.shape, 0.5), np.asarray(x, dtype=float)

    def route_tasks(self, p, e, tasks):  # every task known: the predictions stand
        return p, e


def test_stage_one_signals_read_the_first_sample_up_to_its_cap():
    sig = stage_one_signals(_samples(["a", "b"], [True, False]), ["a", "b"], ARMS[0])
    assert sig.shape == (2, len(STAGE2_SIGNAL_NAMES))
    assert sig[:, len(FIRST_SAMPLE_NAMES) :].tolist() == [[1.0, 0.0], [1.0, 1.0]]  # (equations, wrong) at the cap
    assert np.allclose(sig[0, :3], [np.mean([-0.01, -0.02, -0.05]), -0.05, np.mean([0.01, 0.02, 0.05])])
    assert list(sig[:, 3]) == [1.0, 0.0] and list(sig[:, 4]) == [3.0, 3.0]


def test_two_stage_always_charges_stage_one_and_reuses_its_sample():
    from eval.allocators import Fold

    # training: confident first samples are right on the cheap arm; unsure ones need the big model
    train_ids = [f"r{i}" for i in range(40)]
    conf = [i % 2 == 0 for i in range(40)]
    train_c = [[1, 1, 1] if c else [0, 0, 1] for c in conf]
    e_row = [1.0, 2.5, 4.0]
    test_ids = ["x", "y"]
    test = _outcomes(test_ids, [[1, 1, 0], [0, 0, 1]], [[1.0, 2.5, 4.0], [1.2, 2.6, 4.4]])
    train = _outcomes(train_ids, train_c, [e_row] * 40)
    samples = _samples(train_ids + test_ids, conf + [True, False])
    # the big model's (greedy) first samples: sure of themselves every time
    big = samples[samples["sample_index"] == 0].assign(model="big", temperature=0.0, token_logprob=[[-0.01] * 3] * 42)
    samples = pd.concat([samples, big], ignore_index=True)
    e = {q: e_row for q in train_ids} | {"x": [1.0, 2.5, 4.0], "y": [1.2, 2.6, 4.4]}
    ctx = EvalContext(test, samples=samples, folds=[Fold("f", test, train, _StubPolicy(e))])
    assert stage_one_arm(train, ARMS) == 0 and list(continues(ARMS, ARMS[0])) == [True, True, False]
    alloc = TwoStageAllocator()
    curve, looks = alloc.curve(ctx), alloc._fold(ctx, 0)["looks"]
    rows = np.arange(2)
    seen_looks = set()
    for pt in curve.points:
        idx = np.asarray([ctx.arm_ids.index(a) for a in pt.arm_ids])
        a1 = looks(pt.params["lam"])  # the per-task table's arm at this price, its first sample
        seen_looks |= set(a1.tolist())
        own = test.energy_j[rows, idx]
        cont = np.asarray([continues(ARMS, ARMS[a])[j] for a, j in zip(a1, idx, strict=True)])
        stage1 = np.where(cont, 0.0, test.energy_j[rows, a1])  # an arm that does not continue the look pays it
        overhead = pt.energy_j - own - stage1
        assert (overhead >= 0).all() and (overhead < 0.05).all()
        assert list(pt.correct) == list(test.correct[rows, idx])
    assert seen_looks == {0, 2}  # the cheap arm where the table's price takes it, the big one at the top
    chosen = {pt.arm_ids for pt in curve.points}
    assert (ARMS[0].arm_id, ARMS[0].arm_id) in chosen  # at a high price both stop after the look
    assert (ARMS[2].arm_id, ARMS[2].arm_id) in chosen  # at the table's top both look at (and keep) the big arm
    assert (ARMS[0].arm_id, ARMS[2].arm_id) in chosen  # between: the confident query stops, the unsure one escalates


# ---------------------------------------------------------------- export: ttc allocate --probe-model, the pyfunc


@pytest.fixture(scope="module")
def small_policy(small_store, tmp_path_factory) -> Path:
    from store.loader import load_samples
    from train.dataset import load_probes
    from train.fit import TrainConfig, fit_policy

    samples = load_samples(small_store)
    ids = sorted(samples["query_id"].unique())
    cfg = TrainConfig(feature_set="text+probe", n_trials=0, num_threads=1)
    out = tmp_path_factory.mktemp("small_policy") / "b"
    return fit_policy(samples, ids, cfg, out, probes=load_probes(small_store, "smollm2-135m"))


def test_ttc_allocate_computes_the_probes_collection_stored_and_decides_the_same(small_store, small_policy, tmp_path):
    from typer.testing import CliRunner

    from store.loader import load_samples
    from train.dataset import load_probes
    from ttc.bundle_stages import prefill_probes
    from ttc.cli import app

    q = load_samples(small_store).drop_duplicates("query_id").sort_values("query_id")
    probes = load_probes(small_store, "smollm2-135m")
    stored = probes.rows(list(q["query_id"]))[0]
    fresh = prefill_probes("smollm2-135m", "cpu")(list(q["question"]), list(q["task"]))
    # the same prompts and model; bfloat16 sums differ a little with the batch's padding, so compare directions
    cos = (fresh * stored).sum(1) / np.linalg.norm(fresh, axis=1) / np.linalg.norm(stored, axis=1)
    assert fresh.shape == stored.shape and cos.min() > 0.999
    rows = zip(q["query_id"], q["question"], q["task"], strict=True)
    lines = [json.dumps({"id": i, "question": s, "task": t}) for i, s, t in rows]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    args = ["allocate", "--bundle", str(small_policy), "--input", str(tmp_path / "q.jsonl")]
    missing = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "x.jsonl")])
    assert missing.exit_code == 2 and "--probe-model smollm2-135m" in missing.output
    out = tmp_path / "d.jsonl"
    ok = CliRunner().invoke(app, [*args, "--output", str(out), "--probe-model", "smollm2-135m", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    got = [json.loads(line)["arm_id"] for line in out.read_text().splitlines()]
    policy = load_bundle(small_policy)
    want = [d.arm_id for d in policy.allocate(list(q["question"]), list(q["task"]), probe=fresh)]
    assert got == want


def test_the_mlflow_pyfunc_reads_a_probe_column(probe_bundle, tmp_path):
    import mlflow

    from serve.mlflow_log import log_policy_model

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("p", artifact_location=tmp_path.as_uri()))
        model = mlflow.pyfunc.load_model(log_policy_model(probe_bundle))
        questions, tasks, hard = synthetic_questions(5, seed=4)
        raw = synthetic_probe(hard, 4)
        df = pd.DataFrame({"question": questions, "task": tasks, "probe": [json.dumps(r.tolist()) for r in raw]})
        got = list(model.predict(df)["arm_id"])
        with pytest.raises(Exception, match="'probe' column"):
            model.predict(df.drop(columns=["probe"]))
    finally:
        mlflow.set_tracking_uri(old)
    want = [d.arm_id for d in load_bundle(probe_bundle).allocate(questions, tasks, probe=raw.astype(np.float64))]
    assert got == want


def test_the_probe_benchmark_compares_three_policies_cross_fitted_on_a_real_store(small_store):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_probe", Path(__file__).parents[1] / "benchmarks" / "probe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    samples, probes, evs, table = bench.run(str(small_store), 3, "query", 20, 0, None, 0)
    assert [r[0] for r in table] == ["learned text", "two_stage (text)", "learned text+probe"]
    for row in table:
        assert 0.0 <= float(row[1]) <= 1.0  # held-out Brier
    assert evs["text+probe"].ctx.folds[0].policy.probe_model == probes.model == "smollm2-135m"
    assert bench._latency(evs["text+probe"], probes, n=200) < 5.0  # ms per query, prefill excluded
    import policy.forest

    cells = policy.forest.ALL_NODES_CELLS
    first, batch, warm, cold = bench._stage_two_latency(samples, n_one=bench.BLOCK + 2, n_batch=8)
    assert first and batch > 0 and len(warm) == len(cold) == 3 and all(t > 0 for t in warm + cold)
    assert policy.forest.ALL_NODES_CELLS == cells  # the step-walk timing put the evaluator back


def test_the_train_stage_fits_the_probe_pca_on_its_training_split_only(small_store):
    from store.loader import load_samples
    from train.dataset import load_probes
    from train.fit import TrainConfig, prepare

    samples = load_samples(small_store)
    data, sp = prepare(samples, TrainConfig(feature_set="text+probe", n_trials=0), small_store)
    train_raw = load_probes(small_store, "smollm2-135m").rows(list(sp.train_query_ids))[0]
    assert len(sp.test_query_ids) > 0
    assert np.allclose(data.probe_reduction.mean, train_raw.astype(np.float64).mean(axis=0))
    assert "probe_pc_15" in data.feature_names


def test_ttc_train_writes_the_stage_two_rule_when_the_store_holds_token_logprobs(small_store, tmp_path):
    from store.loader import load_samples
    from train.fit import TrainConfig, fit_policy
    from train.two_stage import stage_one_signals

    samples = load_samples(small_store)
    ids = sorted(samples["query_id"].unique())
    auto = load_bundle(fit_policy(samples, ids[:10], TrainConfig(n_trials=0, num_threads=1), tmp_path / "a"))
    first = next(a for a in auto.arms if a.arm_id == auto.first_arm)
    assert first.n == 1 and "stage2.json" in auto.files
    q = samples.drop_duplicates("query_id").set_index("query_id").loc[ids[10:]]
    sig = stage_one_signals(samples, ids[10:], first)
    after = auto.decide_after_look(q["question"].tolist(), sig, q["task"].tolist(), query_ids=ids[10:])
    assert [d.query_id for d in after] == ids[10:] and all(d.arm_id in auto.arm_ids for d in after)
    assert all(d.action in ("stop", "continue", "switch") for d in after)
    off = TrainConfig(n_trials=0, num_threads=1, two_stage="off")
    assert load_bundle(fit_policy(samples, ids[:10], off, tmp_path / "o")).first_arm is None
    no_signals = samples.drop(columns=["token_logprob"])
    with pytest.raises(UsageError, match="token log-probs"):
        fit_policy(no_signals, ids[:10], TrainConfig(n_trials=0, num_threads=1, two_stage="on"), tmp_path / "n")
