"""Shared pieces of the command line."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def register_plugins(app, modules: tuple[str, ...]) -> None:
    """Call `register(app)` of each command module; a module not written yet is skipped, other errors raise."""
    import importlib

    for mod in modules:
        try:
            importlib.import_module(mod).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
