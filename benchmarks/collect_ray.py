"""Collection throughput on Ray: N actors against one process, on the same queries and seeds.

The same plan (one model, `--queries` queries of one task, `--n-samples`
samples at temperature 0.7 capped at `--max-new-tokens`, one query per
generate call so that there are units to share) is collected twice:

- one process with N torch threads: the model loaded once, then every batch
  through `collect.stage.run_batch` (what `ttc collect` runs);
- `ttc collect --ray` on a local cluster of N CPUs: N actors of one thread each
  (`collect.distributed.run_distributed`), writing a real store.

It prints output tokens per second of generation (model loads excluded; for
Ray, all tokens over the span from the first moment an actor had its model
loaded to the end of the last unit, so an actor still loading counts as idle)
and end to end (model loads, and for Ray the cluster's start, included). One
process runs with 1 thread and with N threads: under load from other processes
a multi-threaded torch process can stall on its slowest thread, which is one of
the things separate one-thread actors avoid. On a CPU box the
actors share the cores one process would use, so expect little; on GPUs each
actor has a device of its own (see docs/ray.md for the arithmetic).

    python benchmarks/collect_ray.py --ray 2 [--queries 8] [--n-samples 4] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# This file sits beside one named like the `collect` package: put the repository first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Before torch loads OpenMP, as the CLI and the Ray actors have it: spinning waits starve a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collect.config import make_config  # noqa: E402


def _config(args: argparse.Namespace, threads: int, store: str):
    return make_config(
        None,
        models=[args.model],
        tasks=[args.task],
        items_per_task=args.queries,
        n_samples=args.n_samples,
        levels=[args.max_new_tokens],
        greedy=False,
        queries_per_batch=1,
        threads=threads,
        track=False,
        store=store,
    ).validate()


def one_process(args: argparse.Namespace, threads: int) -> dict[str, float]:
    """The single-process path: load once, then every batch of the plan through run_batch."""
    from collect.energy import make_meter
    from collect.models import LoadedModel, resolve_model
    from collect.stage import plan_batches, run_batch
    from collect.tasks import make_task

    cfg = _config(args, threads, "unused")
    t0 = time.perf_counter()
    lm = LoadedModel(resolve_model(args.model), "cpu", cfg.threads, dtype=cfg.dtype)
    load_s = time.perf_counter() - t0
    meter, tokens = make_meter("estimate"), 0
    for batch in plan_batches(cfg, [make_task(t) for t in cfg.tasks]):
        tokens += sum(s.output_tokens for s in run_batch(lm, meter, batch, cfg, "bench").samples)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "load_s": load_s, "wall_s": wall, "gen_tok_s": tokens / (wall - load_s)}


def on_ray(args: argparse.Namespace, store: str) -> dict[str, float]:
    """`ttc collect --ray local` with N one-thread actors on an N-CPU cluster started for the run."""
    from collect.distributed import run_distributed

    t0 = time.perf_counter()
    r = run_distributed(_config(args, 1, store), "local", args.ray, progress=False, num_cpus=args.ray)
    wall = time.perf_counter() - t0
    if r.failed:
        raise SystemExit(f"units failed: {r.failed}")
    tokens = sum(u.output_tokens for u in r.results)
    first = min(u.started_at + u.load_s for u in r.results)
    last = max(u.started_at + u.duration_s for u in r.results)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "gen_tok_s": tokens / (last - first),
        "actors": len({u.actor for u in r.results}),
        "load_s": max(u.load_s for u in r.results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ray", type=int, default=2, help="actors (and CPUs of the local cluster; one thread each)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="rg.basic_arithmetic_1d")
    p.add_argument("--queries", type=int, default=8, help="queries, one unit each")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()
    singles = [(f"one process, {t} thread{'s' * (t > 1)}", one_process(args, t)) for t in sorted({1, args.ray})]
    with tempfile.TemporaryDirectory() as tmp:
        ray = on_ray(args, str(Path(tmp) / "store"))
    print(f"{args.queries} queries x {args.n_samples} samples, <= {args.max_new_tokens} tokens, {args.model}")
    print(f"{'run':<28}{'tokens':>8}{'load s':>9}{'wall s':>9}{'gen tok/s':>11}{'end-to-end tok/s':>18}")
    for name, m in [*singles, (f"ray, {int(ray['actors'])} actors x 1 thread", ray)]:
        e2e = m["tokens"] / m["wall_s"]
        print(f"{name:<28}{m['tokens']:>8.0f}{m['load_s']:>9.1f}{m['wall_s']:>9.1f}{m['gen_tok_s']:>11.1f}{e2e:>18.1f}")
    best = max(m["gen_tok_s"] for _, m in singles)
    print(f"generation speed-up of ray over the faster single process: {ray['gen_tok_s'] / best:.2f}x")


if __name__ == "__main__":
    main()
