"""The prefill probe's side table: per (query, model), the prompt's hidden state, float16.

A stored table beside the sample shards: collection writes it (`ProbeStore`), training and
evaluation read it (`read_probes`, `load_probes` -> `ProbeTable`).

Collection prefills every prompt anyway (collect/decode.py); the probe is what
that pass leaves behind: the final layer's state (after the final norm, the
vector the LM head reads; `layer` = the model's number of decoder layers) at
the last prompt token, `probe_last`, and its mean over the prompt's tokens,
`probe_mean`. Both are float16 lists in `probe-*.parquet` shards beside the
sample shards of a store, one row per (query_id, model), written the way the
sample shards are (temporary name, fsync, rename, fsync the folder), so a
reader sees a whole shard or none.

Joules: the probe costs nothing beyond the prefill it is read from, whose share
of its window is charged to the prompt's first sample
(collect/energy/attribution.py); `prefill_energy_j` repeats that figure here,
so an arm on another model can be charged one extra prefill.

A query's probe is written before its samples, so a run killed in between
regenerates the samples on resume and finds the probe already there.
This module never runs a model and imports nothing from collect, train or eval.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from policy.errors import UsageError

PROBE_KEY = ("query_id", "model")
PROBE_GLOB = "probe-*.parquet"


@dataclass(frozen=True)
class ProbeRow:
    """One (query, model)'s probe; the vectors are float16 arrays of the model's hidden size."""

    query_id: str
    task: str
    model: str
    layer: int
    dtype: str
    prompt_tokens: int
    probe_last: np.ndarray
    probe_mean: np.ndarray
    prefill_energy_j: float
    meter: str
    energy_source: str
    collect_run: str


def _table(rows: Sequence[ProbeRow]) -> pa.Table:
    cols: dict[str, Any] = {}
    for name in ProbeRow.__dataclass_fields__:
        values = [getattr(r, name) for r in rows]
        if name in ("probe_last", "probe_mean"):
            cols[name] = pa.array([np.asarray(v, dtype=np.float16) for v in values], type=pa.list_(pa.float16()))
        else:
            cols[name] = pa.array(values)
    return pa.table(cols)


class ProbeStore:
    """The `probe-*.parquet` shards of one store folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._done: set[tuple[str, str]] | None = None

    def shards(self) -> list[Path]:
        return sorted(self.root.glob(PROBE_GLOB)) if self.root.is_dir() else []

    def done(self) -> set[tuple[str, str]]:
        """(query_id, model) pairs already stored."""
        if self._done is None:
            self._done = set()
            for f in self.shards():
                t = pq.read_table(f, columns=list(PROBE_KEY))
                self._done.update(zip(t["query_id"].to_pylist(), t["model"].to_pylist(), strict=True))
        return self._done

    def append(self, rows: Sequence[ProbeRow]) -> Path | None:
        """Write the rows of pairs not stored yet as one shard; returns its path (None: nothing new)."""
        seen = set(self.done())
        fresh = []
        for r in rows:
            if (r.query_id, r.model) not in seen:
                seen.add((r.query_id, r.model))
                fresh.append(r)
        if not fresh:
            return None
        path = _write_atomic(self.root, "probe", _table(fresh))
        self.done().update((r.query_id, r.model) for r in fresh)
        return path

    def clean_partial(self) -> int:
        """Remove temporary probe files a killed writer left behind; returns how many."""
        stale = list(self.root.glob(".probe-*.tmp")) if self.root.is_dir() else []
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


def _write_atomic(root: Path, prefix: str, table: pa.Table) -> Path:
    """Temporary name, fsync, rename, fsync the folder: the store's shard discipline."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = root / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / name)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return root / name


def read_probes(root: str | Path, model: str | None = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """(rows without the vectors as a DataFrame, probe_last (rows, hidden), probe_mean), both float16.

    `model`: keep that model's rows only (vectors of different models differ in width).
    """
    files = ProbeStore(root).shards()
    if not files:
        raise UsageError(f"no probe shards ({PROBE_GLOB}) under {str(root)!r}; collect with this version of ttc")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    if model is not None:
        table = table.filter(pc.equal(table["model"], model))
        if table.num_rows == 0:
            raise UsageError(f"no probes of model {model!r} under {str(root)!r}")
    last = [np.asarray(v, dtype=np.float16) for v in table["probe_last"].to_numpy(zero_copy_only=False)]
    mean = [np.asarray(v, dtype=np.float16) for v in table["probe_mean"].to_numpy(zero_copy_only=False)]
    if len({len(v) for v in last}) > 1:
        raise UsageError(f"probes under {str(root)!r} come from models of different widths; pass model=")
    meta = table.drop_columns(["probe_last", "probe_mean"]).to_pandas()
    return pd.DataFrame(meta), np.stack(last), np.stack(mean)


@dataclass(frozen=True, eq=False)
class ProbeTable:
    """One model's raw probe vectors (`PROBE_INPUTS`, float32) and prefill joules, per query id."""

    model: str
    layer: int
    query_ids: np.ndarray
    vectors: np.ndarray
    prefill_j: np.ndarray

    def rows(self, query_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, prefill joules) of `query_ids`, in order; `UsageError` when any has no probe."""
        pos = pd.Index(self.query_ids).get_indexer([str(q) for q in query_ids])
        if (pos < 0).any():
            first = str(np.asarray(query_ids, dtype=object)[pos < 0][0])
            raise UsageError(
                f"{int((pos < 0).sum())} queries (e.g. {first!r}) have no probe of model {self.model!r}; "
                "re-collect them with this version of ttc (probes are written with the samples)"
            )
        return self.vectors[pos], self.prefill_j[pos]


def load_probes(store: str | Path, model: str) -> ProbeTable:
    """The `probe-*.parquet` side table of `store` for `model`, as raw vectors (probe_last then probe_mean)."""
    meta, last, mean = read_probes(store, model=model)
    layers = sorted(set(meta["layer"].astype(int)))
    if len(layers) != 1:
        raise UsageError(f"probes of {model!r} under {str(store)!r} come from layers {layers}; re-collect one way")
    meta = meta.reset_index(drop=True)
    keep = ~meta["query_id"].astype(str).duplicated().to_numpy()
    vectors = np.hstack([last, mean]).astype(np.float32)[keep]
    return ProbeTable(
        model=model,
        layer=layers[0],
        query_ids=meta["query_id"].astype(str).to_numpy(dtype=object)[keep],
        vectors=vectors,
        prefill_j=meta["prefill_energy_j"].to_numpy(dtype=np.float64)[keep],
    )
