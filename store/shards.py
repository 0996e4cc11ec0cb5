"""The sample store: an append-only folder of Parquet shards, crash-safe.

Each shard holds the samples of complete generation groups (one group = every
sample of one query from one generate call: query, model, temperature,
max_new_tokens, seed). A shard is written to a temporary name in the same
folder, fsynced, then renamed into place, so a reader sees either the whole
shard or nothing: a `kill -9` at any moment loses at most the in-flight batch.
Groups already on disk are skipped on append, so a resumed run never
duplicates a record. Readable as a pandas DataFrame and a `datasets.Dataset`.

This module never generates or grades: it only keeps records.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from policy.errors import UsageError
from policy.records import Sample, sample_fields

GROUP_KEY = ["query_id", "model", "temperature", "max_new_tokens", "seed"]


def group_key(s: Sample | dict[str, Any]) -> tuple:
    get = s.get if isinstance(s, dict) else lambda k: getattr(s, k)
    return (
        str(get("query_id")),
        str(get("model")),
        float(get("temperature")),
        int(get("max_new_tokens")),
        int(get("seed")),
    )


class SampleStore:
    """A folder of `shard-*.parquet` files; open one per collection target."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"store path {str(self.root)!r} is a file; give a folder")
        self._done: set[tuple] | None = None

    def shards(self) -> list[Path]:
        return sorted(self.root.glob("shard-*.parquet")) if self.root.is_dir() else []

    def done_groups(self) -> set[tuple]:
        if self._done is None:
            self._done = set()
            for f in self.shards():
                t = pq.read_table(f, columns=GROUP_KEY).to_pandas()
                self._done.update(group_key(r) for r in t.to_dict("records"))
        return self._done

    def append(self, samples: Iterable[Sample]) -> Path | None:
        """Write the samples of groups not already stored as one new shard; returns its path."""
        done = self.done_groups()
        fresh = [s for s in samples if group_key(s) not in done]
        if not fresh:
            return None
        return self._write(pa.Table.from_pylist([s.to_dict() for s in fresh]), {group_key(s) for s in fresh})

    def import_store(self, source: str | Path, tasks: Iterable[str] | None = None) -> int:
        """Copy another store's shards (optionally only some tasks' rows) into this one; returns samples added.

        Rows stay Arrow tables end to end, so no value changes type on the way.
        """
        import pyarrow.compute as pc

        wanted = pa.array(sorted(set(tasks))) if tasks is not None else None
        added = 0
        for f in SampleStore(source).shards():
            table = pq.read_table(f)
            if wanted is not None:
                table = table.filter(pc.is_in(table["task"], value_set=wanted))
            keys = [group_key(r) for r in table.select(GROUP_KEY).to_pylist()]
            keep = [k not in self.done_groups() for k in keys]
            if any(keep):
                table = table.filter(pa.array(keep))
                self._write(table, {k for k, ok in zip(keys, keep, strict=True) if ok})
                added += table.num_rows
        return added

    def _write(self, table: pa.Table, groups: set[tuple]) -> Path:
        """Write one shard atomically: temporary name, fsync, rename, fsync the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)
        self.done_groups().update(groups)
        return self.root / name

    def read(self) -> pd.DataFrame:
        return read_samples(self.root)

    def clean_partial(self) -> int:
        """Remove temporary files a killed writer left behind; returns how many."""
        stale = list(self.root.glob(".shard-*.tmp")) if self.root.is_dir() else []
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_samples(path: str | Path) -> pd.DataFrame:
    """All samples of a store folder (or a single Parquet file) as a DataFrame with Sample's columns."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(p.glob("shard-*.parquet")) or sorted(p.glob("*.parquet"))
    else:
        raise UsageError(f"no sample store at {str(p)!r}; run `ttc collect --store {p}` first")
    if not files:
        return pd.DataFrame(columns=sample_fields())
    df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    missing = set(sample_fields()) - set(df.columns)
    if missing:
        raise UsageError(f"store {str(p)!r} lacks sample columns {sorted(missing)}: it was not written by ttc collect")
    return df


def to_dataset(path: str | Path) -> Any:
    """The store as a Hugging Face `datasets.Dataset`."""
    import datasets

    return datasets.Dataset.from_pandas(read_samples(path), preserve_index=False)
