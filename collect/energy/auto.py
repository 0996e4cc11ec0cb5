"""The auto meter: the best meter this machine can read, and why it was chosen.

Order: `nvml` (measured GPU joules) if NVML sees a readable GPU, else `rapl`
(measured CPU package + DRAM joules) if powercap is readable, else `estimate`.
The returned meter keeps its own `name` and `source`, so every record says what
actually measured it; "auto" itself never appears in a record.
This module must never import a vendor library at import time, and must never
fall back silently: the reason is logged and returned.
"""

from __future__ import annotations

import logging
from pathlib import Path

from collect.energy.base import Meter
from collect.energy.estimate import EstimateMeter
from collect.energy.nvml import NvmlMeter
from collect.energy.rapl import DEFAULT_ROOT, RaplMeter
from policy.errors import MeterError

log = logging.getLogger(__name__)


def choose_meter(rapl_root: str | Path = DEFAULT_ROOT) -> tuple[Meter, str]:
    """Open the best readable meter; return it with a one-line reason naming what was skipped."""
    skipped: list[str] = []
    try:
        meter: Meter = NvmlMeter()
        return meter, f"chose nvml: {meter.describe()}"
    except MeterError as e:
        skipped.append(f"nvml unavailable ({e})")
    try:
        meter = RaplMeter(root=rapl_root)
        return meter, f"chose rapl: {meter.describe()}; " + "; ".join(skipped)
    except MeterError as e:
        skipped.append(f"rapl unavailable ({e})")
    meter = EstimateMeter()
    return meter, "chose estimate (joules are estimated, not measured): " + "; ".join(skipped)


def auto_meter(rapl_root: str | Path = DEFAULT_ROOT) -> Meter:
    """`choose_meter`, logging the reason; the registry's "auto" entry."""
    meter, reason = choose_meter(rapl_root=rapl_root)
    log.info("energy meter: %s", reason)
    return meter
