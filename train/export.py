"""The bundle writer: trained LightGBM boosters -> plain-data trees, LightGBM text, ONNX, parity, policy.json.

`write_bundle` turns two boosters into a bundle folder, `write_policy` writes a
loaded `Policy` back out (e.g. with a new rule from `Policy.with_rule`), and
`zip_bundle` packs a folder. Every writer builds the bundle in a temporary
sibling folder, loads it back with the numpy backend to prove it reads, and
only then renames it into place; an existing destination is replaced only when
it is a bundle of ours, so a failed or misdirected export never deletes data.

The trees are stored as JSON arrays from `Booster.dump_model()`, with every
numerical threshold first snapped down to the largest float32 not above it
(`_float32_safe_thresholds`): the policy feeds float32 rows, for which `x <= t`
and `x <= floor32(t)` agree exactly, and ONNX compares in float32. The numpy,
LightGBM and ONNX predictions on reference rows are compared and recorded in
parity.json; a bundle whose backends disagree is not written.
lightgbm and onnxmltools are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from policy.allocate import DecisionRule
from policy.arms import Arm
from policy.bundle import Policy, load_bundle, sha256
from policy.bundle_files import KNOWN_FILES, MANIFEST, PARITY, is_bundle_folder
from policy.errors import BundleError, UsageError
from policy.features import FeatureSet, get_feature_set, row_matrix, row_names
from policy.manifest import Manifest, bundle_digest, check_calibration, resolve_key, sign
from policy.probe import PROBE_DIMS, PROBE_FILE, ProbeReduction
from policy.records import ENERGY_SOURCES
from policy.runtime import make_backend
from policy.tasks import TASKS_FILE
from policy.two_stage import STAGE2_FILE, stage_two_json
from train.export_trees import (  # noqa: F401  (trees_json, _float32_safe_thresholds: re-exported)
    _as_binary,
    _float32_safe_thresholds,
    _json_bytes,
    _objective,
    _to_onnx,
    trees_json,
)
from train.predictors import SUCCESS_OBJECTIVES as TRAINED_SUCCESS_OBJECTIVES

#: numpy and ONNX against LightGBM on the reference rows
NUMPY_TOL = 1e-6
ONNX_TOL = 1e-5
#: the success predictor's objectives (train.predictors), plus LightGBM's alias of cross_entropy
SUCCESS_OBJECTIVES = (*TRAINED_SUCCESS_OBJECTIVES, "xentropy")
ENERGY_OBJECTIVES = ("regression", "regression_l2", "regression_l1", "l2", "l1", "mse", "mae", "huber", "quantile")
ONNX_IO = {"input": "input", "success_output": "probabilities", "success_column": 1}
ONNX_IO |= {"energy_output": "variable", "energy_column": 0}
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


# ---------------------------------------------------------------- writing


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
    key: bytes | str | None = None,
    probe_reduction: ProbeReduction | None = None,
    stage_two: Any = None,
    task_table: Any = None,
) -> Path:
    """Write a bundle folder from two trained `lightgbm.Booster`s; returns its path.

    `success_booster` predicts P(correct) (objective "binary" or
    "cross_entropy"), `energy_booster` log(joules) (a regression objective),
    both on rows `row_names(feature_set, models)`. `reference_x` are query
    feature rows for the parity check (default: a few built-in questions).
    Raises `BundleError` when numpy or ONNX disagree with LightGBM (beyond
    `NUMPY_TOL` / `ONNX_TOL`, or in a decision). An existing `out_dir` is
    replaced only when it is a bundle of ours. With `key` (or TTC_BUNDLE_KEY)
    the bundle is signed. A "text+probe" feature set needs `probe_reduction`
    (written as probe.json, covered by the digest). `stage_two`
    (train.two_stage.StageTwoFit) adds the look-then-decide rule as stage2.json.
    `task_table` (policy.tasks.TaskTable, train.adapt.training_task_table) is written as tasks.json.
    """
    fs = get_feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    if fs.probe != (probe_reduction is not None):
        raise UsageError(
            f"feature set {fs.name!r} {'needs' if fs.probe else 'takes no'} probe_reduction; "
            "pass the one train.dataset.build_dataset fitted (TrainingData.probe_reduction)"
        )
    rule_obj = rule if isinstance(rule, DecisionRule) else DecisionRule.from_dict(dict(rule))
    models = [str(m) for m in models]
    names = row_names(fs, models)
    s_obj = _check_boosters(success_booster, energy_booster, fs, models, names)
    if energy_source not in ENERGY_SOURCES:
        raise UsageError(f"energy_source must be one of {ENERGY_SOURCES}, got {energy_source!r}")
    if not energy_meter:
        raise UsageError("name the energy meter the training joules came from (energy_meter=...)")
    if calibration is not None:
        calibration = {"x": [float(v) for v in calibration["x"]], "y": [float(v) for v in calibration["y"]]}
        check_calibration(calibration, UsageError)
    try:
        metrics = json.loads(json.dumps(dict(metrics), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metrics must be JSON numbers/strings (no NaN): {exc}") from exc
    arm_ids = [a.arm_id if isinstance(a, Arm) else Arm.parse(str(a)).arm_id for a in arms]

    files = _model_files(success_booster, energy_booster, s_obj, len(names))
    if probe_reduction is not None:
        files[PROBE_FILE] = probe_reduction.to_json()
    if stage_two is not None:
        files[STAGE2_FILE] = stage_two_bytes(stage_two, arm_ids)
    if task_table is not None:
        if list(task_table.arms) != arm_ids:
            raise UsageError("the task table's arms differ from the bundle's; build it from the same arm rows")
        files[TASKS_FILE] = task_table.to_json()
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
        onnx=dict(ONNX_IO),
        success_objective=s_obj.split()[0],
        calibration=calibration,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    files[PARITY] = _json_bytes(_parity(manifest, files, fs, reference_x))
    return _publish(Path(out_dir), manifest, files, resolve_key(key), replace=True)


def stage_two_bytes(st: Any, arm_ids: list[str]) -> bytes:
    """stage2.json of a `StageTwoFit`: each LightGBM classifier as plain-data trees, or its constant."""
    firsts = [st.first_arm, *st.looks]
    bad = [a for a in firsts if a not in arm_ids]
    if bad:
        raise UsageError(f"the stage-2 first arm {bad[0]!r} is not one of the bundle's arms")

    def model_json(model: Any) -> tuple[dict[str, Any] | None, float | None]:
        return (None, model) if isinstance(model, float) else (trees_json(model.booster_, "sigmoid"), None)

    looks = [(a, *model_json(m)) for a, m in st.looks.items()]
    return stage_two_json(st.first_arm, st.lam, *model_json(st.model), st.signals, st.first_arms, looks)


def _model_files(success: Any, energy: Any, success_objective: str, n_features: int) -> dict[str, bytes]:
    """The two models as plain-data trees, LightGBM text and ONNX, all from float32-snapped thresholds."""
    import lightgbm as lgb

    success_txt = _float32_safe_thresholds(success.model_to_string(num_iteration=-1))
    energy_txt = _float32_safe_thresholds(energy.model_to_string(num_iteration=-1))
    onnx_success_txt = success_txt if success_objective.startswith("binary") else _as_binary(success_txt)
    return {
        "success.trees.json": _json_bytes(trees_json(lgb.Booster(model_str=success_txt), "sigmoid")),
        "energy.trees.json": _json_bytes(trees_json(lgb.Booster(model_str=energy_txt), "identity")),
        "success.txt": success_txt.encode("utf-8"),
        "energy.txt": energy_txt.encode("utf-8"),
        "success.onnx": _to_onnx(onnx_success_txt, n_features),
        "energy.onnx": _to_onnx(energy_txt, n_features),
    }


def _check_boosters(success: Any, energy: Any, fs: FeatureSet, models: list[str], names: list[str]) -> str:
    """Both boosters are LightGBM models of the row width and of known objectives; returns the success one's."""
    import lightgbm as lgb

    for what, b in (("success", success), ("energy", energy)):
        if not isinstance(b, lgb.Booster):
            raise UsageError(f"{what}_booster must be a lightgbm.Booster, got {type(b).__name__}")
        if b.num_feature() != len(names):
            raise UsageError(
                f"{what}_booster takes {b.num_feature()} features but feature set {fs.name!r} with "
                f"{len(models)} models gives {len(names)} row features"
            )
    s_obj, e_obj = _objective(success), _objective(energy)
    if s_obj.split()[0] not in SUCCESS_OBJECTIVES:
        raise UsageError(f"success_booster objective {s_obj!r} is not one of {SUCCESS_OBJECTIVES}")
    if e_obj.split()[0] not in ENERGY_OBJECTIVES:
        raise UsageError(f"energy_booster objective {e_obj!r} must predict log(joules) directly: {ENERGY_OBJECTIVES}")
    return s_obj


