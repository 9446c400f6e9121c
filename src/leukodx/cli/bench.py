"""`leukodx bench` (see DESIGN.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
