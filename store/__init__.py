"""The data layer: everything that keeps, reads and views collected samples.

- `store.shards`: the Parquet shard store (atomic writes, resume, no duplicates,
  one writer at a time through `store.locks`);
- `store.loader`: the one sample loader (`load_samples`), which every stage reads through;
- `store.schema`: the column lists (sample keys, the arm view's inputs, arm rows), once;
- `store.views`: the one sample -> arm view that train and eval share;
- `store.splits`: the train/test split file (train writes it, eval reads it);
- `store.jsonl`: the one JSONL line reader (task files, `ttc allocate` input);
- `store.tracking`: MLflow set-up shared by every stage (its database created under a lock).

collect/ generates samples and writes them here; train and eval only read.
This package never generates, trains or evaluates anything.
"""
