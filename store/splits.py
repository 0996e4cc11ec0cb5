"""The train/test split as a file: train writes `split.json` here, eval only reads it.

A `Split` names the held-out queries (and tasks) by id, the seed that drew them
and a fingerprint of the store they were drawn from, so a later stage can tell
whether the store it was given is the one the split belongs to.

`store_fingerprint` is a sha256 over the sorted sample keys
(`store.schema.SAMPLE_KEY`): it changes when a sample is added or removed, not
when a value inside a sample changes; it costs one sort of the key columns.

`read_split` validates the file and raises `UsageError` naming the fix. Files
written before the seed and fingerprint were recorded read with both as None
("not recorded"). This module never draws a split (train/dataset.py does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from policy import jsonsafe
from policy.errors import UsageError, unknown_name
from store.schema import SAMPLE_KEY, SPLIT_KINDS

SPLIT_SCHEMA_VERSION = 1
#: the kinds of held-out split: whole queries, or whole tasks


@dataclass(frozen=True)
class Split:
    """Which queries train and which are held out; `holdout_tasks` is set for kind "task"."""

    kind: str
    train_query_ids: tuple[str, ...]
    test_query_ids: tuple[str, ...]
    holdout_tasks: tuple[str, ...] = ()
    seed: int | None = None
    store_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise unknown_name("split", self.kind, SPLIT_KINDS)
        for name in ("train_query_ids", "test_query_ids", "holdout_tasks"):
            values = getattr(self, name)
            if not isinstance(values, tuple | list) or not all(isinstance(v, str) for v in values):
                raise UsageError(f"split {name} must be a list of strings, got {values!r:.80}")
            object.__setattr__(self, name, tuple(values))
        if not self.test_query_ids or not self.train_query_ids:
            raise UsageError("a split needs at least one training and one held-out query")
        shared = set(self.train_query_ids) & set(self.test_query_ids)
        if shared:
            raise UsageError(f"{len(shared)} queries are both trained on and held out (first: {min(shared)!r})")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UsageError(f"split seed must be an integer, got {self.seed!r}")
        fp = self.store_fingerprint
        if fp is not None and (not isinstance(fp, str) or len(fp) != 64 or set(fp) - set("0123456789abcdef")):
            raise UsageError(f"split store_fingerprint must be a sha256 hex digest, got {fp!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SPLIT_SCHEMA_VERSION,
            "kind": self.kind,
            "seed": self.seed,
            "store_fingerprint": self.store_fingerprint,
            "holdout_tasks": list(self.holdout_tasks),
            "train_query_ids": list(self.train_query_ids),
            "test_query_ids": list(self.test_query_ids),
        }

    def check_store(self, samples: pd.DataFrame) -> bool:
        """True when `samples` are the store this split was drawn from; False when not recorded.

        Raises `UsageError` when the fingerprints differ or a split query is missing.
        """
        missing = set(self.train_query_ids + self.test_query_ids) - set(samples["query_id"].astype(str))
        if missing:
            raise UsageError(
                f"{len(missing)} queries of the split are not in the store (first: {min(missing)!r}); "
                "give the store this split was trained on"
            )
        if self.store_fingerprint is None:
            return False
        if store_fingerprint(samples) != self.store_fingerprint:
            raise UsageError(
                "the store differs from the one the split was drawn from (samples added or removed since "
                "training); give the training store, or retrain on this one"
            )
        return True


def store_fingerprint(samples: pd.DataFrame) -> str:
    """sha256 over the sorted sample keys of `samples` (see the module docstring)."""
    missing = [c for c in SAMPLE_KEY if c not in samples.columns]
    if missing:
        raise UsageError(f"samples lack key columns {missing}; pass rows of a `ttc collect` store")
    cols = (
        samples["query_id"].astype(str),
        samples["model"].astype(str),
        samples["temperature"].astype(float).map(repr),
        samples["max_new_tokens"].astype(int).astype(str),
        samples["seed"].astype(int).astype(str),
        samples["sample_index"].astype(int).astype(str),
    )
    keys = sorted(zip(*cols, strict=True))
    return hashlib.sha256("\n".join("\t".join(k) for k in keys).encode()).hexdigest()


def write_split(path: str | Path, split: Split) -> Path:
    """Write `split` as JSON (temporary name, then rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(split.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def check_seed(seed: object, option: str = "--seed") -> int:
    """A seed numpy and LightGBM take: an integer in [0, 2**32); refused before any work otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"{option} must be an integer from 0 to {2**32 - 1}, got {seed!r}")
    return seed


def read_split(path: str | Path) -> Split:
    """The split in `path` (a split.json, or the `ttc train` folder holding one), validated."""
    path = Path(path)
    if path.is_dir():
        path = path / "split.json"
    if not path.is_file():
        raise UsageError(f"split file {str(path)!r} not found; give the folder `ttc train --out` wrote")
    raw = jsonsafe.loads(path.read_bytes(), f"split file {str(path)!r}", hint="; rerun `ttc train`")
    if not isinstance(raw, dict):
        raise UsageError(f"split file {str(path)!r} must hold a JSON object; rerun `ttc train`")
    version = raw.get("schema_version", SPLIT_SCHEMA_VERSION)
    if version != SPLIT_SCHEMA_VERSION:
        raise UsageError(f"split file {str(path)!r} has schema_version {version!r}; this version reads 1")
    fields = ("kind", "train_query_ids", "test_query_ids")
    missing = [k for k in fields if k not in raw]
    if missing:
        raise UsageError(f"split file {str(path)!r} lacks {missing}; rerun `ttc train`")
    try:
        return Split(
            kind=raw["kind"],
            train_query_ids=_strings(raw["train_query_ids"]),
            test_query_ids=_strings(raw["test_query_ids"]),
            holdout_tasks=_strings(raw.get("holdout_tasks", [])),
            seed=raw.get("seed"),
            store_fingerprint=raw.get("store_fingerprint"),
        )
    except UsageError as e:
        raise UsageError(f"split file {str(path)!r}: {e}") from e


def _strings(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # Split refuses anything else by name
