"""`leukodx study classify`: architectures x split strategies x seeds on one common test set, mean ± std."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from leukodx.cli._common import err_console


def register(app: typer.Typer) -> None:
    @app.command("classify", help=(
        "The study's classification comparison: every architecture x split strategy x seed, each run scored on "
        "ONE common group-aware test set; mean ± std over seeds; DIR/results.json, DIR/table.md and plots.\n\n"
        "Every run is scored through the analysis pipeline on the test fields as they are and under lab shift "
        "(as `evaluate --shift lab`); factors with two levels are compared paired over seeds.\n\n"
        "Example (reduced CPU scale):\n\n  leukodx study classify --data DATA --archs inception_resnet_v2,nasnetalarge "
        "--strategies sgdc,per-class --seeds 3 --image-size 96 --epochs 1 --max-train-images 64 --out study/"))
    def classify(
        data: Path = typer.Option(..., "--data", help="Data folder (Original/<class>/ or <class>/)."),
        archs: str = typer.Option("inception_resnet_v2,nasnetalarge", "--archs", help="Comma-separated architectures."),
        strategies: str = typer.Option("sgdc,per-class", "--strategies", help="Comma-separated split strategies."),
        seeds: int = typer.Option(3, "--seeds", help="Seeds per combination (0..N-1)."),
        out: Path = typer.Option(..., "--out", help="Study folder to write (runs/, results.json, table.md, PNGs)."),
        preset: str = typer.Option("cpu", "--preset", help="cpu or paper (224 px, Adam 1e-4, batch 32, 60 epochs)."),
        config: Path | None = typer.Option(None, "--config", help="YAML settings for every run."),
        image_size: int | None = typer.Option(None, "--image-size", help="Input size in px."),
        epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs per run."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size."),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate."),
        max_train_images: int | None = typer.Option(None, "--max-train-images", help="Stratified training subset."),
        max_val_images: int | None = typer.Option(None, "--max-val-images", help="Validation subset."),
        max_test_images: int | None = typer.Option(None, "--max-test-images", help="Common test subset (the same "
                                                   "fields for every run)."),
        pretrained: Path | None = typer.Option(None, "--pretrained", help="Local weights file for the backbone "
                                               "(only with a single --archs)."),
        augment: str | None = typer.Option(None, "--augment", help="none, light, strong, moderate or robust."),
        patience: int | None = typer.Option(None, "--patience", help="Early stopping patience (0 = off)."),
        converge: int | None = typer.Option(None, "--converge", help="Stop a run as converged once its validation "
                                            "loss has not fallen by more than 1 % for this many epochs (0 = off)."),
        workers: int | None = typer.Option(None, "--workers", help="Data loader processes."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
        test_seed: int = typer.Option(0, "--test-seed", help="Seed of the common test set."),
        time_limit_s: float | None = typer.Option(None, "--time-limit-s", help="Per-run wall-clock budget in seconds: "
                                                  "no epoch is started that would end past it (the best epoch so "
                                                  "far is kept)."),
        reference_model: list[Path] = typer.Option([], "--reference-model", help="A model directory scored beside the "
                                                   "runs on the same test fields (repeatable), e.g. the bundled "
                                                   "src/leukodx/assets/classifier."),
    ) -> None:
        from leukodx.errors import LeukodxError
        from leukodx.training.study import run_classification_study

        arch_list = [a.strip() for a in archs.split(",") if a.strip()]
        if pretrained and len(arch_list) > 1:
            raise LeukodxError("--pretrained names one weights file but --archs names several architectures.",
                               "Run the study once per architecture with its own --pretrained file.")
        overrides = {"image_size": image_size, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                     "max_train_images": max_train_images, "max_val_images": max_val_images,
                     "max_test_images": max_test_images, "pretrained": str(pretrained) if pretrained else None,
                     "augment": augment, "patience": patience, "converge_patience": converge, "workers": workers, "device": device,
                     "time_limit_s": time_limit_s}
        run_classification_study(
            data, arch_list, [s.strip() for s in strategies.split(",") if s.strip()], seeds, out, preset=preset,
            config_yaml=config, overrides=overrides, test_seed=test_seed,
            command="leukodx " + " ".join(sys.argv[1:]), reference_models=list(reference_model),
            log=lambda m: err_console.print(m, highlight=False, soft_wrap=True, markup=False))
