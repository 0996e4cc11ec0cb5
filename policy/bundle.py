"""The exported policy: a folder (or one .zip) of model files plus a JSON sidecar.

Layout of a bundle:

    policy.json     schema_version, arm ids, model names (arm-feature order),
                    feature set name+version, row feature names, decision rule,
                    energy meter and source, metrics, optional isotonic
                    calibration table, ONNX input/output names, sha256 of every
                    other file
    success.txt     LightGBM text model: P(correct) of a (query, arm) row
    energy.txt      LightGBM text model: log(joules) of a (query, arm) row
    success.onnx    the same two models converted by onnxmltools
    energy.onnx
    parity.json     ONNX vs LightGBM on reference rows: max abs differences and
                    decision agreement

`write_bundle` writes it, `zip_bundle` packs it, `load_bundle` checks and opens
it as a `Policy`. Loading refuses (with `BundleError`) a bundle whose hashes do
not match, whose schema is unknown, or whose feature set differs from the one
this package computes; older schemas are upgraded by explicit functions in
`UPGRADES`. The bundle is data only: nothing is pickled, so loading an
untrusted bundle cannot run code. This module never imports torch,
transformers or mlflow, and imports lightgbm/onnxmltools only inside
`write_bundle`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from policy.allocate import PRICE, DecisionRule, allocate, allocate_budget, allocate_price
from policy.arms import Arm, arm_features
from policy.errors import BundleError, TTCError, UsageError
from policy.features import FeatureSet, get_feature_set, row_names
from policy.records import ENERGY_SOURCES, Decision
from policy.runtime import BACKENDS, Backend, calibrate, make_backend

SCHEMA_VERSION = 1
MANIFEST = "policy.json"
MODEL_FILES = ("success.txt", "energy.txt", "success.onnx", "energy.onnx")
PARITY = "parity.json"
BUNDLE_FILES = (MANIFEST, *MODEL_FILES, PARITY)
ENERGY_TARGET = "log_joules"
PARITY_TOL = 1e-5
SUCCESS_OBJECTIVES = ("binary", "cross_entropy", "xentropy")
ENERGY_OBJECTIVES = ("regression", "regression_l2", "regression_l1", "l2", "l1", "mse", "mae", "huber", "quantile")
# Used for parity checks when the caller gives no reference rows.
_REFERENCE_QUESTIONS = (
    "What is 7 + 5?",
    "Tom has 3 apples and buys 12 more. How many apples does he have?",
    "A train travels 120 km in 1.5 hours. What is its average speed in km per hour?",
    "Compute 1234 * 5678 - 91011.",
    "If x + 2 = 9, what is x?",
    "Sara saves 15 dollars each week for 26 weeks, then spends 140. How much is left?",
    "hello",
    "",
)


@dataclass(frozen=True)
class Manifest:
    """The parsed policy.json of the current schema."""

    arms: list[str]
    models: list[str]
    feature_set: dict[str, Any]
    row_features: list[str]
    rule: dict[str, Any]
    energy_meter: str
    energy_source: str
    metrics: dict[str, Any]
    files: dict[str, str]
    onnx: dict[str, Any]
    success_objective: str
    energy_target: str = ENERGY_TARGET
    calibration: dict[str, list[float]] | None = None
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- schema upgrades


def _v0_to_v1(d: dict[str, Any]) -> dict[str, Any]:
    """v0 (pre-release exporter): flat keys, `lambda` instead of `lam`, no p_floor, `sha256` map."""
    rule = dict(d.get("rule", {}))
    if "lambda" in rule:
        rule["lam"] = rule.pop("lambda")
    rule.setdefault("p_floor", 0.05)
    rule.setdefault("budget_j", None)
    return {
        "schema_version": 1,
        "arms": d["arm_ids"],
        "models": d["model_names"],
        "feature_set": {"name": d["features"]["name"], "version": d["features"]["version"]},
        "row_features": d["feature_names"],
        "rule": rule,
        "energy_meter": d["energy_meter"],
        "energy_source": d["energy_source"],
        "metrics": d.get("metrics", {}),
        "files": d["sha256"],
        "onnx": d["onnx"],
        "success_objective": d.get("success_objective", "cross_entropy"),
        "energy_target": ENERGY_TARGET,
        "calibration": d.get("calibration"),
        "created_utc": d.get("created_utc", ""),
    }


#: UPGRADES[v] turns a policy.json of schema v into schema v + 1.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def upgrade_manifest(d: dict[str, Any]) -> dict[str, Any]:
    """Bring a raw policy.json dict to `SCHEMA_VERSION`, one explicit step at a time."""
    version = d.get("schema_version", 0)
    if not isinstance(version, int) or version < 0:
        raise BundleError(f"policy.json has a malformed schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema_version {version} is newer than this package reads ({SCHEMA_VERSION}); "
            "upgrade ttc-allocator to load it"
        )
    while version < SCHEMA_VERSION:
        if version not in UPGRADES:
            raise BundleError(f"no upgrade from bundle schema_version {version}; re-export the policy")
        try:
            d = UPGRADES[version](d)
        except KeyError as exc:
            raise BundleError(f"policy.json of schema_version {version} lacks key {exc}; re-export the policy") from exc
        version = d["schema_version"]
    return d


# ---------------------------------------------------------------- checks


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"policy.json is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise BundleError("policy.json must hold a JSON object")
    d = upgrade_manifest(d)
    names = {f.name for f in dataclasses.fields(Manifest)}
    unknown = set(d) - names
    if unknown:
        raise BundleError(f"policy.json has unknown keys {sorted(unknown)} for schema_version {SCHEMA_VERSION}")
    try:
        return Manifest(**d)
    except TypeError as exc:
        raise BundleError(f"policy.json is incomplete: {exc}") from exc


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
    if not arms:
        raise BundleError("policy.json lists no arms")
    stray = sorted({a.model for a in arms} - set(m.models))
    if stray:
        raise BundleError(f"arms use models {stray} that are not in the bundle's model list {m.models}")
    if m.energy_source not in ENERGY_SOURCES:
        raise BundleError(f"energy_source must be one of {ENERGY_SOURCES}, got {m.energy_source!r}")
    if m.energy_target != ENERGY_TARGET:
        raise BundleError(f"energy_target {m.energy_target!r} is unknown; this package reads {ENERGY_TARGET!r}")
    if m.calibration is not None:
        _check_calibration(m.calibration, BundleError)
    return fs, arms, rule


def _check_calibration(table: Mapping[str, Any], exc: type[TTCError]) -> None:
    x, y = table.get("x"), table.get("y")
    if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or len(x) < 2:
        raise exc("calibration must be {'x': [...], 'y': [...]} of equal length >= 2")
    if any(b < a for a, b in zip(x, x[1:], strict=False)):
        raise exc("calibration x must be non-decreasing")
    if any(not 0.0 <= v <= 1.0 for v in y):
        raise exc("calibration y must lie in [0, 1]")


def _read_blobs(path: Path) -> dict[str, bytes]:
    """Every known bundle file, from a folder or a zip (files at its root or under one folder)."""
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        for name in BUNDLE_FILES:
            if (path / name).is_file():
                blobs[name] = (path / name).read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        # Members are read into memory by exact name, never extracted: no path in the archive is trusted.
        with zipfile.ZipFile(path) as zf:
            members = {Path(n).name: n for n in zf.namelist() if Path(n).name in BUNDLE_FILES}
            for name, member in members.items():
                blobs[name] = zf.read(member)
    elif path.exists():
        raise BundleError(f"{path} is neither a bundle folder nor a .zip of one")
    else:
        raise BundleError(f"no policy bundle at {path}; export one with write_bundle or `ttc export`")
    if MANIFEST not in blobs:
        raise BundleError(f"{path} holds no {MANIFEST}; it is not a policy bundle")
    return blobs


def _verify_hashes(m: Manifest, blobs: Mapping[str, bytes], where: Path) -> None:
    for name in MODEL_FILES:
        if name not in m.files:
            raise BundleError(f"policy.json lists no sha256 for {name}; the bundle is incomplete")
    for name, digest in sorted(m.files.items()):
        if name not in blobs:
            raise BundleError(f"{where} lacks {name}, which policy.json lists; the bundle is incomplete")
        if _sha256(blobs[name]) != digest:
            raise BundleError(
                f"{name} in {where} does not match the sha256 in policy.json: the file was changed after export; "
                "re-export the bundle or restore the original file"
            )


# ---------------------------------------------------------------- the loaded policy


class Policy:
    """A loaded bundle: computes features, predicts (p, joules) per arm, and allocates."""

    def __init__(self, manifest: Manifest, backend: Backend) -> None:
        self.manifest = manifest
        self.feature_set, self.arms, self.rule = _check_manifest(manifest)
        self.arm_ids = [a.arm_id for a in self.arms]
        self.models = list(manifest.models)
        self.backend = backend
        self.energy_meter = manifest.energy_meter
        self.energy_source = manifest.energy_source
        self.metrics = dict(manifest.metrics)
        self._arm_block = np.asarray([arm_features(a, self.models) for a in self.arms], dtype=np.float32)

    @property
    def needs_probe(self) -> bool:
        """True when the feature set takes probe values (collect/probe.py) beside the question text."""
        return self.feature_set.probe

    def describe(self) -> str:
        r = self.rule
        how = f"price lam={r.lam:g} acc/J" if r.mode == PRICE else f"budget {r.budget_j:g} J/query"
        return (
            f"policy over {len(self.arms)} arms ({', '.join(self.models)}), features {self.feature_set.name} "
            f"v{self.feature_set.version}{' + probe' if self.needs_probe else ''}, rule {how}, "
            f"p_floor {r.p_floor:g}, energy {self.energy_source} by meter {self.energy_meter!r}, "
            f"backend {self.backend.name}"
        )

    def __repr__(self) -> str:
        return f"Policy({self.describe()})"

    def query_features(
        self, questions: Sequence[str], tasks: Sequence[str | None] | None = None, probe: np.ndarray | None = None
    ) -> np.ndarray:
        if isinstance(questions, str):
            raise UsageError("questions must be a list of strings, not one string")
        if self.needs_probe and probe is None:
            raise UsageError(
                f"this policy uses feature set {self.feature_set.name!r}: pass probe= values of shape "
                f"(n_questions, 3) from collect/probe.py"
            )
        try:
            return self.feature_set.transform(list(questions), tasks, probe if self.needs_probe else None)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def rows(self, query_x: np.ndarray) -> np.ndarray:
        """(query, arm) rows, query-major; the same matrix as policy.features.row_matrix."""
        nq, na = query_x.shape[0], self._arm_block.shape[0]
        return np.hstack([np.repeat(query_x, na, axis=0), np.tile(self._arm_block, (nq, 1))]).astype(np.float32)

    def predict_features(self, query_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, energy_j), each (n_queries, n_arms), from query feature rows."""
        nq, na = query_x.shape[0], len(self.arms)
        if nq == 0:
            return np.zeros((0, na)), np.zeros((0, na))
        p_raw, log_e = self.backend.predict_rows(self.rows(query_x))
        p = calibrate(p_raw, self.manifest.calibration)
        return p.reshape(nq, na), np.exp(log_e).reshape(nq, na)

    def predict(
        self, questions: Sequence[str], tasks: Sequence[str | None] | None = None, probe: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p, energy_j): predicted success probability and joules, each (n_questions, n_arms), arms in `arm_ids`."""
        return self.predict_features(self.query_features(questions, tasks, probe))

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


def load_bundle(path: str | Path, backend: str = "lightgbm") -> Policy:
    """Open a bundle folder or .zip as a `Policy`, after checking schema, hashes and feature set."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}, known: {', '.join(sorted(BACKENDS))}")
    path = Path(path)
    blobs = _read_blobs(path)
    manifest = _parse_manifest(blobs[MANIFEST])
    _check_manifest(manifest)
    _verify_hashes(manifest, blobs, path)
    return Policy(manifest, make_backend(backend, blobs, manifest.onnx))


