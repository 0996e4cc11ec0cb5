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

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.errors import BundleError

FORMAT = "ttc-trees"
VERSION = 1
MAX_TREES = 20_000
MAX_LEAVES_PER_TREE = 1 << 17
MAX_TOTAL_NODES = 4_000_000
MAX_DEPTH = 256
MAX_FEATURES = 100_000
#: nodes x arms above which raw_score_grid evaluates full rows instead of specialising trees per arm
MAX_SPECIALISE_WORK = 5_000_000
TRANSFORMS = ("identity", "sigmoid")
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
DECISION_TYPES = ("<=",)
# LightGBM's kZeroThreshold: |x| <= this counts as zero for missing_type "Zero"
_ZERO = 1e-35
# rows evaluated at once: bounds the (rows x trees) index matrix to a few MB
_CHUNK_ROWS = 1024


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
    forest: _Forest

    @property
    def n_trees(self) -> int:
        return len(self.forest.roots)

    @classmethod
    def from_bytes(cls, raw: bytes, n_features: int) -> TreeEnsemble:
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _fail(f"not valid JSON ({type(exc).__name__})") from exc
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
        forest = _Forest(
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
        return _sum_in_order(np.ascontiguousarray(self.forest.leaf_values(x).T))

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
            cached = (key, *_specialise(self, q.shape[1], a.astype(np.float64)))
            object.__setattr__(self, "_grid_cache", cached)
        _, forest, units = cached
        per_tree = np.ascontiguousarray(forest.leaf_values(q).T)
        # tree by tree, as _sum_in_order adds them: the same bits as the row path, any batch size
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


def _sum_in_order(per_tree: np.ndarray) -> np.ndarray:
    """(n_trees, n) -> (n,): trees added one after another, as LightGBM does, so every path and
    batch size gives the same bits (numpy's pairwise sum depends on the memory layout)."""
    acc = np.zeros(per_tree.shape[1], dtype=np.float64)
    for row in per_tree:
        acc += row
    return acc


def _goes_left(v: float, threshold: float, missing: int, default_left: bool) -> bool:
    """LightGBM's numerical decision for one value (tree.h NumericalDecision)."""
    if math.isnan(v) and missing != 2:
        v = 0.0
    if (missing == 1 and abs(v) <= _ZERO) or (missing == 2 and math.isnan(v)):
        return default_left
    return v <= threshold


@dataclass(frozen=True)
class _Forest:
    """Flat node arrays of many trees; leaves point to themselves, so a row may take extra steps."""

    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    root_depth: np.ndarray

    @property
    def depth(self) -> int:
        return int(self.root_depth.max()) if len(self.root_depth) else 0

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """(n_rows, n_roots) leaf value each tree gives each row."""
        out = np.empty((x.shape[0], len(self.roots)), dtype=np.float64)
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            out[start : start + _CHUNK_ROWS] = self._chunk(x[start : start + _CHUNK_ROWS])
        return out

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        # double precision, as LightGBM compares: a float32 row converts exactly
        flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        offset = (np.arange(x.shape[0], dtype=np.intp) * x.shape[1])[:, None]
        has_nan = bool(np.isnan(flat).any())
        special = has_nan or bool((self.missing == 1).any())
        out = np.empty((x.shape[0], len(self.roots)), dtype=np.float64)
        # trees of one depth together: a shallow tree takes its own few steps, not the deepest tree's
        for depth, cols in self.depth_groups:
            cur = np.broadcast_to(self.roots[cols], (x.shape[0], len(cols))).copy()
            for _ in range(depth):
                cur = self._step(flat, offset, cur, has_nan, special)
            out[:, cols] = self.value[cur]
        return out

    def _step(self, flat: np.ndarray, offset: np.ndarray, cur: np.ndarray, has_nan: bool, special: bool) -> np.ndarray:
        fv = flat[offset + self.feature[cur]]
        if has_nan:
            nan = np.isnan(fv)
            fv = np.where(nan & (self.missing[cur] != 2), 0.0, fv)
        go_right = fv > self.threshold[cur]
        if special:
            m = self.missing[cur]
            miss = (m == 1) & (np.abs(fv) <= _ZERO)
            if has_nan:
                miss |= (m == 2) & nan
            go_right = np.where(miss, ~self.default_left[cur], go_right)
        # children interleaved (left, right): one gather picks the next node
        return self.children[2 * cur + go_right]

    @property
    def depth_groups(self) -> list[tuple[int, np.ndarray]]:
        groups = self.__dict__.get("_groups")
        if groups is None:
            groups = [(int(d), np.flatnonzero(self.root_depth == d)) for d in np.unique(self.root_depth)]
            object.__setattr__(self, "_groups", groups)
        return groups

    @property
    def children(self) -> np.ndarray:
        kids = self.__dict__.get("_children")
        if kids is None:
            kids = np.column_stack([self.left, self.right]).reshape(-1)
            object.__setattr__(self, "_children", kids)
        return kids


def _specialise(ens: TreeEnsemble, n_query: int, arm_x: np.ndarray) -> tuple[_Forest, np.ndarray]:
    """Query-only trees for every (tree, arm) with the arm splits decided, shared where equal.

    Returns the forest of distinct specialised trees and an (n_arms, n_trees)
    index matrix: row j lists, in tree order, the specialised tree arm j uses.
    """
    f = ens.forest
    feat, thr, dl, miss = f.feature.tolist(), f.threshold.tolist(), f.default_left.tolist(), f.missing.tolist()
    left, right, value = f.left.tolist(), f.right.tolist(), f.value.tolist()
    cols: list[list] = [[] for _ in range(7)]
    roots: list[int] = []
    depths: list[int] = []
    units: dict[tuple, int] = {}
    per_arm: list[list[int]] = [[] for _ in range(arm_x.shape[0])]

    def resolve(g: int, arm: list[float]) -> int:
        while left[g] != g and feat[g] >= n_query:
            go = _goes_left(arm[feat[g] - n_query], thr[g], miss[g], dl[g])
            g = left[g] if go else right[g]
        return g

    for root in f.roots.tolist():
        for j, arm in enumerate(arm_x.tolist()):
            # the specialised tree, in preorder: (old node, its resolved children) per node
            order, stack, kids = [], [resolve(root, arm)], {}
            while stack:
                g = stack.pop()
                order.append(g)
                if left[g] != g:
                    kids[g] = (resolve(left[g], arm), resolve(right[g], arm))
                    stack.extend(reversed(kids[g]))
            sig = tuple((g, kids.get(g)) for g in order)
            if sig not in units:
                units[sig] = len(roots)
                depths.append(_append_tree(cols, roots, order, kids, feat, thr, dl, miss, value))
            per_arm[j].append(units[sig])
    forest = _Forest(
        np.asarray(cols[0], dtype=np.intp),
        np.asarray(cols[1], dtype=np.float64),
        np.asarray(cols[2], dtype=bool),
        np.asarray(cols[3], dtype=np.int8),
        np.asarray(cols[4], dtype=np.intp),
        np.asarray(cols[5], dtype=np.intp),
        np.asarray(cols[6], dtype=np.float64),
        np.asarray(roots, dtype=np.intp),
        np.asarray(depths, dtype=np.intp),
    )
    return forest, np.asarray(per_arm, dtype=np.intp)


def _append_tree(cols, roots, order, kids, feat, thr, dl, miss, value) -> int:
    """Append one specialised tree to the flat columns; returns its depth."""
    base = len(cols[0])
    new = {g: base + i for i, g in enumerate(order)}
    roots.append(base)
    level = {order[0]: 0}
    for g in order:
        if g in kids:
            lft, rgt = kids[g]
            level[lft] = level[rgt] = level[g] + 1
            row = (feat[g], thr[g], dl[g], miss[g], new[lft], new[rgt], 0.0)
        else:
            row = (0, math.inf, True, 0, new[g], new[g], value[g])
        for col, v in zip(cols, row, strict=True):
            col.append(v)
    return max(level.values())


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
