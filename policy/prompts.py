"""Prompts as data: how each model was asked during collection, so serving can ask the same way (prompts.json).

A policy's success and joule predictions hold only for the prompt its samples
were drawn with. Collection builds that prompt from two things, both recorded
here: the model's *style* ("chat": the task's demo pairs as alternating
user/assistant turns, then the question, under the model's own chat template;
"plain": "Question: q\\nAnswer: a" blocks and stop strings, for base models)
and the task's few-shot *demos*. `chat_messages` and `plain_prompt` are the
one definition of both formats: collect/models.py (in-process) and
collect/engine.py (through an engine) build their prompts with them, and the
proxy (`ttc serve --prompt-template trained`) rebuilds the same prompt from the
client's question and task hint. No system text was used in collection; a
chat template may add its own default one (SmolLM2's does), in-process and in
llama.cpp alike.

prompts.json is untrusted and checked on load (`BundleError`). Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy import jsonsafe
from policy.errors import BundleError

PROMPTS_FILE = "prompts.json"
CHAT, PLAIN = "chat", "plain"
STYLES = (CHAT, PLAIN)
#: plain prompts end a completion at the next demo block or a blank line
PLAIN_STOP = ("\nQuestion:", "\n\n")
#: how the proxy may prompt: rebuild the trained prompt, or forward the client's messages as sent
TEMPLATES = ("trained", "client")


def chat_messages(question: str, demos: Sequence[tuple[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """The chat turns of one query: optional system text, each demo as a user/assistant pair, the question."""
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in demos:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}]


def plain_prompt(question: str, demos: Sequence[tuple[str, str]]) -> str:
    """The plain few-shot prompt of one query (base models)."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in demos)
    return f"{shots}Question: {question}\nAnswer:"


@dataclass(frozen=True)
class ModelPrompt:
    """One model's prompt format. `style_source`: "builtin" (the model registry says), or "assumed"."""

    style: str
    stop: list[str] = field(default_factory=list)
    system: str | None = None
    style_source: str = "builtin"


@dataclass(frozen=True)
class Prompts:
    """prompts.json: per model its format, per task its demos."""

    models: dict[str, ModelPrompt]
    demos: dict[str, list[tuple[str, str]]]

    def request(self, model: str, question: str, task: str | None) -> tuple[str, dict[str, Any]]:
        """("chat" or "plain", the body fields) of the trained prompt: `messages`, or `prompt` and `stop`.

        A task the bundle does not know (or none) gets the model's format without demos.
        """
        mp = self.models[model]
        demos = self.demos.get(task or "", [])
        if mp.style == PLAIN:
            return PLAIN, {"prompt": plain_prompt(question, demos), "stop": list(mp.stop)}
        return CHAT, {"messages": chat_messages(question, demos, mp.system)}

    def to_json(self) -> bytes:
        d = {
            "models": {m: vars(p) for m, p in sorted(self.models.items())},
            "demos": {t: [list(x) for x in d] for t, d in sorted(self.demos.items())},
        }
        return (json.dumps(d, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, models: Sequence[str]) -> Prompts:
        d = jsonsafe.loads(raw, PROMPTS_FILE, BundleError, "; re-export the bundle")
        if not isinstance(d, dict) or not isinstance(d.get("models"), dict) or not isinstance(d.get("demos"), dict):
            raise BundleError(f'{PROMPTS_FILE} must hold {{"models": {{...}}, "demos": {{...}}}}; re-export the bundle')
        out: dict[str, ModelPrompt] = {}
        for m, p in d["models"].items():
            if not isinstance(p, dict) or p.get("style") not in STYLES:
                raise BundleError(f"{PROMPTS_FILE}: model {m!r} needs a style, one of {STYLES}")
            stop, system = p.get("stop", []), p.get("system")
            if not _strs(stop) or not (system is None or isinstance(system, str)):
                raise BundleError(f"{PROMPTS_FILE}: model {m!r} stop must be strings and system a string or null")
            out[m] = ModelPrompt(p["style"], list(stop), system, str(p.get("style_source", "builtin")))
        missing = sorted(set(models) - set(out))
        if missing:
            raise BundleError(f"{PROMPTS_FILE} has no prompt format for models {missing}; re-export the bundle")
        demos: dict[str, list[tuple[str, str]]] = {}
        for t, pairs in d["demos"].items():
            if not isinstance(pairs, list) or not all(isinstance(x, list) and len(x) == 2 and _strs(x) for x in pairs):
                raise BundleError(f"{PROMPTS_FILE}: demos of task {t!r} must be [question, answer] string pairs")
            demos[t] = [(q, a) for q, a in pairs]
        return cls(out, demos)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def build_prompts(models: Mapping[str, str], tasks: Mapping[str, Sequence[tuple[str, str]]],
                  assumed: Sequence[str] = ()) -> Prompts:  # fmt: skip
    """Prompts from {model: style} and {task: demos}; `assumed` lists models whose style was not recorded."""
    return Prompts(
        {m: ModelPrompt(s, list(PLAIN_STOP) if s == PLAIN else [], None, "assumed" if m in assumed else "builtin")
         for m, s in models.items()},
        {t: [(str(q), str(a)) for q, a in d] for t, d in tasks.items()},
    )  # fmt: skip
