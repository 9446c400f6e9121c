"""`leukodx train classify`: train a smear-field classifier; writes a model directory and its metrics.
Settings resolve as: defaults -> --preset -> --config YAML -> flags."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console, err_console

EXAMPLE = (
    "Examples:\n\n"
    "  leukodx train classify --data DATA --out runs/smearnet\n\n"
    "  leukodx train classify --data DATA --split split.csv --arch inception_resnet_v2 --preset paper --device cuda "
    "--out runs/irv2\n\n"
    "  torchrun --nproc-per-node 2 -m leukodx train classify --data DATA --out runs/ddp"
)


def register(app: typer.Typer) -> None:
    @app.command("classify", help="Train a classifier (Benign/Early/Pre/Pro) on a data folder.\n\n" + EXAMPLE)
    def classify(
        data: Path = typer.Option(..., "--data", help="Data folder (Original/<class>/ or <class>/)."),
        out: Path = typer.Option(..., "--out", help="Run / model directory to write."),
        split: Path | None = typer.Option(None, "--split", help="Split CSV (leukodx data split); "
                                          "default: a fresh group-aware split."),
        strategy: str | None = typer.Option(None, "--strategy", help="Split strategy when no --split: sgdc or "
                                            "per-class. \\[default: sgdc]"),
        arch: str | None = typer.Option(None, "--arch", help="Architecture: smearnet, smearnet-wide or any timm "
                                        "name (inception_resnet_v2, nasnetalarge, ...). \\[default: smearnet]"),
        image_size: int | None = typer.Option(None, "--image-size", help="Input size in px. \\[default: 128]"),
        epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs. \\[default: 20]"),
        pretrained: str | None = typer.Option(None, "--pretrained", help="ImageNet weights for the backbone: "
                                              "NAME of a package-shipped set (efficientnet_lite0, efficientnet_lite1, "
                                              "efficientnet_lite2; implies its --arch tf_efficientnet_liteN) or a "
                                              "local FILE (.pth/.pt/.safetensors). Nothing is downloaded."),
        config: Path | None = typer.Option(None, "--config", help="YAML file of settings (e.g. a run's "
                                           "run_config.yaml)."),
        preset: str | None = typer.Option(None, "--preset", help="cpu (fast, default) or paper (the study: "
                                          "224 px, Adam 1e-4, batch 32, up to 60 epochs)."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size. \\[default: 32]"),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate. \\[default: 2e-3]"),
        weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay. \\[default: 0.02]"),
        optimizer: str | None = typer.Option(None, "--optimizer", help="adamw or adam. \\[default: adamw]"),
        schedule: str | None = typer.Option(None, "--schedule", help="cosine, plateau or none. \\[default: cosine]"),
        label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="\\[default: 0.1]"),
        balance: str | None = typer.Option(None, "--balance", help="oversample, weights or none. "
                                           "\\[default: oversample]"),
        augment: str | None = typer.Option(None, "--augment", help="none, light or strong (includes stain and "
                                           "colour augmentation). \\[default: strong]"),
        normalization: str | None = typer.Option(None, "--normalization", help="per_image (default: removes "
                                                 "white balance/brightness) or imagenet."),
        patience: int | None = typer.Option(None, "--patience", help="Early stopping: epochs without a better "
                                            "validation score; 0 = off. \\[default: 6]"),
        seed: int | None = typer.Option(None, "--seed", help="Random seed (split, init, order). \\[default: 0]"),
        workers: int | None = typer.Option(None, "--workers", help="Data loader processes (augmentation runs there). \\[default: 1; paper preset 4]"),
        threads: int | None = typer.Option(None, "--threads", help="PyTorch CPU threads. \\[default: the cores "
                                           "left after the --workers processes]"),
        max_train_images: int | None = typer.Option(None, "--max-train-images", help="Train on a stratified "
                                                    "subset of at most N images."),
        max_val_images: int | None = typer.Option(None, "--max-val-images", help="Validate on at most N images."),
        max_test_images: int | None = typer.Option(None, "--max-test-images", help="Score at most N test images."),
        amp: str | None = typer.Option(None, "--amp", help="Mixed precision on CUDA: auto, bf16, fp16 or off."),
        channels_last: str | None = typer.Option(None, "--channels-last", help="NHWC memory layout: auto (on CUDA "
                                                 "only), on or off."),
        time_limit_s: float | None = typer.Option(None, "--time-limit-s", help="Wall-clock budget in seconds: no "
                                                  "epoch is started that would end past it."),
        resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in OUT/checkpoints."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda. \\[default: auto]"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        from leukodx.training.classify import train_classifier
        from leukodx.training.config import resolve_config

        overrides = {
            "data": str(data), "out": str(out), "split": str(split) if split else None, "split_strategy": strategy,
            "arch": arch, "image_size": image_size, "epochs": epochs, "pretrained": pretrained, "preset": preset,
            "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "optimizer": optimizer, "schedule": schedule, "label_smoothing": label_smoothing, "balance": balance,
            "augment": augment, "normalization": normalization, "patience": patience, "seed": seed,
            "workers": workers, "threads": threads, "max_train_images": max_train_images, "max_val_images": max_val_images,
            "max_test_images": max_test_images, "amp": amp, "device": device,
            "channels_last": channels_last, "time_limit_s": time_limit_s,
            "resume": True if resume else None, "quiet": True if quiet else None,
        }
        cfg = resolve_config("classify", yaml_path=config, overrides=overrides)
        result = train_classifier(cfg, log_fn=lambda m: err_console.print(m, highlight=False, markup=False))
        if "config" not in result:  # a non-zero rank under torchrun
            return
        test = result.get("test_metrics")
        if test and not cfg.quiet:
            console.print(f"accuracy {test['accuracy']:.4f}  balanced {test['balanced_accuracy']:.4f}  "
                          f"macro F1 {test['macro_f1']:.4f}  ECE {test['ece']:.4f}  on {test['n_images']} test "
                          f"images  ->  {out}/metrics.json", highlight=False)
