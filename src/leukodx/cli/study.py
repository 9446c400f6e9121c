"""`leukodx study classify|segment`: the commands live in study_classify.py and study_segment.py."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="The reference study's comparisons: mean ± std over seeds, a table and plots.",
                  no_args_is_help=True)

for _mod in ("leukodx.cli.study_classify", "leukodx.cli.study_segment"):
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != _mod:
            raise
