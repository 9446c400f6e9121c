"""`leukodx demo`: inspect -> split -> train -> evaluate -> export -> predict on synthetic smears, with no
download, in a few minutes on a laptop CPU. The models it trains show the pipeline; they are not for diagnosis."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's data, models and results."),
        per_class: int = typer.Option(24, help="Synthetic fields per class."),
        size: int = typer.Option(96, help="Field size in pixels."),
        epochs: int = typer.Option(4, help="Training epochs for both models."),
    ) -> None:
        """Run inspect, split, train, evaluate, export and predict on synthetic smears (no download needed)."""
        run_demo(lambda args: _run(app, args), out, per_class, size, epochs)


def _run(app: typer.Typer, args: list[str]) -> None:
    console.rule(f"[bold]leukodx {' '.join(args)}")
    try:
        app(args=args, prog_name="leukodx", standalone_mode=False)
    except SystemExit as exc:  # a sub-command that exits non-zero stops the demo
        if exc.code not in (0, None):
            raise


def run_demo(_run, out: Path, per_class: int, size: int, epochs: int) -> None:
    """The pipeline end to end on synthetic smears; `_run(args)` runs one leukodx command."""
    from leukodx.data.synthetic import make_synthetic_dataset

    data = out / "data"
    console.print(f"Writing {4 * per_class} synthetic smear fields to {data}")
    make_synthetic_dataset(data, per_class=per_class, size=size, seed=0)
    split = out / "split.csv"
    _run(["data", "inspect", str(data)])
    _run(["data", "split", str(data), "--strategy", "sgdc", "--val", "0.2", "--test", "0.2", "--out", str(split)])
    common = ["--data", str(data), "--split", str(split), "--image-size", str(size), "--epochs", str(epochs)]
    _run(["train", "classify", *common, "--arch", "smearnet", "--out", str(out / "classifier")])
    _run(["train", "segment", *common, "--arch", "unet", "--base-channels", "8", "--out", str(out / "segmenter")])
    _run(["evaluate", "--data", str(data), "--split", str(split), "--model", str(out / "classifier"),
          "--model", str(out / "segmenter"), "--out", str(out / "evaluation")])
    for m in ("classifier", "segmenter"):
        _run(["export", "onnx", "--model", str(out / m), "--out", str(out / m / "model.onnx")])
    _run(["predict", str(data / "Original" / "Pro"), "--classifier", str(out / "classifier"),
          "--segmenter", str(out / "segmenter"), "--out", str(out / "predictions")])
    console.rule("[bold green]done")
    console.print(f"Report: {out / 'evaluation' / 'report.html'}\nPredictions: {out / 'predictions' / 'predictions.csv'}")
