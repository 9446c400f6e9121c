"""Training configuration: dataclass defaults -> preset -> YAML (--config) -> command-line flags.

Plain dataclasses (no pydantic), so training runs on machines with only torch installed. The resolved config
is saved with every run (RUN/run_config.yaml and config.json's "training" entry).

Example::

    cfg = resolve_config("classify", preset="paper", yaml_path=None, overrides={"epochs": 5})
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukodx.errors import LeukodxError

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "plateau", "none", "cosine_time")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Every setting of a training run. Task-specific keys are ignored by the other tasks."""

    task: str = "classify"
    # data
    data: str | None = None  # the Taleqani-layout folder (Original/<class>/, Segmented/<class>/)
    split: str | None = None  # its split CSV; None: a fresh group-aware split (cells: the one in `splits`)
    raabin: str | None = None  # cell models: the other sources' folders (leukodx.data.sources.SOURCES)
    pbc: str | None = None
    chula: str | None = None
    splits: str | None = None  # cell models: the folder of the sources' split files (their registry names)
    synthetic: int = 0  # cell_segment: synthetic smears added to the training data
    cache_dir: str | None = None  # cell_segment: the references cached as .npz
    cut_cells: float = 0.0  # cell_segment: share of draws cut to one leukocyte's size (data.cell_dataset)
    low_magnification: float = 0.0  # cell_segment: share of draws with a lower magnification's loss of detail
    cut_negatives: float = 0.0  # cell_segment: share of the cut windows centred on no leukocyte
    split_strategy: str = "sgdc"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    common_test: bool = False
    test_seed: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None
    max_test_images: int | None = None
    # model
    arch: str = "smearnet"
    image_size: int = 128
    pretrained: str | None = None
    normalization: str = "per_image"
    drop_rate: float | None = None  # None: the architecture's default
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder arguments (e.g. segmenter encoder)
    # optimisation
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.02
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: int = 1
    warmup_steps: int = 0  # schedule cosine_time: linear warm-up over this many steps
    samples_per_epoch: int | None = None  # cell models: a sampler draws this many per epoch; None: one pass
    label_smoothing: float = 0.1
    balance: str = "oversample"
    augment: str = "strong"
    patience: int = 6  # early stopping: epochs without improvement of the validation metric; 0 = off
    converge_patience: int = 0  # stop as converged: this many epochs without the validation loss falling below
    converge_tolerance: float = 0.01  # its best so far by more than this share of it; 0 = off (see `loss_flat`)
    grad_clip: float | None = 5.0
    # segmentation
    mask_threshold: int = 128
    skip_near_empty: bool = True
    references: str = "original"  # segmentation: "original" (the HSV masks) or "repaired" (leukodx.data.reference_masks)
    # run
    seed: int = 0
    workers: int = 0
    threads: int | None = None  # torch CPU threads; None: the cores left after the loader processes
    device: str = "auto"
    amp: str = "auto"  # on CUDA only: auto = bf16 when supported, else fp16
    channels_last: str = "auto"  # NHWC memory layout: auto = on CUDA only; on; off
    time_limit_s: float | None = None  # per-run wall-clock budget: no epoch is started that would end past it
    resume: bool = False
    out: str | None = None
    quiet: bool = False
    preset: str = "cpu"
    low_confidence_target: float = 0.99  # accuracy wanted among fields not flagged low_confidence (validation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        def bad(name, value, hint):
            raise LeukodxError(f"Invalid setting {name}={value!r}.", hint)

        from leukodx.data.datasets import BALANCING
        from leukodx.data.transforms import AUGMENTATIONS
        from leukodx.models.classifiers import NORMALIZATIONS

        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES),
                              ("amp", AMP_MODES), ("balance", BALANCING), ("augment", AUGMENTATIONS),
                              ("normalization", NORMALIZATIONS)):
            if getattr(self, name) not in choices:
                bad(name, getattr(self, name), f"Use one of: {', '.join(choices)}.")
        if self.channels_last not in ("auto", "on", "off"):
            bad("channels_last", self.channels_last, "Use auto (on CUDA only), on or off.")
        if self.converge_patience < 0 or not 0 <= self.converge_tolerance < 1:
            bad("converge_patience/converge_tolerance", (self.converge_patience, self.converge_tolerance),
                "Give a patience of 0 (off) or more epochs, and a tolerance from 0 to below 1 (e.g. 0.01 = 1 %).")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            bad("time_limit_s", self.time_limit_s, "Give a positive number of seconds, or leave it out for no limit.")
        if self.references not in ("original", "repaired"):
            bad("references", self.references, "Use original (the HSV reference masks) or repaired (rebuilt where "
                "the thresholding failed, see leukodx.data.reference_masks).")
        if self.pretrained and (self.task == "classify" or not Path(str(self.pretrained)).is_dir()):
            from leukodx.models.pretrained import resolve

            resolve(str(self.pretrained))  # an unknown NAME lists the known ones
        if self.epochs < 1:
            bad("epochs", self.epochs, "Give at least 1 epoch.")
        if self.batch_size < 1:
            bad("batch_size", self.batch_size, "Give a batch size of at least 1.")
        if not self.lr > 0:
            bad("lr", self.lr, "Give a positive learning rate, e.g. 1e-3.")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "Give a value in [0, 1), e.g. 0.1.")
        if self.image_size < 16 or self.image_size > 1024:
            bad("image_size", self.image_size, "Give an image size between 16 and 1024 px.")
        if self.threads is not None and self.threads < 1:
            bad("threads", self.threads, "Give at least 1 CPU thread, or leave it out for PyTorch's default.")
        if self.workers < 0:
            bad("workers", self.workers, "Give 0 (load in the main process) or more worker processes.")
        if self.split_strategy not in ("sgdc", "per-class"):
            bad("split_strategy", self.split_strategy, "Use sgdc or per-class.")
        for name in ("max_train_images", "max_val_images", "max_test_images"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(name, v, "Give a positive number of images, or leave it out for all.")
        return self


# Presets: "cpu" trains a useful model on a laptop; "paper" is the reference study's recipe (for GPUs).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "classify": {
        # one loader process: it runs the augmentation with 1 torch thread, beside the training step. In the main
        # process, with 2 threads on busy shared cores, the augmentation's small ops were measured 100x slower.
        "cpu": {"workers": 1},
        "paper": {
            "arch": "inception_resnet_v2", "image_size": 224, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
            "batch_size": 32, "epochs": 60, "schedule": "plateau", "warmup_epochs": 0, "label_smoothing": 0.0,
            "patience": 10, "augment": "light", "balance": "oversample", "workers": 4,
        },
    },
    "segment": {
        "cpu": {"arch": "unet", "image_size": 128, "batch_size": 16, "epochs": 15, "lr": 1e-3, "optimizer": "adamw",
                "weight_decay": 1e-4, "label_smoothing": 0.0, "balance": "none", "augment": "light", "patience": 5},
        "paper": {"arch": "unet", "image_size": 224, "batch_size": 32, "epochs": 35, "lr": 1e-3, "optimizer": "adam",
                  "weight_decay": 0.0, "schedule": "plateau", "warmup_epochs": 0, "label_smoothing": 0.0,
                  "balance": "none", "augment": "light", "patience": 10, "workers": 4},
    },
    # the shipped two-output segmenter's recipe (assets/segmenter, training.cell_segment)
    "cell_segment": {"cpu": {
        "arch": "unet-fpn-gelu:tf_efficientnet_lite0", "image_size": 160, "epochs": 4, "samples_per_epoch": 2000,
        "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw", "schedule": "cosine",
        "warmup_epochs": 1, "grad_clip": 5.0, "label_smoothing": 0.0, "balance": "none", "augment": "light",
        "patience": 0, "amp": "off"}},
    # the shipped cell model's recipe (assets/cells, training.cells); stage 2 runs at half the learning rate
    "cells": {"cpu": {
        "arch": "tf_efficientnet_lite0", "pretrained": "efficientnet_lite0", "image_size": 64, "drop_rate": 0.2,
        "epochs": 12, "samples_per_epoch": 4096, "batch_size": 96, "lr": 2e-3, "weight_decay": 1e-4,
        "optimizer": "adamw", "schedule": "cosine_time", "warmup_steps": 30, "grad_clip": None,
        "label_smoothing": 0.0, "balance": "none", "augment": "none", "patience": 0, "time_limit_s": 960.0,
        "amp": "off"}},
}


