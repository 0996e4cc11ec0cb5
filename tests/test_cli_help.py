"""`ttc --help` without a terminal: Typer's panels at the project's width, not rich's 80-column fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main

from ttc.cli import HELP_WIDTH_WITHOUT_TERMINAL, app


def _help(env_extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-m", "ttc", "--help"], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return out.stdout.splitlines()


@pytest.mark.parametrize(("env_extra", "width"), [({}, HELP_WIDTH_WITHOUT_TERMINAL), ({"COLUMNS": "100"}, 100)])
def test_help_without_a_terminal_fills_the_chosen_width_and_keeps_short_summaries_on_one_line(env_extra, width):
    lines = _help(env_extra)
    panel_borders = [line for line in lines if line.startswith("╭─ Commands")]
    assert [len(line) for line in panel_borders] == [width]
    assert max(len(line) for line in lines) == width
    # every command summary that fits beside its name at this width is printed whole, on one line
    for name, command in typer.main.get_command(app).commands.items():
        summary = " ".join((command.help or "").split("\n\n")[0].split())
        if len(summary) <= width - 16:
            assert any(name in line and summary in line for line in lines), (name, summary)
