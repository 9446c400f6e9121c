"""Train a classifier end to end: split -> data in memory -> engine -> calibration -> model directory + metrics.

    from leukodx.training.config import resolve_config
    cfg = resolve_config("classify", overrides={"data": "DATA", "out": "RUN", "epochs": 2})
    result = train_classifier(cfg)   # RUN/config.json, RUN/model.safetensors, RUN/metrics.json, RUN/run_config.yaml

RUN also holds history.json, split.csv, test_predictions.csv, checkpoints/ and ood_features.npz (the OOD
statistics; see the model directory in docs/architecture.md).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from leukodx.errors import LeukodxError, ModelError
from leukodx.training.config import TrainConfig, save_run_config


def build_classifier(cfg: TrainConfig, num_classes: int, record: dict | None = None):
    """(model, arch_kwargs): arch_kwargs are what load_model needs to rebuild it (no pretrained weights).

    With cfg.pretrained (a NAME from leukodx.models.pretrained.PRETRAINED or a local FILE) the backbone is loaded
    strictly; what was loaded (source, licence, file hash, tensors, replaced head) goes into `record`."""
    from leukodx.models.classifiers import check_image_size
    from leukodx.models.registry import create_model

    arch_kwargs = {"num_classes": num_classes, "normalization": cfg.normalization, "image_size": cfg.image_size,
                   **cfg.arch_kwargs}
    if cfg.drop_rate is not None:
        arch_kwargs["drop_rate"] = cfg.drop_rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # timm notes about img_size are not the user's concern
        model = create_model("classify", cfg.arch, **arch_kwargs)
    check_image_size(cfg.arch, cfg.image_size, model=model)
    if cfg.pretrained:
        from leukodx.models.pretrained import apply_pretrained

        backbone = getattr(model, "backbone", model)
        if not hasattr(backbone, "pretrained_cfg"):
            backbone.pretrained_cfg = {"classifier": "fc"}
        loaded = apply_pretrained(backbone, cfg.pretrained, cfg.arch)
        loaded["normalization_used"] = cfg.normalization
        if record is not None:
            record.update(loaded)
    return model, arch_kwargs


def _loader(ds, batch_size, sampler=None, shuffle=False, workers=0, seed=0, drop_last=False, pin=False):
    from leukodx.training.engine import seed_worker

    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None
                                       else False, num_workers=workers, worker_init_fn=seed_worker, generator=g,
                                       drop_last=drop_last, pin_memory=pin, persistent_workers=workers > 0)


def train_classifier(cfg: TrainConfig, *, split=None, log_fn=None, checkpoints: bool = True,
                     fit_ood: bool = True) -> dict:
    """Train, calibrate and score a classifier as `cfg` says. Returns a summary (paths, metrics, wall time).
    `split`: a SplitInfo (the study passes one), else cfg.split or a fresh group-aware split."""
    from leukodx.data.datasets import ClassificationDataset, EpochSampler, class_weights
    from leukodx.data.layout import load_dataset
    from leukodx.data.split import write_split
    from leukodx.data.transforms import classification_transforms
    from leukodx.deploy.calibrate import fit_low_confidence, fit_temperature
    from leukodx.deploy.ood_fit import apply_ood
    from leukodx.evaluation.metrics import classification_metrics as metrics_fn
    from leukodx.models.checkpoint import save_model
    from leukodx.training import distributed as dist_utils
    from leukodx.training.engine import Trainer, accuracy_metric, run_split, split_record, start_run

    t_start = time.perf_counter()
    out, device, info, log = start_run(cfg, data_hint="a folder with Original/<class>/ images", log_fn=log_fn,
                                       cpu_threads=cfg.threads or _default_threads(cfg.workers))
    assert cfg.data is not None  # start_run refuses a run without --data

    ds = load_dataset(cfg.data)
    ds.require_nonempty()
    classes = ds.classes
    split, train_s, val_s, test_s = run_split(cfg, ds, split)
    if not train_s:
        raise LeukodxError("The split has no training images.", "Make a split with a train part (leukodx data split).")
    missing = sorted(set(classes) - {s.label for s in train_s})
    if missing:
        raise LeukodxError(f"The training images hold no example of class(es) {', '.join(missing)}.",
                           "Give more training images (--max-train-images) or a split with every class in train.")

    pretrained_record: dict = {}
    model, arch_kwargs = build_classifier(cfg, len(classes), pretrained_record)
    if pretrained_record:
        log(f"pretrained: {pretrained_record.get('name') or pretrained_record['file']}: "
            f"{pretrained_record['n_loaded']} of {pretrained_record['n_tensors']} tensors loaded, head "
            f"{', '.join(pretrained_record['head_replaced']) or 'kept'} replaced for {len(classes)} classes")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.arch}: {n_params / 1e6:.2f} M parameters, {cfg.image_size} px, device {device}"
        + (f", {info.world_size} processes" if info.enabled else ""))

    t_decode = time.perf_counter()
    train_tf, eval_tf = classification_transforms(cfg.image_size, cfg.augment)
    train_ds = ClassificationDataset(train_s, classes, train_tf)
    val_ds = ClassificationDataset(val_s, classes, eval_tf)
    log(f"decoded {len(train_ds)} train + {len(val_ds)} val images into memory in "
        f"{time.perf_counter() - t_decode:.1f} s")

    labels = train_ds.labels
    sampler = EpochSampler(len(train_ds), labels=labels if cfg.balance == "oversample" else None, seed=cfg.seed,
                           num_replicas=info.world_size, rank=info.rank)
    pin = device.type == "cuda"
    per_rank_batch = max(1, cfg.batch_size // info.world_size) if info.enabled else cfg.batch_size
    train_loader = _loader(train_ds, per_rank_batch, sampler=sampler, workers=cfg.workers, seed=cfg.seed,
                           drop_last=len(sampler) > per_rank_batch, pin=pin)
    val_loader = _loader(val_ds, max(cfg.batch_size, 32), workers=min(cfg.workers, 2), seed=cfg.seed, pin=pin)
    weight = class_weights(labels, len(classes)).to(device) if cfg.balance == "weights" else None

    def loss_fn(outputs, targets):  # validation outputs are on the CPU
        w = weight.to(outputs.device) if weight is not None else None
        return torch.nn.functional.cross_entropy(outputs, targets, weight=w, label_smoothing=cfg.label_smoothing)

    def val_metric(outputs, targets):  # balanced accuracy: the classes are unequal in size
        pred = outputs.argmax(1)
        recalls = [float((pred[targets == k] == k).float().mean()) for k in range(len(classes)) if (targets == k).any()]
        return float(np.mean(recalls)) if recalls else float("nan")

    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        save_run_config(cfg, out / "run_config.yaml")
        write_split(split.rows, {**split.summary, "counts": split.counts()}, out / "split.csv")
    trainer = Trainer(model, loss_fn, train_loader, val_loader, cfg, out, metric_fn=val_metric,
                      metric_name="balanced_accuracy", batch_metric_fn=accuracy_metric, batch_metric_name="acc",
                      device=device, checkpoints=checkpoints, log_fn=log_fn)
    t_train = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t_train
    model = trainer.model.eval()

    # --- calibration on validation, scores on test (rank 0 only) ---------------------------------------------
    result = {"out": str(out), "history": history, "train_seconds": train_seconds}
    if not info.is_main:
        dist_utils.cleanup()
        return result
    val_logits, val_y = trainer.predict(val_loader)
    temperature = fit_temperature(val_logits.numpy(), val_y.numpy()) if len(val_y) else 1.0
    val_probs = torch.softmax(val_logits / temperature, 1).numpy() if len(val_y) else np.zeros((0, len(classes)))
    low = fit_low_confidence(val_probs, val_y.numpy() if len(val_y) else np.zeros(0), cfg.low_confidence_target)
    val_metrics = metrics_fn(val_y.numpy(), val_probs, classes) if len(val_y) else None

    test_metrics = None
    if test_s:
        test_ds = ClassificationDataset(test_s, classes, eval_tf)
        test_logits, test_y = trainer.predict(_loader(test_ds, max(cfg.batch_size, 32), seed=0, pin=pin))
        test_probs = torch.softmax(test_logits / temperature, 1).numpy()
        test_metrics = metrics_fn(test_y.numpy(), test_probs, classes)
        _write_predictions(out / "test_predictions.csv", test_ds.samples, test_probs, classes)

    wall = time.perf_counter() - t_start
    config = {
        "task": "classify",
        "arch": cfg.arch,
        "arch_kwargs": arch_kwargs,
        "classes": classes,
        "input_size": [cfg.image_size, cfg.image_size],
        "normalization": cfg.normalization,
        "input": "float32 N x 3 x H x W, RGB 0..255 (normalisation is inside the model)",
        "temperature": temperature,
        "thresholds": {"low_confidence": low["threshold"]},
        "low_confidence_fit": low,
        "n_parameters": n_params,
        "training": {
            **split_record(cfg, split, {"train": train_ds.samples, "val": val_ds.samples, "test": test_s}),
            "subset": {"max_train_images": cfg.max_train_images, "max_val_images": cfg.max_val_images,
                       "max_test_images": cfg.max_test_images},
            "pretrained": ({"spec": cfg.pretrained, **pretrained_record} if cfg.pretrained else None),
            **trainer.run_record(train_seconds, wall),
            "device": str(device),
            "world_size": info.world_size,
            "torch_threads": torch.get_num_threads(),
            "loader_workers": cfg.workers,
            "amp": str(trainer.amp).replace("torch.", "") if trainer.amp else None,
        },
        "metrics": {"val": _brief(val_metrics), "test": _brief(test_metrics)},
    }
    ood = _fit_ood(model, config, train_ds, val_ds, log) if fit_ood else None
    if ood is not None:
        config = apply_ood(config, ood)
    save_model(out, model, config)
    metrics = {"classification": test_metrics if test_metrics is not None else {"n_images": 0},
               "model": str(out), "split": "test", "temperature": temperature,
               "training_data": config["training"]["counts"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    if test_metrics:
        log(f"test: accuracy {test_metrics['accuracy']:.4f}, balanced accuracy {test_metrics['balanced_accuracy']:.4f}, "
            f"macro F1 {test_metrics['macro_f1']:.4f}, ECE {test_metrics['ece']:.4f} ({test_metrics['n_images']} images)")
    log(f"model directory: {out} (wall time {wall:.0f} s)")
    dist_utils.cleanup()
    result.update({"config": config, "metrics": metrics, "val_metrics": val_metrics, "test_metrics": test_metrics,
                   "wall_seconds": wall, "temperature": temperature, "low_confidence": low})
    return result


def _default_threads(workers: int) -> int:
    """One torch thread per core left after the loader processes: never more threads than cores (on busy
    2-core machines, 2 threads plus a loader were measured ~10x slower per step than 1 thread plus a loader)."""
    from leukodx.cpus import usable_cores

    return max(1, usable_cores() - workers)


_BRIEF_KEYS = ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece")


def _brief(m: dict | None) -> dict | None:
    return None if m is None else {k: m.get(k) for k in _BRIEF_KEYS}


def _write_predictions(path: Path, samples, probs: np.ndarray, classes: list[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for s, p in zip(samples, probs, strict=True):
            k = int(p.argmax())
            w.writerow([s.path, s.label, classes[k], f"{p[k]:.4f}", *[f"{v:.4f}" for v in p]])


def _fit_ood(model, config: dict, train_ds, val_ds, log) -> dict | None:
    """config["ood"] from leukodx.inference.ood.fit_ood (None, with the reason logged, when it cannot be fitted)."""
    from leukodx.deploy.ood_fit import fit_ood

    t0 = time.perf_counter()
    try:
        net = copy.deepcopy(model).cpu().eval()  # fit_ood hooks the head; keep the saved model clean
        result = fit_ood(net, config, list(train_ds.images), list(val_ds.images) or None, labels=list(train_ds.labels))
    except (ValueError, RuntimeError, ModelError) as exc:
        log(f"OOD fit skipped: {exc}")
        return None
    log(f"OOD checks fitted in {time.perf_counter() - t0:.1f} s")
    return result
