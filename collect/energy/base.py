"""The meter interface: named begin/end windows over a cumulative energy counter.

A meter reads a monotonically increasing snapshot (a `Reading`: total joules,
joules per zone, how often each zone's counter was seen to change); a window is
the difference between the reading at `end_window` and at `begin_window`, so
windows may nest and overlap freely. Subclasses implement `_snapshot_j` (or
`_read` for per-zone detail) and say whether their joules are measured or
estimated. Caveats a window inherits (too short for the counter, a counter that
never changed, a counter reset) become `EnergyMeasurement.flags`, so a zero is
never reported as if it were a real zero.
This module must never import torch or a vendor library at import time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from policy.errors import MeterError, UsageError
from policy.records import ENERGY_SOURCES, EnergyMeasurement

#: flag: the window was shorter than the interval at which the counter updates
SHORTER_THAN_COUNTER_UPDATE = "shorter_than_counter_update"
#: flag: at least one zone's counter did not change during the window (its share reads 0 J)
COUNTER_NOT_TICKED = "counter_not_ticked"


@dataclass(frozen=True)
class Reading:
    """One snapshot of a meter. Units: joules since an arbitrary origin.

    `zones_j` splits `energy_j` by device or RAPL zone; `ticks` counts, per zone,
    how many times the raw counter was seen to change (so a window can tell a
    counter that stood still from a device that used nothing). `events` is how
    many entries the meter's event log held when the reading was taken.
    """

    energy_j: float
    zones_j: Mapping[str, float] = field(default_factory=dict)
    ticks: Mapping[str, int] = field(default_factory=dict)
    events: int = 0


class Meter(ABC):
    """Energy meter with named windows (Zeus's begin_window/end_window verbs)."""

    #: registry name, e.g. "estimate", "nvml", "rapl"
    name: str = ""
    #: "measured" or "estimated"
    source: str = ""
    #: how often the underlying counter updates, in s; shorter windows are flagged (0: never)
    counter_update_s: float = 0.0

    def __init__(self) -> None:
        if self.source not in ENERGY_SOURCES:
            raise TypeError(f"{type(self).__name__}.source must be one of {ENERGY_SOURCES}")
        self._open: dict[str, tuple[float, Reading]] = {}
        # Append-only log of caveats (e.g. "counter_reset"); a window gets those logged while it was open.
        self._events: list[str] = []
        self.idle_power_w: float = 0.0

    @abstractmethod
    def _snapshot_j(self) -> float:
        """Cumulative joules since an arbitrary origin; must never decrease."""

    def _read(self) -> Reading:
        """A full snapshot; meters with zones or tick counts override this."""
        return Reading(energy_j=self._snapshot_j(), events=len(self._events))

    def _sync(self) -> None:  # noqa: B027  (an optional hook: only CUDA meters have work to wait for)
        """Wait for queued device work before reading (CUDA meters override)."""

    def _flags(self, duration_s: float, start: Reading, end: Reading) -> tuple[str, ...]:
        flags: list[str] = []
        if duration_s < self.counter_update_s:
            flags.append(SHORTER_THAN_COUNTER_UPDATE)
        if any(end.ticks.get(zone, 0) == n for zone, n in start.ticks.items()):
            flags.append(COUNTER_NOT_TICKED)
        for event in self._events[start.events : end.events]:
            if event not in flags:
                flags.append(event)
        return tuple(flags)

    def begin_window(self, name: str, sync: bool = True) -> None:
        if not name:
            raise UsageError("a meter window needs a non-empty name")
        if name in self._open:
            raise UsageError(f"meter window {name!r} is already open; end it or use another name")
        if sync:
            self._sync()
        self._open[name] = (time.perf_counter(), self._read())

    def end_window(self, name: str, sync: bool = True) -> EnergyMeasurement:
        if name not in self._open:
            raise UsageError(f"meter window {name!r} was never begun (open: {sorted(self._open) or 'none'})")
        if sync:
            self._sync()
        t0, start = self._open.pop(name)
        end = self._read()
        duration_s = time.perf_counter() - t0
        energy_j = end.energy_j - start.energy_j
        if energy_j < 0:
            raise MeterError(f"meter {self.name!r} went backwards by {-energy_j:.3f} J in window {name!r}")
        detail = {f"{zone}_j": end.zones_j[zone] - e0 for zone, e0 in start.zones_j.items() if zone in end.zones_j}
        return EnergyMeasurement(
            name=name,
            energy_j=energy_j,
            duration_s=duration_s,
            meter=self.name,
            source=self.source,
            idle_energy_j=self.idle_power_w * duration_s,
            detail=detail,
            flags=self._flags(duration_s, start, end),
        )

    def measure_idle(self, seconds: float = 3.0) -> float:
        """Sample the meter while this process sleeps; keep and return the idle power in W.

        Run it with the device otherwise idle: whatever else draws power meanwhile
        (other processes, other tenants of the GPU) ends up in the baseline.
        """
        if seconds <= 0:
            raise UsageError(f"idle baseline needs a positive duration, got {seconds} s")
        self.begin_window("__idle__")
        time.sleep(seconds)
        m = self.end_window("__idle__")
        if COUNTER_NOT_TICKED in m.flags:
            raise MeterError(
                f"meter {self.name!r}: the energy counter did not change during a {m.duration_s:.2f} s idle "
                "baseline, so it cannot be trusted; measure longer or use --meter estimate"
            )
        self.idle_power_w = m.energy_j / m.duration_s if m.duration_s > 0 else 0.0
        return self.idle_power_w

    def describe(self) -> str:
        return f"{self.name} ({self.source})"

    def close(self) -> None:  # noqa: B027  (an optional hook: only meters with threads or libraries need it)
        """Stop background threads and release the device library (no-op by default)."""

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
