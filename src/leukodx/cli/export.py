"""`leukodx export onnx` (command in export_onnx.py)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Export models (ONNX, optional int8).", no_args_is_help=True)

for _mod in ("leukodx.cli.export_onnx",):
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != _mod:
            raise
