"""Training of the one-output segmenter through the one engine: what is particular to segmentation, and the
model directory.

- reference masks are `grayscale(Segmented/<class>/<name>) > mask_threshold` (128, as in the study);
- fields whose reference mask is near-empty (< 0.1 % foreground: the colour thresholding failed, 154 of the
  562 Pro fields) are left out of training and validation by default, and the run says how many;
- fields without a mask are left out and counted; a data set with no usable mask is one clear error;
- image and mask are augmented together (leukodx.data.transforms), colour/stain changes on the image only;
- the test split is scored as `leukodx evaluate` scores it (`score_test_split`: the analysis pipeline at the
  field's own resolution, the segmentation contract of DESIGN.md).

Example::

    from leukodx.training.config import resolve_config
    cfg = resolve_config("segment", overrides={"data": "DATA", "out": "RUN", "epochs": 2,
                                                "arch_kwargs": {"base_channels": 8}})
    result = train_segmenter(cfg)        # RUN/config.json, RUN/model.safetensors, RUN/metrics.json
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from leukodx.errors import DatasetError, ModelError
from leukodx.training.losses import PROBABILITY_THRESHOLD, DiceBCELoss, DiceScore


def require_masks(dataset, data) -> None:
    """One clear error when a data set has no usable reference mask at all."""
    if not dataset.has_masks or not any(s.mask is not None for s in dataset.samples):
        raise DatasetError(
            f"{data} has no reference masks (no Segmented/<class>/ images matching the fields in Original/).",
            "Segmentation training needs DATA/Segmented/<class>/<name> beside DATA/Original/<class>/<name>; "
            "the flat layout holds no masks.",
        )


# the preset's base channels when --base-channels is not given: small on CPU, the study's 64 for --preset paper
BASE_CHANNELS = {"cpu": 16, "paper": 64}


def segment_overrides(**kw) -> dict:
    """Flag values -> TrainConfig overrides (None = not given); --base-channels/--encoder go to arch_kwargs."""
    arch_kwargs = {k: kw.pop(k) for k in ("base_channels", "depth", "encoder")}
    kw["arch_kwargs"] = {k: v for k, v in arch_kwargs.items() if v not in (None, "")} or None
    return kw


def resolve_segment_config(yaml_path=None, **flags):
    """resolve_config("segment", ...) with the preset's base channels filled in when none were given."""
    from leukodx.training.config import resolve_config

    overrides = segment_overrides(**flags)
    cfg = resolve_config("segment", yaml_path=yaml_path, overrides=overrides)
    if "base_channels" not in cfg.arch_kwargs and "encoder" not in cfg.arch_kwargs and ":" not in cfg.arch:
        cfg.arch_kwargs = {**cfg.arch_kwargs, "base_channels": BASE_CHANNELS.get(cfg.preset, 16)}
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# training


def score_test_split(model_dir, test_samples, evaluate_shift: bool, batch_size: int):
    """The saved model scored on the test fields through the analysis pipeline (PyTorch engine), as `leukodx
    evaluate` scores it: (metrics, lab-shift metrics or None); (None, None) without test fields."""
    if not test_samples:
        return None, None
    from leukodx.evaluation.evaluate import _shift_fn, evaluate_segmenter, load_models

    models, _ = load_models([model_dir], engine="torch")
    res = evaluate_segmenter(models[0], list(test_samples), batch_size, _shift_fn("lab", 0, 1.0) if evaluate_shift
                             else None)
    return res["metrics"], res["metrics_shift"]


_BRIEF_KEYS = ("n_images", "n_scored", "n_reference_failed", "dice_global", "dice_global_all", "dice_mean",
               "iou_global", "pixel_accuracy", "count_mae", "n_missing_masks")


def brief(m: dict | None) -> dict | None:
    return None if m is None else {k: m.get(k) for k in _BRIEF_KEYS}


def _drop_low_foreground(ds, fraction: float) -> list[str]:
    """Remove fields whose reference mask has under `fraction` foreground from a SegmentationDataset."""
    keep = [i for i, m in enumerate(ds.masks) if m.mean() >= fraction]
    dropped = [ds.samples[i].path for i in range(len(ds.masks)) if i not in set(keep)]
    ds.samples = [ds.samples[i] for i in keep]
    ds.images = [ds.images[i] for i in keep]
    ds.masks = [ds.masks[i] for i in keep]
    return dropped


