"""An engine model name, `openai:MODEL@URL`, parsed: what the model registry, the config and the
engine client share (collect/engine.py talks to the engine). The standard library and policy.errors only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlparse

from policy.errors import UsageError

PREFIX = "openai:"


@dataclass(frozen=True)
class EngineRef:
    model: str  # the name the engine knows
    base_url: str  # its /v1 base

    @property
    def label(self) -> str:
        """The stored model name: arm ids are split on "/"."""
        return self.model.replace("/", "--")

    @property
    def loopback(self) -> bool:
        host = urlparse(self.base_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def parse_engine(name: str) -> EngineRef | None:
    """`openai:MODEL@URL` as an `EngineRef`; None for any other model name."""
    if not name.startswith(PREFIX):
        return None
    model, sep, url = name[len(PREFIX) :].rpartition("@")
    url = url.strip().rstrip("/")
    if not sep or not model.strip() or not url.startswith(("http://", "https://")):
        raise UsageError(f"model {name!r} must be openai:MODEL@URL, e.g. openai:smollm2@http://127.0.0.1:8080/v1")
    return EngineRef(model.strip(), url)


def stored_name(name: str) -> str:
    """The `model` a config name is stored under (the engine's label, or the name itself)."""
    ref = parse_engine(name)
    return ref.label if ref else name
