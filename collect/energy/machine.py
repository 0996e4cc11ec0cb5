"""The whole-machine estimating meter: every process's CPU time times a power figure per core.

`estimate` counts this process's CPU time only, which is right when the model
runs in-process and wrong when an engine (llama.cpp, vLLM...) does the work in
another process: the collector then only waits on sockets. This meter reads
the machine's busy jiffies from `/proc/stat` (user, nice, system, irq,
softirq, steal; idle and iowait excluded) so the engine's CPU time is counted
wherever on the machine it runs, and with it whatever else the machine did in
the window (other tenants included). Its joules are always "estimated"; its
name, "estimate-machine", is stored in every sample it charged.
This module must never read anything but `/proc/stat` and never import a vendor library.
"""

from __future__ import annotations

import os
from pathlib import Path

from collect.energy.base import Meter
from collect.energy.estimate import DEFAULT_WATTS_PER_CORE
from policy.errors import MeterError, UsageError
from policy.records import ESTIMATED

#: the /proc/stat "cpu" columns that count as busy (guest time is already inside user and nice)
BUSY_COLUMNS = {"user": 0, "nice": 1, "system": 2, "irq": 5, "softirq": 6, "steal": 7}


def busy_seconds(stat: str | Path = "/proc/stat") -> float:
    """CPU-seconds every core of the machine spent busy since boot (summed over cores)."""
    try:
        first = Path(stat).read_text().splitlines()[0].split()
    except (OSError, IndexError) as e:
        raise MeterError(f"cannot read {stat} for the whole-machine CPU estimate ({e}); use --meter estimate") from e
    if first[0] != "cpu" or len(first) < 9:
        raise MeterError(f"{stat} has no aggregate 'cpu' line with 8 columns; use --meter estimate")
    jiffies = sum(int(first[1 + i]) for i in BUSY_COLUMNS.values())
    return jiffies / os.sysconf("SC_CLK_TCK")


class MachineEstimateMeter(Meter):
    name = "estimate-machine"
    source = ESTIMATED
    #: the kernel's jiffy counters move every 1/CLK_TCK s (10 ms on usual kernels)
    counter_update_s = 0.01

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, stat: str | Path = "/proc/stat") -> None:
        super().__init__()
        if watts_per_core <= 0:
            raise UsageError(f"watts_per_core must be > 0, got {watts_per_core}")
        self.watts_per_core = watts_per_core
        self.stat = Path(stat)
        busy_seconds(self.stat)  # fail at open, not in the first window

    def _snapshot_j(self) -> float:
        return busy_seconds(self.stat) * self.watts_per_core
