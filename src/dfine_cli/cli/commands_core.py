"""Top-level commands: predict, export, info, weights."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the core commands to ``app``."""
