"""The collect stage's configuration: one frozen dataclass, a built-in default, TOML files.

A config file is TOML with the same keys as `CollectConfig`, at top level or
under a `[collect]` table. Unknown keys are refused (a typo must not silently
fall back to a default). Validation happens in `validate()`, before anything
is loaded or written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy import jsonsafe
from policy.arms import Arm, build_grid
from policy.errors import UsageError, unknown_name


def _default_tasks() -> tuple[str, ...]:
    from collect.tasks import DEFAULT_TASKS

    return tuple(DEFAULT_TASKS)


@dataclass(frozen=True)
class CollectConfig:
    """What to generate. Arms are derived: n <= n_samples (powers of two), L in `levels`."""

    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    tasks: tuple[str, ...] = field(default_factory=_default_tasks)
    items_per_task: int = 24
    item_seed: int = 0
    n_samples: int = 8
    levels: tuple[int, ...] = (16, 32, 64)
    # 1.0, chosen by the pilot (data/reference/README.md): at 0.7 the small models mostly repeat one
    # answer, so a vote gains little; at 1.3 per-sample accuracy halves without more vote gain.
    temperatures: tuple[float, ...] = (1.0,)
    greedy: bool = True
    queries_per_batch: int = 4
    seed: int = 1234
    meter: str = "estimate"
    watts_per_core: float = 12.0
    idle_baseline_s: float = 0.0
    device: str = "auto"
    threads: int = 0
    dtype: str = "auto"  # compute dtype (collect.models.DTYPES); "auto" = bfloat16 where native, else float32
    store: str = "runs/default/store"
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "ttc-collect"
    track: bool = True

    @property
    def max_new_tokens(self) -> int:
        return max(self.levels)

    def arms(self) -> list[Arm]:
        ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= self.n_samples]
        from collect.engine_ref import stored_name

        models = [stored_name(m) for m in self.models]  # an engine's URL holds "/", which arm ids cannot
        return build_grid(models, ns, list(self.levels), list(self.temperatures), self.greedy)

    def validate(self) -> CollectConfig:
        """Refuse a config that cannot run, before any model is loaded or anything written."""
        from collect.energy import METERS
        from collect.tasks import make_task

        if not self.models:
            raise UsageError("no model given; e.g. --model smollm2-135m")
        if not self.tasks:
            raise UsageError("no task given; e.g. --task rg.basic_arithmetic_1d")
        for t in self.tasks:
            make_task(t)  # raises on an unknown task, listing the known ones
        if self.meter not in METERS:
            raise unknown_name("meter", self.meter, METERS)
        for name in ("items_per_task", "n_samples", "queries_per_batch"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("item_seed", "seed", "threads"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.levels or any(L < 1 for L in self.levels):
            raise UsageError(f"levels (max_new_tokens caps) must be positive integers, got {list(self.levels)}")
        if any(not math.isfinite(t) or t <= 0 for t in self.temperatures):
            raise UsageError(
                f"temperatures must be > 0 and finite, got {list(self.temperatures)}; greedy is the --greedy switch"
            )
        if not math.isfinite(self.watts_per_core) or self.watts_per_core <= 0:
            raise UsageError(f"watts_per_core must be a finite number > 0, got {self.watts_per_core}")
        if not math.isfinite(self.idle_baseline_s) or self.idle_baseline_s < 0:
            raise UsageError(f"idle_baseline_s must be a finite number >= 0 (0 = none), got {self.idle_baseline_s}")
        if Path(self.store).is_file():
            raise UsageError(f"store {self.store!r} is a file; give a folder (it is created if missing)")
        check_device(self.device)
        if self.track:
            from store.tracking import check_tracking_uri

            check_tracking_uri(self.tracking_uri)  # a bad URI fails now, not after the collection
        from collect.models import resolve_dtype

        resolve_dtype(self.dtype, self.device)  # raises on an unknown dtype, or float16 on CPU
        self.arms()  # raises on an empty or invalid grid
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: each field's annotation ("int", "tuple[str, ...]", ...): the type its config value must have
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(CollectConfig)}


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here, without loading any model."""
    if not _DEVICE.fullmatch(device):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise UsageError(f"device {device!r} is not available ({count} CUDA devices visible); use --device cpu")
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise UsageError("device 'mps' is not available on this machine; use --device cpu")


def _number(label: str, value: Any, kind: type) -> Any:
    """`value` as an int or a finite float; refuses bools, strings, NaN and infinities by name."""
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{label} must be {what}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{label} must be a finite number, got {value!r}")
    return kind(value)


def _coerce(name: str, value: Any) -> Any:
    """One config value checked against its field's type (TOML and CLI values alike)."""
    kind = _FIELD_TYPES[name]
    if kind.startswith("tuple["):
        if not isinstance(value, list | tuple):
            raise UsageError(f"config key {name!r} must be a list, got {value!r}")
        item = kind[len("tuple[") : kind.index(",")]
        values = tuple(_coerce_scalar(f"every item of config key {name!r}", v, item) for v in value)
        return tuple(sorted(set(values))) if name == "levels" else values
    return _coerce_scalar(f"config key {name!r}", value, kind)


def _coerce_scalar(label: str, value: Any, kind: str) -> Any:
    if kind in ("int", "float"):
        return _number(label, value, int if kind == "int" else float)
    expected = {"str": str, "bool": bool}[kind]
    if not isinstance(value, expected):
        raise UsageError(f"{label} must be {'text' if kind == 'str' else 'true or false'}, got {value!r}")
    return value


def make_config(base: CollectConfig | None = None, **overrides: Any) -> CollectConfig:
    """Apply overrides (None means 'keep'); unknown keys are refused."""
    base = base or CollectConfig()
    known = {f.name for f in dataclasses.fields(CollectConfig)}
    bad = set(overrides) - known
    if bad:
        raise UsageError(f"unknown config key(s) {sorted(bad)}; known: {', '.join(sorted(known))}")
    clean = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    try:
        return dataclasses.replace(base, **clean)
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid config: {e}") from e


def load_config(path: str | Path | None, **overrides: Any) -> CollectConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {str(p)!r} not found")
        raw = jsonsafe.loads_toml(p.read_bytes(), f"config {str(p)!r}")
        data = raw.get("collect", raw)
        if not isinstance(data, dict):
            raise UsageError(f"config {str(p)!r}: [collect] must be a table")
    cfg = make_config(None, **data)
    return make_config(cfg, **overrides)
