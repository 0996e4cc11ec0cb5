"""The RAPL meter: measured CPU package and DRAM joules from Linux powercap.

Reads `energy_uj` of every package zone (`name` = "package-N") and every DRAM
sub-zone (`name` = "dram") under `/sys/class/powercap/intel-rapl:*` (AMD parts
expose the same tree). Core, uncore and psys zones are skipped because the
package or platform zone already contains them: summing them would count joules
twice. Each counter wraps to 0 at `max_energy_range_uj`; the meter keeps the last
raw value per zone and adds the range when a value goes down, and a background
thread reads every `wrap_poll_s` so a window longer than one wrap period still
counts every wrap.

The joules are the whole socket's and DRAM's, for every process on the machine.
This module must never import anything beyond the standard library and must
never convert units anywhere but in `_read_zone`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from collect.energy.base import Meter, Reading
from policy.errors import MeterError, UsageError
from policy.records import MEASURED

DEFAULT_ROOT = Path("/sys/class/powercap")
#: RAPL updates its counters about every millisecond.
COUNTER_UPDATE_S = 0.001

_FIX_PERMISSION = "run as root or `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`, or use --meter estimate"
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass
class _Zone:
    """Bookkeeping for one powercap zone. Units: uJ for raw values, J for `energy_j`."""

    label: str  # "package-0", "dram-0"
    energy_file: Path
    max_range_uj: int
    last_raw_uj: int = 0
    energy_j: float = 0.0
    ticks: int = 0


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError as e:
        raise MeterError(f"cannot read {path}: permission denied; {_FIX_PERMISSION}") from e
    except FileNotFoundError as e:
        raise MeterError(f"RAPL file {path} is missing; use --meter estimate") from e
    except (OSError, ValueError) as e:
        raise MeterError(f"cannot read a RAPL counter from {path} ({e}); use --meter estimate") from e


def discover_zones(root: Path) -> list[_Zone]:
    """Package and DRAM zones under `root`, each read once to check it is readable."""
    zones: list[_Zone] = []
    dirs = sorted(p for p in root.glob("intel-rapl:*") if _ZONE_DIR.match(p.name)) if root.is_dir() else []
    for zone_dir in dirs:
        package, sub = _ZONE_DIR.match(zone_dir.name).groups()  # type: ignore[union-attr]
        try:
            kind = (zone_dir / "name").read_text().strip()
        except OSError:
            continue
        if sub is None and kind.startswith("package"):
            label = kind
        elif sub is not None and kind == "dram":
            label = f"dram-{package}"
        else:
            continue
        zone = _Zone(
            label=label,
            energy_file=zone_dir / "energy_uj",
            max_range_uj=_read_int(zone_dir / "max_energy_range_uj"),
        )
        zone.last_raw_uj = _read_int(zone.energy_file)
        zones.append(zone)
    if not zones:
        raise MeterError(
            f"no RAPL package zone under {root} (no intel-rapl:*/energy_uj): this machine, VM or container "
            "does not expose RAPL; use --meter estimate"
        )
    return zones


class RaplMeter(Meter):
    """Measured CPU package + DRAM energy (per-zone joules in `detail`)."""

    name = "rapl"
    source = MEASURED
    counter_update_s = COUNTER_UPDATE_S

    def __init__(self, root: str | Path = DEFAULT_ROOT, wrap_poll_s: float = 10.0) -> None:
        """`root`: the powercap folder (a fake tree in tests).

        `wrap_poll_s`: how often, in s, a background thread reads the counters so
        no wrap is missed (0 disables it; then windows must be shorter than a wrap
        period, minutes at full load).
        """
        super().__init__()
        if wrap_poll_s < 0:
            raise UsageError(f"wrap_poll_s must be >= 0, got {wrap_poll_s}")
        self.root = Path(root)
        self._lock = threading.Lock()
        self._zones = discover_zones(self.root)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if wrap_poll_s > 0:
            self._thread = threading.Thread(target=self._poll_loop, args=(wrap_poll_s,), name="rapl-wrap", daemon=True)
            self._thread.start()

    @property
    def zones(self) -> list[str]:
        return [z.label for z in self._zones]

    def _poll_loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self._read()
            except MeterError:
                return  # the next window's read raises the same error in the caller's thread

    def _read_zone(self, zone: _Zone) -> float:
        """Cumulative joules of one zone. Caller holds the lock."""
        raw_uj = _read_int(zone.energy_file)
        delta_uj = raw_uj - zone.last_raw_uj
        if delta_uj < 0:
            delta_uj += zone.max_range_uj  # the counter wrapped past max_energy_range_uj to 0
        if delta_uj:
            zone.ticks += 1
        zone.last_raw_uj = raw_uj
        zone.energy_j += delta_uj / 1e6  # uJ -> J, the one conversion
        return zone.energy_j

    def _read(self) -> Reading:
        with self._lock:
            zones = {z.label: self._read_zone(z) for z in self._zones}
            ticks = {z.label: z.ticks for z in self._zones}
            return Reading(energy_j=sum(zones.values()), zones_j=zones, ticks=ticks, events=len(self._events))

    def _snapshot_j(self) -> float:
        return self._read().energy_j

    def describe(self) -> str:
        return f"rapl ({self.source}, zones {', '.join(self.zones)})"

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
