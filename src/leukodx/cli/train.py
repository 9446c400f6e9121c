"""`leukodx train classify|segment`: the commands live in train_classify.py and train_segment.py."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Train a classifier or a segmenter; writes a model directory and its metrics.",
                  no_args_is_help=True)

for _mod in ("leukodx.cli.train_classify", "leukodx.cli.train_segment"):
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != _mod:
            raise
