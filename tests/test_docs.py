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


SOURCE_PATH = re.compile(
    r"(?<![\w./-])((?:policy|store|collect|train|eval|serve|ttc|scripts|benchmarks|tests)/[\w/.-]*?\.(?:py|sh))\b"
)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_source_file_the_docs_name_exists():
    stale = [
        f"{page.relative_to(ROOT)}: {m.group(1)}"
        for page in _pages()
        for m in SOURCE_PATH.finditer(page.read_text(encoding="utf-8"))
        if not (ROOT / m.group(1)).exists()
    ]
    assert not stale, "pages name files that are gone (moved or renamed?): " + "; ".join(stale)


def test_every_entry_of_the_file_tree_exists():
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    tree = text.split("```")[1]
    entry = re.compile(r"^( *)([\w./*-]+(?:, [\w./*-]+)*)(?:\s|$)")
    parents: list[str] = []
    checked, missing = 0, []
    for line in tree.splitlines():
        m = entry.match(line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        parents = parents[:depth]
        for name in m.group(2).split(", "):
            path = "".join(parents) + name
            checked += 1
            if not any(ROOT.glob(path.rstrip("/"))):
                missing.append(path)
        if m.group(2).endswith("/"):
            parents.append(m.group(2))
    assert checked > 50
    assert not missing, "docs/layout.md lists files that are gone: " + ", ".join(missing)
