"""Unit-named shards: how the actors of a Ray collection write into one store, never twice.

A unit (one generate call: task x batch of queries x model x temperature; see
`collect.distributed`) is written by the actor that made it, as
`shard-unit-<key>.parquet` (its samples) and `probe-unit-<key>.parquet` (its
prefill probes), where `<key>` is derived from the unit alone (`unit_key`). The
name is the claim: a second write of the same unit (Ray retrying a unit whose
first attempt died after its write, or a stale actor) finds the name taken and
is refused, so a unit is stored once however often it runs. These shards match
the store's `shard-*.parquet` glob, so `SampleStore`, `store.loader` (which also
drops identical copies of a sample and refuses differing ones) and
`ProbeStore` read them like any other.

Where a store can live, and what is tested:
- a local or shared folder (NFS, Lustre, ...): temporary name in the same
  folder, fsync, then `os.link` to the final name, which fails when the name
  exists (a rename would silently replace it), then fsync the folder. Tested
  here, on a local folder.
- object storage through pyarrow's filesystems (`s3://bucket/store`,
  `gs://...`): an object becomes visible only when its upload completes, so a
  reader sees a whole shard or none; the name is checked just before the
  upload, so a retry after a finished upload is refused. Two uploads of one unit
  racing each other would both land (the later wins, never a mixture): Ray
  retries a unit only once its first attempt is gone, so that needs an attempt
  that outlives its actor's death. Exercised here with pyarrow's in-memory mock
  filesystem in one process only; no real object store was reachable to test.
  `ttc train`/`ttc eval` read local folders: copy such a store down first.

This module never generates samples and never takes the store's writer lock
(the coordinator holds it; actors must not wait on it).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from policy.errors import UsageError
from store.schema import GROUP_KEY

SAMPLE_PREFIX = "shard"
PROBE_PREFIX = "probe"
UNIT_TAG = "unit"


def unit_key(model: str, temperature: float, max_new_tokens: int, seed: int, query_ids: Iterable[str]) -> str:
    """A unit's name: a digest of exactly what its samples' group keys hold (16 hex digits)."""
    text = json.dumps([model, float(temperature), int(max_new_tokens), int(seed), sorted(query_ids)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


class UnitStore:
    """The unit shards of one store: a folder path, or a URI pyarrow.fs resolves (`s3://...`).

    `filesystem`: an explicit pyarrow filesystem for `uri` (a path inside it), as pyarrow's own
    readers take one; tests pass the in-memory mock filesystem.
    """

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = uri
        if filesystem is not None:
            self.fs, self.path, self.local = filesystem, uri.rstrip("/"), None
        elif _is_remote(uri):
            try:
                self.fs, self.path = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowException, ValueError) as e:
                raise UsageError(f"store {uri!r} is not a filesystem pyarrow can open ({e}); give a folder") from e
            self.local = None
        else:
            self.local = Path(uri[len("file://") :] if uri.startswith("file://") else uri).resolve()
            self.fs, self.path = pafs.LocalFileSystem(), str(self.local)

    @staticmethod
    def name(prefix: str, key: str) -> str:
        return f"{prefix}-{UNIT_TAG}-{key}.parquet"

    def _names(self) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.File)

    def done_units(self) -> set[str]:
        """Keys of the units whose samples are stored."""
        head, tail = f"{SAMPLE_PREFIX}-{UNIT_TAG}-", ".parquet"
        return {n[len(head) : -len(tail)] for n in self._names() if n.startswith(head) and n.endswith(tail)}

    def has(self, prefix: str, key: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{self.name(prefix, key)}").type != pafs.FileType.NotFound

    def _read_columns(self, prefix: str, columns: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for n in self._names():
            if n.startswith(f"{prefix}-") and n.endswith(".parquet"):
                try:
                    rows += pq.read_table(f"{self.path}/{n}", columns=columns, filesystem=self.fs).to_pylist()
                except (pa.ArrowException, OSError) as e:
                    raise UsageError(
                        f"shard {n!r} in {self.uri!r} cannot be read ({e}); move it out and rerun to regenerate it"
                    ) from e
        return rows

    def done_groups(self) -> set[tuple]:
        """Every stored generation group (any shard, unit-named or not), as `store.shards.group_key` gives it."""
        from store.shards import group_key

        return {group_key(r) for r in self._read_columns(SAMPLE_PREFIX, list(GROUP_KEY))}

    def done_probes(self) -> set[tuple[str, str]]:
        """(query_id, model) pairs whose probe is stored."""
        return {(r["query_id"], r["model"]) for r in self._read_columns(PROBE_PREFIX, ["query_id", "model"])}

    def count_samples(self) -> int:
        """Rows in every sample shard, from the Parquet footers."""
        names = [n for n in self._names() if n.startswith(f"{SAMPLE_PREFIX}-") and n.endswith(".parquet")]
        return sum(pq.read_metadata(f"{self.path}/{n}", filesystem=self.fs).num_rows for n in names)

    def write(self, prefix: str, key: str, table: pa.Table) -> bool:
        """Write one unit's shard atomically under its unit name; False (and nothing written) if it exists."""
        if self.local is not None:
            return _write_local(self.local, self.name(prefix, key), table)
        final = f"{self.path}/{self.name(prefix, key)}"
        if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
            return False
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(final) as out:  # visible only once the upload completes
            pq.write_table(table, out, compression="zstd")
        return True


def _write_local(root: Path, name: str, table: pa.Table) -> bool:
    """Temporary name, fsync, link to `name` (refused if it exists), fsync the folder."""
    root.mkdir(parents=True, exist_ok=True)
    # `.shard-*.tmp` / `.probe-*.tmp`: the names `clean_partial` removes after a killed writer
    tmp = root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, root / name)
        except FileExistsError:
            return False
        except OSError as e:  # e.g. a FUSE or SMB mount without hard links
            raise UsageError(
                f"cannot link a shard into {str(root)!r} ({e.strerror}): the store needs a filesystem with hard "
                "links (local, NFS, Lustre) or an object store URI such as s3://bucket/store"
            ) from e
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
