"""The one live progress line per stage (store/progress.py)."""

from __future__ import annotations

import io

import store.progress as progress
from store.progress import ProgressLine, clock


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_whole_line_for_a_short_stage_with_counts_rate_and_time():
    out = io.StringIO()
    line = ProgressLine("collect", stream=out, eta_by="samples")
    for k in range(1, 5):
        line.update([("queries", k, 4), ("samples", 9 * k, 36)], "12.5 tok/s", force=True)
    line.finish([("queries", 4, 4), ("samples", 36, 36)], "12.5 tok/s")
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text
    assert text.startswith("collect  queries 4/4  samples 36/36  12.5 tok/s  0:00:0")


def test_a_log_hears_from_a_long_stage_every_interval(monkeypatch):
    out, now = io.StringIO(), [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    line = ProgressLine("train", stream=out, eta_by="trials")
    for k in range(1, 91):
        now[0] = 2.0 * k  # 2 s a trial: 180 s in all
        line.update([("trials", k, 90)])
    line.finish([("trials", 90, 90)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 180 // progress.LOG_EVERY_S  # at 30, 60, ..., 150 s, then the closing line
    assert lines[0] == "train  trials 15/90  0:00:30  ETA 0:02:30"  # elapsed x (1 - share) / share
    assert lines[-1] == "train  trials 90/90  0:03:00"


def test_a_terminal_line_is_rewritten_in_place_and_ends_with_one_newline():
    out = _Tty()
    line = ProgressLine("eval", stream=out)
    line.update([("folds", 1, 5)], force=True)
    line.update([("folds", 2, 5)], force=True)
    line.finish([("folds", 5, 5)])
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "eval  folds 5/5" in text.rsplit("\r", 1)[-1]


def test_disabled_prints_nothing_and_the_clock_reads_hours():
    out = io.StringIO()
    line = ProgressLine("collect", enabled=False, stream=out)
    line.update([("queries", 1, 2)], force=True)
    line.finish([("queries", 2, 2)])
    assert out.getvalue() == ""
    assert clock(3725.4) == "1:02:05" and clock(-1) == "0:00:00"


def test_a_log_says_all_done_once_even_when_the_interval_falls_on_the_last_step(monkeypatch):
    out, now = io.StringIO(), [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    line = ProgressLine("collect", stream=out, eta_by="samples")
    now[0] = 40.0
    line.update([("queries", 2, 2), ("samples", 18, 18)], "9.0 tok/s", note="gemma3-270m")
    line.finish([("queries", 2, 2), ("samples", 18, 18)], "9.0 tok/s")
    assert out.getvalue() == "collect  queries 2/2  samples 18/18  9.0 tok/s  0:00:40\n"
