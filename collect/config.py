"""The collect stage's configuration: one frozen dataclass, a built-in default, TOML files.

A config file is TOML with the same keys as `CollectConfig`, at top level or
under a `[collect]` table. Unknown keys are refused (a typo must not silently
fall back to a default). Validation happens in `validate()`, before anything
is loaded or written.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.arms import Arm, build_grid
from policy.errors import UsageError


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
    temperatures: tuple[float, ...] = (0.7,)
    greedy: bool = True
    queries_per_batch: int = 4
    seed: int = 1234
    meter: str = "estimate"
    watts_per_core: float = 12.0
    idle_baseline_s: float = 0.0
    device: str = "auto"
    threads: int = 0
    dtype: str = "auto"  # compute dtype (collect.models.DTYPES); "auto" = bfloat16
    store: str = "runs/default/store"
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "ttc-collect"
    track: bool = True

    @property
    def max_new_tokens(self) -> int:
        return max(self.levels)

    def arms(self) -> list[Arm]:
        ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= self.n_samples]
        return build_grid(list(self.models), ns, list(self.levels), list(self.temperatures), self.greedy)

    def validate(self) -> CollectConfig:
        from collect.energy import METERS
        from collect.tasks import make_task

        if not self.models:
            raise UsageError("no model given; e.g. --model smollm2-135m")
        if not self.tasks:
            raise UsageError("no task given; e.g. --task rg.basic_arithmetic_1d")
        for t in self.tasks:
            make_task(t)  # raises on an unknown task, listing the known ones
        if self.meter not in METERS:
            from policy.errors import unknown_name

            raise unknown_name("meter", self.meter, METERS)
        if self.items_per_task < 1:
            raise UsageError(f"items_per_task must be >= 1, got {self.items_per_task}")
        if self.n_samples < 1:
            raise UsageError(f"n_samples must be >= 1, got {self.n_samples}")
        if not self.levels or any(L < 1 for L in self.levels):
            raise UsageError(f"levels (max_new_tokens caps) must be positive integers, got {list(self.levels)}")
        if self.queries_per_batch < 1:
            raise UsageError(f"queries_per_batch must be >= 1, got {self.queries_per_batch}")
        if self.watts_per_core <= 0:
            raise UsageError(f"watts_per_core must be > 0, got {self.watts_per_core}")
        from collect.models import resolve_dtype

        resolve_dtype(self.dtype, self.device)  # raises on an unknown dtype, or float16 on CPU
        self.arms()  # raises on an empty or invalid grid
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any) -> Any:
    if name in {"models", "tasks", "levels", "temperatures"}:
        if not isinstance(value, list | tuple):
            raise UsageError(f"config key {name!r} must be a list, got {value!r}")
        value = tuple(value)
        if name == "levels":
            value = tuple(sorted({int(v) for v in value}))
        if name == "temperatures":
            value = tuple(float(v) for v in value)
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
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"malformed config {str(p)!r}: {e}") from e
        data = raw.get("collect", raw)
        if not isinstance(data, dict):
            raise UsageError(f"config {str(p)!r}: [collect] must be a table")
    cfg = make_config(None, **data)
    return make_config(cfg, **overrides)
