"""`leukodx train cells`: train the cell-type classifier (blast, lymphocyte, ..., not_leukocyte) on crops from
PBC, Taleqani and Raabin; writes a model directory with its ONNX export."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console, err_console

SPLITS = Path("benchmarks/splits")  # the split files' folder, run from the repository (leukodx.data.sources names them)
EXAMPLE = (
    "Example:\n\n"
    "  leukodx train cells --pbc ../shared/data/pbc --taleqani ../shared/data/all-taleqani "
    "--raabin ../shared/data/raabin-fields --time-limit-min 16 --out runs/cells"
)


def _default_split(given: Path | None, source: str) -> Path | None:
    from leukodx.data.sources import split_path

    if given is not None:
        return given
    p = split_path(source, SPLITS)
    return p if p.is_file() else None


def register(app: typer.Typer) -> None:
    @app.command("cells", help="Train the cell-type classifier (a crop per cell at the red-cell scale; weak "
                 "Taleqani labels cleaned by a first model) and export it to ONNX.\n\n" + EXAMPLE)
    def cells(
        pbc: Path = typer.Option(..., "--pbc", help="PBC folder: <class>/*.jpg for basophil, eosinophil, "
                                 "erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet."),
        taleqani: Path = typer.Option(..., "--taleqani", help="Taleqani folder: Original/<class>/ and "
                                      "Segmented/<class>/ (Benign, Early, Pre, Pro)."),
        out: Path = typer.Option(..., "--out", help="Run / model directory to write."),
        raabin: Path | None = typer.Option(None, "--raabin", help="Raabin fields folder (images/, labels/): red "
                                           "cells and platelets as not_leukocyte, leukocyte boxes."),
        pbc_split: Path | None = typer.Option(None, "--pbc-split", help="PBC split CSV. \\[default: "
                                              "benchmarks/splits/pbc-seed0.csv when present, else the same rule]"),
        taleqani_split: Path | None = typer.Option(None, "--taleqani-split", help="Taleqani split CSV (by field). "
                                                   "\\[default: benchmarks/splits/taleqani-sgdc-seed0.csv]"),
        raabin_split: Path | None = typer.Option(None, "--raabin-split", help="Raabin split CSV. \\[default: "
                                                 "benchmarks/splits/raabin-fields-seed0.csv when present]"),
        chula: Path | None = typer.Option(None, "--chula", help="Chulalongkorn fields folder (images/, typed YOLO "
                                          "boxes in labels/, fields.csv): its leukocytes by kind."),
        chula_split: Path | None = typer.Option(None, "--chula-split", help="Chula split CSV (by slide). \\[default: "
                                                "benchmarks/splits/chula-wbc-seed0.csv when present]"),
        pretrained: str | None = typer.Option(None, "--pretrained", help="Initial weights: a package's name, or a "
                                              "cell model's model.safetensors to continue it. \\[default: "
                                              "efficientnet_lite0]"),
        epochs: int = typer.Option(12, "--epochs", help="Maximum epochs of the second stage (4096 crops each; the "
                                   "first stage runs a third as many)."),
        time_limit_min: float = typer.Option(16.0, "--time-limit-min", help="Wall-clock budget in minutes, "
                                             "reading the crops included (export comes on top)."),
        samples_per_epoch: int = typer.Option(4096, "--samples-per-epoch", help="Crops drawn per epoch."),
        threads: int | None = typer.Option(None, "--threads", help="PyTorch CPU threads. \\[default: all cores]"),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        limit_per_class: int | None = typer.Option(None, "--limit-per-class", help="At most N images per class "
                                                   "and split part (a quick trial)."),
        clean: bool = typer.Option(True, "--clean/--no-clean", help="Clean Taleqani's weak labels with a first "
                                   "model trained without them (a third of the time); --no-clean: one stage."),
    ) -> None:
        from leukodx.errors import DatasetError
        from leukodx.training.cells import train_cells
        from leukodx.training.config import resolve_config

        t_split = _default_split(taleqani_split, "taleqani")
        if t_split is None:
            raise DatasetError(f"No Taleqani split file: {SPLITS}/taleqani-sgdc-seed0.csv is not here.",
                               "Pass --taleqani-split FILE (make one with `leukodx data split`).")
        cfg = resolve_config("cells", overrides={
            "pbc": str(pbc), "data": str(taleqani), "raabin": str(raabin) if raabin else None, "out": str(out),
            "chula": str(chula) if chula else None,
            "epochs": epochs, "time_limit_s": 60.0 * time_limit_min, "samples_per_epoch": samples_per_epoch,
            "threads": threads, "seed": seed, **({"pretrained": pretrained} if pretrained else {})})
        result = train_cells(cfg, pbc_split=_default_split(pbc_split, "pbc"), taleqani_split=t_split,
                             raabin_split=_default_split(raabin_split, "raabin") if raabin else None,
                             limit_per_class=limit_per_class, clean=clean,
                             chula_split=_default_split(chula_split, "chula") if chula else None,
                             log=lambda m: err_console.print(m, highlight=False, markup=False))
        test = result.get("test") or {}
        pbc_acc = (test.get("pbc") or {}).get("balanced_accuracy_top")
        fld = ((test.get("taleqani") or {}).get("fields") or {}).get("auc_blast_share")
        console.print(f"test: PBC balanced accuracy {pbc_acc}, Taleqani field AUC (blast share) {fld}  ->  "
                      f"{out}/metrics.json", highlight=False)
