"""`leukodx train segment`: train a leukocyte segmenter (U-Net or U-Net-FPN-GELU); writes a model directory.
Settings resolve as: defaults -> --preset -> --config YAML -> flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from leukodx.cli._common import console, err_console
from leukodx.errors import LeukodxError

EXAMPLE = (
    "Examples:\n\n"
    "  leukodx train segment --data DATA --out runs/unet16\n\n"
    "  leukodx train segment --data DATA --arch unet-fpn-gelu --base-channels 16 --image-size 224 --out runs/fpn\n\n"
    "  leukodx train segment --data DATA --arch unet:resnet18 --out runs/unet-r18   (timm encoder)\n\n"
    "  leukodx train segment --data DATA --preset paper --device cuda --out runs/unet-paper\n\n"
    "  leukodx train segment --data DATA --split benchmarks/splits/taleqani-sgdc-seed0.csv --raabin RAABIN --pbc PBC "
    "--synthetic 200 --arch unet-fpn-gelu:tf_efficientnet_lite0 --pretrained efficientnet_lite0 --image-size 160 "
    "--out runs/cellseg --time-limit-min 38   (two outputs: whole cell and nucleus, three labs)"
)

# data flags of the one-output training on Taleqani fields alone (Segmented/ masks, its test split); the
# two-output training (--raabin / --pbc / --chula) reads its own references
TALEQANI_ONLY = ("mask_threshold", "include_near_empty", "min_mask_fraction", "references", "augment",
                 "max_test_images", "shift_lab")
TWO_OUTPUT_ONLY = ("synthetic", "samples_per_epoch", "cache_dir", "cut_cells", "low_magnification", "cut_negatives")


def _flag(name: str) -> str:
    return {"shift_lab": "--eval-lab-shift"}.get(name, "--" + name.replace("_", "-"))


def register(app: typer.Typer) -> None:
    @app.command("segment", help="Train a leukocyte segmenter on a data folder with Segmented/ reference masks.\n\n"
                 + EXAMPLE)
    def segment(
        data: Path = typer.Option(..., "--data", help="Data folder with Original/<class>/ and Segmented/<class>/."),
        out: Path = typer.Option(..., "--out", help="Run / model directory to write."),
        split: Path | None = typer.Option(None, "--split", help="Split CSV (leukodx data split); default: a fresh "
                                          "group-aware split."),
        arch: str | None = typer.Option(None, "--arch", help="unet, unet-fpn-gelu, or unet:<timm encoder> / "
                                        "unet-fpn-gelu:<timm encoder> (e.g. unet:resnet18). \\[default: unet]"),
        base_channels: int | None = typer.Option(None, "--base-channels", help="Filters of the first U-Net level "
                                                 "(the study: 64). \\[default: 16 with --preset cpu, 64 with paper]"),
        depth: int | None = typer.Option(None, "--depth", help="U-Net levels. \\[default: 4]"),
        encoder: str | None = typer.Option(None, "--encoder", help="A timm features_only encoder instead of the "
                                           "classic one (random init; nothing is downloaded)."),
        image_size: int | None = typer.Option(None, "--image-size", help="Input size in px. \\[default: 128]"),
        epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs. \\[default: 15]"),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size. \\[default: 16]"),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate. \\[default: 1e-3]"),
        mask_threshold: int | None = typer.Option(None, "--mask-threshold", help="Reference mask = grayscale("
                                                  "Segmented) > this. \\[default: 128]"),
        include_near_empty: bool = typer.Option(False, "--include-near-empty", help="Also train on reference "
                                                "masks under 0.1 % foreground (left out by default: the "
                                                "thresholding failed on them)."),
        min_mask_fraction: float | None = typer.Option(None, "--min-mask-fraction", help="Also leave out of "
                                                       "training/validation the fields whose reference mask has "
                                                       "less foreground than this fraction (e.g. 0.01: on the "
                                                       "Taleqani data nearly every Pro reference is under 1 %)."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="Start from the weights of this "
                                              "segmenter model directory (fine-tuning), or put packaged ImageNet "
                                              "weights into the encoder: efficientnet_lite0 with --arch "
                                              "unet:tf_efficientnet_lite0."),
        references: str | None = typer.Option(None, "--references", help="original (the HSV masks, the study's "
                                              "metric) or repaired (rebuilt by an optical-density rule where the "
                                              "HSV thresholding failed; leukodx.data.reference_masks). "
                                              "\\[default: original]"),
        augment: str | None = typer.Option(None, "--augment", help="none, light or strong (stain and colour "
                                           "changes on the image only). \\[default: light]"),
        preset: str | None = typer.Option(None, "--preset", help="cpu (default) or paper (the study: 224 px, "
                                          "batch 32, 35 epochs, lr 1e-3, base 64)."),
        config: Path | None = typer.Option(None, "--config", help="YAML file of settings (e.g. a run's "
                                           "run_config.yaml)."),
        optimizer: str | None = typer.Option(None, "--optimizer", help="adamw or adam."),
        schedule: str | None = typer.Option(None, "--schedule", help="cosine, plateau or none."),
        weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay."),
        normalization: str | None = typer.Option(None, "--normalization", help="per_image (default) or imagenet."),
        patience: int | None = typer.Option(None, "--patience", help="Early stopping on validation Dice: epochs "
                                            "without improvement; 0 = off. \\[default: 5]"),
        seed: int | None = typer.Option(None, "--seed", help="Random seed (split, init, order). \\[default: 0]"),
        workers: int | None = typer.Option(None, "--workers", help="Data loader processes. \\[default: 0]"),
        max_train_images: int | None = typer.Option(None, "--max-train-images", help="Train on a stratified "
                                                    "subset of at most N fields."),
        max_val_images: int | None = typer.Option(None, "--max-val-images", help="Validate on at most N fields."),
        max_test_images: int | None = typer.Option(None, "--max-test-images", help="Score at most N test fields."),
        shift_lab: bool = typer.Option(False, "--eval-lab-shift", help="Also score the test split under a "
                                       "synthetic lab-to-lab shift."),
        amp: str | None = typer.Option(None, "--amp", help="Mixed precision on CUDA: auto, bf16, fp16 or off."),
        resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in OUT/checkpoints."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for PyTorch (1 is faster when "
                                           "other jobs share the cores). \\[default: PyTorch's]"),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda. \\[default: auto]"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        raabin: Path | None = typer.Option(None, "--raabin", help="Raabin fields folder (images/, labels/ YOLO "
                                           "boxes): trains the two-output segmenter (whole cell + nucleus)."),
        pbc: Path | None = typer.Option(None, "--pbc", help="PBC crops folder (<class>/*.jpg): trains the two-output "
                                        "segmenter (whole cell + nucleus)."),
        chula: Path | None = typer.Option(None, "--chula", help="Chulalongkorn fields folder (images/, typed YOLO "
                                          "boxes in labels/): trains the two-output segmenter."),
        synthetic: int | None = typer.Option(None, "--synthetic", help="Two-output training: also draw from N "
                                             "synthetic smears (weight 0.2). \\[default: 0]"),
        samples_per_epoch: int | None = typer.Option(None, "--samples-per-epoch", help="Two-output training: "
                                                     "crops drawn per epoch (weighted by source). \\[default: 2000]"),
        time_limit_min: float | None = typer.Option(None, "--time-limit-min", help="Wall-clock limit in minutes: "
                                                    "no epoch is started that would end past it."),
        splits: Path = typer.Option(Path("benchmarks/splits"), "--splits", help="Two-output training: the folder "
                                    "of the sources' split files (leukodx.data.sources names them)."),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Two-output training: keep the made "
                                              "references here as .npz (reused by the next run)."),
        cut_cells: float | None = typer.Option(None, "--cut-cells", min=0.0, max=1.0, help="Two-output training: "
                                               "share of draws cut to one leukocyte's size, as single-cell crops "
                                               "are exported. \\[default: 0]"),
        low_magnification: float | None = typer.Option(None, "--low-magnification", min=0.0, max=1.0, help=
                                                       "Two-output training: share of draws given a lower "
                                                       "magnification's loss of detail. \\[default: 0]"),
        cut_negatives: float | None = typer.Option(None, "--cut-negatives", min=0.0, max=1.0, help="Two-output "
                                                   "training: share of the --cut-cells windows centred on what is "
                                                   "no leukocyte (red cells, plasma). \\[default: 0]"),
    ) -> None:
        params = locals()
        two_output = raabin is not None or pbc is not None or chula is not None
        given = [_flag(k) for k in TALEQANI_ONLY if params[k] not in (None, False)]
        if two_output and given:
            raise LeukodxError(f"{', '.join(given)} do(es) not apply to the two-output training (--raabin / "
                               "--pbc / --chula).", "Leave it out, or train the one-output segmenter without "
                               "--raabin, --pbc and --chula.")
        cell_given = [_flag(k) for k in TWO_OUTPUT_ONLY if params[k] is not None]
        if cell_given and not two_output:
            raise LeukodxError(f"{', '.join(cell_given)} only apply to the two-output training.",
                               "Add --raabin, --pbc and/or --chula DIR, or leave them out.")
        if threads:
            import torch

            torch.set_num_threads(threads)
        flags: dict[str, Any] = dict(
            data=str(data), out=str(out), split=str(split) if split else None, arch=arch,
            base_channels=base_channels, depth=depth, encoder=encoder, image_size=image_size, epochs=epochs,
            batch_size=batch_size, lr=lr, pretrained=pretrained, preset=preset, optimizer=optimizer,
            schedule=schedule, weight_decay=weight_decay, normalization=normalization, patience=patience, seed=seed,
            workers=workers, max_train_images=max_train_images, max_val_images=max_val_images, amp=amp,
            device=device, resume=True if resume else None, quiet=True if quiet else None,
            time_limit_s=60.0 * time_limit_min if time_limit_min is not None else None)
        if two_output:
            _train_two_outputs(config, flags | {"cut_cells": cut_cells, "low_magnification": low_magnification,
                                                "cut_negatives": cut_negatives},
                               raabin=raabin, pbc=pbc, chula=chula, synthetic=synthetic, splits=splits,
                               samples_per_epoch=samples_per_epoch, cache_dir=cache_dir, quiet=quiet)
            return
        from leukodx.training.segment import fmt, resolve_segment_config, train_segmenter

        cfg = resolve_segment_config(config, **flags, mask_threshold=mask_threshold,
                                     skip_near_empty=False if include_near_empty else None, references=references,
                                     augment=augment, max_test_images=max_test_images)
        result = train_segmenter(cfg, log_fn=lambda m: err_console.print(m, highlight=False, markup=False),
                                 evaluate_shift=shift_lab, min_mask_fraction=min_mask_fraction)
        if "config" not in result:  # a non-zero rank under torchrun
            return
        test = result.get("test_metrics")
        if test and not cfg.quiet:
            console.print(f"dice_global {fmt(test['dice_global'])}  pixel accuracy {fmt(test['pixel_accuracy'], True)}  "
                          f"count MAE {fmt(test['count_mae'])}  on {test['n_images']} test fields "
                          f"({test['n_reference_failed']} failed references)  ->  {out}/metrics.json",
                          highlight=False)


def _train_two_outputs(config: Path | None, flags: dict[str, Any], *, raabin: Path | None, pbc: Path | None,
                       chula: Path | None, synthetic: int | None, splits: Path, samples_per_epoch: int | None, cache_dir: Path | None,
                       quiet: bool) -> None:
    """The two-output segmenter (whole cell + nucleus) on Taleqani (--data), Raabin, PBC, Chula, synthetic smears."""
    from leukodx.training.cell_segment import train_cell_segmenter
    from leukodx.training.config import resolve_config
    from leukodx.training.segment import fmt, segment_overrides

    overrides = segment_overrides(**flags, raabin=str(raabin) if raabin else None, pbc=str(pbc) if pbc else None,
                                  chula=str(chula) if chula else None, synthetic=synthetic, splits=str(splits), samples_per_epoch=samples_per_epoch,
                                  cache_dir=str(cache_dir) if cache_dir else None)
    cfg = resolve_config("cell_segment", yaml_path=config, overrides=overrides)
    res = train_cell_segmenter(cfg, log_fn=None if quiet else (lambda m: err_console.print(m, highlight=False,
                                                                                             markup=False)))
    if not quiet:
        console.print(f"best epoch {res['best_epoch']}: " + "; ".join(
            f"{s} cell {fmt(v['dice_cell'])} nucleus {fmt(v['dice_nucleus'])}" for s, v in res["val"].items())
            + f"  ->  {cfg.out} ({res['wall_seconds']:.0f} s)", highlight=False)
