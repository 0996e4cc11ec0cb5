"""The exported policy, read side: `load_bundle` checks a bundle and opens it as a `Policy`.

Layout of a bundle (schema 2):

    policy.json          schema_version, arm ids, model names (arm-feature order),
                         feature set name+version, row feature names, decision
                         rule, energy meter and source, metrics, optional isotonic
                         calibration table, ONNX input/output names, sha256 of
                         every other file, and one digest over the whole bundle
                         (optionally signed with HMAC-SHA256)
    success.trees.json   P(correct) of a (query, arm) row: trees as plain JSON arrays
    energy.trees.json    log(joules) of a (query, arm) row: the same
    success.txt          the same two models as LightGBM text (optional backend)
    energy.txt
    success.onnx         ... and as ONNX (optional backend)
    energy.onnx
    parity.json          numpy vs LightGBM vs ONNX on reference rows
    probe.json           "text+probe" policies only: the probe's model, layer
                         and PCA (mean, components) as plain arrays (policy/probe.py)
    stage2.json          optional: the look-then-decide rule (policy/two_stage.py): the
                         first arm, the price, and the stage-2 success trees as plain data
    tasks.json           optional: each trained task's feature column, the global table
                         that answers for a task the trees never saw, and the tasks
                         adapted from a few labelled queries (policy/tasks.py)
    frontier.json        optional: the price frontier on the training queries and the
                         default price chosen on it (policy/frontier.py)
    prompts.json         optional: the prompt format each model was trained on and each
                         task's few-shot demos (policy/prompts.py)

Loading reads exactly those names (policy/bundle_files.py: no links, capped
sizes, nothing else in a zip), checks every field's type (policy/manifest.py),
the digest (and the signature when a key is given), and that the feature set
matches what this package computes; anything else is a `BundleError`. The
default backend evaluates the plain-data trees with numpy after checking their
structure, so an untrusted bundle can neither run code nor crash the process.
Writing lives in train/export.py. This module never imports torch, mlflow,
lightgbm or onnxruntime.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy.allocate import PRICE, DecisionRule, allocate, allocate_budget, allocate_price
from policy.arms import Arm
from policy.bundle_files import BUNDLE_FILES, KNOWN_FILES, MANIFEST, PARITY, REQUIRED_FILES, read_blobs
from policy.errors import BundleError, UsageError
from policy.features import (
    FeatureSet,
    arm_block,
    get_feature_set,
    row_names,
    with_hashed_tasks,
)
from policy.frontier import FRONTIER_FILE, Frontier
from policy.manifest import (
    ENERGY_TARGET,
    SCHEMA_VERSION,
    UPGRADES,
    Manifest,
    parse_manifest,
    resolve_key,
    upgrade_manifest,
    verify,
)
from policy.probe import PROBE_FILE, ProbeReduction
from policy.prompts import PROMPTS_FILE, Prompts
from policy.records import ENERGY_SOURCES, Decision
from policy.runtime import BACKENDS, DEFAULT_BACKEND, Backend, calibrate, make_backend
from policy.tasks import KNOWN, TASKS_FILE, UNKNOWN, TaskTable
from policy.two_stage import (
    STAGE2_FEATURES,
    STAGE2_FILE,
    StageTwo,
    StageTwoDecision,
    check_signals,
    choose,
    continues,
    marginal_joules,
)

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST",
    "PARITY",
    "SCHEMA_VERSION",
    "UPGRADES",
    "Manifest",
    "Policy",
    "load_bundle",
    "upgrade_manifest",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- checks


def _check_manifest(m: Manifest) -> tuple[FeatureSet, list[Arm], DecisionRule]:
    try:
        fs = get_feature_set(str(m.feature_set.get("name")))
    except UsageError as exc:
        raise BundleError(f"the bundle's feature set is not provided by this package: {exc}") from exc
    if m.feature_set.get("version") != fs.version:
        raise BundleError(
            f"the bundle was trained on feature set {fs.name!r} version {m.feature_set.get('version')}, "
            f"but this package computes version {fs.version}; retrain and re-export the policy"
        )
    expected = row_names(fs, list(m.models))
    if list(m.row_features) != expected:
        diff = next((i for i, (a, b) in enumerate(zip(m.row_features, expected, strict=False)) if a != b), None)
        raise BundleError(
            f"the bundle's row features differ from what feature set {fs.name!r} v{fs.version} computes "
            f"({len(m.row_features)} vs {len(expected)} columns, first difference at column {diff}); "
            "retrain and re-export the policy"
        )
    try:
        arms = [Arm.parse(a) for a in m.arms]
        rule = DecisionRule.from_dict(dict(m.rule))
    except UsageError as exc:
        raise BundleError(f"policy.json: {exc}") from exc
    if len(set(m.arms)) != len(m.arms) or len(set(m.models)) != len(m.models):
        raise BundleError("policy.json lists an arm or a model twice")
    stray = sorted({a.model for a in arms} - set(m.models))
    if stray:
        raise BundleError(f"arms use models {stray} that are not in the bundle's model list {m.models}")
    if m.energy_source not in ENERGY_SOURCES:
        raise BundleError(f"energy_source must be one of {ENERGY_SOURCES}, got {m.energy_source!r}")
    if m.energy_target != ENERGY_TARGET:
        raise BundleError(f"energy_target {m.energy_target!r} is unknown; this package reads {ENERGY_TARGET!r}")
    return fs, arms, rule


def _verify_files(m: Manifest, blobs: Mapping[str, bytes], where: Path) -> None:
    """Every file policy.json lists is present with its sha256, and nothing unlisted is there."""
    for name in REQUIRED_FILES:
        if name not in m.files:
            raise BundleError(f"policy.json lists no sha256 for {name}; the bundle is incomplete, re-export it")
    unlisted = sorted(set(blobs) - set(m.files) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{where} holds {unlisted}, which policy.json does not list; re-export the bundle")
    for name, digest in sorted(m.files.items()):
        if name not in KNOWN_FILES or name == MANIFEST:
            raise BundleError(f"policy.json lists {name!r}, which is not a bundle file")
        if name not in blobs:
            raise BundleError(f"{where} lacks {name}, which policy.json lists; the bundle is incomplete")
        if sha256(blobs[name]) != digest:
            raise BundleError(
                f"{name} in {where} does not match the sha256 in policy.json: the file was changed after export; "
                "re-export the bundle or restore the original file"
            )


# ---------------------------------------------------------------- the loaded policy


class Policy:
    """A loaded bundle: computes features, predicts (p, joules) per arm, and allocates."""

    def __init__(self, manifest: Manifest, backend: Backend, files: Mapping[str, bytes]) -> None:
        self.manifest = manifest
        self.feature_set, self.arms, self.rule = _check_manifest(manifest)
        self.arm_ids = [a.arm_id for a in self.arms]
        self.models = list(manifest.models)
        self.backend = backend
        self.energy_meter = manifest.energy_meter
        self.energy_source = manifest.energy_source
        self.metrics = dict(manifest.metrics)
        #: the bundle's verified files other than policy.json, as loaded (train/export.py writes them back)
        self.files = dict(files)
        self._arm_block = arm_block(self.arms, self.models)
        #: the stage-2 rows' text columns (the same for every bundle; counted once, not per decision)
        self._stage2_text_width = len(get_feature_set(STAGE2_FEATURES).names())
        #: the probe's model, layer and PCA ("text+probe" policies), checked on load
        self.probe_reduction = _probe_reduction(self.feature_set, self.files)
        #: the look-then-decide rule (stage2.json), checked on load; None when the bundle carries none
        self.stage_two = _stage_two(self.files, self.arm_ids, self.models)
        #: per first arm (its index), which arms continue its sample: asked per decision, set once here
        self._continues = [continues(self.arms, a) for a in self.arms]
        #: known task columns, the unknown-task rule and adapted tasks (tasks.json); None in older bundles
        self.task_table = (
            TaskTable.from_json(self.files[TASKS_FILE], self.arm_ids) if TASKS_FILE in self.files else None
        )
        #: the price frontier on the training queries and the default price (frontier.json); None in older bundles
        self.frontier = Frontier.from_json(files[FRONTIER_FILE], self.arm_ids) if FRONTIER_FILE in files else None
        #: the prompt each model was trained on, per task (prompts.json); None in older bundles
        self.prompts = Prompts.from_json(files[PROMPTS_FILE], self.models) if PROMPTS_FILE in files else None

    def with_rule(self, rule: DecisionRule | Mapping[str, Any]) -> Policy:
        """A new policy with `rule` in place of the stored one (checked); this policy is unchanged.

        Its manifest's digest is stale until train.export.write_policy writes it out.
        """
        try:
            new = rule if isinstance(rule, DecisionRule) else DecisionRule.from_dict(dict(rule))
        except TypeError as exc:
            raise UsageError(f"bad decision rule: {exc}") from exc
        manifest = dataclasses.replace(self.manifest, rule=new.to_dict(), digest="", signature=None)
        return Policy(manifest, self.backend, self.files)

    def with_files(self, files: Mapping[str, bytes]) -> Policy:
        """A new policy with `files` added or replaced (checked as on load); digest stale until written out."""
        manifest = dataclasses.replace(self.manifest, digest="", signature=None)
        return Policy(manifest, self.backend, {**self.files, **files})

    def with_task_table(self, table: TaskTable) -> Policy:
        """A new policy with `table` as its tasks.json (train/adapt.py); digest stale until written out."""
        return self.with_files({TASKS_FILE: table.to_json()})

    @property
    def known_tasks(self) -> tuple[str, ...] | None:
        """The tasks the trees were trained on (None: a bundle without tasks.json does not record them)."""
        return None if self.task_table is None else self.task_table.known_tasks

    def task_status(self, task: str | None) -> str:
        """How this policy decides for `task`: "known" (trained on), "adapted" (`ttc adapt`) or "unknown".

        An unknown task (no task, or a name the bundle does not know) gets the bundle's k = 0 rule:
        the global table of policy/tasks.py. A bundle without tasks.json reads any name as given.
        """
        if self.task_table is None:
            return UNKNOWN if task is None else KNOWN
        return self.task_table.status(task)

    @property
    def needs_probe(self) -> bool:
        """True when the feature set takes raw probe vectors (store/probes.py) beside the question text."""
        return self.feature_set.probe

    @property
    def probe_model(self) -> str | None:
        """The model whose prefill the probe reads (None for a text-only policy)."""
        return self.probe_reduction.model if self.probe_reduction is not None else None

    @property
    def stage_two_signals(self) -> tuple[str, ...]:
        """The first-sample signal columns the stage-2 rule reads (empty: no stage-2 rule)."""
        return self.stage_two.signals if self.stage_two is not None else ()

    @property
    def first_arm(self) -> str | None:
        """The one-sample arm to draw first before `decide_after_look` for a query of no known task
        (None: no stage-2 rule); `first_arm_for` gives each task's."""
        return self.stage_two.first_arm if self.stage_two is not None else None

    def first_arm_for(self, task: str | None) -> str | None:
        """The one-sample arm to draw first for a query of `task` (its own look since issue 18, else `first_arm`)."""
        return self.stage_two.rule_for(task).first_arm if self.stage_two is not None else None

    def warm_stage_two(self) -> None:
        """Decide once after each first look the stage-2 rule names (no stage-2 rule: nothing), so its trees are
        specialised for the bundle's arms now and not in a client's first decision after that look (a few
        hundred ms a look on a 2-core machine; the servers call this as they start)."""
        s2 = self.stage_two
        if s2 is None:
            return
        task_of = {look: task for task, look in s2.first_arms.items()}  # one task per look that is not the default
        signals = np.zeros((1, len(s2.signals)), dtype=np.float32)
        for task in (None, *(task_of[look] for look in s2.looks if look in task_of)):
            self.decide_after_look(["What is 7 + 5?"], signals, [task])

    def describe(self) -> str:
        r = self.rule
        how = f"price lam={r.lam:g} acc/J" if r.mode == PRICE else f"budget {r.budget_j:g} J/query"
        return (
            f"policy over {len(self.arms)} arms ({', '.join(self.models)}), features {self.feature_set.name} "
            f"v{self.feature_set.version}{self._probe_words()}, rule {how}, "
            f"p_floor {r.p_floor:g}, energy {self.energy_source} by meter {self.energy_meter!r}, "
            f"backend {self.backend.name}"
            + ("" if self.stage_two is None else f", look-then-decide from {self._first_arms_words()}")
        )

    def _first_arms_words(self) -> str:
        s2 = self.stage_two
        own = [a for a in s2.first_arm_ids if a != s2.first_arm]
        return s2.first_arm + (f" ({len(s2.first_arms)} tasks' own: {', '.join(own)})" if own else "")

    def _probe_words(self) -> str:
        r = self.probe_reduction
        return "" if r is None else f" + probe of {r.model} layer {r.layer} ({r.width} -> {r.components.shape[0]})"

    def __repr__(self) -> str:
        return f"Policy({self.describe()})"

    def query_features(
        self, questions: Sequence[str], tasks: Sequence[str | None] | None = None, probe: np.ndarray | None = None
    ) -> np.ndarray:
        if isinstance(questions, str):
            raise UsageError("questions must be a list of strings, not one string")
        reduced = None
        if self.probe_reduction is not None:
            r = self.probe_reduction
            if probe is None:
                raise UsageError(
                    f"this policy uses feature set {self.feature_set.name!r}: pass probe= raw probe vectors of shape "
                    f"(n_questions, {r.width}) from model {r.model!r} (`ttc allocate --probe-model {r.model}`)"
                )
            reduced = r.reduce(probe)
        try:
            columns = None if self.task_table is None else self.task_table.columns
            return self.feature_set.transform(list(questions), tasks, reduced, columns)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def predict_features(self, query_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, energy_j), each (n_queries, n_arms), from query feature rows."""
        nq, na = query_x.shape[0], len(self.arms)
        if nq == 0:
            return np.zeros((0, na)), np.zeros((0, na))
        p_raw, log_e = self.backend.predict_grid(np.asarray(query_x, dtype=np.float32), self._arm_block)
        p = calibrate(p_raw, self.manifest.calibration)
        return p.reshape(nq, na), np.exp(log_e).reshape(nq, na)

    def predict(
        self, questions: Sequence[str], tasks: Sequence[str | None] | None = None, probe: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p, energy_j): predicted success probability and joules, each (n_questions, n_arms), arms in `arm_ids`.

        A question of an unknown or adapted task gets its row from the task table (`route_tasks`).
        """
        return self.route_tasks(*self.predict_features(self.query_features(questions, tasks, probe)), tasks)

    def route_tasks(
        self, p: np.ndarray, e: np.ndarray, tasks: Sequence[str | None] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p, energy_j) from `predict_features`, with the task table's rows for unknown and adapted tasks."""
        return (p, e) if self.task_table is None else self.task_table.route(p, e, tasks)

    def allocate(
        self,
        questions: Sequence[str],
        tasks: Sequence[str | None] | None = None,
        query_ids: Sequence[str] | None = None,
        probe: np.ndarray | None = None,
        lam: float | None = None,
        budget_j: float | None = None,
        total_budget_j: float | None = None,
        on_infeasible: str = "raise",
    ) -> list[Decision]:
        """One `Decision` per question under the stored rule, or a price `lam` / a budget replacing it.

        `budget_j` is a mean per question and `total_budget_j` a total; in budget
        mode the questions form one batch and the budget holds for them together.
        """
        p, e = self.predict(questions, tasks, probe)
        return self.allocate_predictions(p, e, query_ids, lam, budget_j, total_budget_j, on_infeasible)

    def allocate_predictions(
        self,
        p: np.ndarray,
        e: np.ndarray,
        query_ids: Sequence[str] | None = None,
        lam: float | None = None,
        budget_j: float | None = None,
        total_budget_j: float | None = None,
        on_infeasible: str = "raise",
    ) -> list[Decision]:
        """`allocate` from predictions already made (as returned by `predict`)."""
        ids = [str(i) for i in range(len(p))] if query_ids is None else [str(q) for q in query_ids]
        budget_given = budget_j is not None or total_budget_j is not None
        if lam is not None and budget_given:
            raise UsageError("give a price (lam) or a budget (budget_j / total_budget_j), not both")
        p_floor = self.rule.p_floor
        if budget_given:
            return allocate_budget(p, e, self.arm_ids, ids, budget_j, total_budget_j, p_floor, on_infeasible)
        if lam is not None:
            return allocate_price(p, e, self.arm_ids, ids, float(lam), p_floor)
        return allocate(p, e, self.arm_ids, ids, self.rule, on_infeasible)

    def decide_after_look(
        self,
        questions: Sequence[str],
        first_sample: Any,
        tasks: Sequence[str | None] | None = None,
        query_ids: Sequence[str] | None = None,
        probe: np.ndarray | None = None,
        first_energy_j: Sequence[float] | None = None,
        lam: float | None = None,
        first_text: Sequence[str | None] | None = None,
    ) -> list[StageTwoDecision]:
        """Stage 2 after one sample of each query's first arm (`first_arm_for(task)`): stop, continue it
        (more samples, a longer cap) or switch.

        `first_sample`: (n, 5) signals in `FIRST_SAMPLE_NAMES` order (policy.features.first_sample_signals),
        or every column of `stage_two_signals`; `first_text`: each first sample's text up to its cap,
        needed when the rule reads the answer checks (`stage_two_signals` longer than five) and only
        the five confidence columns are given (older rules ignore it);
        `first_energy_j`: the first sample's metered joules (default: the policy's prediction for
        the query's first arm); `lam` replaces the stored stage-2 price.
        """
        s2 = self.stage_two
        if s2 is None:
            raise UsageError("this bundle carries no stage-2 rule; retrain with samples that hold token log-probs")
        if isinstance(questions, str):
            raise UsageError("questions must be a list of strings, not one string")
        n = len(questions)
        task_list = [None] * n if tasks is None else list(tasks)
        sig = check_signals(first_sample, n, s2.signals, first_text)
        x = self.query_features(questions, tasks, probe)
        # joules only: the first-stage success model plays no part after the look
        e = np.exp(self.backend.predict_energy_grid(np.asarray(x, dtype=np.float32), self._arm_block))
        rules = [s2.rule_for(t) for t in task_list]
        a1 = np.asarray([self.arm_ids.index(r.first_arm) for r in rules], dtype=np.int64)
        e1 = e[np.arange(n), a1] if first_energy_j is None else np.asarray(first_energy_j, dtype=np.float64).reshape(-1)
        if e1.shape != (n,) or not np.isfinite(e1).all() or (e1 < 0).any():
            raise UsageError(f"first_energy_j must be {n} finite joules >= 0, one per question")
        price = s2.lam if lam is None else float(lam)
        if not (np.isfinite(price) and price >= 0):
            raise UsageError(f"lam (accuracy per joule) must be finite and >= 0, got {lam}")
        n_text = self._stage2_text_width
        # stage 2 was trained on hashed task columns (train/two_stage.py), whatever tasks.json names
        text_x = x[:, :n_text] if self.task_table is None else with_hashed_tasks(x[:, :n_text], task_list)
        query_x = np.hstack([text_x, sig])
        p2, marginal = np.zeros((n, len(self.arms))), np.zeros((n, len(self.arms)))
        idx, conts = np.zeros(n, dtype=np.int64), np.zeros((n, len(self.arms)), dtype=bool)
        for first in sorted(set(a1.tolist())):  # each first look's rows through that look's rule
            rows = np.flatnonzero(a1 == first)
            rule = rules[int(rows[0])]
            conts[rows] = self._continues[first]
            p2[rows] = rule.predict_grid(query_x[rows], self._arm_block)
            marginal[rows] = marginal_joules(e[rows], e1[rows], conts[rows[0]])
            idx[rows] = choose(p2[rows], marginal[rows], price)
        ids = [str(i) for i in range(n)] if query_ids is None else [str(q) for q in query_ids]
        return [
            StageTwoDecision(
                q, self.arm_ids[j], _action(j, int(a1[i]), conts[i]), float(p2[i, j]), float(marginal[i, j]), price
            )
            for i, (q, j) in enumerate(zip(ids, idx.tolist(), strict=True))
        ]


