"""Collect-stage throughput and the saving of sample reuse, measured side by side in one run.

Prints, on the same items and model:
1. tokens/s of the collect path (`collect.stage.run_batch`: shared prefill, grading at
   every level, energy attribution) against a bare `model.generate` loop with
   `num_return_sequences` (target: ratio >= 0.9);
2. time and energy of collecting vote@{1,2,4,8} by reuse (one 8-sample generation
   serves every vote arm) against generating each arm separately (target: <= 0.6).
Energy comes from the meter given (default `estimate`: CPU time x W per core, so it
is *estimated*). Rounds alternate the order of the compared paths to spread noise.

    python benchmarks/collect.py [--model smollm2-135m] [--queries 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# This file is named like the `collect` package: put the repository first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from collect.config import make_config  # noqa: E402
from collect.energy import make_meter  # noqa: E402
from collect.models import LoadedModel, resolve_model  # noqa: E402
from collect.stage import _Batch, run_batch  # noqa: E402
from collect.tasks import make_task  # noqa: E402


def bare_loop(lm: LoadedModel, prompts: list[str], n: int, max_new_tokens: int, per_call: int, seed: int) -> int:
    """The baseline: plain HF generate, several prompts per call, n return sequences each."""
    tok = lm.tokenizer
    tokens = 0
    for i in range(0, len(prompts), per_call):
        enc = tok(prompts[i : i + per_call], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = lm.model.generate(
                **enc,
                do_sample=True,
                temperature=0.7,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id,
            )
        gen = out[:, enc["input_ids"].shape[1] :]
        for row in gen.tolist():
            end = next((j for j, t in enumerate(row) if t in lm.end_ids), None)
            tokens += len(row) if end is None else end + 1
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="rg.basic_arithmetic_2d")
    ap.add_argument("--queries", type=int, default=8, help="queries per measured pass")
    ap.add_argument("--per-call", type=int, default=4, help="queries per generate call")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--meter", default="estimate")
    args = ap.parse_args()

    lm = LoadedModel(resolve_model(args.model), device="auto")
    meter = make_meter(args.meter)
    task = make_task(args.task)
    items = task.items(args.queries, seed=1)
    prompts = [lm.build_prompt(it.question, task.demos) for it in items]
    cfg = make_config(None, models=[args.model], tasks=[args.task], levels=[args.max_new_tokens], track=False)

    def collect_path(n: int) -> tuple[int, float, float]:
        tokens, joules = 0, 0.0
        t = time.perf_counter()
        for i in range(0, len(items), args.per_call):
            batch = _Batch(args.model, 0.7, n, 1000 + i, [(task, it) for it in items[i : i + args.per_call]])
            samples = run_batch(lm, meter, batch, cfg, "bench")
            tokens += sum(s.output_tokens for s in samples)
            joules += sum(s.energy_j for s in samples)
        return tokens, time.perf_counter() - t, joules

    def metered(fn, *a) -> tuple[int, float, float]:
        meter.begin_window("bench")
        t = time.perf_counter()
        tokens = fn(*a)
        dt = time.perf_counter() - t
        return tokens, dt, meter.end_window("bench").energy_j

    collect_path(1)  # warm-up: first-call allocations
    ratios, reuse_t, sep_t, reuse_e, sep_e = [], [], [], [], []
    for r in range(args.rounds):
        order = ("bare", "collect") if r % 2 == 0 else ("collect", "bare")
        res = {}
        for name in order:
            if name == "bare":
                res[name] = metered(bare_loop, lm, prompts, 8, args.max_new_tokens, args.per_call, 1000)
            else:
                res[name] = collect_path(8)
        tps = {k: v[0] / v[1] for k, v in res.items()}
        ratios.append(tps["collect"] / tps["bare"])
        print(
            f"round {r}: bare generate {tps['bare']:.1f} tok/s, ttc collect {tps['collect']:.1f} tok/s, "
            f"ratio {ratios[-1]:.2f}"
        )
        separate = [collect_path(n) for n in (1, 2, 4, 8)]
        sep_t.append(sum(s[1] for s in separate))
        sep_e.append(sum(s[2] for s in separate))
        reuse_t.append(res["collect"][1])
        reuse_e.append(res["collect"][2])
        print(
            f"round {r}: vote@1,2,4,8 separately {sep_t[-1]:.1f} s {sep_e[-1]:.0f} J; "
            f"by reuse {reuse_t[-1]:.1f} s {reuse_e[-1]:.0f} J"
        )
    src = meter.source
    print(
        f"\nmodel {args.model}, {args.queries} queries x 8 samples, max_new_tokens {args.max_new_tokens}, "
        f"{args.rounds} rounds, energy {src} ({meter.name} meter)"
    )
    print(f"throughput ttc collect / bare generate: median {statistics.median(ratios):.2f} (target >= 0.9)")
    time_ratio = statistics.median(r / s for r, s in zip(reuse_t, sep_t, strict=True))
    energy_ratio = statistics.median(r / s for r, s in zip(reuse_e, sep_e, strict=True))
    print(
        f"vote@{{1,2,4,8}} reuse / separate: time {time_ratio:.2f}, energy ({src}) {energy_ratio:.2f} (target <= 0.6)"
    )


if __name__ == "__main__":
    main()
