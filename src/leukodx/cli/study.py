"""`leukodx study classify|segment`: the commands live in study_classify.py and study_segment.py."""

from __future__ import annotations

import typer

from leukodx.cli._common import register_plugins

app = typer.Typer(help="The reference study's comparisons: mean ± std over seeds, a table and plots.",
                  no_args_is_help=True)

register_plugins(app, ("leukodx.cli.study_classify", "leukodx.cli.study_segment"))
