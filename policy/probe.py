"""The prefill probe's reduction: raw hidden states of one model -> `PROBE_DIMS` numbers a policy reads.

A "text+probe" policy reads, beside the question's text features, the hidden
state that one model's prefill of the prompt leaves behind (store/probes.py):
`probe_last` (final layer, last prompt token) concatenated with `probe_mean`
(final layer, mean over prompt tokens), 2 x hidden floats. Both are kept: the
last token's state is what the model is about to answer from, the mean carries
what the prompt is about, and PCA decides which directions matter. Training
learns a PCA of these vectors (numpy SVD, `fit_reduction`); the bundle stores
it as plain JSON arrays in `probe.json` (`mean` (d,), `components` (k, d)),
with the probe's model, layer and width, covered by the bundle digest like
every other file. `ProbeReduction.from_json` checks every field's type and
every array's shape, so a damaged file is a `BundleError`, never a crash.

numpy and the standard library only; never runs a model, never pickles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy import jsonsafe
from policy.errors import BundleError, UsageError

#: Reduced probe dimensions a "text+probe" policy reads (feature names probe_pc_0 ... probe_pc_15).
PROBE_DIMS = 16
#: What the raw probe vector is: the collected arrays, concatenated in this order.
PROBE_INPUTS = "probe_last+probe_mean"
PROBE_FILE = "probe.json"


@dataclass(frozen=True, eq=False)
class ProbeReduction:
    """x -> (x - mean) @ components.T, for raw probes x of `model` at `layer` (width `mean.size`)."""

    model: str
    layer: int
    mean: np.ndarray  # (d,) float64
    components: np.ndarray  # (PROBE_DIMS, d) float64
    inputs: str = PROBE_INPUTS

    @property
    def width(self) -> int:
        return int(self.mean.shape[0])

    def reduce(self, raw: Any) -> np.ndarray:
        """(n, PROBE_DIMS) float32 from raw probe vectors (n, width); `UsageError` on the wrong shape."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise UsageError(
                f"probe= must hold raw probe values of shape (n_questions, {self.width}) "
                f"({self.inputs} of model {self.model!r}, layer {self.layer}), got {np.shape(raw)}; "
                f"compute them with `ttc allocate --probe-model {self.model}` or store.probes.read_probes"
            )
        if not np.isfinite(x).all():
            raise UsageError("probe= holds NaN or infinite values; recompute the probe vectors")
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def to_json(self) -> bytes:
        d = {
            "model": self.model,
            "layer": self.layer,
            "inputs": self.inputs,
            "width": self.width,
            "dims": int(self.components.shape[0]),
            "mean": [float(v) for v in self.mean],
            "components": [[float(v) for v in row] for row in self.components],
        }
        return (json.dumps(d, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> ProbeReduction:
        """Parse and check `probe.json`; any type or shape mismatch is a `BundleError` naming the field."""
        d = jsonsafe.loads(raw, PROBE_FILE, BundleError, "; re-export the bundle")
        if not isinstance(d, dict):
            raise BundleError(f"{PROBE_FILE} must hold a JSON object")
        for key, typ in (("model", str), ("layer", int), ("inputs", str), ("width", int), ("dims", int)):
            if type(d.get(key)) is not typ:
                raise BundleError(f"{PROBE_FILE} field {key!r} must be {typ.__name__}; re-export the bundle")
        width, dims = d["width"], d["dims"]
        if d["inputs"] != PROBE_INPUTS or dims != PROBE_DIMS or width < 1:
            raise BundleError(
                f"{PROBE_FILE} reduces {d['inputs']!r} of width {width} to {dims} dims; this package reads "
                f"{PROBE_INPUTS!r} to {PROBE_DIMS}; retrain and re-export the policy"
            )
        mean = _matrix(d.get("mean"), (width,), "mean")
        components = _matrix(d.get("components"), (dims, width), "components")
        return cls(d["model"], d["layer"], mean, components, d["inputs"])


def _matrix(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A finite float array of exactly `shape` from nested JSON lists, else `BundleError`."""
    ok = isinstance(value, list) and len(value) == shape[0]
    if ok and len(shape) == 2:
        ok = all(isinstance(r, list) and len(r) == shape[1] for r in value)
    flat = value if len(shape) == 1 else [v for r in value for v in r] if ok else []
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in flat)
    if not ok:
        raise BundleError(f"{PROBE_FILE} field {name!r} must be finite numbers of shape {shape}; re-export the bundle")
    return np.asarray(value, dtype=np.float64).reshape(shape)


def fit_reduction(raw: np.ndarray, model: str, layer: int, dims: int = PROBE_DIMS) -> ProbeReduction:
    """PCA of raw probe vectors (n, d) by numpy SVD; fewer than `dims` directions are padded with zero rows.

    Signs are fixed (each component's largest entry positive) so the same
    vectors always give the same bundle.
    """
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UsageError(f"fitting the probe reduction needs at least 2 probe vectors, got shape {x.shape}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    vt = vt[:dims]
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    components = np.zeros((dims, x.shape[1]))
    components[: len(vt)] = vt
    return ProbeReduction(str(model), int(layer), mean, components)
