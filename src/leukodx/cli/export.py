"""`leukodx export onnx` (command in export_onnx.py)."""

from __future__ import annotations

import typer

from leukodx.cli._common import register_plugins

app = typer.Typer(help="Export models (ONNX, optional int8).", no_args_is_help=True)

register_plugins(app, ("leukodx.cli.export_onnx",))