ENCODER_UNUSED = ("conv_head.", "bn2.", "classifier.")  # a classifier's head: not part of a features_only encoder


def load_initial_weights(model, source, log) -> dict | None:
    """Start from the weights of a segmenter model directory (or its model.safetensors), or put ImageNet weights
    (a registered name such as efficientnet_lite0, leukodx.models.pretrained) into a timm encoder. Returns the
    pretrained record for config.json (and logs it): the encoder weights' record, or {"file", "fine_tuned"} for a
    model directory; None for no `source`."""
    from safetensors.torch import load_file

    from leukodx.models.pretrained import PRETRAINED

    if not source:
        return None
    if str(source) in PRETRAINED:
        record = load_encoder_weights(model, str(source))
        log(f"encoder: ImageNet weights {source} ({record['n_loaded']} tensors, {record['licence']})")
        return record
    p = Path(source)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise ModelError(f"--pretrained {source}: no model.safetensors there.",
                         "Give a segmenter model directory written by `leukodx train segment`.")
    try:
        model.load_state_dict(load_file(str(f)))
    except RuntimeError as exc:
        raise ModelError(f"--pretrained {source} does not fit this architecture ({str(exc).splitlines()[0]}).",
                         "Use the same --arch, --base-channels and --depth as the run it comes from.") from None
    log(f"every weight from {f} (fine-tuning)")
    return {"file": str(f), "fine_tuned": True}


def load_encoder_weights(model, name: str) -> dict:
    """The packaged ImageNet weights `name` into the segmenter's timm encoder, strictly (every encoder tensor from
    the weights, shapes checked); the classifier head of the weights (conv_head, bn2, classifier) is not used."""
    from leukodx.models.pretrained import PRETRAINED, load_strict, map_package_state, read_state_dict

    target = PRETRAINED[name]
    body = getattr(model.encoder, "body", None)
    enc_name = getattr(model.encoder, "name", None)
    if body is None or enc_name != target.arch:
        raise ModelError(f"--pretrained {name} holds {target.arch} weights, but this segmenter's encoder is "
                         f"{enc_name or 'the classic U-Net encoder'}.",
                         f"Use --arch unet:{target.arch} (or unet-fpn-gelu:{target.arch}) with --pretrained {name}.")
    weights = map_package_state(read_state_dict(target.file()), target.depths)
    weights = {k: v for k, v in weights.items() if not k.startswith(ENCODER_UNUSED)}
    record = load_strict(body, weights, f"Pretrained weights {name!r} do not fit the encoder", enc_name)
    record.update({"name": name, "package": target.package, "source": target.source, "licence": target.licence,
                   "weights_arch": target.arch, "used_for": "encoder",
                   "not_used": list(ENCODER_UNUSED)})
    return record


