"""GPU check: NVML-measured joules per output token of a small random Llama, next to the estimate.

Runs on a machine with an NVIDIA GPU and only torch, transformers and
nvidia-ml-py installed: this repository need not be installed (the script puts
the repository root on sys.path and uses `collect.energy`, which is standard
library + pynvml). The model is a randomly initialised Llama-style network built
from a `LlamaConfig` (nothing is downloaded); each batch size generates exactly
`--new-tokens` tokens per row (sampling, with `min_new_tokens` = `max_new_tokens`
so EOS cannot end a row early). It prints, clearly labelled:
  * the idle power measured by NVML (W),
  * joules per output token measured by NVML at each batch size (raw and above idle),
  * the estimate meter's joules per output token for the same work (estimated).
`--device cpu --fake-nvml` runs the same path against a fake NVML on CPU (for the
tests); its "measured" figures are a fake 60 W and mean nothing.

The last line of stdout is `GPU_CHECK_JSON {...}` with every number printed.
This script must never download anything, never need more than torch,
transformers and nvidia-ml-py, and must finish in under 3 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run standalone: the repository need not be installed

from collect.energy import EstimateMeter, Meter, NvmlMeter  # noqa: E402  (needs the path above)

FAKE_POWER_W = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device to generate on: cuda (default) or cpu")
    p.add_argument(
        "--fake-nvml",
        action="store_true",
        help=f"meter a fake NVML GPU drawing a constant {FAKE_POWER_W:.0f} W (tests only; figures are not real)",
    )
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row, exactly (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="random prompt length in tokens (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="generate calls per batch size (default 3)")
    p.add_argument("--hidden", type=int, default=512, help="model hidden size (default 512)")
    p.add_argument("--layers", type=int, default=8, help="number of decoder layers (default 8)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    p.add_argument("--idle-s", type=float, default=5.0, help="idle baseline duration in s (default 5)")
    p.add_argument(
        "--estimate-gpu-watts",
        type=float,
        default=0.0,
        help="GPU power in W the estimate meter assumes (default 0: CPU time only, as `--meter estimate`)",
    )
    p.add_argument("--time-budget-s", type=float, default=160.0, help="stop starting new batch sizes after this (s)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for weights, prompts and sampling")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes needs at least one size, each >= 1")
    if args.new_tokens < 1 or args.prompt_tokens < 1 or args.repeats < 1:
        p.error("--new-tokens, --prompt-tokens and --repeats must be >= 1")
    if args.fake_nvml and args.device != "cpu":
        p.error("--fake-nvml is for CPU test runs only: pass --device cpu")
    return args


def install_fake_nvml() -> None:
    # Loaded by path: a `tests` package from site-packages must not shadow the repository's.
    spec = importlib.util.spec_from_file_location("fake_pynvml", REPO / "tests" / "fakes" / "fake_pynvml.py")
    fake = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["fake_pynvml"] = fake  # dataclasses look their module up while the file runs
    spec.loader.exec_module(fake)  # type: ignore[union-attr]
    FakeGpu, FakeNvml = fake.FakeGpu, fake.FakeNvml
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    FakeNvml([FakeGpu("GPU-fake-0000", energy_mj=0, power_w=FAKE_POWER_W)]).install()


def build_model(args: argparse.Namespace, torch: object) -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(args.hidden // 64, 1)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=(args.hidden * 8 // 3 + 63) // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=args.prompt_tokens + args.new_tokens + 8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.device(args.device):
        model = LlamaForCausalLM(config)  # random init: nothing is downloaded
    return model.to(dtype=dtype).eval()


def generate(model: object, torch: object, batch_size: int, args: argparse.Namespace) -> int:
    """One sampled generate call; returns the number of output tokens (all generated, none padded)."""
    prompt = torch.randint(3, args.vocab, (batch_size, args.prompt_tokens), device=args.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,  # suppresses EOS: every row generates every token
            do_sample=True,
            temperature=1.0,
            pad_token_id=0,
            eos_token_id=2,
        )
    new = out.shape[1] - args.prompt_tokens
    if new != args.new_tokens:
        raise RuntimeError(f"generate returned {new} new tokens per row, expected {args.new_tokens}")
    return batch_size * new


def run(args: argparse.Namespace) -> dict[str, object]:
    t_start = time.perf_counter()
    if args.fake_nvml:
        install_fake_nvml()
    import torch  # heavy: only once the arguments are known to be good

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device; pass --device cpu --fake-nvml for a dry run")
    torch.manual_seed(args.seed)
    nvml: Meter = NvmlMeter()
    estimate = EstimateMeter(gpu_watts=args.estimate_gpu_watts)
    print(f"meter (measured): {nvml.describe()}{'  [FAKE NVML: figures are not real]' if args.fake_nvml else ''}")
    print(
        f"meter (estimated): estimate = CPU time x {estimate.watts_per_core:.0f} W/core"
        f" + {args.estimate_gpu_watts:.0f} W assumed GPU power x wall time"
    )
    model = build_model(args, torch)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: random Llama, {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, "
        f"{n_params / 1e6:.1f}M params"
    )
    generate(model, torch, max(args.batch_sizes), argparse.Namespace(**{**vars(args), "new_tokens": 4}))  # warm-up
    idle_w = nvml.measure_idle(args.idle_s)
    print(f"idle power, measured by NVML: {idle_w:.1f} W (over {args.idle_s:.1f} s, model loaded, GPU idle)")

    rows: list[dict[str, object]] = []
    for batch_size in args.batch_sizes:
        if time.perf_counter() - t_start > args.time_budget_s:
            print(f"time budget of {args.time_budget_s:.0f} s spent: skipping batch size {batch_size} and later")
            break
        measured_j = above_idle_j = estimated_j = duration_s = 0.0
        tokens = 0
        per_call: list[float] = []
        flags: set[str] = set()
        for r in range(args.repeats):
            window = f"bs{batch_size}_r{r}"
            nvml.begin_window(window)
            estimate.begin_window(window, sync=False)
            n = generate(model, torch, batch_size, args)
            m = nvml.end_window(window)  # synchronises CUDA first, so both windows cover the same work
            e = estimate.end_window(window, sync=False)
            tokens += n
            measured_j += m.energy_j
            above_idle_j += m.energy_above_idle_j
            estimated_j += e.energy_j
            duration_s += m.duration_s
            per_call.append(m.energy_j / n)
            flags.update(m.flags)
        rows.append(
            {
                "batch_size": batch_size,
                "output_tokens": tokens,
                "duration_s": duration_s,
                "measured_j": measured_j,
                "measured_j_per_token": measured_j / tokens,
                "measured_above_idle_j_per_token": above_idle_j / tokens,
                "measured_j_per_token_min": min(per_call),
                "measured_j_per_token_max": max(per_call),
                "estimated_j": estimated_j,
                "estimated_j_per_token": estimated_j / tokens,
                "flags": sorted(flags),
            }
        )
    nvml.close()
    return {
        "device": args.device,
        "fake_nvml": args.fake_nvml,
        "measured_meter": nvml.name,
        "measured_source": nvml.source,
        "estimated_meter": estimate.name,
        "estimated_source": estimate.source,
        "idle_power_w": idle_w,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }


def report(result: dict[str, object]) -> None:
    tag = " [FAKE]" if result["fake_nvml"] else ""
    print()
    print(
        f"{'batch':>5} {'tokens':>7} {'time s':>7} | {'J/token measured' + tag:>24} {'above idle':>11} "
        f"{'min..max':>17} | {'J/token estimated':>17} | flags"
    )
    for row in result["rows"]:  # type: ignore[union-attr]
        spread = f"{row['measured_j_per_token_min']:.4f}..{row['measured_j_per_token_max']:.4f}"
        print(
            f"{row['batch_size']:>5} {row['output_tokens']:>7} {row['duration_s']:>7.2f} | "
            f"{row['measured_j_per_token']:>24.4f} {row['measured_above_idle_j_per_token']:>11.4f} {spread:>17} | "
            f"{row['estimated_j_per_token']:>17.4f} | {','.join(row['flags']) or '-'}"
        )
    print(f"idle power (measured, NVML){tag}: {result['idle_power_w']:.1f} W; total wall time {result['wall_s']:.1f} s")
    print("measured = NVML energy counter of the visible GPUs (whole board, all processes);")
    print("estimated = estimate meter (CPU time x W/core + assumed GPU W x wall time): not a measurement.")
    print("GPU_CHECK_JSON " + json.dumps(result, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
