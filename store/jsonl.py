"""Reading a user's JSONL file: one JSON object per line, errors that name the line.

Shared by the user task files (`jsonl:PATH`) and `ttc allocate`'s query files;
each caller checks its own fields. The file must be UTF-8 (a BOM on the first
line is tolerated). Lines are parsed by policy/jsonsafe.py (bounded depth, finite
numbers); never writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from policy import jsonsafe
from policy.errors import UsageError


def read_jsonl(path: str | Path, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; `expected` names the fields in messages."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"file {str(p)!r} not found; give a JSONL file of {expected} lines")
    with open(p, "rb") as f:  # bytes, so a bad byte is reported with its line instead of a traceback
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"{p} line {lineno}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from e
            if not line.strip():
                continue
            row = jsonsafe.loads(line, f"{p} line {lineno}")
            if not isinstance(row, dict):
                raise UsageError(f"{p} line {lineno}: expected a JSON object with {expected}")
            yield lineno, row
