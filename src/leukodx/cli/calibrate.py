"""`leukodx calibrate --model RUN --data DATA [--split S] [--cell-agreement | --post-processing]`: the fits that
ship, on validation data only, written into RUN/config.json.

    leukodx calibrate --model src/leukodx/assets/classifier --data ../shared/data/all-taleqani \\
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --cell-agreement
    leukodx calibrate --model src/leukodx/assets/segmenter --data ../shared/data --split benchmarks/splits \\
        --post-processing [--crop]
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leukodx.cli._common import console


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        model: Path = typer.Option(..., "--model", help="Model directory to (re)calibrate in place."),
        data: Path = typer.Option(..., "--data", help="DATA folder (public or flat layout); with "
                                  "--post-processing the folder holding raabin-fields/, pbc/, all-taleqani/ and chula-wbc/."),
        split: Path = typer.Option(None, "--split", help="Split CSV: train fits the OOD check, val the rest; with "
                                   "--post-processing the folder of the sources' split files."),
        max_images: int = typer.Option(2000, "--max-images", help="At most this many training fields for OOD."),
        ood_only: bool = typer.Option(False, "--ood-only", help="Refit only the out-of-distribution checks; keep "
                                      "the temperature and low-confidence threshold from training."),
        cell_agreement: bool = typer.Option(False, "--cell-agreement", help="Instead: choose a classifier's "
                                            "cell_agreement rule on the val rows of --split (with the bundled "
                                            "segmenter and cell model, or --segmenter)."),
        segmenter: Path = typer.Option(None, "--segmenter", help="--cell-agreement: segmenter model directory."),
        max_flagged: float = typer.Option(0.05, "--max-flagged", help="--cell-agreement: at most this share of "
                                          "the val fields flagged."),
        post_processing: bool = typer.Option(False, "--post-processing", help="Instead: choose a two-output "
                                             "segmenter's mask threshold, nucleus rule and cell splitting on the "
                                             "val parts of the sources under --data."),
        crop: bool = typer.Option(False, "--crop", help="--post-processing: fit the crop segmenter's (the model "
                                  "for images a leukocyte fills, in MODEL's crop_segmenter folder) instead."),
        max_raabin: int = typer.Option(0, "--max-raabin", help="--post-processing: Raabin val fields (0: all)."),
        max_pbc: int = typer.Option(240, "--max-pbc", help="--post-processing: PBC val crops (0: all)."),
        max_taleqani: int = typer.Option(120, "--max-taleqani", help="--post-processing: Taleqani val fields."),
        report: Path = typer.Option(None, "--report", help="Also write the fit's report (every candidate) here."),
    ) -> None:
        """Refit temperature, low-confidence threshold and the out-of-distribution check on validation data,
        and store them in RUN/config.json. Re-export ONNX afterwards is not needed (the file is unchanged).
        With --cell-agreement or --post-processing, choose that rule instead."""
        from leukodx.deploy import calibrate as cal

        def log(line: str) -> None:
            console.print(line, highlight=False)

        if cell_agreement or post_processing:
            if cell_agreement and post_processing or split is None:
                raise typer.BadParameter("Give one of --cell-agreement and --post-processing, with --split.")
            with console.status(f"choosing on the validation parts of {data} ..."):
                rep = (cal.fit_cell_agreement(model, data, split, segmenter, max_flagged, log=log) if cell_agreement
                       else cal.fit_post_processing(model, data, split, max_raabin, max_pbc, max_taleqani, log=log,
                                                      crop=crop))
            if report:
                report.parent.mkdir(parents=True, exist_ok=True)
                report.write_text(json.dumps(rep, indent=2))
            log(f"chosen: {json.dumps(rep['chosen'])}; written to {Path(rep['model']) / 'config.json'}")
            return
        with console.status(f"calibrating {model} on {data} ..."):
            rep = cal.calibrate_model(model, data, split, max_images=max_images, ood_only=ood_only)
        console.print(f"fields: {rep['n_train']} train (OOD fit), {rep['n_val']} validation; {rep['division']}",
                      highlight=False)
        console.print(f"temperature {rep['temperature']:.3f}; low_confidence threshold {rep['low_confidence']:.3f} "
                      f"(flags {rep['val_flagged_low_confidence']:.1%} of validation fields; accuracy "
                      f"{rep['val_accuracy']:.2%} overall)")
        console.print(f"OOD thresholds: feature distance {rep['ood_feature_threshold']:.3g}, image statistics "
                      f"{rep['ood_stats_threshold']:.3g}; written to {model / 'config.json'}")
