"""Many trees in flat node arrays, evaluated with numpy; and trees specialised per arm.

The layer under policy/trees.py: `Forest` holds already validated trees (every
index in range, children after parents) with leaves pointing to themselves,
and walks a chunk of rows through trees of one depth at a time, following
LightGBM's numerical decision exactly; a few rows (a one-query decision) have
every split's decision taken at once first, so each step of the walk is one
gather, on a copy laid out for it (`FewRows`: splits before leaves, deepest
trees first; `ALL_NODES_CELLS`; the same leaves, tested against the step walk).
`specialise` decides a forest's splits on arm columns ahead, for every arm at once, so
a (query, arm) grid needs no full rows.
numpy and the standard library only; never imports lightgbm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# LightGBM's kZeroThreshold: |x| <= this counts as zero for missing_type "Zero"
ZERO = 1e-35
# rows evaluated at once: bounds the (rows x trees) index matrix to a few MB
CHUNK_ROWS = 1024
# below this many (row, tree) cells, every tree walks to the deepest depth in one group: a few steps
# over small arrays cost less than a step per distinct depth (a one-query decision: ~5x fewer steps)
ONE_GROUP_CELLS = 32_768
# up to this many (row, node) cells, every node's decision for every row is taken at once, before the walk:
# each step is then one gather, not a dozen small array operations (a one-query decision over the
# specialised energy trees: ~32,000 nodes)
ALL_NODES_CELLS = 1 << 17


@dataclass(frozen=True)
class Forest:
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
        d = self.__dict__.get("_depth")
        if d is None:
            d = int(self.root_depth.max()) if len(self.root_depth) else 0
            object.__setattr__(self, "_depth", d)
        return d

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """(n_rows, n_roots) leaf value each tree gives each row."""
        out = np.empty((x.shape[0], len(self.roots)), dtype=np.float64)
        for start in range(0, x.shape[0], CHUNK_ROWS):
            out[start : start + CHUNK_ROWS] = self._chunk(x[start : start + CHUNK_ROWS])
        return out

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        # double precision, as LightGBM compares: a float32 row converts exactly
        x = np.ascontiguousarray(x, dtype=np.float64)
        has_nan = bool(np.isnan(x).any())
        special = has_nan or self.zero_missing
        if x.shape[0] * len(self.value) <= ALL_NODES_CELLS:
            # few rows: every split's next node is decided for each row at once, so a step is one gather
            return self.few_rows.leaf_values(x, has_nan, special)
        flat = x.reshape(-1)
        offset = (np.arange(x.shape[0], dtype=np.intp) * x.shape[1])[:, None]
        out = np.empty((x.shape[0], len(self.roots)), dtype=np.float64)
        # trees of one depth together: a shallow tree takes its own few steps, not the deepest tree's
        groups = self.depth_groups
        if x.shape[0] * len(self.roots) <= ONE_GROUP_CELLS and len(groups) > 1:
            groups = [(self.depth, np.arange(len(self.roots)))]  # leaves point to themselves: extra steps are no-ops
        for depth, cols in groups:
            cur = np.broadcast_to(self.roots[cols], (x.shape[0], len(cols))).copy()
            for _ in range(depth):
                cur = self._step(flat, offset, cur, has_nan, special)
            out[:, cols] = self.value[cur]
        return out

    def _step(self, flat: np.ndarray, offset: np.ndarray, cur: np.ndarray, has_nan: bool, special: bool) -> np.ndarray:
        go_right = self._go_right(flat[offset + self.feature[cur]], cur, has_nan, special)
        # children interleaved (left, right): one gather picks the next node
        return self.children[2 * cur + go_right]

    def _go_right(self, fv: np.ndarray, at: np.ndarray | slice, has_nan: bool, special: bool) -> np.ndarray:
        """LightGBM's numerical decision (tree.h NumericalDecision), go right, for values `fv` at nodes `at`
        (indices, or a slice of nodes in order); a node's missing-value arrays are gathered only when the values
        need them (`has_nan`: NaN among them; `special`: that, or a split treating zero as missing)."""
        if has_nan:
            nan = np.isnan(fv)
            fv = np.where(nan & (self.missing[at] != 2), 0.0, fv)
        go_right = fv > self.threshold[at]
        if special:
            m = self.missing[at]
            miss = (m == 1) & (np.abs(fv) <= ZERO)
            if has_nan:
                miss |= (m == 2) & nan
            go_right = np.where(miss, ~self.default_left[at], go_right)
        return go_right

    @property
    def depth_groups(self) -> list[tuple[int, np.ndarray]]:
        groups = self.__dict__.get("_groups")
        if groups is None:
            groups = [(int(d), np.flatnonzero(self.root_depth == d)) for d in np.unique(self.root_depth)]
            object.__setattr__(self, "_groups", groups)
        return groups

    @property
    def zero_missing(self) -> bool:
        """True when a split treats zero as missing (LightGBM's missing_type "Zero")."""
        zm = self.__dict__.get("_zero_missing")
        if zm is None:
            zm = bool((self.missing == 1).any())
            object.__setattr__(self, "_zero_missing", zm)
        return zm

    @property
    def few_rows(self) -> FewRows:
        """This forest renumbered for the all-nodes walk (cached): splits first, leaves after, trees deepest first."""
        few = self.__dict__.get("_few_rows")
        if few is None:
            few = _few_rows(self)
            object.__setattr__(self, "_few_rows", few)
        return few

    @property
    def children(self) -> np.ndarray:
        kids = self.__dict__.get("_children")
        if kids is None:
            kids = np.column_stack([self.left, self.right]).reshape(-1)
            object.__setattr__(self, "_children", kids)
        return kids


@dataclass(frozen=True)
class FewRows:
    """A forest laid out for the all-nodes walk: its `n_splits` splits first (only they are decided), then
    its leaves (`leaves`: their own numbers); its trees by depth, deepest first, so step k moves only the
    first `steps[k]` trees; column `tree_order[t]` of the walk's result is the original tree t."""

    forest: Forest
    n_splits: int
    leaves: np.ndarray
    steps: tuple[int, ...]
    tree_order: np.ndarray

    def leaf_values(self, x: np.ndarray, has_nan: bool, special: bool) -> np.ndarray:
        """(rows, trees) leaf values for float64 rows `x`, as `Forest._step` walks them."""
        f, splits = self.forest, slice(0, self.n_splits)
        # each row's next node after every split, then the leaves (which stay where they are)
        go_right = f._go_right(x[:, f.feature[splits]], splits, has_nan, special)
        nxt = np.where(go_right, f.right[splits], f.left[splits])
        if x.shape[0] == 1:  # one row (a one-query decision): one flat array, no offsets
            nxt, cur = np.concatenate([nxt[0], self.leaves]), f.roots.copy()
            for moving in self.steps:
                cur[:moving] = nxt[cur[:moving]]
            return f.value[cur][self.tree_order][None, :]
        # row r's entries sit at r x nodes + node and hold r x nodes + next
        base = (np.arange(x.shape[0], dtype=np.intp) * len(f.value))[:, None]
        nxt = np.concatenate([nxt, np.broadcast_to(self.leaves, (x.shape[0], len(self.leaves)))], axis=1) + base
        cur = f.roots[None, :] + base
        nxt = nxt.reshape(-1)
        for moving in self.steps:
            cur[:, :moving] = nxt[cur[:, :moving]]
        return f.value[cur - base][:, self.tree_order]


def _few_rows(f: Forest) -> FewRows:
    n = len(f.value)
    split = f.left != np.arange(n)
    order = np.concatenate([np.flatnonzero(split), np.flatnonzero(~split)])  # new node -> old node
    new = np.empty(n, dtype=np.intp)
    new[order] = np.arange(n, dtype=np.intp)
    by_depth = np.argsort(-f.root_depth, kind="stable")  # new tree column -> old tree
    tree_order = np.empty(len(by_depth), dtype=np.intp)
    tree_order[by_depth] = np.arange(len(by_depth), dtype=np.intp)
    depth = f.root_depth[by_depth]
    forest = Forest(
        f.feature[order], f.threshold[order], f.default_left[order], f.missing[order], new[f.left[order]],
        new[f.right[order]], f.value[order], new[f.roots[by_depth]], depth,
    )  # fmt: skip
    n_splits = int(split.sum())
    steps = tuple(int(np.count_nonzero(depth > k)) for k in range(f.depth))
    return FewRows(forest, n_splits, np.arange(n_splits, n, dtype=np.intp), steps, tree_order)


def sum_in_order(per_tree: np.ndarray) -> np.ndarray:
    """(n_trees, n) -> (n,): trees added one after another, as LightGBM does, so every path and
    batch size gives the same bits (numpy's pairwise sum depends on the memory layout)."""
    acc = np.zeros(per_tree.shape[1], dtype=np.float64)
    for row in per_tree:
        acc += row
    return acc


def specialise(f: Forest, n_query: int, arm_x: np.ndarray) -> tuple[Forest, np.ndarray]:
    """Query-only trees for every (tree, arm) with the arm splits decided, shared where equal.

    Returns the forest of distinct specialised trees and an (n_arms, n_trees)
    index matrix: row j lists, in tree order, the specialised tree arm j uses.
    Every arm split is decided for every arm at once; arms that decide a tree's
    arm splits alike share its specialised tree, which is built once.
    """
    feat, thr, dl, miss = f.feature.tolist(), f.threshold.tolist(), f.default_left.tolist(), f.missing.tolist()
    left, right, value = f.left.tolist(), f.right.tolist(), f.value.tolist()
    cols: list[list] = [[] for _ in range(7)]
    roots: list[int] = []
    depths: list[int] = []
    units: dict[tuple, int] = {}
    per_arm: list[list[int]] = [[] for _ in range(arm_x.shape[0])]
    on_arm = (f.feature >= n_query) & (f.left != np.arange(len(f.left)))
    # (arms, nodes): whether each arm goes left at each arm split (False elsewhere)
    goes_left = np.zeros((arm_x.shape[0], len(f.left)), dtype=bool)
    at = np.flatnonzero(on_arm)
    if len(at):
        goes_left[:, at] = ~f._go_right(arm_x[:, f.feature[at] - n_query], at, has_nan=True, special=True)
    arm_split = on_arm.tolist()
    arm_lefts: dict[int, list[bool]] = {}  # arm -> its row of goes_left as a list, made when first needed

    def resolve(g: int, arm_left: list[bool]) -> int:
        while arm_split[g]:
            g = left[g] if arm_left[g] else right[g]
        return g

    for root in f.roots.tolist():
        tree, stack = [], [root]
        while stack:  # the tree's arm splits
            g = stack.pop()
            if left[g] != g:
                if arm_split[g]:
                    tree.append(g)
                stack += (left[g], right[g])
        decided = np.ascontiguousarray(goes_left[:, tree])
        built: dict[bytes, int] = {}
        for j in range(arm_x.shape[0]):
            key = decided[j].tobytes()
            if key not in built:
                if j not in arm_lefts:
                    arm_lefts[j] = goes_left[j].tolist()
                arm_left = arm_lefts[j]
                # the specialised tree, in preorder: (old node, its resolved children) per node
                order, stack, kids = [], [resolve(root, arm_left)], {}
                while stack:
                    g = stack.pop()
                    order.append(g)
                    if left[g] != g:
                        kids[g] = (resolve(left[g], arm_left), resolve(right[g], arm_left))
                        stack.extend(reversed(kids[g]))
                sig = tuple((g, kids.get(g)) for g in order)
                if sig not in units:
                    units[sig] = len(roots)
                    depths.append(_append_tree(cols, roots, order, kids, feat, thr, dl, miss, value))
                built[key] = units[sig]
            per_arm[j].append(built[key])
    forest = Forest(
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
