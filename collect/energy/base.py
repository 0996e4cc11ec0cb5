"""The meter interface: named begin/end windows over a cumulative energy counter.

A meter reads a monotonically increasing (energy_j, time_s) snapshot; a window
is the difference between the snapshot at `end_window` and at `begin_window`,
so windows may nest and overlap freely. Subclasses implement `_snapshot_j` and
say whether their joules are measured or estimated.
This module must never import torch or a vendor library at import time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from policy.errors import MeterError, UsageError
from policy.records import ENERGY_SOURCES, EnergyMeasurement


class Meter(ABC):
    """Energy meter with named windows (Zeus's begin_window/end_window verbs)."""

    #: registry name, e.g. "estimate", "nvml", "rapl"
    name: str = ""
    #: "measured" or "estimated"
    source: str = ""

    def __init__(self) -> None:
        if self.source not in ENERGY_SOURCES:
            raise TypeError(f"{type(self).__name__}.source must be one of {ENERGY_SOURCES}")
        self._open: dict[str, tuple[float, float]] = {}
        self.idle_power_w: float = 0.0

    @abstractmethod
    def _snapshot_j(self) -> float:
        """Cumulative joules since an arbitrary origin; must never decrease."""

    def _sync(self) -> None:  # noqa: B027 (a no-op default on purpose)
        """Wait for queued device work before reading (CUDA meters override)."""

    def _flags(self, duration_s: float) -> tuple[str, ...]:
        return ()

    def begin_window(self, name: str, sync: bool = True) -> None:
        if not name:
            raise UsageError("a meter window needs a non-empty name")
        if name in self._open:
            raise UsageError(f"meter window {name!r} is already open; end it or use another name")
        if sync:
            self._sync()
        self._open[name] = (time.perf_counter(), self._snapshot_j())

    def end_window(self, name: str, sync: bool = True) -> EnergyMeasurement:
        if name not in self._open:
            raise UsageError(f"meter window {name!r} was never begun (open: {sorted(self._open) or 'none'})")
        if sync:
            self._sync()
        t0, e0 = self._open.pop(name)
        duration_s = time.perf_counter() - t0
        energy_j = self._snapshot_j() - e0
        if energy_j < 0:
            raise MeterError(f"meter {self.name!r} went backwards by {-energy_j:.3f} J in window {name!r}")
        return EnergyMeasurement(
            name=name,
            energy_j=energy_j,
            duration_s=duration_s,
            meter=self.name,
            source=self.source,
            idle_energy_j=self.idle_power_w * duration_s,
            flags=self._flags(duration_s),
        )

    def measure_idle(self, seconds: float = 3.0) -> float:
        """Sample the meter while this process sleeps; keep and return the idle power in W."""
        if seconds <= 0:
            raise UsageError(f"idle baseline needs a positive duration, got {seconds} s")
        self.begin_window("__idle__")
        time.sleep(seconds)
        m = self.end_window("__idle__")
        self.idle_power_w = m.energy_j / m.duration_s if m.duration_s > 0 else 0.0
        return self.idle_power_w

    def describe(self) -> str:
        return f"{self.name} ({self.source})"