def _action(j: int, first: int, cont: np.ndarray) -> str:
    return "stop" if j == first else "continue" if cont[j] else "switch"


def _stage_two(files: Mapping[str, bytes], arm_ids: list[str], models: list[str]) -> StageTwo | None:
    """The bundle's stage-2 rule, checked against its arms and row width; None when it has none."""
    if STAGE2_FILE not in files:
        return None
    # the width less the signals: stage2.json names its signals (five, or seven with the answer checks)
    return StageTwo.from_json(files[STAGE2_FILE], arm_ids, len(row_names(get_feature_set(STAGE2_FEATURES), models)))


def _probe_reduction(fs: FeatureSet, files: Mapping[str, bytes]) -> ProbeReduction | None:
    """The bundle's probe reduction when its feature set reads a probe; a probe file elsewhere is refused."""
    if not fs.probe:
        if PROBE_FILE in files:
            raise BundleError(
                f"feature set {fs.name!r} reads no probe, yet the bundle holds {PROBE_FILE}; re-export it"
            )
        return None
    if PROBE_FILE not in files:
        raise BundleError(f"feature set {fs.name!r} needs {PROBE_FILE} (the probe's reduction); re-export the bundle")
    return ProbeReduction.from_json(files[PROBE_FILE])


def load_bundle(
    path: str | Path,
    backend: str = DEFAULT_BACKEND,
    key: bytes | str | None = None,
    require_signature: bool = True,
) -> Policy:
    """Open a bundle folder or .zip as a `Policy`, after checking files, types, digest and feature set.

    With a `key` (or the environment variable TTC_BUNDLE_KEY) the bundle must
    carry an HMAC-SHA256 signature made with that key; `require_signature=False`
    accepts an unsigned one (a signature that is there is still checked).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}, known: {', '.join(sorted(BACKENDS))}")
    path = Path(path)
    secret = resolve_key(key)
    blobs = read_blobs(path)
    manifest = parse_manifest(blobs[MANIFEST])
    files = {k: v for k, v in blobs.items() if k != MANIFEST}
    _verify_files(manifest, files, path)
    verify(manifest, files, secret, str(path), require_signature)
    _check_manifest(manifest)
    be = make_backend(backend, files, manifest.onnx, len(manifest.row_features))
    return Policy(manifest, be, files)
