"""Collect-stage throughput: today's settings against faster ones, side by side in one run.

Every variant collects the same queries, every arm of one model (n samples at
temperature 0.7 and one greedy sample, `--max-new-tokens` tokens), through the
collect path (`collect.stage.run_batch`: generation, grading at every level,
energy attribution, probe rows), and prints tokens/s (wall and per CPU second) and accuracy:

- `today`: the settings before this benchmark: transformers' `generate`, float32,
  4 queries x 8 samples per sampled call and 8 queries per greedy call
  (a faithful copy of the former `LoadedModel.generate`, below);
- `loop-fp32-r32`: collect/decode.py's loop, float32, 32 rows in every call;
- `bf16-r32`, `bf16-r64`: bfloat16 weights and compute, 32 or 64 rows per call;
- `bf16-r32-static`: a preallocated (static) KV cache: the collect defaults since this benchmark;
- `bf16-r32-compile`: static cache plus `torch.compile` of the decode step
  (skipped, with the reason, when compilation fails or outlasts `--compile-limit-s`).

Both built-in models by default (`--models`), one report each. Before the variants,
a per-model section measures what every decode step costs beside the model itself:
the sampler over the model's vocabulary (the former one, with ~8 full-vocabulary
temporaries per step, against collect/decode.py's `_Sampler`) and the LM head's
matmul in bfloat16 and float32, with which dtype "auto" picks on this CPU
(`collect.models.cpu_bf16_native`).

Accuracy on so few queries is noisy, so greedy answers (deterministic) are also
compared on `--accuracy-queries` more queries: today's float32 path against
bfloat16, query by query. Rounds rotate the order of the variants so that load from other processes on
the machine spreads evenly; ratios are medians over rounds of the per-round
ratio to `today`. Last, it prints how far the best variant is from the
memory-bandwidth bound: the bytes of weights every decode step must stream
times the decode steps, over the measured time, against a copy bandwidth
measured in the same run.

    python benchmarks/collect.py [--models smollm2-135m,gemma3-270m] [--queries 8] [--rounds 2] [--steps-only]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This file is named like the `collect` package: put the repository first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from collect.config import make_config  # noqa: E402
from collect.decode import _Sampler  # noqa: E402
from collect.energy import make_meter  # noqa: E402
from collect.generation import Generation  # noqa: E402
from collect.models import LoadedModel, cpu_bf16_native, resolve_dtype, resolve_model  # noqa: E402
from collect.stage import _Batch, run_batch  # noqa: E402
from collect.tasks import make_task  # noqa: E402


class TodayModel:
    """The former collect generation: `model.generate`, one shared prefill of all but the last prompt token."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm, self.dtype, self.probe_layer, self.steps = lm, lm.dtype, lm.probe_layer, 0
        lm.model.set_attn_implementation("sdpa")  # transformers' default, as before
        self.build_prompt, self.decode = lm.build_prompt, lm.decode

    def generate(
        self, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int, meter: Any = None
    ) -> Generation:
        from transformers import DynamicCache, StoppingCriteria

        lm, tok = self.lm, self.lm.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=lm.prompt_style == "plain")
        start, first, bench = time.perf_counter(), [], self

        class _FirstToken(StoppingCriteria):  # never stops anything: notes the first token's time, counts steps
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                bench.steps += 1
                if not first:
                    first.append(time.perf_counter() - start)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        kw.update(stopping_criteria=[_FirstToken()], do_sample=temperature > 0)
        if temperature > 0:
            kw.update(temperature=temperature, top_p=1.0, top_k=0)
        if lm.stop_strings:
            kw.update(stop_strings=lm.stop_strings, tokenizer=tok)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if n > 1:  # the former `_prefill_once`: all but the last prompt token, cache repeated n times
            cache = DynamicCache(config=lm.model.config)
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                lm.model(
                    input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], past_key_values=cache
                )
            cache.batch_repeat_interleave(n)
            kw["past_key_values"] = cache
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = lm.model.generate(input_ids=ids, attention_mask=mask, **kw)
        seqs = [_trim(lm, row) for row in out[:, ids.shape[1] :].tolist()]
        empty = [[] for _ in seqs]
        probe = np.zeros((len(prompts), lm.model.config.hidden_size), dtype=np.float16)
        p_tok = enc["attention_mask"].sum(1).tolist()
        return Generation(
            [s[0] for s in seqs], [s[1] for s in seqs], [int(p_tok[i // n]) for i in range(len(seqs))],
            first[0] if first else 0.0, None, empty, empty, empty, probe, probe, n,
        )  # fmt: skip


def former_sampler(logits: Any, temperature: float) -> tuple[Any, ...]:
    """The decode loop's sampler before `_Sampler`: full-vocabulary float32 temporaries every step."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    p = probs if temperature == 1.0 else torch.softmax(logits.float() / temperature, dim=-1)
    cdf = p.cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1)) * cdf[:, -1:]
    nxt = torch.searchsorted(cdf, u).squeeze(1).clamp(max=cdf.shape[1] - 1)
    chosen = logp.gather(1, nxt.unsqueeze(1)).squeeze(1)
    return nxt, chosen, logp.max(dim=-1).values, -(probs * logp).nan_to_num().sum(dim=-1)


def _ms(fn: Any, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def step_costs(lm: LoadedModel, rows: int = 32, reps: int = 5) -> None:
    """Per decode step at `rows` rows: the sampler (former vs now) and the LM head (bf16 vs fp32)."""
    head = lm.model.get_output_embeddings().weight
    vocab, hidden = head.shape
    logits = (torch.randn(rows, vocab) * 3).to(getattr(torch, lm.dtype))
    sampler = _Sampler(rows, vocab, "cpu")
    with torch.inference_mode():
        for t in (1.0, 0.7):
            old, new = _ms(lambda t=t: former_sampler(logits, t), reps), _ms(lambda t=t: sampler.step(logits, t), reps)
            print(
                f"  sampler, vocab {vocab}, {rows} rows, t={t:g}: former {old:.1f} ms/step, now {new:.1f} ms/step "
                f"({old / new:.1f}x)"
            )
        h = torch.randn(rows, hidden)
        w32, w16 = head.detach().float(), head.detach().bfloat16()
        f32 = _ms(lambda: torch.nn.functional.linear(h, w32), reps)
        b16 = _ms(lambda: torch.nn.functional.linear(h.bfloat16(), w16), reps)
    print(
        f"  LM head ({hidden} x {vocab}), {rows} rows: float32 {f32:.1f} ms, bfloat16 {b16:.1f} ms per step; "
        f"bf16 native on this CPU: {cpu_bf16_native()} -> dtype auto = {resolve_dtype('auto', 'cpu')} "
        f"(torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    )


def _trim(lm: LoadedModel, seq: list[int]) -> tuple[list[int], bool]:
    end = next((i for i, t in enumerate(seq) if t in lm.end_ids), None)
    ids = seq if end is None else seq[: end + 1] if seq[end] in lm.eos_ids else seq[:end]
    stop = end is not None or any(s in lm.tokenizer.decode(ids) for s in lm.stop_strings)
    return ids, stop


@dataclass
class Variant:
    name: str
    lm: Any
    sampled_queries: int  # queries per sampled call (x n rows)
    greedy_queries: int  # queries per greedy call
    note: str = ""


@dataclass
class Pass:
    tokens: int
    wall_s: float
    cpu_s: float
    steps: int
    correct: float
    greedy_correct: float


def run_pass(v: Variant, task: Any, items: list, n: int, cfg: Any, meter: Any) -> Pass:
    """Every arm of the model on `items` with this variant's settings; seeds depend only on the call."""
    calls = []
    for temp, nn, per in ((0.7, n, v.sampled_queries), (0.0, 1, v.greedy_queries)):
        for i in range(0, len(items), per):
            calls.append(_Batch(cfg.models[0], temp, nn, 1000 + i, [(task, it) for it in items[i : i + per]]))
    counter = v.lm if isinstance(v.lm, TodayModel) else _count_steps(v.lm)
    counter.steps = 0
    wall, cpu, samples = time.perf_counter(), time.process_time(), []
    for b in calls:
        samples += run_batch(v.lm, meter, b, cfg, "bench").samples
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    greedy = [s.correct for s in samples if s.temperature == 0]
    sampled = [s.correct for s in samples if s.temperature > 0]
    return Pass(
        sum(s.output_tokens for s in samples), wall, cpu, counter.steps, float(np.mean(sampled)), float(np.mean(greedy))
    )


def _count_steps(lm: LoadedModel) -> LoadedModel:
    """Wrap the decode step once so the benchmark can count decode steps (for the bandwidth bound)."""
    if not hasattr(lm, "steps"):
        inner = lm._step

        def counted(*a: Any) -> Any:
            lm.steps += 1
            return inner(*a)

        lm._step = counted
    return lm


def copy_bandwidth_gbs(mib: int = 512) -> float:
    """Measured memory bandwidth of this machine now: bytes read plus written by a large copy, per second."""
    a, b = np.ones(mib << 18, dtype=np.float32), np.empty(mib << 18, dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class _Timeout(Exception):
    pass


def warm_compile(v: Variant, task: Any, items: list, n: int, cfg: Any, meter: Any, limit_s: int) -> str | None:
    """Compile by running one pass; returns why the variant must be skipped, or None."""

    def alarm(*_: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit_s)
    t = time.perf_counter()
    print(f"warming up {v.name} (at most {limit_s} s)", flush=True)
    try:
        run_pass(v, task, items, n, cfg, make_meter("estimate"))  # its own meter: an alarm leaves windows open
    except _Timeout:
        return f"torch.compile did not finish warming up within {limit_s} s on this CPU"
    except Exception as e:  # noqa: BLE001  (any compiler failure means: skip, and say why)
        return f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    v.note = f"compiled in {time.perf_counter() - t:.0f} s (excluded)"
    return None


def build_variants(model: str, rows: int, skip: set[str]) -> list[Variant]:
    spec = resolve_model(model)
    fp32 = LoadedModel(spec, device="cpu", dtype="float32", cache="dynamic")
    bf16 = LoadedModel(spec, device="cpu", dtype="bfloat16", cache="dynamic")
    out = [
        Variant("today", TodayModel(LoadedModel(spec, device="cpu", dtype="float32", cache="dynamic")), 4, 8),
        Variant("loop-fp32-r32", fp32, rows // 8, rows),
        Variant("bf16-r32", bf16, rows // 8, rows),
        Variant("bf16-r64", bf16, 2 * rows // 8, 2 * rows),
        Variant("bf16-r32-static", LoadedModel(spec, device="cpu", dtype="bfloat16", cache="static"), rows // 8, rows),
    ]
    if "compile" not in skip:
        lm = LoadedModel(spec, device="cpu", dtype="bfloat16", cache="static", compile=True)
        out.append(Variant("bf16-r32-compile", lm, rows // 8, rows))
    return [v for v in out if v.name not in skip]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", "--model", default="smollm2-135m,gemma3-270m", help="comma-separated")
    ap.add_argument("--task", default="rg.basic_arithmetic_2d")
    ap.add_argument("--queries", type=int, default=8, help="queries per pass (every arm of each)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile-limit-s", type=int, default=240, help="give up on torch.compile after this")
    ap.add_argument("--accuracy-queries", type=int, default=32, help="greedy queries for the dtype check; 0 = none")
    ap.add_argument("--skip", default="", help="comma-separated variant names (or 'compile') to leave out")
    ap.add_argument("--steps-only", action="store_true", help="only the per-step sampler and LM-head costs")
    args = ap.parse_args()
    for model in [m for m in args.models.split(",") if m]:
        print(f"\n=== {model}")
        step_costs(LoadedModel(resolve_model(model), device="cpu"))
        if not args.steps_only:
            bench_model(argparse.Namespace(**{**vars(args), "model": model}))


def bench_model(args: Any) -> None:
    """The variants' rounds, report and greedy check for `args.model`."""
    n = 8
    task = make_task(args.task)
    items = task.items(args.queries, seed=1)
    cfg = make_config(None, models=[args.model], tasks=[args.task], levels=[args.max_new_tokens], track=False)
    meter = make_meter("estimate")
    variants = build_variants(args.model, 32, {s for s in args.skip.split(",") if s})
    skipped: dict[str, str] = {}
    for v in variants:
        if "compile" in v.name:
            reason = warm_compile(v, task, items, n, cfg, meter, args.compile_limit_s)
            if reason:
                skipped[v.name] = reason
    variants = [v for v in variants if v.name not in skipped]
    run_pass(variants[1], task, items[:2], n, cfg, meter)  # warm-up: first-call allocations
    passes: dict[str, list[Pass]] = {v.name: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            p = run_pass(v, task, items, n, cfg, meter)
            passes[v.name].append(p)
            print(f"round {r} {v.name:18s} {p.tokens / p.wall_s:7.1f} tok/s wall, {p.tokens / p.cpu_s:7.1f} tok/cpu-s")
    report(args, variants, passes, skipped)
    if args.accuracy_queries:
        greedy_agreement(variants, task, task.items(args.accuracy_queries, seed=2), cfg, meter)


def report(args: Any, variants: list[Variant], passes: dict[str, list[Pass]], skipped: dict[str, str]) -> None:
    base = passes["today"]
    print(
        f"\nmodel {args.model}, task {args.task}, {args.queries} queries x (8 samples at t=0.7 + greedy), "
        f"max_new_tokens {args.max_new_tokens}, {args.rounds} rounds; joules estimated (CPU time x 12 W/core)"
    )
    head = "variant            tok/s  x today  x today(cpu)  acc sampled  acc greedy"
    print(head)
    for v in variants:
        ps = passes[v.name]
        ratio = statistics.median(p.tokens / p.wall_s / (b.tokens / b.wall_s) for p, b in zip(ps, base, strict=True))
        cpu = statistics.median(p.tokens / p.cpu_s / (b.tokens / b.cpu_s) for p, b in zip(ps, base, strict=True))
        print(
            f"{v.name:18s} {statistics.median(p.tokens / p.wall_s for p in ps):6.1f}  {ratio:6.2f}x  {cpu:10.2f}x"
            f"  {statistics.mean(p.correct for p in ps):10.3f}  {statistics.mean(p.greedy_correct for p in ps):10.3f}"
            f"  {v.note}"
        )
    for name, why in skipped.items():
        print(f"{name:18s} skipped: {why}")
    bound(variants, passes)


def greedy_agreement(variants: list[Variant], task: Any, items: list, cfg: Any, meter: Any) -> None:
    """Greedy correctness of today's float32 path and of bfloat16 on the same queries, query by query."""
    got = {}
    for v in variants:
        if v.name in ("today", "bf16-r32"):
            b = _Batch(cfg.models[0], 0.0, 1, 7, [(task, it) for it in items])
            got[v.name] = [s.correct for s in run_batch(v.lm, meter, b, cfg, "bench").samples]
    a, b = np.array(got["today"]), np.array(got["bf16-r32"])
    print(
        f"\ngreedy on {len(items)} more queries: accuracy today (float32) {a.mean():.3f}, bfloat16 {b.mean():.3f}; "
        f"same verdict on {np.mean(a == b):.0%} of queries (binomial s.e. of one accuracy "
        f"{np.sqrt(a.mean() * (1 - a.mean()) / len(a)):.3f})"
    )


def bound(variants: list[Variant], passes: dict[str, list[Pass]]) -> None:
    """How far the fastest variant is from streaming its weights once per decode step at full bandwidth."""
    best = max((v for v in variants if v.name != "today"), key=lambda v: statistics.median(
        p.tokens / p.wall_s for p in passes[v.name]))  # fmt: skip
    model = best.lm.lm.model if isinstance(best.lm, TodayModel) else best.lm.model
    wb = weight_bytes(model)
    bw = copy_bandwidth_gbs()
    ps = passes[best.name]
    achieved = statistics.median(wb * p.steps / p.wall_s / 1e9 for p in ps)
    tps = statistics.median(p.tokens / p.wall_s for p in ps)
    print(
        f"\nbandwidth bound ({best.name}): {wb / 1e6:.0f} MB of weights per decode step x steps / time = "
        f"{achieved:.2f} GB/s of weights streamed; measured copy bandwidth {bw:.1f} GB/s, so decoding runs at "
        f"{achieved / bw:.1%} of the bound (at the bound: {tps * bw / achieved:.0f} tok/s, {bw / achieved:.0f}x)"
    )


if __name__ == "__main__":
    main()
