"""MkDocs hooks: the generated CLI reference must hold every command of the Typer app.

mkdocs-typer2 renders the reference by running `typer ttc.cli utils docs`; if that command fails
(for instance `typer` is not on PATH) the plugin leaves the section empty without a warning. This
hook turns an incomplete reference into a build error, so `mkdocs build --strict` catches it.
"""

from __future__ import annotations

from mkdocs.exceptions import PluginError


def on_page_content(html: str, page, **_kwargs) -> str:
    if page.file.src_uri != "cli.md":
        return html
    import typer.main

    from ttc.cli import app

    commands = sorted(typer.main.get_command(app).commands)
    missing = [name for name in commands if f"ttc {name}</code>" not in html]
    if missing:
        raise PluginError(
            f"docs/cli.md: the generated CLI reference lacks {', '.join(missing)}; "
            "is `typer` (.venv/bin) on PATH for mkdocs-typer2?"
        )
    return html
