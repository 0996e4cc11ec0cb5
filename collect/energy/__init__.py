"""Energy meters behind one window interface, looked up by name in `METERS`.

`estimate` models power from CPU time (always "estimated"); `nvml` and `rapl`
read hardware counters ("measured"); `auto` opens the best of those this machine
can read. `check_comparable` guards every place that puts joules side by side.
This package must never import anything beyond the standard library and `policy`
at import time (vendor libraries load inside the meter that needs them), so
`scripts/gpu_check.py` runs on a machine with only torch, transformers and
nvidia-ml-py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from collect.energy.auto import auto_meter, choose_meter
from collect.energy.base import COUNTER_NOT_TICKED, SHORTER_THAN_COUNTER_UPDATE, Meter, Reading
from collect.energy.estimate import EstimateMeter
from collect.energy.machine import MachineEstimateMeter
from collect.energy.nvml import NvmlMeter
from collect.energy.rapl import RaplMeter
from policy.errors import MixedEnergyError, unknown_name
from policy.records import ENERGY_SOURCES

METERS: dict[str, Callable[..., Meter]] = {
    "estimate": EstimateMeter,
    "estimate-machine": MachineEstimateMeter,
    "nvml": NvmlMeter,
    "rapl": RaplMeter,
    "auto": auto_meter,
}


def make_meter(name: str, **kwargs: Any) -> Meter:
    if name not in METERS:
        raise unknown_name("meter", name, METERS)
    return METERS[name](**kwargs)


def check_comparable(sources: Iterable[str], allow_mixed: bool = False) -> None:
    """Refuse to put measured and estimated joules side by side unless `allow_mixed`."""
    seen = set(sources)
    unknown = seen - set(ENERGY_SOURCES)
    if unknown:
        raise unknown_name("energy source", sorted(unknown)[0], ENERGY_SOURCES)
    if len(seen) > 1 and not allow_mixed:
        raise MixedEnergyError(
            "measured and estimated joules would be compared as if alike; collect both with the same kind "
            "of meter, or pass --allow-mixed-energy to accept the mix"
        )


__all__ = [
    "COUNTER_NOT_TICKED",
    "METERS",
    "SHORTER_THAN_COUNTER_UPDATE",
    "EstimateMeter",
    "MachineEstimateMeter",
    "Meter",
    "NvmlMeter",
    "RaplMeter",
    "Reading",
    "auto_meter",
    "check_comparable",
    "choose_meter",
    "make_meter",
]
