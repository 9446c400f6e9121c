"""Tiny randomly initialised model directories for the inference tests (written by save_model, no download)."""

from __future__ import annotations

from pathlib import Path

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def make_tiny_models(root: Path, size: int = 64, ood_images=None) -> tuple[Path, Path]:
    import torch

    from leukodx.models import create_model, save_model

    torch.manual_seed(0)
    cls = create_model("classify", "smearnet", num_classes=4)
    cfg = {"task": "classify", "arch": "smearnet", "arch_kwargs": {"num_classes": 4}, "classes": CLASSES,
           "input_size": [size, size], "temperature": 1.5, "thresholds": {"low_confidence": 0.3}}
    if ood_images is not None:
        from leukodx.deploy.ood_fit import fit_ood

        cfg["ood"] = fit_ood(cls.eval(), cfg, ood_images)
    cdir = save_model(root / "cls", cls, cfg)
    seg = create_model("segment", "unet", base_channels=4, depth=2)
    sdir = save_model(root / "seg", seg, {"task": "segment", "arch": "unet",
                                          "arch_kwargs": {"base_channels": 4, "depth": 2},
                                          "input_size": [size, size], "thresholds": {"mask": 0.5}})
    return cdir, sdir