def train_segmenter(cfg, *, split=None, log_fn=None, checkpoints: bool = True, evaluate_shift: bool = False,
                    min_mask_fraction: float | None = None) -> dict:
    """Train and score a segmenter as `cfg` (a leukodx.training.config.TrainConfig, task "segment") says.

    Writes RUN/config.json + model.safetensors (load_model), RUN/metrics.json ({"segmentation": ...} on the test
    split), RUN/history.json, RUN/split.csv, RUN/run_config.yaml, RUN/checkpoints/. `split` may be a
    leukodx.data.datasets.SplitInfo (the study passes one). Returns a summary (config, metrics, wall time).
    """
    from leukodx.data.datasets import EpochSampler, SegmentationDataset
    from leukodx.data.layout import load_dataset
    from leukodx.data.split import write_split
    from leukodx.data.transforms import segmentation_transforms
    from leukodx.inference.instances import DEFAULT_PARAMS
    from leukodx.models.checkpoint import save_model
    from leukodx.models.model_config import update_model_config
    from leukodx.models.registry import create_model
    from leukodx.models.segmenters import parse_arch
    from leukodx.training import distributed as dist_utils
    from leukodx.training.classify import _loader
    from leukodx.training.config import save_run_config
    from leukodx.training.engine import Trainer, run_split, split_record, start_run

    t_start = time.perf_counter()
    out, device, info, log = start_run(cfg, data_hint="a folder with Original/ and Segmented/", log_fn=log_fn,
                                       cpu_threads=cfg.threads)

    ds = load_dataset(cfg.data)
    require_masks(ds, cfg.data)
    split, train_s, val_s, test_s = run_split(cfg, ds, split)

    arch, extra = parse_arch(cfg.arch)  # "unet", "unet-fpn-gelu", or "<name>:<timm encoder>"
    arch_kwargs = {"normalization": cfg.normalization, **extra, **cfg.arch_kwargs}
    model = create_model("segment", arch, **arch_kwargs)
    pretrained_record = load_initial_weights(model, cfg.pretrained, log)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.arch} {arch_kwargs}: {n_params / 1e6:.2f} M parameters, {cfg.image_size} px, device {device}")

    t_decode = time.perf_counter()
    train_tf, eval_tf = segmentation_transforms(cfg.image_size, cfg.augment)
    skip = cfg.skip_near_empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # resized masks are counted in the summary instead
        train_ds = SegmentationDataset(train_s, train_tf, cfg.mask_threshold, skip_near_empty=skip,
                                       references=cfg.references)
        val_ds = SegmentationDataset(val_s, eval_tf, cfg.mask_threshold, skip_near_empty=skip,
                                     references=cfg.references)
    if len(train_ds) == 0:
        tsum = train_ds.summary()
        raise DatasetError(
            f"No usable reference mask among the {len(train_s)} training fields of {cfg.data} "
            f"({tsum['n_missing_masks']} without a mask, {tsum['n_near_empty']} near-empty (< 0.1 % foreground "
            f"at grayscale > {cfg.mask_threshold}), {tsum['n_unreadable']} unreadable).",
            "Check DATA/Segmented/<class>/ and --mask-threshold; --include-near-empty trains on near-empty masks too.",
        )
    low: dict[str, list[str]] = {"train": [], "val": []}
    if min_mask_fraction and skip:
        low = {"train": _drop_low_foreground(train_ds, min_mask_fraction),
               "val": _drop_low_foreground(val_ds, min_mask_fraction)}
        if len(train_ds) == 0:
            raise DatasetError(f"No training field has a reference mask with >= {min_mask_fraction:.2%} foreground.",
                               "Lower --min-mask-fraction.")
    tsum, vsum = train_ds.summary(), val_ds.summary()
    for name, summ in (("train", tsum), ("val", vsum)):
        summ["min_mask_fraction"] = min_mask_fraction
        summ["n_low_foreground"] = len(low[name])
        by_path = {x.path: x.label for x in (train_s if name == "train" else val_s)}
        summ["low_foreground_by_class"] = dict(Counter(by_path.get(p, "?") for p in low[name]))
        if low[name]:
            log(f"{name}: {len(low[name])} more field(s) with a reference under {min_mask_fraction:.2%} foreground "
                f"left out ({summ['low_foreground_by_class']})")
    log(f"decoded {len(train_ds)} train + {len(val_ds)} val fields with masks in {time.perf_counter() - t_decode:.1f} s")
    for name, s in (("train", tsum), ("val", vsum)):
        notes = []
        if s["n_near_empty"]:
            notes.append(f"{s['n_near_empty']} near-empty reference mask(s) (< 0.1 % foreground) "
                         + ("left out" if skip else "kept (--include-near-empty)"))
        if s["n_missing_masks"]:
            notes.append(f"{s['n_missing_masks']} field(s) without a mask left out")
        if s["n_unreadable"]:
            notes.append(f"{s['n_unreadable']} unreadable file(s) left out")
        if s["n_resized_masks"]:
            notes.append(f"{s['n_resized_masks']} mask(s) of another size than their image resized (nearest)")
        if notes:
            log(f"{name}: " + "; ".join(notes))

    pin = device.type == "cuda"
    sampler = None
    if info.enabled:
        sampler = EpochSampler(len(train_ds), seed=cfg.seed, num_replicas=info.world_size, rank=info.rank)
    per_rank_batch = max(1, cfg.batch_size // info.world_size) if info.enabled else cfg.batch_size
    train_loader = _loader(train_ds, per_rank_batch, sampler=sampler, shuffle=sampler is None, workers=cfg.workers,
                           seed=cfg.seed, drop_last=len(train_ds) > per_rank_batch, pin=pin)
    val_loader = _loader(val_ds, max(cfg.batch_size, 16), workers=min(cfg.workers, 2), seed=cfg.seed, pin=pin)
    loss_fn = DiceBCELoss()

    def dice_metric(outputs, targets) -> float:
        d = DiceScore()
        d.update(outputs, targets)
        return d.compute()

    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        save_run_config(cfg, out / "run_config.yaml")
        write_split(split.rows, {**split.summary, "counts": split.counts()}, out / "split.csv")
    trainer = Trainer(model, loss_fn, train_loader, val_loader, cfg, out, metric_fn=dice_metric, metric_name="dice",
                      batch_metric_fn=dice_metric, batch_metric_name="dice", device=device, checkpoints=checkpoints,
                      log_fn=log_fn)
    t_train = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t_train
    model = trainer.model.eval()
    result = {"out": str(out), "history": history, "train_seconds": train_seconds}
    if not info.is_main:
        dist_utils.cleanup()
        return result

    wall = time.perf_counter() - t_start
    config = {
        "task": "segment",
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "classes": list(ds.classes),
        "input_size": [cfg.image_size, cfg.image_size],
        "normalization": cfg.normalization,
        "input": "float32 N x 3 x H x W, RGB 0..255 (normalisation is inside the model); output logits N x 1 x H x W",
        "output": "logits of leukocyte foreground; sigmoid > thresholds.mask is the mask",
        "reference_mask_level": cfg.mask_threshold,
        "thresholds": {
            "mask": PROBABILITY_THRESHOLD,
            "instances": {**DEFAULT_PARAMS,
                          "note": "pixels of a 224 px field; leukodx.inference.instances.scaled_params rescales"},
        },
        "n_parameters": n_params,
        "training": {
            **split_record(cfg, split, {"train": train_ds.samples, "val": val_ds.samples, "test": test_s}),
            "masks": {"train": tsum, "val": vsum},
            "references": cfg.references,
            "pretrained": pretrained_record,
            "reference_mask_rule": f"grayscale(Segmented) > {cfg.mask_threshold}",
            "loss": "BCE + soft Dice (batch-global)",
            "early_stopping_metric": "validation global Dice at probability 0.5",
            **trainer.run_record(train_seconds, wall),
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "metrics": {"val_dice": trainer.best_metric},
    }
    save_model(out, model, config)
    test_metrics, shift_metrics = score_test_split(out, test_s, evaluate_shift, max(cfg.batch_size, 16))
    config = update_model_config(out, metrics={**config["metrics"], "test": brief(test_metrics),
                                               "test_lab_shift": brief(shift_metrics)}).to_json()
    seg = dict(test_metrics) if test_metrics is not None else {"n_images": 0}
    per_image = seg.pop("per_image", None)
    metrics = {"segmentation": seg, "model": str(out), "split": "test", "training_data": config["training"]["counts"]}
    if shift_metrics is not None:
        metrics["segmentation_lab_shift"] = {k: v for k, v in shift_metrics.items() if k != "per_image"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    if per_image is not None:
        (out / "test_fields.json").write_text(json.dumps(per_image, indent=1, default=float))
    if test_metrics:
        log(summary_line("test", test_metrics))
    if shift_metrics:
        log(summary_line("test, lab shift", shift_metrics))
    log(f"model directory: {out} (wall time {wall:.0f} s)")
    dist_utils.cleanup()
    result.update({"config": config, "metrics": metrics, "test_metrics": test_metrics, "shift_metrics": shift_metrics,
                   "wall_seconds": wall, "n_parameters": n_params, "train_summary": tsum, "val_summary": vsum})
    return result


def fmt(v, pct=False) -> str:
    """A metric for a log line: 4 decimals, or a percentage; "n/a" for None."""
    if v is None:
        return "n/a"
    return f"{100 * v:.2f} %" if pct else f"{v:.4f}"


def summary_line(name: str, m: dict) -> str:
    return (f"{name}: dice_global {fmt(m['dice_global'])}, dice_global_all {fmt(m['dice_global_all'])}, "
            f"pixel accuracy {fmt(m['pixel_accuracy'], True)}, count MAE {fmt(m['count_mae'])} "
            f"({m['n_images']} fields, {m['n_reference_failed']} with a failed reference mask, "
            f"{m.get('n_missing_masks', 0)} without a mask)")
