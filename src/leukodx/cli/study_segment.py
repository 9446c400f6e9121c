"""`leukodx study segment`: the study's U-Net vs U-Net-FPN-GELU over seeds, on one common test set."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console, err_console

EXAMPLE = (
    "Examples:\n\n"
    "  leukodx study segment --data DATA --archs unet,unet-fpn-gelu --seeds 3 --base-channels 8 --image-size 128 "
    "--epochs 4 --out studies/seg-cpu\n\n"
    "  leukodx study segment --data DATA --archs unet,unet-fpn-gelu --seeds 3 --preset paper --device cuda "
    "--out studies/seg-paper"
)


def register(app: typer.Typer) -> None:
    @app.command("segment", help="U-Net vs U-Net-FPN-GELU (or any segmenters): every (arch, seed) trained and "
                 "scored on one common group-aware test set; mean ± std per metric, DIR/results.json, "
                 "DIR/table.md and plots.\n\n" + EXAMPLE)
    def segment(
        data: Path = typer.Option(..., "--data", help="Data folder with Original/<class>/ and Segmented/<class>/."),
        out: Path = typer.Option(..., "--out", help="Study folder to write (runs/, results.json, table.md, PNGs)."),
        archs: str = typer.Option("unet,unet-fpn-gelu", "--archs", help="Comma-separated segmenters, e.g. "
                                  "unet,unet-fpn-gelu or unet:resnet18,unet-fpn-gelu:resnet18."),
        seeds: int = typer.Option(3, "--seeds", help="Seeds per architecture (0..N-1)."),
        preset: str | None = typer.Option(None, "--preset", help="cpu (default) or paper (224 px, batch 32, "
                                          "35 epochs, lr 1e-3, base 64)."),
        base_channels: int | None = typer.Option(None, "--base-channels", help="First-level filters. "
                                                 "\\[default: 16 cpu, 64 paper]"),
        depth: int | None = typer.Option(None, "--depth", help="U-Net levels. \\[default: 4]"),
        encoder: str | None = typer.Option(None, "--encoder", help="A timm encoder for every arch."),
        image_size: int | None = typer.Option(None, "--image-size", help="Input size in px."),
        epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs per run."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size."),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate."),
        augment: str | None = typer.Option(None, "--augment", help="none, light or strong."),
        patience: int | None = typer.Option(None, "--patience", help="Early stopping patience (0 = off)."),
        mask_threshold: int | None = typer.Option(None, "--mask-threshold", help="grayscale(Segmented) > this."),
        max_train_images: int | None = typer.Option(None, "--max-train-images", help="Stratified training subset "
                                                    "per run (CPU scale)."),
        max_val_images: int | None = typer.Option(None, "--max-val-images", help="Validate on at most N fields."),
        shift_lab: bool = typer.Option(False, "--eval-lab-shift", help="Also score each run under lab shift."),
        workers: int | None = typer.Option(None, "--workers", help="Data loader processes."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for PyTorch (1 is faster when "
                                           "other jobs share the cores). \\[default: PyTorch's]"),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
        config: Path | None = typer.Option(None, "--config", help="YAML recipe shared by every run (e.g. "
                                           "benchmarks/configs/segment-lite0-unet.yaml); --archs and the flags "
                                           "given override it."),
        references: str | None = typer.Option(None, "--references", help="original (HSV masks) or repaired."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="ImageNet encoder weights, e.g. "
                                              "efficientnet_lite0 (with unet:tf_efficientnet_lite0)."),
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from leukodx.training.study import run_segmentation_study

        names = [a.strip() for a in archs.split(",") if a.strip()]
        flags = {"preset": preset, "base_channels": base_channels, "depth": depth, "encoder": encoder,
                 "image_size": image_size, "epochs": epochs, "batch_size": batch_size, "lr": lr, "augment": augment,
                 "patience": patience, "mask_threshold": mask_threshold, "max_train_images": max_train_images,
                 "max_val_images": max_val_images, "workers": workers, "device": device, "references": references,
                 "pretrained": pretrained}
        result = run_segmentation_study(data, names, seeds, out, base_flags=flags, evaluate_shift=shift_lab,
                                        config=config,
                                        log_fn=lambda m: err_console.print(m, highlight=False, markup=False))
        console.print((out / "table.md").read_text(), highlight=False)
        console.print(f"{len(result['runs'])} runs in {result['wall_seconds']:.0f} s -> {out}/results.json",
                      highlight=False)
