"""Shared pieces of the command line."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def write_json(obj, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
    return path


def register_plugins(app, modules: tuple[str, ...]) -> None:
    """Call `register(app)` of each command module; a module not written yet is skipped, other errors raise."""
    import importlib

    for mod in modules:
        try:
            importlib.import_module(mod).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
