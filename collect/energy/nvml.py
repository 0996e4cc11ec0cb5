"""The NVML meter: measured joules of the NVIDIA GPUs this process can see.

On Volta and newer it reads `nvmlDeviceGetTotalEnergyConsumption` (a 64-bit
millijoule counter since the driver loaded, updated about every 100 ms) on every
visible GPU and sums them; on older parts, or where the counter is not
supported, a background thread polls `nvmlDeviceGetPowerUsage` (mW) at ~10 Hz
and integrates it (zero-order hold, so readings never decrease). Visible GPUs
follow `CUDA_VISIBLE_DEVICES` (indices or UUID prefixes), mapped to NVML's
indices; NVML numbers GPUs in PCI bus order, so set `CUDA_DEVICE_ORDER=PCI_BUS_ID`
on machines with mixed GPU models for CUDA's numbering to agree.

The joules are the whole board's, for every process on it: the meter measures a
device, not this process. Windows shorter than the counter's update interval, or
in which a counter never changed, are flagged rather than reported as clean zeros.

This module must never import pynvml or torch at import time (pynvml is imported
in `NvmlMeter.__init__`; torch is only used if the caller already imported it),
and must never convert units anywhere but in `_read_device`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collect.energy.base import Meter, Reading
from policy.errors import MeterError, UsageError
from policy.records import MEASURED

#: NVML's energy counter is an unsigned 64-bit count of millijoules.
COUNTER_WRAP_MJ = 2**64
#: NVML refreshes the energy counter about every 100 ms.
COUNTER_UPDATE_S = 0.1
#: flag: a counter went down by more than a wrap explains (driver reload); the window counts from the reset
COUNTER_RESET = "counter_reset"
#: flag: some of the window's joules come from polled power, not the energy counter
POWER_POLLED = "power_polled"

_FIX = "use --meter estimate (or --meter rapl for CPU energy)"


@dataclass
class _Device:
    """Bookkeeping for one GPU. Units: mJ for raw counters, J for `energy_j`."""

    label: str  # "gpu<NVML index>" (NVML's numbering, which may differ from CUDA's)
    handle: Any
    polled: bool
    last_raw_mj: int = 0
    energy_j: float = 0.0
    ticks: int = 0
    # power polling state (zero-order hold: the last power holds until the next sample)
    last_power_w: float = 0.0
    last_sample_s: float = 0.0


def visible_nvml_indices(pynvml: Any, visible: str | None) -> list[int]:
    """NVML indices of the GPUs CUDA would show, given `CUDA_VISIBLE_DEVICES` (None: all).

    Follows CUDA's parsing: comma-separated integers or UUID prefixes
    ("GPU-8932f937"), and an invalid entry hides it and every later entry.
    """
    count = pynvml.nvmlDeviceGetCount()
    if visible is None:
        return list(range(count))
    uuids: list[str] | None = None
    indices: list[int] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if index < 0 or index >= count:
                break
        elif entry.startswith("MIG-"):
            raise MeterError(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); NVML has no energy counter per MIG "
                f"instance, so its joules would be the whole GPU's. Run on a full GPU or {_FIX}"
            )
        else:
            if uuids is None:
                uuids = [_as_str(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            prefix = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(prefix)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in indices:
            break
        indices.append(index)
    return indices


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlMeter(Meter):
    """Measured GPU energy over the visible NVIDIA GPUs (summed; per-GPU joules in `detail`)."""

    name = "nvml"
    source = MEASURED
    counter_update_s = COUNTER_UPDATE_S

    def __init__(self, gpu_indices: Sequence[int] | None = None, poll_interval_s: float = 0.1) -> None:
        """`gpu_indices`: CUDA-visible indices to meter (default: all visible GPUs).

        `poll_interval_s`: sampling period of the power-polling fallback, in s.
        """
        super().__init__()
        if poll_interval_s <= 0:
            raise UsageError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.poll_interval_s = poll_interval_s
        try:
            import pynvml
        except ImportError as e:
            raise MeterError(f"the nvml meter needs nvidia-ml-py (pip install nvidia-ml-py), or {_FIX}") from e
        self._pynvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise MeterError(f"cannot initialise NVML ({e}): no NVIDIA driver or GPU here; {_FIX}") from e
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._poll_error: Exception | None = None
        try:
            visible = visible_nvml_indices(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
            if gpu_indices is not None:
                unknown = [i for i in gpu_indices if not 0 <= i < len(visible)]
                if unknown or not gpu_indices:
                    raise UsageError(
                        f"gpu_indices {list(gpu_indices)} do not name visible GPUs; "
                        f"{len(visible)} visible: {list(range(len(visible)))}"
                    )
                visible = [visible[i] for i in gpu_indices]
            if not visible:
                raise MeterError(f"NVML sees no GPU (CUDA_VISIBLE_DEVICES hides them all, or none is present); {_FIX}")
            self.nvml_indices = visible
            self._devices = [self._open_device(i) for i in visible]
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise MeterError(f"cannot read the GPUs through NVML ({e}); {_FIX}") from e
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        if any(d.polled for d in self._devices):
            self._thread = threading.Thread(target=self._poll_loop, name="nvml-power-poll", daemon=True)
            self._thread.start()

    def _open_device(self, nvml_index: int) -> _Device:
        pynvml = self._pynvml
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        device = _Device(label=f"gpu{nvml_index}", handle=handle, polled=False)
        try:
            device.last_raw_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except pynvml.NVMLError_NotSupported:
            # Pre-Volta parts have no energy counter: integrate polled power instead.
            device.polled = True
            device.last_power_w = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            device.last_sample_s = time.perf_counter()
        return device

    @property
    def polling(self) -> bool:
        """True when at least one GPU is metered by polled power instead of its energy counter."""
        return any(d.polled for d in self._devices)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            with self._lock:
                try:
                    for device in self._devices:
                        if device.polled:
                            self._sample_power(device)
                except self._pynvml.NVMLError as e:
                    # Surface it in the caller's thread at the next read instead of dying quietly.
                    self._poll_error = e
                    return

    def _sample_power(self, device: _Device) -> None:
        """Integrate the held power up to now, then hold the new sample. Caller holds the lock."""
        now = time.perf_counter()
        power_w = self._pynvml.nvmlDeviceGetPowerUsage(device.handle) / 1000.0  # mW -> W
        device.energy_j += device.last_power_w * (now - device.last_sample_s)
        device.last_power_w, device.last_sample_s = power_w, now
        device.ticks += 1

    def _read_device(self, device: _Device) -> float:
        """Cumulative joules of one GPU. Caller holds the lock."""
        if device.polled:
            return device.energy_j + device.last_power_w * (time.perf_counter() - device.last_sample_s)
        raw_mj = int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(device.handle))
        delta_mj = raw_mj - device.last_raw_mj
        if delta_mj < 0:
            delta_mj += COUNTER_WRAP_MJ
            if delta_mj >= COUNTER_WRAP_MJ // 2:
                # Far more than a wrap explains: the counter restarted (driver reload); count from zero.
                delta_mj = raw_mj
                self._events.append(COUNTER_RESET)
        if delta_mj:
            device.ticks += 1
        device.last_raw_mj = raw_mj
        device.energy_j += delta_mj / 1000.0  # mJ -> J, the one conversion
        return device.energy_j

    def _read(self) -> Reading:
        if self._closed:
            raise MeterError("the nvml meter was closed; open a new one")
        lost = f"NVML stopped answering: the GPU may be lost or reset; {_FIX}"
        with self._lock:
            if self._poll_error is not None:
                raise MeterError(f"{lost} ({self._poll_error})") from self._poll_error
            try:
                zones = {d.label: self._read_device(d) for d in self._devices}
            except self._pynvml.NVMLError as e:
                raise MeterError(f"{lost} ({e})") from e
            ticks = {d.label: d.ticks for d in self._devices}
            return Reading(energy_j=sum(zones.values()), zones_j=zones, ticks=ticks, events=len(self._events))

    def _flags(self, duration_s: float, start: Reading, end: Reading) -> tuple[str, ...]:
        flags = super()._flags(duration_s, start, end)
        if self.polling:
            flags += (POWER_POLLED,)
        return flags

    def _snapshot_j(self) -> float:
        return self._read().energy_j

    def _sync(self) -> None:
        # Only if the caller already uses torch: queued kernels must finish inside the window.
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)

    def describe(self) -> str:
        how = "polled power" if self.polling else "energy counter"
        return f"nvml ({self.source}, {how}, GPUs {', '.join(d.label for d in self._devices)})"

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if not self._closed:
            self._closed = True
            self._pynvml.nvmlShutdown()