def _parity(manifest: Manifest, files: Mapping[str, bytes], fs: FeatureSet, reference_x: np.ndarray | None) -> dict:
    """numpy and ONNX against LightGBM on reference rows; raises `BundleError` when either is not faithful."""
    if reference_x is None:
        probe = np.zeros((len(_REFERENCE_QUESTIONS), PROBE_DIMS), dtype=np.float32) if fs.probe else None
        reference_x = fs.transform(list(_REFERENCE_QUESTIONS), None, probe)
    reference_x = np.asarray(reference_x, dtype=np.float32)
    if reference_x.ndim != 2 or reference_x.shape[1] != len(fs.names()):
        raise UsageError(f"reference_x must be (n_queries, {len(fs.names())}) query features, got {reference_x.shape}")
    n = len(manifest.row_features)
    policies = {
        b: Policy(manifest, make_backend(b, files, manifest.onnx, n), files) for b in ("lightgbm", "numpy", "onnx")
    }
    ref = policies["lightgbm"]
    rows = row_matrix(reference_x, ref.arms, ref.models)
    p_l, le_l = ref.backend.predict_rows(rows)
    # "cheapest" so a stored budget the reference rows cannot meet still yields decisions to compare
    d_l = ref.allocate_predictions(*ref.predict_features(reference_x), on_infeasible="cheapest")
    out: dict[str, Any] = {"n_queries": int(reference_x.shape[0]), "n_rows": int(rows.shape[0]), "rule": manifest.rule}
    out["reference_backend"] = "lightgbm"
    for name, tol in (("numpy", NUMPY_TOL), ("onnx", ONNX_TOL)):
        pol = policies[name]
        p, le = pol.backend.predict_rows(rows)
        dp, de = float(np.max(np.abs(p - p_l))), float(np.max(np.abs(le - le_l)))
        d = pol.allocate_predictions(*pol.predict_features(reference_x), on_infeasible="cheapest")
        agree = float(np.mean([a.arm_id == b.arm_id for a, b in zip(d, d_l, strict=True)]))
        ok = bool(dp <= tol and de <= tol and agree == 1.0 and math.isfinite(dp + de))
        out[name] = {"max_abs_diff_p": dp, "max_abs_diff_log_energy": de, "decisions_agree": agree, "tolerance": tol}
        out[name]["ok"] = ok
        if not ok:
            raise BundleError(
                f"{name} and LightGBM disagree on the reference rows (max |dp| {dp:.3g}, max |d log J| {de:.3g}, "
                f"decisions agree {agree:.3f}); the {name} export is not faithful, do not ship it"
            )
    out["ok"] = True
    return out


