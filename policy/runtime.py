"""Predictor backends: the bundle's two models, run by numpy (default), LightGBM or onnxruntime.

A backend takes the bundle's verified file bytes and answers one question:
for a matrix of (query, arm) rows, the success probability before calibration
and the log of the predicted joules. Backends are looked up by name in
`BACKENDS`. "numpy" evaluates the plain-data trees (policy/trees.py), checked
structurally before use: the default, safe for a bundle from anyone.
"lightgbm" and "onnx" hand the model files to a native parser, which a crafted
file can crash; use them only for bundles you trust. Each imports its library
only when it is constructed, so `import policy` and the numpy backend never
import lightgbm or onnxruntime.

Models are built from bytes that the bundle loader has already checked against
its digest: nothing is read twice from disk and nothing is unpickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from policy.errors import BundleError, unknown_name
from policy.features import row_matrix_from_block
from policy.trees import TreeEnsemble

DEFAULT_BACKEND = "numpy"


class Backend(ABC):
    """Runs the success and energy models on (query, arm) rows."""

    name: str = ""
    #: the bundle files this backend reads
    files: tuple[str, str] = ("", "")

    @abstractmethod
    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_raw, log_energy_j), each 1-d float64 of len(rows); rows are float32 (n, n_row_features)."""

    def predict_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_raw, log_energy_j), each (n_queries, n_arms), for every row [query_x[i], arm_x[j]]."""
        nq, na = query_x.shape[0], arm_x.shape[0]
        p, log_e = self.predict_rows(row_matrix_from_block(query_x, arm_x))
        return p.reshape(nq, na), log_e.reshape(nq, na)

    def predict_energy_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> np.ndarray:
        """log_energy_j (n_queries, n_arms) alone (the stage-2 rule needs no first-stage success model)."""
        return self.predict_grid(query_x, arm_x)[1]


def _missing(blobs: Mapping[str, bytes], files: tuple[str, ...], backend: str) -> None:
    absent = [f for f in files if f not in blobs]
    if absent:
        raise BundleError(f"this bundle holds no {', '.join(absent)}; load it with backend='numpy', not {backend!r}")


class NumpyBackend(Backend):
    """The plain-data trees, validated and evaluated with numpy: no native parser sees the bundle."""

    name = "numpy"
    files = ("success.trees.json", "energy.trees.json")

    def __init__(self, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any], n_features: int) -> None:
        _missing(blobs, self.files, self.name)
        self.success_ = TreeEnsemble.from_bytes(blobs[self.files[0]], n_features)
        self.energy_ = TreeEnsemble.from_bytes(blobs[self.files[1]], n_features)
        if self.success_.transform != "sigmoid" or self.energy_.transform != "identity":
            raise BundleError(
                "the success trees must output a probability (sigmoid) and the energy trees log joules (identity); "
                "re-export the bundle"
            )

    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.success_.predict(rows), self.energy_.predict(rows)

    def predict_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # arm columns decided ahead per tree: see TreeEnsemble.raw_score_grid
        p = self.success_.transformed(self.success_.raw_score_grid(query_x, arm_x))
        return p, self.energy_.raw_score_grid(query_x, arm_x)

    def predict_energy_grid(self, query_x: np.ndarray, arm_x: np.ndarray) -> np.ndarray:
        return self.energy_.raw_score_grid(query_x, arm_x)


class LightGBMBackend(Backend):
    name = "lightgbm"
    files = ("success.txt", "energy.txt")

    def __init__(self, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any], n_features: int) -> None:
        _missing(blobs, self.files, self.name)
        import lightgbm as lgb

        try:
            self.success_ = lgb.Booster(model_str=blobs["success.txt"].decode("utf-8"))
            self.energy_ = lgb.Booster(model_str=blobs["energy.txt"].decode("utf-8"))
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
            raise BundleError(f"a LightGBM model file of the bundle does not parse: {exc}") from exc
        for what, b in (("success", self.success_), ("energy", self.energy_)):
            if b.num_feature() != n_features:
                raise BundleError(f"the {what} model takes {b.num_feature()} features, the bundle's rows {n_features}")

    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One thread: a decision batch is small, and OpenMP start-up costs more than it saves.
        p = self.success_.predict(rows, num_threads=1)
        log_e = self.energy_.predict(rows, num_threads=1)
        return np.asarray(p, dtype=np.float64).reshape(-1), np.asarray(log_e, dtype=np.float64).reshape(-1)


class OnnxBackend(Backend):
    name = "onnx"
    files = ("success.onnx", "energy.onnx")

    def __init__(self, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any], n_features: int) -> None:
        _missing(blobs, self.files, self.name)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.success_ = ort.InferenceSession(blobs["success.onnx"], opts, providers=["CPUExecutionProvider"])
            self.energy_ = ort.InferenceSession(blobs["energy.onnx"], opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"an ONNX model file of the bundle does not load: {exc}") from exc
        self.io_ = dict(onnx_io)
        # one row of zeros up front: a wrong width, output name or column fails here, as a BundleError
        p, log_e = self.predict_rows(np.zeros((1, n_features), dtype=np.float32))
        if p.shape != (1,) or log_e.shape != (1,):
            raise BundleError("the ONNX models do not give one value per row; re-export the bundle")

    def _run(self, sess: Any, output: str, column: int, rows: np.ndarray) -> np.ndarray:
        try:
            out = sess.run([output], {self.io_["input"]: rows})[0]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"an ONNX model of the bundle does not run on the policy's rows: {exc}") from exc
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 2:
            if not 0 <= column < out.shape[1]:
                raise BundleError(f"policy.json names ONNX output column {column}, but {output!r} has {out.shape[1]}")
            return out[:, column]
        return out.reshape(-1)

    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        io = self.io_
        p = self._run(self.success_, io["success_output"], io["success_column"], rows)
        log_e = self._run(self.energy_, io["energy_output"], io["energy_column"], rows)
        return p, log_e


BACKENDS: dict[str, Callable[..., Backend]] = {
    NumpyBackend.name: NumpyBackend,
    LightGBMBackend.name: LightGBMBackend,
    OnnxBackend.name: OnnxBackend,
}


def make_backend(name: str, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any], n_features: int) -> Backend:
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    return BACKENDS[name](blobs, onnx_io, n_features)


def calibrate(p: np.ndarray, table: Mapping[str, list[float]] | None) -> np.ndarray:
    """Apply an isotonic calibration table (x, y lists) with linear interpolation; clip to [0, 1]."""
    if table is not None:
        p = np.interp(p, table["x"], table["y"])
    return np.clip(p, 0.0, 1.0)
