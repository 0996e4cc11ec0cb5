"""The estimating meter: process CPU time times a power figure per core.

Used where no hardware counter can be read (this project's CI machines have no
RAPL and no GPU). Its joules are always labelled "estimated". The default of
12 W per busy core is a typical figure for a server core under load
(a ~150-250 W socket spread over 16-24 cores); pass `watts_per_core` for your
part. Where a GPU is present but cannot be read, `gpu_watts` times wall time
is added, also estimated.
"""

from __future__ import annotations

import time

from collect.energy.base import Meter
from policy.errors import UsageError
from policy.records import ESTIMATED

DEFAULT_WATTS_PER_CORE = 12.0


class EstimateMeter(Meter):
    name = "estimate"
    source = ESTIMATED

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, gpu_watts: float = 0.0) -> None:
        super().__init__()
        if watts_per_core <= 0:
            raise UsageError(f"watts_per_core must be > 0, got {watts_per_core}")
        if gpu_watts < 0:
            raise UsageError(f"gpu_watts must be >= 0, got {gpu_watts}")
        self.watts_per_core = watts_per_core
        self.gpu_watts = gpu_watts

    def _snapshot_j(self) -> float:
        # process_time counts CPU seconds of every thread of this process:
        # two busy cores for one second count two seconds, i.e. 2 x watts_per_core.
        return time.process_time() * self.watts_per_core + time.perf_counter() * self.gpu_watts

    def measure_idle(self, seconds: float = 3.0) -> float:
        # A sleeping process burns no CPU time, so the estimate's idle power is ~0
        # (plus the assumed GPU draw): measuring it still shows that honestly.
        return super().measure_idle(seconds)
