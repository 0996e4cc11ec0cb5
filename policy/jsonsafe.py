"""The one parser of untrusted JSON, JSONL lines and TOML: bounded depth, finite numbers, one clean error.

Every bundle file, allocate input line, collect config, HTTP body and `x-ttc`
header is parsed here, so one set of limits holds everywhere:

- nesting deeper than `MAX_DEPTH` levels is refused *before* parsing (a
  bracket count outside strings), so no parser, digest or encoder further on
  can hit Python's recursion limit;
- numbers must be finite and fit a float: `NaN`/`Infinity`, `1e400` and an
  integer of 400 digits are refused, so no `float(x)` later raises
  `OverflowError` and no 5,000-digit integer reaches `int()`;
- anything else the parser rejects (bad UTF-8, bad syntax) becomes the same
  one-line error, of the class the caller names (`UsageError` for user files
  and requests, `BundleError` for bundle files).

It never raises anything but that error. Standard library and numpy only
(policy/ is the lowest layer; store, collect and serve import this).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any

from policy.errors import TTCError, UsageError

#: deepest nesting of arrays/objects (TOML: arrays/tables) accepted; real files of ours nest < 10 levels
MAX_DEPTH = 64
#: digits of the longest integer accepted (a float holds at most ~1.8e308)
MAX_INT_DIGITS = 309

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class _Refused(ValueError):
    """Raised inside a parse hook; turned into the caller's error class by `loads`."""


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise _Refused(f"the number {_clip(s)} is not finite (or overflows a float)")
    return v


def _int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"the integer {_clip(s)} ({len(s)} digits) is out of range")
    v = int(s)
    _check_int(v, s)
    return v


def _check_int(v: int, text: str | None = None) -> None:
    try:
        float(v)
    except OverflowError:
        raise _Refused(f"the integer {_clip(text or str(v))} is out of range (it overflows a float)") from None


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a finite number")


def _clip(s: str) -> str:
    return s if len(s) <= 24 else f"{s[:12]}...{s[-6:]}"


def json_depth(text: str) -> int:
    """The deepest nesting of `[`/`{` outside JSON strings (a bracket count; the text need not be valid)."""
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    import numpy as np

    b = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((b == ord("[")) | (b == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def loads(
    data: str | bytes | bytearray,
    what: str,
    error: type[TTCError] = UsageError,
    hint: str = "",
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse JSON text (one document or one JSONL line) from an untrusted source; `error` for anything wrong.

    `what` names the source in the message ("policy.json", "input.jsonl line 3"); `hint` (e.g.
    "; re-export the bundle") is appended to it.
    """
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (bad byte at offset {exc.start}){hint}") from exc
    # counted before parsing only when it could matter: a short text cannot nest deeper
    if len(text) > max_depth and (depth := json_depth(text)) > max_depth:
        raise error(f"{what}: nested {depth} levels deep, more than the {max_depth} accepted{hint}")
    try:
        return json.loads(text, parse_float=_float, parse_int=_int, parse_constant=_constant)
    except _Refused as exc:
        raise error(f"{what}: {exc}{hint}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){hint}") from exc
    except (ValueError, RecursionError, OverflowError) as exc:  # a backstop: the checks above should catch these
        raise error(f"{what}: not valid JSON ({type(exc).__name__}){hint}") from exc


def loads_toml(data: str | bytes, what: str, error: type[TTCError] = UsageError, max_depth: int = MAX_DEPTH) -> dict:
    """Parse TOML text from an untrusted source with the same limits as `loads`; `error` for anything wrong."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from exc
    # no bracket count here (TOML has table headers and literal strings); the parser is pure Python, so a
    # RecursionError is caught cleanly, and the walk below bounds the depth of what it returns
    try:
        doc = tomllib.loads(text, parse_float=_float)
        _check_tree(doc, max_depth)
    except _Refused as exc:
        raise error(f"{what}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"malformed {what} (TOML): {exc}") from exc
    except RecursionError as exc:
        raise error(f"{what}: nested more than {max_depth} levels deep") from exc
    except (ValueError, OverflowError) as exc:  # e.g. an integer past Python's digit limit
        raise error(f"malformed {what} (TOML, {type(exc).__name__}: {str(exc)[:80]})") from exc
    return doc


def _check_tree(doc: Any, max_depth: int) -> None:
    """Walk a parsed document without recursion: integers fit a float, nesting within `max_depth`."""
    stack = [(doc, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth >= max_depth:
                raise _Refused(f"nested more than {max_depth} levels deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, int) and not isinstance(v, bool):
            _check_int(v)