def loss_flat(history: list[dict[str, Any]], patience: int, tolerance: float = 0.01) -> bool:
    """Converged: none of the last `patience` epochs lowered the validation loss below the best before them by
    more than `tolerance` of it (the loss is flat; e.g. patience 3, tolerance 1 %)."""
    losses = [float(h["val_loss"]) for h in history]
    if patience <= 0 or len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) > best_before * (1 - tolerance)


def _coerce(name: str, value: Any) -> Any:
    """YAML gives ints for floats and strings for paths; make them the dataclass's types."""
    default = getattr(TrainConfig(), name)
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise LeukodxError(f"Setting {name}={value!r} is not a {type(default).__name__}.",
                           "Fix the value in the YAML file or on the command line.") from None
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LeukodxError(f"Config file {p} does not exist.", "Give a YAML file written by a previous run "
                           "(RUN/run_config.yaml) or by hand.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LeukodxError(f"Config file {p} is not valid YAML ({str(exc).splitlines()[0]}).",
                           "Fix the file; keys are the option names with underscores, e.g. image_size: 128.") from None
    if not isinstance(data, dict):
        raise LeukodxError(f"Config file {p} holds no mapping of settings.", "Write one `key: value` per line.")
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_config(task: str = "classify", preset: str | None = None, yaml_path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults -> preset -> YAML -> overrides (flags given on the command line; None values are ignored)."""
    if task not in PRESETS:
        raise LeukodxError(f"Unknown task {task!r}.", f"Use one of: {', '.join(PRESETS)}.")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_yaml = read_yaml(yaml_path) if yaml_path else {}
    preset = overrides.get("preset") or preset or from_yaml.get("preset") or "cpu"
    if preset not in PRESETS[task]:
        raise LeukodxError(f"Unknown --preset {preset!r} for {task}.", f"Use one of: {', '.join(PRESETS[task])}.")
    merged: dict[str, Any] = {**PRESETS[task][preset], **from_yaml, **overrides, "preset": preset, "task": task}
    if task == "classify" and merged.get("pretrained") and "arch" not in merged:
        # --pretrained NAME with no --arch: the architecture those weights belong to
        from leukodx.models.pretrained import default_arch

        arch = default_arch(str(merged["pretrained"]))
        if arch:
            merged["arch"] = arch
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise LeukodxError(f"Unknown setting(s) {', '.join(unknown)}" + (f" in {yaml_path}" if yaml_path else "") + ".",
                           f"Valid settings: {', '.join(names)}.")
    return TrainConfig(**{k: _coerce(k, v) for k, v in merged.items()}).validate()


def save_run_config(cfg: TrainConfig, path: str | Path) -> Path:
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("# resolved training config (defaults -> preset -> YAML -> flags); reuse with --config\n"
                 + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p
