"""The data layer: everything that keeps, reads and views collected samples.

- `store.shards`: the Parquet shard store (atomic writes, resume, no duplicates);
- `store.views`: the one sample -> arm view that train and eval share;
- `store.jsonl`: the one JSONL line reader (task files, `ttc allocate` input);
- `store.tracking`: MLflow set-up shared by every stage.

collect/ generates samples and writes them here; train and eval only read.
This package never generates, trains or evaluates anything.
"""
