"""Every query's upper convex hull at once: `upper_hull`, vectorised over rows with numpy.

`ttc allocate` decides 100,000 queries in one go, and a Python loop per query
was its slowest part. `hulls` runs the same monotone chain for all rows
together: the arms of every row in the same order (cheapest first, then
likelier first, then by index), the same dominance test with `P_TOL`, the same
chord test with the same float operations in the same order, so it keeps
exactly the arms `upper_hull` keeps (tests/test_allocate.py checks it on
random instances with ties). `decisions` turns hull positions into `Decision`
records. numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.records import Decision

#: the least gain in predicted success that justifies a costlier arm (see upper_hull)
P_TOL = 1e-4
# rows per block: bounds the temporary (rows x arms) matrices
_BLOCK_ROWS = 8192
# up to this many rows, the scalar monotone chain (upper_hull) per row is faster than the vectorised one
_SCALAR_ROWS = 4


def upper_hull(e: Sequence[float], p: Sequence[Any], exact: bool = False) -> list[int]:
    """Indices of the upper convex hull of the points (e[i], p[i]), cheapest first.

    Kept points have strictly increasing e and p and strictly decreasing slopes.
    Among arms of equal e the one with the highest p is kept (then the lowest
    index); a point on the chord of its neighbours is dropped (a zero-gain move).
    A costlier arm must predict more than `P_TOL` higher success to be kept: a
    smaller gain is float noise (ONNX and LightGBM differ by ~1e-7, which a steep
    stretch of a calibration table can magnify), not a reason to spend joules.
    With `exact`, `p` compares exactly (integer hit counts, `Fraction`s: eval's
    frontiers, the task table's prices) and any gain counts.
    `hulls` below computes the same hulls for many rows at once.
    """
    order = sorted(range(len(e)), key=lambda i: (e[i], -p[i], i))
    hull: list[int] = []
    for i in order:
        if hull and (p[i] <= p[hull[-1]] if exact else p[i] <= p[hull[-1]] + P_TOL):
            continue  # costs at least as much, predicts no better: dominated
        if hull and e[i] == e[hull[-1]]:
            continue  # same cost, sorted by p descending: already have the better one
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when the slope a->b does not exceed the slope b->i (b is on or under the chord a->i)
            if (p[b] - p[a]) * (e[i] - e[b]) <= (p[i] - p[b]) * (e[b] - e[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


@dataclass(frozen=True)
class Hulls:
    """Upper hulls of n rows. Row q's hull is idx[q, :length[q]], cheapest first; between its
    neighbours k and k+1, slopes[q, k] is the accuracy per joule and steps_j[q, k] the extra
    joules (NaN beyond the hull). e0_j[q] is the joules of its cheapest hull arm."""

    idx: np.ndarray
    length: np.ndarray
    slopes: np.ndarray
    steps_j: np.ndarray
    e0_j: np.ndarray


def hulls(p: np.ndarray, e: np.ndarray) -> Hulls:
    """The upper hull of every row of (p, e), each (n_rows, n_arms) float64 and finite."""
    block = _scalar_block if len(p) <= _SCALAR_ROWS else _block
    parts = [block(p[s : s + _BLOCK_ROWS], e[s : s + _BLOCK_ROWS]) for s in range(0, len(p), _BLOCK_ROWS)]
    if not parts:
        m = p.shape[1]
        empty = np.zeros((0, max(m - 1, 0)))
        return Hulls(np.zeros((0, m), np.intp), np.zeros(0, np.intp), empty, empty.copy(), np.zeros(0))
    return Hulls(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def _block(p: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
    n, m = p.shape
    r = np.arange(n)
    order = np.lexsort((-p, e), axis=-1)  # stable: equal (e, p) keep index order, as upper_hull sorts
    stack = np.zeros((n, m), dtype=np.intp)
    length = np.zeros(n, dtype=np.intp)
    for j in range(m):
        i = order[:, j]
        pi, ei = p[r, i], e[r, i]
        top = stack[r, np.maximum(length - 1, 0)]
        # upper_hull skips an arm that predicts no better (within P_TOL) than the top, or costs the same
        keep = (length == 0) | ~((pi <= p[r, top] + P_TOL) | (ei == e[r, top]))
        while True:  # pop tops on or under the chord, as long as any row still does
            a, b = stack[r, np.maximum(length - 2, 0)], stack[r, np.maximum(length - 1, 0)]
            pa, pb, ea, eb = p[r, a], p[r, b], e[r, a], e[r, b]
            pop = keep & (length >= 2) & ((pb - pa) * (ei - eb) <= (pi - pb) * (eb - ea))
            if not pop.any():
                break
            length = length - pop
        stack[r[keep], length[keep]] = i[keep]
        length = length + keep
    return _finish(p, e, stack, length)


def _scalar_block(p: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same hulls by `upper_hull`, one row at a time (a one-query decision: no (rows x arms) passes)."""
    n, m = p.shape
    stack = np.zeros((n, m), dtype=np.intp)
    length = np.zeros(n, dtype=np.intp)
    for q in range(n):
        hull = upper_hull(e[q].tolist(), p[q].tolist())
        stack[q, : len(hull)] = hull
        length[q] = len(hull)
    return _finish(p, e, stack, length)


def _finish(p: np.ndarray, e: np.ndarray, stack: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, ...]:
    n, m = p.shape
    r = np.arange(n)
    he, hp = e[r[:, None], stack], p[r[:, None], stack]
    valid = np.arange(m - 1)[None, :] < (length - 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(valid, he[:, 1:] - he[:, :-1], np.nan)
        slopes = np.where(valid, (hp[:, 1:] - hp[:, :-1]) / steps, np.nan)
    return stack, length, slopes, steps, he[:, 0].copy()


def price_positions(h: Hulls, lam: float) -> np.ndarray:
    """Per row, the hull position the price `lam` reaches: climb while the next move is worth more."""
    above = h.slopes > lam  # NaN (beyond the hull) is never above
    return np.cumprod(above, axis=1).sum(axis=1).astype(np.intp)


def decisions(
    h: Hulls,
    pos: np.ndarray,
    p: np.ndarray,
    e: np.ndarray,
    arm_ids: Sequence[str],
    query_ids: Sequence[str],
    rules: Sequence[str],
    lam: float,
) -> list[Decision]:
    """One `Decision` per row: the arm at hull position pos[q], its next hull arm and that move's slope."""
    n, m = h.idx.shape
    r = np.arange(n)
    arm = h.idx[r, pos]
    top = (pos == h.length - 1).tolist()
    nxt = h.idx[r, np.minimum(pos + 1, m - 1)].tolist()
    slope = h.slopes[r, np.minimum(pos, m - 2)].tolist() if m > 1 else [0.0] * n
    p_arm, e_arm, lam = p[r, arm].tolist(), e[r, arm].tolist(), float(lam)
    return [
        Decision(
            query_id=query_ids[q],
            arm_id=arm_ids[a],
            p_success=p_arm[q],
            energy_j=e_arm[q],
            next_arm_id=None if top[q] else arm_ids[nxt[q]],
            marginal_acc_per_j=None if top[q] else slope[q],
            rule=rules[q],
            lam=lam,
        )
        for q, a in enumerate(arm.tolist())
    ]
