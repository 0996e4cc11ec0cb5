"""The sample store: an append-only folder of Parquet shards, crash-safe.

Each shard holds the samples of complete generation groups (one group = every
sample of one query from one generate call: query, model, temperature,
max_new_tokens, seed). A shard is written to a temporary name in the same
folder, fsynced, then renamed into place, so a reader sees either the whole
shard or nothing: a `kill -9` at any moment loses at most the in-flight batch.
Groups already on disk are skipped on append, so a resumed run never
duplicates a record. Readable as a pandas DataFrame (through the one loader,
`store.loader.load_samples`) and a `datasets.Dataset`.

One writer at a time: a handle takes the store's writer lock
(`store.locks`, an flock the OS releases if the writer dies) on its first
write or `clean_partial`, and keeps it until `close()` or until the handle is
garbage collected. A second process that tries to write gets a `UsageError`
naming the holder; it never interleaves shards with the first.

This module never generates or grades: it only keeps records.
"""

from __future__ import annotations

import os
import time
import uuid
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from policy.errors import UsageError
from policy.records import Sample
from store.loader import load_samples, read_shard
from store.locks import acquire_writer_lock, release_writer_lock
from store.schema import GROUP_KEY

#: the sample loader under the store's historical name
read_samples = load_samples


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
        self._lock: weakref.finalize | None = None

    def lock(self) -> None:
        """Take this store's writer lock (once per handle); raises `UsageError` naming another holder.

        Groups read before the lock was taken are read again: another writer may
        have added some in between.
        """
        if self._lock is None or not self._lock.alive:
            key = acquire_writer_lock(self.root)
            self._lock = weakref.finalize(self, release_writer_lock, key)
            self._done = None

    def close(self) -> None:
        """Release the writer lock now (it is also released when the handle is collected or the process ends)."""
        if self._lock is not None:
            self._lock()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shards(self) -> list[Path]:
        return sorted(self.root.glob("shard-*.parquet")) if self.root.is_dir() else []

    def done_groups(self) -> set[tuple]:
        if self._done is None:
            self._done = set()
            for f in self.shards():
                t = read_shard(f, GROUP_KEY).to_pandas()
                self._done.update(group_key(r) for r in t.to_dict("records"))
        return self._done

    def append(self, samples: Iterable[Sample]) -> Path | None:
        """Write the samples of groups not already stored as one new shard; returns its path."""
        self.lock()
        done = self.done_groups()
        fresh = [s for s in samples if group_key(s) not in done]
        if not fresh:
            return None
        return self._write(pa.Table.from_pylist([s.to_dict() for s in fresh]), {group_key(s) for s in fresh})

    def import_store(
        self, source: str | Path, tasks: Iterable[str] | None = None, query_ids: Iterable[str] | None = None
    ) -> int:
        """Copy another store's shards (optionally only some tasks' or queries' rows) into this one.

        Returns the samples added. Rows stay Arrow tables end to end, so no value changes type on the way.
        """
        import pyarrow.compute as pc

        self.lock()
        wanted = pa.array(sorted(set(tasks))) if tasks is not None else None
        wanted_ids = pa.array(sorted(set(query_ids)), pa.string()) if query_ids is not None else None
        added = 0
        for f in SampleStore(source).shards():
            table = read_shard(f)
            if wanted is not None:
                table = table.filter(pc.is_in(table["task"], value_set=wanted))
            if wanted_ids is not None:
                table = table.filter(pc.is_in(table["query_id"], value_set=wanted_ids))
            keys = [group_key(r) for r in table.select(list(GROUP_KEY)).to_pylist()]
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
        """Remove temporary files a killed writer left behind; returns how many.

        A write: it takes the writer lock first (creating a brand-new store's folder), so it never
        deletes a live writer's in-flight shard, and a second collector is refused before it loads a
        model, on a new store as on an old one.
        """
        self.lock()
        stale = list(self.root.glob(".shard-*.tmp"))
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_dataset(path: str | Path) -> Any:
    """The store as a Hugging Face `datasets.Dataset`."""
    import datasets

    return datasets.Dataset.from_pandas(read_samples(path), preserve_index=False)
