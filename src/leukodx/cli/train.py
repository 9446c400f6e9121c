"""`leukodx train classify|segment`: the commands live in train_classify.py and train_segment.py."""

from __future__ import annotations

import typer

from leukodx.cli._common import register_plugins

app = typer.Typer(help="Train a classifier or a segmenter; writes a model directory and its metrics.",
                  no_args_is_help=True)

register_plugins(app, ("leukodx.cli.train_classify", "leukodx.cli.train_segment"))
