"""Predictor backends: the two model files of a bundle, run by LightGBM or by onnxruntime.

A backend takes the bundle's verified file bytes and answers one question:
for a matrix of (query, arm) rows, the success probability before calibration
and the log of the predicted joules. Backends are looked up by name in
`BACKENDS`; each imports its library only when it is constructed, so loading a
policy with the ONNX backend never imports lightgbm and the reverse.

Models are built from bytes that the bundle loader has already checked against
their sha256: nothing is read twice from disk and nothing is unpickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from policy.errors import BundleError, unknown_name


class Backend(ABC):
    """Runs the success and energy models on (query, arm) rows."""

    name: str = ""
    #: the bundle files this backend reads
    files: tuple[str, str] = ("", "")

    @abstractmethod
    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_raw, log_energy_j), each 1-d float64 of len(rows); rows are float32 (n, n_row_features)."""


class LightGBMBackend(Backend):
    name = "lightgbm"
    files = ("success.txt", "energy.txt")

    def __init__(self, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any]) -> None:
        import lightgbm as lgb

        try:
            self.success_ = lgb.Booster(model_str=blobs["success.txt"].decode("utf-8"))
            self.energy_ = lgb.Booster(model_str=blobs["energy.txt"].decode("utf-8"))
        except lgb.basic.LightGBMError as exc:
            raise BundleError(f"a LightGBM model file of the bundle does not parse: {exc}") from exc

    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One thread: a decision batch is small, and OpenMP start-up costs more than it saves.
        p = self.success_.predict(rows, num_threads=1)
        log_e = self.energy_.predict(rows, num_threads=1)
        return np.asarray(p, dtype=np.float64).reshape(-1), np.asarray(log_e, dtype=np.float64).reshape(-1)


class OnnxBackend(Backend):
    name = "onnx"
    files = ("success.onnx", "energy.onnx")

    def __init__(self, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any]) -> None:
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

    def _run(self, sess: Any, output: str, column: int, rows: np.ndarray) -> np.ndarray:
        out = sess.run([output], {self.io_["input"]: rows})[0]
        out = np.asarray(out, dtype=np.float64)
        return out[:, column] if out.ndim == 2 else out.reshape(-1)

    def predict_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        io = self.io_
        p = self._run(self.success_, io["success_output"], io["success_column"], rows)
        log_e = self._run(self.energy_, io["energy_output"], io["energy_column"], rows)
        return p, log_e


BACKENDS: dict[str, Callable[..., Backend]] = {
    LightGBMBackend.name: LightGBMBackend,
    OnnxBackend.name: OnnxBackend,
}


def make_backend(name: str, blobs: Mapping[str, bytes], onnx_io: Mapping[str, Any]) -> Backend:
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    return BACKENDS[name](blobs, onnx_io)


def calibrate(p: np.ndarray, table: Mapping[str, list[float]] | None) -> np.ndarray:
    """Apply an isotonic calibration table (x, y lists) with linear interpolation; clip to [0, 1]."""
    if table is not None:
        p = np.interp(p, table["x"], table["y"])
    return np.clip(p, 0.0, 1.0)