def write_policy(
    policy: Policy, out_dir: str | Path, key: bytes | str | None = None, force: bool = False, verify: bool = True
) -> Path:
    """Write a loaded (or `with_rule`-changed) policy as a bundle folder: same files, fresh digest.

    An existing `out_dir` must be a bundle of ours and `force` true; anything
    else there is refused and kept. `verify=False` skips the read-back: only for a
    caller that loads the same bytes itself before publishing them (`publish_bundle`).
    """
    manifest = Manifest(**{**policy.manifest.to_dict(), "digest": "", "signature": None})
    return _publish(Path(out_dir), manifest, policy.files, resolve_key(key), replace=force, verify=verify)


def publish_bundle(policy: Policy, staging: Path, out: Path, zip_path: Path, key: bytes | None) -> Policy:
    """Build `policy` as a folder and its zip in `staging`, load the new bundle ONCE, return it.

    The zip holds the folder's files byte for byte, so loading it (digest, signature,
    every file's checks) proves both. The caller renames them into place with
    `swap_in(staging / out.name, out)` and `os.replace(staging / zip_path.name, zip_path)`.
    """
    built = write_policy(policy, staging / out.name, key=key, verify=False)
    zipped = zip_bundle(built, staging / zip_path.name)
    return load_bundle(zipped, key=key)


def _publish(
    out: Path, manifest: Manifest, files: Mapping[str, bytes], key: bytes | None, replace: bool, verify: bool = True
) -> Path:
    """Write the bundle into a temporary sibling, prove it loads (unless `verify` is false), then rename it to `out`."""
    check_destination(out, replace)
    manifest = Manifest(**{**manifest.to_dict(), "files": {k: sha256(v) for k, v in sorted(files.items())}})
    digest = bundle_digest(manifest, files)
    manifest = Manifest(**{**manifest.to_dict(), "digest": digest, "signature": sign(digest, key) if key else None})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        if verify:
            load_bundle(tmp, key=key)  # what we publish must read back with the default backend
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_destination(out: Path, replace: bool) -> None:
    """Refuse an `out` that holds anything but a bundle of ours, or one of ours when `replace` is false."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not is_bundle_folder(out):
            raise UsageError(
                f"{out} is a non-empty folder that is not a policy bundle; it is kept as it is, choose another --out"
            )
        if not replace:
            raise UsageError(f"{out} already holds a policy bundle; pass --force to replace it")


def swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an old bundle at `out` is moved aside first and deleted only after the rename."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def zip_bundle(bundle_dir: str | Path, dst: str | Path | None = None) -> Path:
    """Pack a bundle folder into `dst` (default `<folder>.zip` beside it): files at the root, fixed timestamps."""
    src = Path(bundle_dir)
    if not is_bundle_folder(src):
        raise BundleError(f"{src} is not a policy bundle folder (policy.json and bundle files only)")
    dst = Path(dst) if dst is not None else src.with_name(src.name + ".zip")
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in KNOWN_FILES:
                if (src / name).is_file():
                    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, (src / name).read_bytes())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
