"""`ttc serve`'s options, checked before the bundle loads and before anything binds a port.

Each check names the option and the range it takes, so a bad value is a one-line
`UsageError` (exit 2) instead of a proxy that starts with a timeout of NaN, a
window of -1, or a crash inside uvicorn's start-up. `create_app` runs the same
checks, so the Python API refuses what the command refuses. Never imports
fastapi or uvicorn.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from policy.errors import UsageError


def _finite(name: str, value: Any, low: float, low_ok: bool, what: str) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or value < low or (value == low and not low_ok):
        sign = ">=" if low_ok else ">"
        raise UsageError(f"{name} must be a finite number {sign} {low:g} ({what}), got {value!r}")


def _count(name: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1 ({what}), got {value!r}")


def check_app_options(
    lam: float | None = None,
    budget_j: float | None = None,
    budget_window: int = 64,
    timeout_s: float = 120.0,
    max_body_bytes: int = 1 << 20,
    max_accuracy_loss: float | None = None,
    **_: Any,
) -> None:
    """Refuse a price, budget or limit the proxy cannot run with; other keyword options pass through."""
    if lam is not None:
        _finite("--lam", lam, 0.0, True, "accuracy per joule")
    if budget_j is not None:
        _finite("--budget-j", budget_j, 0.0, False, "mean predicted joules per request")
    if max_accuracy_loss is not None:
        _finite("--max-accuracy-loss", max_accuracy_loss, 0.0, True, "accuracy, 0.01 = one point")
    _count("--budget-window", budget_window, "requests")
    _finite("--timeout-s", timeout_s, 0.0, False, "seconds")
    _count("--max-body-bytes", max_body_bytes, "bytes")


def check_listen(host: str, port: int) -> None:
    """Refuse a port outside 1-65535 and a host that names no address here, before the bundle loads."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"--port must be from 1 to 65535, got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise UsageError(f"--host must name an address to listen on (e.g. 127.0.0.1), got {host!r}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host!r} names no address to listen on ({exc})") from exc
