"""LightGBM boosters -> the bundle's model files: plain-data trees, float32-safe LightGBM text, ONNX.

The trees are stored as JSON arrays from `Booster.dump_model()`, with every
numerical threshold first snapped down to the largest float32 not above it
(`_float32_safe_thresholds`): the policy feeds float32 rows, for which `x <= t`
and `x <= floor32(t)` agree exactly, and ONNX compares in float32. Used by
train/export.py (the bundle writer); never writes files, never imports
lightgbm or onnxmltools at module level.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from policy.errors import UsageError
from policy.trees import FORMAT, VERSION


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


def trees_json(booster: Any, transform: str) -> dict[str, Any]:
    """The booster as policy/trees.py's plain-data format (LightGBM's array layout, one object per tree)."""
    dump = booster.dump_model(num_iteration=-1)
    if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output"):
        raise UsageError("only single-output boosted trees (not multiclass, not random forest) can be exported")
    trees = [_flatten(info) for info in dump["tree_info"]]
    objective = str(dump.get("objective", ""))
    m = re.search(r"sigmoid:(\S+)", objective)
    return {
        "format": FORMAT,
        "version": VERSION,
        "n_features": int(dump["max_feature_idx"]) + 1,
        "objective": objective.split()[0] if objective else "",
        "transform": transform,
        "sigmoid_scale": float(m.group(1)) if m else 1.0,
        "trees": trees,
    }


def _flatten(info: Mapping[str, Any]) -> dict[str, Any]:
    """One tree of `dump_model()` (nested) as arrays: internal nodes in preorder, children after parents."""
    n_leaves = int(info["num_leaves"])
    cols: dict[str, list] = {k: [] for k in ("split_feature", "threshold", "decision_type", "missing_type")}
    cols |= {"default_left": [], "left_child": [], "right_child": []}
    leaf_value = [0.0] * n_leaves
    stack: list[tuple[Mapping[str, Any], int, str]] = [(info["tree_structure"], -1, "")]
    while stack:  # iterative, so a deep tree cannot exhaust Python's recursion limit
        node, parent, side = stack.pop()
        if "split_index" not in node:
            ref = -int(node.get("leaf_index", 0)) - 1
            leaf_value[-ref - 1] = float(node["leaf_value"])
        else:
            if node["decision_type"] != "<=":
                raise UsageError("categorical splits cannot be exported; train on numerical features only")
            ref = len(cols["split_feature"])
            for key in ("split_feature", "threshold", "decision_type", "missing_type", "default_left"):
                cols[key].append(node[key])
            cols["left_child"].append(0)
            cols["right_child"].append(0)
            stack.append((node["right_child"], ref, "right_child"))
            stack.append((node["left_child"], ref, "left_child"))
        if parent >= 0:
            cols[side][parent] = ref
    cols["threshold"] = [float(t) for t in cols["threshold"]]
    return {"num_leaves": n_leaves, **cols, "leaf_value": leaf_value}


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


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
