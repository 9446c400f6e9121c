"""`leukodx study` (see DESIGN.md)."""

from __future__ import annotations

import typer

app = typer.Typer(help="study", no_args_is_help=True)
