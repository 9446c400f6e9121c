"""`leukodx adapt --data FOLDER --out DIR`: model directories adapted to a lab's own stain (leukodx.deploy.adapt)."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console, err_console
from leukodx.errors import LeukodxError


def register(app: typer.Typer) -> None:
    @app.command("adapt")
    def adapt_cmd(
        data: Path = typer.Option(None, "--data", help="Folder of the lab's own ordinary smear fields, unlabelled "
                                  "(JPEG, PNG, TIFF or BMP; searched recursively). A few hundred is best."),
        out: Path = typer.Option(..., "--out", help="Output folder: DIR/classifier and DIR/segmenter."),
        classifier: Path = typer.Option(None, "--classifier", help="Classifier model directory (default: bundled)."),
        segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter model directory (default: bundled)."),
        max_images: int = typer.Option(500, "--max-images", min=1, help="At most this many fields are used."),
        strength: float = typer.Option(1.0, "--strength", min=0.0, max=1.0,
                                       help="Stain normalisation strength: 0 = none, 1 = full."),
        threads: int = typer.Option(None, "--threads", help="CPU threads per model call (default: all)."),
        cells: Path = typer.Option(None, "--cells", help="Instead of --data: the lab's LABELLED cells, DIR/<class>/"
                                   "*.jpg (each image centred on its cell; classes: the cell model's or non_blast), "
                                   "optional DIR/cases.csv (file,case). Writes OUT/cells and a commissioning report."),
        from_db: str = typer.Option(None, "--from-db", help="Also or instead of --cells: the cells reviewers classed "
                                    "in signed-off cases of the web app's database (its --db: a SQLite file or a URL; "
                                    "images beside a SQLite file, else in $LEUKODX_FILES_DIR)."),
        um_per_px: str = typer.Option(None, "--um-per-px", help="With --cells: micrometres per image pixel."),
        min_sensitivity: float = typer.Option(0.90, "--min-sensitivity", min=0.0, max=1.0),
        min_specificity: float = typer.Option(0.90, "--min-specificity", min=0.0, max=1.0),
        kinds_only: bool = typer.Option(False, "--kinds-only", help="With --cells and no blasts: adapt the cell "
                                        "kinds only (P(blast) stays the bundled model's; blast figures not measured)."),
    ) -> None:
        """Adapt to this lab: its stain from UNLABELLED fields (--data), its cells from LABELLED cells (--cells).

        --data: a stain normalisation onto the training fields' colours, and the out-of-distribution threshold
        raised (never lowered) so far that the lab's ordinary fields are not flagged: OUT/classifier, OUT/segmenter.
        --cells and/or --from-db: a head on the cell model's features, OUT/cells, and a commissioning report
        (cross-validated blast sensitivity and specificity beside the bundled model's): `serve --cells OUT/cells`."""
        if (data is None) == (cells is None and from_db is None):
            raise LeukodxError("Give either --data (unlabelled fields) or --cells and/or --from-db (labelled cells).",
                               "See `leukodx adapt --help`.")
        if data is None:
            return _commission(cells, from_db, out, um_per_px, min_sensitivity, min_specificity, kinds_only)
        from leukodx.deploy.adapt import adapt_models

        with console.status(f"adapting to {data} ...") as status:
            rep = adapt_models(data, out, classifier_dir=classifier, segmenter_dir=segmenter,
                               max_images=max_images, strength=strength, threads=threads,
                               progress=lambda msg: status.update(msg))
        skipped = rep["unreadable"] + rep["not_smear"]
        if skipped:
            err_console.print(f"left out {len(skipped)} image(s): " + "; ".join(skipped[:5])
                              + (" ..." if len(skipped) > 5 else ""), highlight=False)
        if len(rep["not_smear"]) > 0.05 * max(rep["n_read"], 1):
            err_console.print(f"[yellow]note:[/] the smear check rejects {len(rep['not_smear'])} of the lab's "
                              f"{rep['n_read']} readable field(s); adapting does not change it (it does not look at "
                              "colour). Check that these are ordinary stained smear fields at 100x.", highlight=False)
        src, tgt = rep["stain"]["source"], rep["stain"]["target"]
        console.print(f"{rep['n_used']} of {rep['n_found']} field(s) used; stain (optical density R,G,B) mean "
                      f"{_fmt(src['mean'])} -> training {_fmt(tgt['mean'])}, std {_fmt(src['std'])} -> "
                      f"{_fmt(tgt['std'])}", highlight=False)
        ood = rep["ood"]
        if "threshold" in ood:
            console.print(f"out-of-distribution threshold {ood['trained_threshold']:.3g} -> {ood['threshold']:.3g}"
                          f"{' (capped)' if ood['capped'] else ''}; the lab's fields flagged: "
                          f"{ood['lab_flagged_as_is_trained_threshold']:.1%} before, "
                          f"{ood['lab_flagged_normalised_adapted_threshold']:.1%} after", highlight=False)
        console.print(f"[green]written[/] {rep['classifier']} and {rep['segmenter']}; use them with: leukodx "
                      f"predict FIELDS --out RESULTS --classifier {rep['classifier']} --segmenter {rep['segmenter']}",
                      highlight=False)


def _commission(cells: Path | None, from_db: str | None, out: Path, um_per_px: str | None, min_sens: float,
                min_spec: float, kinds_only: bool) -> None:
    from leukodx.deploy.commission import commission_cells
    from leukodx.inference.scale import check_um_per_px

    um = None if um_per_px is None else check_um_per_px(um_per_px)
    more = None
    if from_db:
        from leukodx.web.adapt import labelled_crops
        from leukodx.web.db import open_database
        from leukodx.web.settings import Settings

        if "://" not in from_db and not Path(from_db).is_file():
            raise LeukodxError(f"There is no database {from_db}.", "Give the --db that `leukodx serve` uses.")
        settings = Settings(database_url=from_db)
        more = labelled_crops(open_database(settings.database_url)[1], settings.resolved_files_dir())
    with console.status("commissioning ...") as status:
        rep = commission_cells(cells, out, um_per_px=um, min_sensitivity=min_sens, min_specificity=min_spec,
                               kinds_only=kinds_only, progress=lambda msg: status.update(msg), from_db=more)
    console.print(f"{rep['n_cells']} cells, {rep['n_folds']}-fold cross-validation, {rep['seconds']} s. "
                  f"{rep['recommendation']}", highlight=False)
    console.print(f"[green]written[/] {out}/cells, {out}/commissioning.json and {out}/commissioning.html; use it "
                  f"with: leukodx predict FIELDS --out RESULTS --cells {out}/cells", highlight=False)


def _fmt(v: list[float]) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"
