"""The one sample loader: a store folder, a Parquet file or a DataFrame in, checked samples out.

Every stage reads samples through `load_samples`; nothing else opens shards for
reading samples (the writer, `store.shards.SampleStore`, reads only its keys).

What it refuses, each with a `UsageError` that names the fix:
- a path that does not exist, a file that is not Parquet, a store with no samples;
- a shard that is corrupt, truncated or not Parquet at all (named, with the fix);
- samples lacking the columns asked for (`policy.records.Sample` by default);
- duplicate sample keys (`store.schema.SAMPLE_KEY`) whose copies differ: two
  writers filled the store at once (possible only in stores written before the
  writer lock). The message names the shards holding the later copies.
Copies of a sample that are identical in every column read are dropped, keeping
the first, with one `DuplicateSamplesWarning` naming the count (a shard copied
twice into a store is harmless).

Joules come out charged by the declared attribution (`store.attribution`: a
sample's tokens at its model's metered rates, pooled over everything loaded);
the collector's window share stays in `metered_energy_j`.

This module never writes anything.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from policy.errors import UsageError
from policy.records import sample_fields
from store.attribution import NEEDS, attribute_by_model_rate
from store.schema import SAMPLE_KEY

_ENERGY = {"energy_j", "prefill_energy_j", "energy_above_idle_j", "level_energy_j"}


class DuplicateSamplesWarning(UserWarning):
    """Identical copies of some samples were found in a store and dropped."""


def _damaged(path: Path, e: Exception) -> UsageError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return UsageError(
        f"shard {str(path)!r} cannot be read as Parquet ({reason}): it is corrupt, truncated or not a shard; "
        "move it out of the store and rerun `ttc collect` to regenerate its samples"
    )


def read_shard(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet shard as an Arrow table; a damaged file is a `UsageError` naming it."""
    try:
        if columns is not None:
            missing = [c for c in columns if c not in pq.read_schema(path).names]
            if missing:
                raise UsageError(
                    f"shard {str(path)!r} lacks sample columns {missing}: it was not written by this version of "
                    "ttc collect; re-collect into a fresh store"
                )
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _damaged(path, e) from e


def shard_files(path: Path) -> list[Path]:
    """The Parquet files a store path stands for: a folder's shards, or one Parquet file."""
    if path.is_file():
        if path.suffix != ".parquet":
            raise UsageError(f"{str(path)!r} is a file, not a sample store: give the folder `ttc collect` wrote")
        return [path]
    if path.is_dir():
        return sorted(path.glob("shard-*.parquet")) or sorted(path.glob("*.parquet"))
    raise UsageError(f"no sample store at {str(path)!r}; run `ttc collect --store {path}` first")


def _read_files(files: list[Path], columns: list[str] | None) -> tuple[pd.DataFrame, list[int]]:
    frames = [read_shard(f, columns).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True), [len(x) for x in frames]


def load_samples(source: str | Path | pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The samples of a store folder, a Parquet file or a DataFrame, checked (see the module docstring).

    `columns`: the columns to read (default: every `Sample` field; for a
    DataFrame, whatever it holds); the sample key columns are always required,
    and copies count as identical when they agree on the columns read.
    """
    wanted = sample_fields() if columns is None else list(dict.fromkeys([*SAMPLE_KEY, *columns]))
    asked = wanted
    if columns is not None and _ENERGY & set(columns):  # joules need the columns their attribution reads
        wanted = list(dict.fromkeys([*wanted, *NEEDS]))
    if isinstance(source, pd.DataFrame):
        where, files, sizes = "the samples given", [], [len(source)]
        missing = [c for c in (SAMPLE_KEY if columns is None else asked) if c not in source.columns]
        if missing:
            raise UsageError(f"the samples given lack columns {missing}; pass rows of a `ttc collect` store")
        df = source if columns is None else source[[c for c in wanted if c in source.columns]]
    else:
        path = Path(source)
        where, files = f"store {str(path)!r}", shard_files(path)
        if not files:
            raise UsageError(f"the store {str(path)!r} holds no samples; run `ttc collect --store {path}` first")
        df, sizes = _read_files(files, None if columns is None else wanted)
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise UsageError(f"{where} lacks sample columns {missing}: it was not written by ttc collect")
    if df.empty:
        raise UsageError(f"{where} holds no samples; run `ttc collect` first")
    df = attribute_by_model_rate(_drop_identical_copies(df, where, files, sizes))
    if columns is not None:
        df = df[[c for c in (*asked, "metered_energy_j") if c in df.columns]]
    return df


def _canonical(value: Any) -> Any:
    """A hashable form of one cell: arrays and lists as tuples, numpy scalars as Python, NaN as one token."""
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _drop_identical_copies(df: pd.DataFrame, where: str, files: list[Path], sizes: list[int]) -> pd.DataFrame:
    key = list(SAMPLE_KEY)
    dup = df.duplicated(key, keep=False).to_numpy()
    if not dup.any():  # the normal case costs one hash pass over the key columns
        return df
    copies = df[dup]
    content = [tuple(_canonical(v) for v in row) for row in copies.itertuples(index=False, name=None)]
    groups = pd.Series(content, index=copies.index).groupby([copies[c] for c in key], sort=False).nunique()
    conflicting = groups[groups > 1]
    if len(conflicting):
        first = dict(zip(key, conflicting.index[0], strict=True))
        later = copies.index[copies.duplicated(key, keep="first").to_numpy()]
        shards = ""
        if files:
            owner = np.repeat(np.arange(len(files)), sizes)
            names = sorted({files[i].name for i in owner[later]})
            shards = f"; the later copies are in {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
        raise UsageError(
            f"{where}: {len(conflicting)} sample keys have copies that differ (first: query {first['query_id']!r}, "
            f"model {first['model']!r}, sample {first['sample_index']}): two writers filled it at once{shards}; "
            "move those shards out and rerun `ttc collect` on this store to refill the gaps"
        )
    extra = int(df.duplicated(key, keep="first").sum())
    warnings.warn(
        f"{where}: dropped {extra} duplicate samples (identical copies of stored samples)",
        DuplicateSamplesWarning,
        stacklevel=3,
    )
    return df[~df.duplicated(key, keep="first").to_numpy()].reset_index(drop=True)
