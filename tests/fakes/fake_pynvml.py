"""A stand-in for the `pynvml` module (nvidia-ml-py) over fake GPUs.

It raises the real library's exception classes (`pynvml.NVMLError` and its
`NVMLError_*` subclasses, built from the real error codes), so code under test
catches exactly what it would catch on a GPU machine. Importing the real
`pynvml` loads no driver, so this works on machines without a GPU.
Each fake GPU's energy counter is `energy_mj` (set by the test) plus
`power_w` integrated over wall time, refreshed every `update_s` like NVML's.
This module must never be used outside tests and `scripts/gpu_check.py --fake-nvml`.
"""

from __future__ import annotations

import math
import sys
import time
import types
from dataclasses import dataclass, field

import pynvml as _real


@dataclass
class FakeGpu:
    uuid: str
    #: manual part of the counter in mJ; None: this part has no energy counter (pre-Volta)
    energy_mj: int | None = 0
    #: constant draw in W, added to the counter over wall time and returned by GetPowerUsage
    power_w: float = 0.0
    update_s: float = 0.1
    born_s: float = field(default_factory=time.perf_counter)

    def counter_mj(self) -> int:
        if self.energy_mj is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        elapsed = math.floor((time.perf_counter() - self.born_s) / self.update_s) * self.update_s
        return (self.energy_mj + int(self.power_w * elapsed * 1000)) % 2**64


class FakeNvml:
    """State behind one fake `pynvml` module; `module` is what goes into sys.modules."""

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.init_count = 0
        self.module = self._build_module()

    def _check_init(self) -> None:
        if self.init_count <= 0:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: object) -> FakeGpu:
        self._check_init()
        if not isinstance(handle, FakeGpu):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def _build_module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml", "fake pynvml (tests/fakes/fake_pynvml.py)")
        for attr in dir(_real):
            if attr.startswith(("NVMLError", "NVML_ERROR_")):
                setattr(m, attr, getattr(_real, attr))

        def nvmlInit() -> None:
            if self.init_error is not None:
                raise _real.NVMLError(self.init_error)
            self.init_count += 1

        def nvmlShutdown() -> None:
            self._check_init()
            self.init_count -= 1

        def nvmlDeviceGetCount() -> int:
            self._check_init()
            return len(self.gpus)

        def nvmlDeviceGetHandleByIndex(index: int) -> FakeGpu:
            self._check_init()
            if not 0 <= index < len(self.gpus):
                raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
            return self.gpus[index]

        def nvmlDeviceGetUUID(handle: object) -> str:
            return self._gpu(handle).uuid

        def nvmlDeviceGetTotalEnergyConsumption(handle: object) -> int:
            return self._gpu(handle).counter_mj()

        def nvmlDeviceGetPowerUsage(handle: object) -> int:
            return int(self._gpu(handle).power_w * 1000)

        for fn in (
            nvmlInit,
            nvmlShutdown,
            nvmlDeviceGetCount,
            nvmlDeviceGetHandleByIndex,
            nvmlDeviceGetUUID,
            nvmlDeviceGetTotalEnergyConsumption,
            nvmlDeviceGetPowerUsage,
        ):
            setattr(m, fn.__name__, fn)
        return m

    def install(self) -> None:
        """Put the fake in sys.modules (tests should prefer monkeypatch.setitem)."""
        sys.modules["pynvml"] = self.module
