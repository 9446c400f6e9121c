"""`leukodx predict PATH... --out DIR` (see DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console, err_console


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
        out: Path = typer.Option(..., "--out", help="Output folder: predictions.csv, predictions.json, PNGs."),
        classifier: Path = typer.Option(None, "--classifier", help="Classifier model directory (default: bundled)."),
        segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter model directory (default: bundled)."),
        heatmap: bool = typer.Option(True, "--heatmap/--no-heatmap", help="Heat-map PNGs (class activation maps of the called class)."),
        workers: int = typer.Option(2, "--workers", min=1, max=64, help="Threads that read images and write PNGs."),
        engine: str = typer.Option("onnx", "--engine", help="onnx (ONNX Runtime), onnx-int8 or torch (eager)."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, max=512, help="Fields per model call."),
        threads: int = typer.Option(None, "--threads", help="CPU threads per model call (default: all)."),
        overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlay PNGs."),
        save_masks: bool = typer.Option(False, "--save-masks", help="Also write DIR/masks/<field>_cells.png (16-bit "
                                        "instance labels, 0 = background) and <field>_nucleus.png (0/255)."),
        um_per_px: str = typer.Option(None, "--um-per-px", help="The camera's calibration, micrometres per image "
                                      "pixel: used instead of the scale estimated from each image."),
        cells: Path = typer.Option(None, "--cells", help="Cell-type model directory (default: bundled), e.g. "
                                   "OUT/cells of `leukodx adapt --cells`."),
    ) -> None:
        """Analyse smear fields: class, calibrated confidence, malignant probability, cells counted, flag.

        Writes DIR/predictions.csv (path,label,confidence,malignant_probability,cell_count,flag,overlay, then
        extra columns), DIR/predictions.json (every field + the case summary), overlay and heat-map PNGs.
        An unreadable file becomes a row with flag `unreadable`; the batch goes on."""
        from leukodx.inference.predict import run_predict
        from leukodx.inference.scale import check_um_per_px
        from leukodx.models.eager import load_eager

        um = None if um_per_px is None else check_um_per_px(um_per_px)  # a bad value: one line, before any work
        res = run_predict(paths, out, classifier_dir=classifier, segmenter_dir=segmenter, heatmap=heatmap,
                          workers=workers, engine=engine, batch_size=batch_size, threads=threads,
                          overlays=overlays, console=console, eager=load_eager, save_masks=save_masks,
                          um_per_px=um, cells_dir=cells)
        case = res["case"]
        flags = ", ".join(f"{n} {f}" for f, n in case["flags"].items() if n)
        console.print(f"[green]{res['n_fields']} field(s)[/] -> {res['csv']} ({flags})")
        if res["skipped"]:
            shown = ", ".join(res["skipped"][:5]) + (" ..." if len(res["skipped"]) > 5 else "")
            err_console.print(f"skipped {len(res['skipped'])} file(s) without an image extension: {shown}",
                              highlight=False)
        if case["label"] is not None:
            console.print(f"case: {case['label']} ({case['confidence']:.0%}), malignant probability "
                          f"{case['malignant_probability']:.2f}, {case['total_cell_count']} cells in "
                          f"{case['n_analysed']} field(s)" + (" - [yellow]needs review[/]: " + "; ".join(
                              case["reasons"]) if case["needs_review"] else ""), highlight=False)
