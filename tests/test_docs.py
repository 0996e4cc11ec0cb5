"""The README's command table stays in step with the Typer app (the docs site's CLI reference is generated)."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from ttc.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_every_ttc_command_and_no_other():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `ttc ([a-z][a-z-]*)`", readme, flags=re.MULTILINE))
    assert listed == set(typer.main.get_command(app).commands)


def test_readme_stays_within_200_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
