"""Energy meters behind one window interface, looked up by name in `METERS`."""

from __future__ import annotations

from collections.abc import Callable

from collect.energy.base import Meter
from collect.energy.estimate import EstimateMeter
from policy.errors import unknown_name

METERS: dict[str, Callable[..., Meter]] = {
    "estimate": EstimateMeter,
}


def make_meter(name: str, **kwargs: float) -> Meter:
    if name not in METERS:
        raise unknown_name("meter", name, METERS)
    return METERS[name](**kwargs)


__all__ = ["METERS", "Meter", "EstimateMeter", "make_meter"]
