"""Gradient-boosted trees as plain data, evaluated with numpy: the default backend of a bundle.

A bundle stores each LightGBM model as JSON arrays (written by train/export.py
from `Booster.dump_model()`), one object per tree in LightGBM's own array
layout: internal nodes 0..I-1 with `split_feature`, `threshold`,
`default_left`, `missing_type` and `decision_type`, and `left_child` /
`right_child` where a value >= 0 is an internal node and a negative value `c`
is the leaf `-c - 1` of `leaf_value`. The whole model:

    {"format": "ttc-trees", "version": 1, "n_features": F, "objective": "...",
     "transform": "identity" | "sigmoid", "sigmoid_scale": 1.0, "trees": [...]}

`TreeEnsemble.from_json` checks every field's type, every length and index,
and bounds the tree count, the node count and the depth BEFORE any array is
built, so a crafted file ends in `BundleError`, never in a crash, a huge
allocation or a hang. A child must have a larger index than its parent and
every node one parent, so a tree cannot loop. Evaluation follows LightGBM's
numerical decision exactly (NaN and zero as missing, `x <= threshold` in
double precision), so predictions match LightGBM to float rounding.

numpy and the standard library only; never imports lightgbm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy import jsonsafe
from policy.errors import BundleError, TTCError
from policy.forest import Forest, specialise, sum_in_order

FORMAT = "ttc-trees"
VERSION = 1
MAX_TREES = 20_000
MAX_LEAVES_PER_TREE = 1 << 17
MAX_TOTAL_NODES = 4_000_000
MAX_DEPTH = 256
MAX_FEATURES = 100_000
#: nodes x arms above which raw_score_grid evaluates full rows instead of specialising trees per arm
MAX_SPECIALISE_WORK = 5_000_000
#: (arm units x trees x queries) values up to which raw_score_grid sums in one accumulate (one query: ~30 x 300)
_ACCUMULATE_MAX = 1 << 16
TRANSFORMS = ("identity", "sigmoid")
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
DECISION_TYPES = ("<=",)


def _fail(what: str) -> BundleError:
    return BundleError(f"tree model: {what}; the model file is damaged or crafted, re-export the bundle")


def _int_list(tree: Mapping[str, Any], key: str, n: int, lo: int, hi: int) -> list[int]:
    v = tree.get(key)
    if not isinstance(v, list) or len(v) != n:
        raise _fail(f"{key} must be a list of {n} integers")
    for x in v:
        if type(x) is not int or not lo <= x < hi:
            raise _fail(f"{key} holds {x!r}, outside [{lo}, {hi})")
    return v


def _float_list(tree: Mapping[str, Any], key: str, n: int) -> list[float]:
    v = tree.get(key)
    if not isinstance(v, list) or len(v) != n:
        raise _fail(f"{key} must be a list of {n} numbers")
    for x in v:
        if type(x) not in (int, float) or not math.isfinite(x):
            raise _fail(f"{key} holds {x!r}, not a finite number")
    return v


def _choice_list(tree: Mapping[str, Any], key: str, n: int, known: Any) -> list:
    v = tree.get(key)
    if not isinstance(v, list) or len(v) != n or any(not isinstance(x, str) or x not in known for x in v):
        raise _fail(f"{key} must be a list of {n} values out of {sorted(known)}")
    return v


def _check_shape(left: list[int], right: list[int], n_leaves: int) -> int:
    """Depth of a tree whose every node and leaf has exactly one parent and children come after parents."""
    n_internal = len(left)
    if not n_internal:  # LightGBM's tree when no split helps (tiny data): the root is its one leaf
        if n_leaves != 1:
            raise _fail(f"a tree without splits must have exactly one leaf, not {n_leaves}")
        return 0
    seen_node = [False] * n_internal
    seen_leaf = [False] * n_leaves
    depth = [0] * n_internal
    if n_internal:
        seen_node[0] = True
    deepest = 0
    for k in range(n_internal):
        for c in (left[k], right[k]):
            if c >= 0:
                if c <= k or seen_node[c]:
                    raise _fail(f"node {k} points at node {c}: children must follow their parent, once each")
                seen_node[c] = True
                depth[c] = depth[k] + 1
            else:
                if seen_leaf[-c - 1]:
                    raise _fail(f"leaf {-c - 1} has two parents")
                seen_leaf[-c - 1] = True
                deepest = max(deepest, depth[k] + 1)
        if depth[k] >= MAX_DEPTH:
            raise _fail(f"a tree is deeper than {MAX_DEPTH}")
    if not all(seen_node) or not all(seen_leaf):
        raise _fail("a tree has nodes or leaves that no path reaches")
    return deepest


@dataclass(frozen=True)
class TreeEnsemble:
    """Validated trees in flat arrays over every tree's nodes (leaves point to themselves)."""

    n_features: int
    objective: str
    transform: str
    sigmoid_scale: float
    forest: Forest

    @property
    def n_trees(self) -> int:
        return len(self.forest.roots)

    @classmethod
    def from_bytes(cls, raw: bytes, n_features: int) -> TreeEnsemble:
        try:
            d = jsonsafe.loads(raw, "the tree file")
        except TTCError as exc:
            raise _fail(str(exc)) from exc
        return cls.from_json(d, n_features)

    @classmethod
    def from_json(cls, d: Any, n_features: int) -> TreeEnsemble:
        """Check a parsed model and build its arrays; `n_features` is the row width the bundle computes."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise _fail(f"expected a JSON object with format {FORMAT!r} version {VERSION}")
        if type(d.get("n_features")) is not int or d["n_features"] != n_features or n_features > MAX_FEATURES:
            raise _fail(f"n_features is {d.get('n_features')!r} but the bundle's rows have {n_features} features")
        if d.get("transform") not in TRANSFORMS or not isinstance(d.get("objective"), str):
            raise _fail(f"transform must be one of {TRANSFORMS} and objective a string")
        scale = d.get("sigmoid_scale", 1.0)
        if type(scale) not in (int, float) or not math.isfinite(scale) or scale <= 0:
            raise _fail(f"sigmoid_scale must be a finite number > 0, got {scale!r}")
        trees = d.get("trees")
        if not isinstance(trees, list) or not 1 <= len(trees) <= MAX_TREES:
            raise _fail(f"trees must be a list of 1 to {MAX_TREES} trees")
        parts, total, depths = [], 0, []
        for t in trees:
            part, tree_depth = _check_tree(t, n_features)
            total += len(part[-1])
            if total > MAX_TOTAL_NODES:
                raise _fail(f"more than {MAX_TOTAL_NODES} nodes in all")
            parts.append(part)
            depths.append(tree_depth)
        return cls._build(d, float(scale), parts, depths)

    @classmethod
    def _build(cls, d: dict, scale: float, parts: list, depths: list[int]) -> TreeEnsemble:
        cols: list[list] = [[] for _ in range(7)]
        roots = []
        for feat, thr, dl, miss, left, right, value in parts:
            base = len(cols[0])
            n_int = len(feat)
            roots.append(base)
            # leaves sit after the internal nodes and point to themselves, so a row may take extra steps
            leaf = [base + n_int + i for i in range(len(value))]
            glob = (
                [base + c if c >= 0 else base + n_int + (-c - 1) for c in left],
                [base + c if c >= 0 else base + n_int + (-c - 1) for c in right],
            )
            rows = (
                feat + [0] * len(leaf),
                thr + [math.inf] * len(leaf),
                dl + [True] * len(leaf),
                miss + [0] * len(leaf),
                glob[0] + leaf,
                glob[1] + leaf,
                [0.0] * n_int + value,
            )
            for col, r in zip(cols, rows, strict=True):
                col.extend(r)
        forest = Forest(
            feature=np.asarray(cols[0], dtype=np.intp),
            threshold=np.asarray(cols[1], dtype=np.float64),
            default_left=np.asarray(cols[2], dtype=bool),
            missing=np.asarray(cols[3], dtype=np.int8),
            left=np.asarray(cols[4], dtype=np.intp),
            right=np.asarray(cols[5], dtype=np.intp),
            value=np.asarray(cols[6], dtype=np.float64),
            roots=np.asarray(roots, dtype=np.intp),
            root_depth=np.asarray(depths, dtype=np.intp),
        )
        return cls(d["n_features"], d["objective"], d["transform"], scale, forest)

    def raw_score(self, rows: np.ndarray) -> np.ndarray:
        """Sum of the trees' leaf values per row (LightGBM's raw score), float64 (n,)."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise _fail(f"rows must be (n, {self.n_features}), got {x.shape}")
        return sum_in_order(np.ascontiguousarray(self.forest.leaf_values(x).T))

    def raw_score_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> np.ndarray:
        """Raw scores (n_queries, n_arms) of every row [query_x[i], arm_x[j]] without building those rows.

        Each tree is specialised once per arm: splits on arm columns are decided
        ahead, and arms that leave the same query-only tree share it. A tree
        that never splits on an arm column is then evaluated once per query, not
        once per (query, arm); the decisions are the same as on the full rows.
        """
        q, a = np.asarray(query_x), np.asarray(arm_x)
        if q.ndim != 2 or a.ndim != 2 or q.shape[1] + a.shape[1] != self.n_features:
            raise _fail(f"query and arm columns must add up to {self.n_features}, got {q.shape} and {a.shape}")
        if len(self.forest.value) * a.shape[0] > MAX_SPECIALISE_WORK:
            # specialising would take long in Python (a huge model or very many arms): build the rows
            rows = np.hstack([np.repeat(q, a.shape[0], axis=0), np.tile(a, (q.shape[0], 1))])
            return self.raw_score(rows).reshape(q.shape[0], a.shape[0])
        key = (q.shape[1], a.astype(np.float64).tobytes())
        cached = self.__dict__.get("_grid_cache")
        if cached is None or cached[0] != key:
            cached = (key, *specialise(self.forest, q.shape[1], a.astype(np.float64)))
            object.__setattr__(self, "_grid_cache", cached)
        _, forest, units = cached
        per_tree = np.ascontiguousarray(forest.leaf_values(q).T)
        # tree by tree, as _sum_in_order adds them: the same bits as the row path, any batch size
        if 0 < units.size * q.shape[0] <= _ACCUMULATE_MAX:
            # a few queries: one strictly sequential accumulate (add.accumulate adds left to right, from the
            # first tree's value, as the loop below does from zero) instead of a Python step per tree
            return np.add.accumulate(per_tree[units], axis=1)[:, -1, :].T
        acc = np.zeros((units.shape[0], q.shape[0]), dtype=np.float64)
        for t in range(units.shape[1]):
            acc += per_tree[units[:, t]]
        return acc.T

    def transformed(self, raw: np.ndarray) -> np.ndarray:
        """The model's output from a raw score: the recorded transform (identity or sigmoid)."""
        if self.transform == "sigmoid":
            return 1.0 / (1.0 + np.exp(-self.sigmoid_scale * raw))
        return raw

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The model's output per row, as LightGBM's `Booster.predict`."""
        return self.transformed(self.raw_score(rows))


def _check_tree(t: Any, n_features: int) -> tuple[tuple, int]:
    if not isinstance(t, dict):
        raise _fail("each tree must be a JSON object")
    n_leaves = t.get("num_leaves")
    if type(n_leaves) is not int or not 1 <= n_leaves <= MAX_LEAVES_PER_TREE:
        raise _fail(f"num_leaves must be an integer in [1, {MAX_LEAVES_PER_TREE}], got {n_leaves!r}")
    n_int = n_leaves - 1
    feat = _int_list(t, "split_feature", n_int, 0, n_features)
    thr = _float_list(t, "threshold", n_int)
    _choice_list(t, "decision_type", n_int, DECISION_TYPES)
    miss = [MISSING_TYPES[m] for m in _choice_list(t, "missing_type", n_int, MISSING_TYPES)]
    dl = t.get("default_left")
    if not isinstance(dl, list) or len(dl) != n_int or any(type(v) is not bool for v in dl):
        raise _fail(f"default_left must be a list of {n_int} booleans")
    left = _int_list(t, "left_child", n_int, -n_leaves, max(n_int, 1))
    right = _int_list(t, "right_child", n_int, -n_leaves, max(n_int, 1))
    value = _float_list(t, "leaf_value", n_leaves)
    depth = _check_shape(left, right, n_leaves)
    return (feat, [float(v) for v in thr], dl, miss, left, right, [float(v) for v in value]), depth
