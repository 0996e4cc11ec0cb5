"""A small synthetic (query, arm) set and boosters trained on it, for policy tests and the benchmark.

Stands in for the real collection until it exists. The label has real
structure: arithmetic questions with more and bigger numbers are harder, more
votes and a longer cap help (with diminishing returns), the larger model is
better; energy grows with n, with the tokens an answer needs (capped by L) and
with model size. Runs in a second or two on one core.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from policy.allocate import DecisionRule
from policy.arms import Arm, build_grid
from policy.features import get_feature_set, row_matrix

MODELS = ["tiny-135m", "tiny-360m"]
_J_PER_TOKEN = {"tiny-135m": 0.02, "tiny-360m": 0.05}
_SKILL = {"tiny-135m": -0.4, "tiny-360m": 0.6}


def synthetic_arms() -> list[Arm]:
    return build_grid(MODELS, [1, 2, 4, 8], [32, 128], [0.7], greedy=True)


def synthetic_questions(n: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """(questions, tasks, difficulty in [0, 1]) of simple arithmetic word problems."""
    rng = np.random.default_rng(seed)
    questions, tasks, hard = [], [], []
    for _ in range(n):
        k = int(rng.integers(1, 7))
        digits = int(rng.integers(1, 5))
        nums = [int(rng.integers(10 ** (digits - 1), 10**digits)) for _ in range(k + 1)]
        ops = rng.choice(["plus", "minus", "times"], size=k)
        body = f"Start with {nums[0]}"
        for op, v in zip(ops, nums[1:], strict=True):
            body += f", then {op} {v}"
        task = "chain_sum" if rng.random() < 0.5 else "gsm8k"
        questions.append(body + ". What is the result?")
        tasks.append(task)
        hard.append(min(1.0, (k - 1) / 5 * 0.6 + (digits - 1) / 3 * 0.4))
    return questions, tasks, np.asarray(hard)


def synthetic_outcomes(hard: np.ndarray, arms: list[Arm], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft success label, energy_j, true success prob), each (n_queries, n_arms)."""
    rng = np.random.default_rng(seed + 1)
    nq = len(hard)
    p_true = np.zeros((nq, len(arms)))
    energy = np.zeros((nq, len(arms)))
    need_tokens = 24 + 120 * hard  # tokens an answer needs
    for j, a in enumerate(arms):
        fits = np.clip(a.max_new_tokens / need_tokens, 0, 1)
        vote_gain = 0.5 * np.log2(a.n) if a.temperature > 0 else 0.2
        logit = 3.0 - 6.0 * hard + _SKILL[a.model] + vote_gain
        p_true[:, j] = fits**2 / (1 + np.exp(-logit))
        tokens = np.minimum(need_tokens * rng.lognormal(0, 0.15, nq), a.max_new_tokens)
        energy[:, j] = a.n * (tokens + 40) * _J_PER_TOKEN[a.model] * rng.lognormal(0, 0.05, nq)
    # a soft label like ArmOutcome.correct_soft: mean of a few Bernoulli votes
    soft = rng.binomial(8, p_true) / 8.0
    return soft, energy, p_true


def synthetic_probe(hard: np.ndarray, seed: int = 0, width: int = 24) -> np.ndarray:
    """Raw probe-like vectors (n, width): a few directions track difficulty, the rest is noise."""
    rng = np.random.default_rng(seed + 2)
    n = len(hard)
    x = rng.normal(0, 0.3, (n, width))
    x[:, :3] += np.outer(hard, [2.0, -1.0, 0.5])
    return x.astype(np.float32)


def synthetic_reduction(seed: int = 0, n_queries: int = 240):
    """The probe PCA of the training queries' synthetic probes (what train.dataset fits)."""
    from policy.probe import fit_reduction

    _, _, hard = synthetic_questions(n_queries, seed)
    return fit_reduction(synthetic_probe(hard, seed), "smollm2-135m", 30)


def train_boosters(
    n_queries: int = 240,
    seed: int = 0,
    success_objective: str = "cross_entropy",
    n_trees: int = 30,
    feature_set: str = "text",
) -> tuple[lgb.Booster, lgb.Booster]:
    fs = get_feature_set(feature_set)
    arms = synthetic_arms()
    questions, tasks, hard = synthetic_questions(n_queries, seed)
    soft, energy, _ = synthetic_outcomes(hard, arms, seed)
    probe = synthetic_reduction(seed, n_queries).reduce(synthetic_probe(hard, seed)) if fs.probe else None
    rows = row_matrix(fs.transform(questions, tasks, probe), arms, MODELS)
    y = soft.reshape(-1)
    if success_objective == "binary":
        y = (y >= 0.5).astype(np.float64)
    params = {"num_leaves": 15, "learning_rate": 0.15, "min_data_in_leaf": 10, "verbose": -1, "seed": seed}
    params["num_threads"] = 1
    success = lgb.train({**params, "objective": success_objective}, lgb.Dataset(rows, y), n_trees)
    e_model = lgb.train({**params, "objective": "regression"}, lgb.Dataset(rows, np.log(energy.reshape(-1))), n_trees)
    return success, e_model


def build_synthetic_bundle(
    out_dir: str | Path,
    rule: DecisionRule | None = None,
    success_objective: str = "cross_entropy",
    calibration: dict | None = None,
    seed: int = 0,
    feature_set: str = "text",
) -> Path:
    from train.export import write_bundle

    success, energy = train_boosters(seed=seed, success_objective=success_objective, feature_set=feature_set)
    fs = get_feature_set(feature_set)
    ref_q, ref_t, ref_hard = synthetic_questions(64, seed + 100)
    reduction = synthetic_reduction(seed) if fs.probe else None
    ref_probe = reduction.reduce(synthetic_probe(ref_hard, seed + 100)) if fs.probe else None
    return write_bundle(
        out_dir,
        success,
        energy,
        synthetic_arms(),
        MODELS,
        fs,
        rule or DecisionRule("price", lam=0.002),
        {"synthetic": 1, "n_train_queries": 240},
        energy_meter="synthetic",
        energy_source="estimated",
        calibration=calibration,
        reference_x=fs.transform(ref_q, ref_t, ref_probe),
        probe_reduction=reduction,
    )


def rehash_bundle(bundle_dir: str | Path) -> Path:
    """Recompute every sha256 and the digest of a bundle folder, as someone who edits and re-hashes would."""
    import hashlib
    import json

    from policy.manifest import Manifest, bundle_digest

    folder = Path(bundle_dir)
    d = json.loads((folder / "policy.json").read_text())
    files = {n: (folder / n).read_bytes() for n in d["files"]}
    d["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    d["digest"] = bundle_digest(Manifest(**d), files)
    (folder / "policy.json").write_text(json.dumps(d))
    return folder