# ---------------------------------------------------------------- writing


def _float32_safe_thresholds(model_text: str) -> str:
    """Snap every numerical split threshold down to the largest float32 not above it.

    LightGBM compares a feature with a double threshold, ONNX tree ensembles with
    a float32 one. For float32 inputs (all the policy ever feeds) `x <= t` and
    `x <= floor32(t)` agree exactly, so the snapped model predicts the same and
    converts to ONNX without a row falling on the other side of a split.
    """
    lines = model_text.splitlines()
    # In LightGBM's text format a tree block lists threshold= before decision_type=,
    # so read every block's decision types first, then rewrite its thresholds.
    types_by_tree: dict[str, list[int]] = {}
    tree = ""
    for line in lines:
        if line.startswith("Tree="):
            tree = line
        elif line.startswith("decision_type="):
            types_by_tree[tree] = [int(v) for v in line.split("=", 1)[1].split()]
    out = []
    tree = ""
    for line in lines:
        if line.startswith("tree_sizes="):
            continue  # byte offsets of the tree blocks, stale once a threshold is rewritten
        if line.startswith("Tree="):
            tree = line
        if line.startswith("threshold=") and tree in types_by_tree:
            values = line.split("=", 1)[1].split()
            snapped = []
            for v, dt in zip(values, types_by_tree[tree], strict=True):
                if dt & 1:  # categorical split: the threshold is an index, leave it
                    snapped.append(v)
                    continue
                t = float(v)
                f = np.float32(t)
                if float(f) > t:
                    f = np.nextafter(f, np.float32(-np.inf))
                snapped.append(repr(float(f)))
            line = "threshold=" + " ".join(snapped)
        out.append(line)
    # Reloading and saving restores tree_sizes; thresholds print with 17 digits, so they round-trip.
    import lightgbm as lgb

    return lgb.Booster(model_str="\n".join(out) + "\n").model_to_string(num_iteration=-1)


