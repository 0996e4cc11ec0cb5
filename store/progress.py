"""One live progress line per stage: counts done of total, a rate, elapsed time and an ETA.

On a terminal the line is rewritten in place (at most every `TTY_EVERY_S`, or at
once when forced); in a log (no terminal) it is printed as a whole line every
`LOG_EVERY_S` at most, so a long stage still says it is alive, and once when the
stage ends: a stage shorter than that prints exactly one line. Written
to stderr, so a command's results on stdout stay clean. The standard library
only: collect, train and eval all use it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

TTY_EVERY_S = 0.25
LOG_EVERY_S = 30.0


def clock(seconds: float) -> str:
    """H:MM:SS."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLine:
    """`stage  queries 3/12  samples 27/108  14.2 tok/s  0:01:02  ETA 0:03:05`.

    `counts` are (name, done, total) in display order; the ETA comes from the
    `eta_by` count's share done (the elapsed time scaled to the rest). `enabled`
    False prints nothing.
    """

    def __init__(self, stage: str, enabled: bool = True, stream: TextIO | None = None, eta_by: str = "") -> None:
        self.stage = stage
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.eta_by = eta_by
        self.t0 = time.perf_counter()
        self._last = self.t0 if not self.tty else -1e9
        self._text = ""
        self._shown = ""

    def update(self, counts: list[tuple[str, int, int]], rate: str = "", note: str = "", force: bool = False) -> None:
        self._text = self._format(counts, rate, note)
        now = time.perf_counter()
        if not self.tty and counts and all(d == t for _, d, t in counts):
            return  # all done: in a log the stage's closing line (`finish`) says it once
        if (force and self.tty) or now - self._last >= (TTY_EVERY_S if self.tty else LOG_EVERY_S):
            self._show()
            self._last = now

    def finish(self, counts: list[tuple[str, int, int]] | None = None, rate: str = "", note: str = "") -> None:
        """Print the final state as a whole line (always, on a terminal and in a log)."""
        if counts is not None:
            self._text = self._format(counts, rate, note, final=True)
        if not self.enabled or not self._text:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self._text + "\n")
        elif self._text != self._shown:
            self.stream.write(self._text + "\n")
        self.stream.flush()
        self._shown = ""
        self._text = ""

    def _show(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self._text)
        else:
            self.stream.write(self._text + "\n")
        self.stream.flush()
        self._shown = self._text

    def _format(self, counts: list[tuple[str, int, int]], rate: str, note: str, final: bool = False) -> str:
        elapsed = time.perf_counter() - self.t0
        parts = [self.stage] + [f"{name} {done}/{total}" for name, done, total in counts]
        parts += [rate] if rate else []
        parts.append(clock(elapsed))
        if not final:
            share = next((d / t for n, d, t in counts if n == self.eta_by and t > 0), None)
            if share is None and counts and counts[0][2] > 0:
                share = counts[0][1] / counts[0][2]
            parts.append(f"ETA {clock(elapsed * (1 - share) / share)}" if share else "ETA -:--:--")
        parts += [note] if note else []
        return "  ".join(parts)