def _objective(booster: Any) -> str:
    m = re.search(r"^objective=(\S+)", booster.model_to_string(num_iteration=-1), flags=re.M)
    return m.group(1) if m else str(booster.params.get("objective", ""))


def _as_binary(model_text: str) -> str:
    """A cross-entropy model as a binary one: both map the raw score through 1/(1+exp(-s)).

    onnxmltools converts 'binary' (a classifier with a logistic output) but not
    'cross_entropy', so the ONNX file is converted from this relabelled twin.
    """
    text = re.sub(r"^objective=.*$", "objective=binary sigmoid:1", model_text, flags=re.M)
    return re.sub(r"^\[objective: .*\]$", "[objective: binary]", text, flags=re.M)


def _to_onnx(model_text: str, n_features: int) -> bytes:
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = lgb.Booster(model_str=model_text)
    onx = onnxmltools.convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, n_features]))], zipmap=False
    )
    return onx.SerializeToString()


def write_bundle(
    out_dir: str | Path,
    success_booster: Any,
    energy_booster: Any,
    arms: Sequence[Arm | str],
    models: Sequence[str],
    feature_set: FeatureSet | str,
    rule: DecisionRule | Mapping[str, Any],
    metrics: Mapping[str, Any],
    energy_meter: str,
    energy_source: str,
    calibration: Mapping[str, Sequence[float]] | None = None,
    reference_x: np.ndarray | None = None,
) -> Path:
    """Write a bundle folder from two trained `lightgbm.Booster`s; returns its path.

    `success_booster` predicts P(correct) (objective "binary" or
    "cross_entropy"), `energy_booster` log(joules) (a regression objective),
    both on rows `row_names(feature_set, models)`. `reference_x` are query
    feature rows for the ONNX parity check (default: a few built-in
    questions). Raises `BundleError` when ONNX and LightGBM disagree by more
    than `PARITY_TOL` or choose different arms.
    """
    import lightgbm as lgb

    out = Path(out_dir)
    fs = get_feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    arm_ids = [a.arm_id if isinstance(a, Arm) else Arm.parse(str(a)).arm_id for a in arms]
    rule_obj = rule if isinstance(rule, DecisionRule) else DecisionRule.from_dict(dict(rule))
    models = [str(m) for m in models]
    names = row_names(fs, models)
    if energy_source not in ENERGY_SOURCES:
        raise UsageError(f"energy_source must be one of {ENERGY_SOURCES}, got {energy_source!r}")
    if not energy_meter:
        raise UsageError("name the energy meter the training joules came from (energy_meter=...)")
    for what, b in (("success", success_booster), ("energy", energy_booster)):
        if not isinstance(b, lgb.Booster):
            raise UsageError(f"{what}_booster must be a lightgbm.Booster, got {type(b).__name__}")
        if b.num_feature() != len(names):
            raise UsageError(
                f"{what}_booster takes {b.num_feature()} features but feature set {fs.name!r} with "
                f"{len(models)} models gives {len(names)} row features"
            )
    s_obj, e_obj = _objective(success_booster), _objective(energy_booster)
    if s_obj.split()[0] not in SUCCESS_OBJECTIVES:
        raise UsageError(f"success_booster objective {s_obj!r} is not one of {SUCCESS_OBJECTIVES}")
    if e_obj.split()[0] not in ENERGY_OBJECTIVES:
        raise UsageError(f"energy_booster objective {e_obj!r} must predict log(joules) directly: {ENERGY_OBJECTIVES}")
    if calibration is not None:
        calibration = {"x": [float(v) for v in calibration["x"]], "y": [float(v) for v in calibration["y"]]}
        _check_calibration(calibration, UsageError)
    try:
        metrics = json.loads(json.dumps(dict(metrics), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metrics must be JSON numbers/strings (no NaN): {exc}") from exc

    success_txt = _float32_safe_thresholds(success_booster.model_to_string(num_iteration=-1))
    energy_txt = _float32_safe_thresholds(energy_booster.model_to_string(num_iteration=-1))
    onnx_success_txt = success_txt if s_obj.startswith("binary") else _as_binary(success_txt)
    blobs = {
        "success.txt": success_txt.encode("utf-8"),
        "energy.txt": energy_txt.encode("utf-8"),
        "success.onnx": _to_onnx(onnx_success_txt, len(names)),
        "energy.onnx": _to_onnx(energy_txt, len(names)),
    }
    onnx_io = {
        "input": "input",
        "success_output": "probabilities",
        "success_column": 1,
        "energy_output": "variable",
        "energy_column": 0,
    }
    manifest = Manifest(
        arms=arm_ids,
        models=models,
        feature_set={"name": fs.name, "version": fs.version, "probe": fs.probe},
        row_features=names,
        rule=rule_obj.to_dict(),
        energy_meter=str(energy_meter),
        energy_source=energy_source,
        metrics=metrics,
        files={},
        onnx=onnx_io,
        success_objective=s_obj.split()[0],
        calibration=calibration,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    parity = _parity(manifest, blobs, fs, reference_x)
    if not parity["ok"]:
        raise BundleError(
            f"ONNX and LightGBM disagree on the reference rows (max |dp| {parity['max_abs_diff_p']:.3g}, "
            f"max |d log J| {parity['max_abs_diff_log_energy']:.3g}, decisions agree "
            f"{parity['decisions_agree']:.3f}); the ONNX export is not faithful, do not ship it"
        )
    blobs[PARITY] = (json.dumps(parity, indent=2, sort_keys=True) + "\n").encode("utf-8")
    manifest = dataclasses.replace(manifest, files={k: _sha256(v) for k, v in sorted(blobs.items())})

    out.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        (out / name).write_bytes(data)
    (out / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return out


def _parity(manifest: Manifest, blobs: Mapping[str, bytes], fs: FeatureSet, reference_x: np.ndarray | None) -> dict:
    if reference_x is None:
        probe = np.zeros((len(_REFERENCE_QUESTIONS), 3), dtype=np.float32) if fs.probe else None
        reference_x = fs.transform(list(_REFERENCE_QUESTIONS), None, probe)
    reference_x = np.asarray(reference_x, dtype=np.float32)
    if reference_x.ndim != 2 or reference_x.shape[1] != len(fs.names()):
        raise UsageError(f"reference_x must be (n_queries, {len(fs.names())}) query features, got {reference_x.shape}")
    lgb_policy = Policy(manifest, make_backend("lightgbm", blobs, manifest.onnx))
    onnx_policy = Policy(manifest, make_backend("onnx", blobs, manifest.onnx))
    rows = lgb_policy.rows(reference_x)
    p_l, le_l = lgb_policy.backend.predict_rows(rows)
    p_o, le_o = onnx_policy.backend.predict_rows(rows)
    dp, de = float(np.max(np.abs(p_l - p_o))), float(np.max(np.abs(le_l - le_o)))
    # "cheapest" so a stored budget the reference rows cannot meet still yields decisions to compare
    d_l = lgb_policy.allocate_predictions(*lgb_policy.predict_features(reference_x), on_infeasible="cheapest")
    d_o = onnx_policy.allocate_predictions(*onnx_policy.predict_features(reference_x), on_infeasible="cheapest")
    agree = float(np.mean([a.arm_id == b.arm_id for a, b in zip(d_l, d_o, strict=True)]))
    return {
        "n_queries": int(reference_x.shape[0]),
        "n_rows": int(rows.shape[0]),
        "max_abs_diff_p": dp,
        "max_abs_diff_log_energy": de,
        "decisions_agree": agree,
        "tolerance": PARITY_TOL,
        "rule": manifest.rule,
        "ok": bool(dp <= PARITY_TOL and de <= PARITY_TOL and agree == 1.0 and math.isfinite(dp + de)),
    }


def zip_bundle(bundle_dir: str | Path) -> Path:
    """Pack a bundle folder into `<folder>.zip` beside it (files at the archive root, fixed timestamps)."""
    src = Path(bundle_dir)
    if not (src / MANIFEST).is_file():
        raise BundleError(f"{src} holds no {MANIFEST}; it is not a policy bundle")
    dst = src.with_name(src.name + ".zip")
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in BUNDLE_FILES:
            if (src / name).is_file():
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, (src / name).read_bytes())
    return dst
