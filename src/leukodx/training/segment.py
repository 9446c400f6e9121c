"""Segmentation training glue: reference masks, Dice + BCE loss, Dice for early stopping, test-split metrics.

The optimisation loop itself is the project's one engine (leukodx.training.engine); this module supplies what is
particular to segmentation and writes the model directory:

- reference masks are `grayscale(Segmented/<class>/<name>) > mask_threshold` (128, as in the study);
- fields whose reference mask is near-empty (< 0.1 % foreground: the colour thresholding failed, 154 of the
  562 Pro fields) are left out of training and validation by default, and the run says how many;
- fields without a mask are left out and counted; a data set with no usable mask is one clear error;
- image and mask are augmented together (leukodx.data.transforms), colour/stain changes on the image only;
- the test split is scored at the field's own resolution with the segmentation contract of DESIGN.md
  (leukodx.evaluation.metrics), cell counts from leukodx.inference.instances.

Example::

    from leukodx.config import resolve_config
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leukodx.errors import DatasetError

PROBABILITY_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------------------------
# loss and metric


class DiceBCELoss(nn.Module):
    """BCE-with-logits + (1 - soft Dice), the Dice computed over the whole batch (stable on empty masks)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum()
        dice = (2 * inter + self.smooth) / (p.sum() + target.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)


class DiceScore:
    """Streaming global Dice of thresholded predictions (the early-stopping metric): update(logits, target)."""

    def __init__(self, threshold: float = PROBABILITY_THRESHOLD):
        self.logit_threshold = float(np.log(threshold / (1 - threshold)))
        self.reset()

    def reset(self) -> None:
        self.inter = self.pred = self.ref = 0.0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        p = logits.detach() > self.logit_threshold
        t = target.detach() > 0.5
        self.inter += float((p & t).sum())
        self.pred += float(p.sum())
        self.ref += float(t.sum())

    def compute(self) -> float:
        den = self.pred + self.ref
        return 1.0 if den == 0 else 2 * self.inter / den


# ---------------------------------------------------------------------------------------------------------------
# data


def masked_samples(samples, split_name: str = "") -> tuple[list, list[str]]:
    """(samples that have a reference mask, paths of those that have none)."""
    have = [s for s in samples if s.mask is not None]
    return have, [s.path for s in samples if s.mask is None]


def require_masks(dataset, data) -> None:
    """One clear error when a data set has no usable reference mask at all."""
    if not dataset.has_masks or not any(s.mask is not None for s in dataset.samples):
        raise DatasetError(
            f"{data} has no reference masks (no Segmented/<class>/ images matching the fields in Original/).",
            "Segmentation training needs DATA/Segmented/<class>/<name> beside DATA/Original/<class>/<name>; "
            "the flat layout holds no masks.",
        )


# ---------------------------------------------------------------------------------------------------------------
# inference and scoring at the field's own resolution


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


@torch.inference_mode()
def predict_probabilities(model, fields: list[np.ndarray], input_size: tuple[int, int], device="cpu",
                          batch_size: int = 16) -> list[np.ndarray]:
    """Foreground probability maps (float32 HxW, each at its field's own size) for HxWx3 uint8 fields."""
    model.eval()
    out: list[np.ndarray] = []
    for i in range(0, len(fields), batch_size):
        chunk = fields[i:i + batch_size]
        x = torch.stack([torch.from_numpy(np.array(_resize_rgb(f, input_size))).permute(2, 0, 1) for f in chunk]).float()
        prob = torch.sigmoid(model(x.to(device)).float()).cpu()
        for f, p in zip(chunk, prob, strict=True):
            if p.shape[-2:] != f.shape[:2]:
                p = F.interpolate(p[None], size=f.shape[:2], mode="bilinear", align_corners=False)[0]
            out.append(p[0].numpy())
    return out


def evaluate_segmenter(model, samples, input_size, *, mask_threshold: int = 128,
                       probability: float = PROBABILITY_THRESHOLD, shift: str | None = None, shift_seed: int = 0,
                       device="cpu", batch_size: int = 16, progress=None) -> dict:
    """Segmentation metrics (DESIGN.md contract) of `model` on `samples` at each field's own resolution.

    Fields without a mask are counted (`n_missing_masks`) and left out; unreadable files likewise
    (`n_unreadable`). `shift="lab"` applies leukodx.evaluation.shift.lab_shift to image and mask, one fixed
    draw per field. Cell counts: split_instances on the prediction vs reference_components on the reference,
    both with parameters scaled to the field's size.
    """
    from leukodx.data.images import read_reference_mask, read_rgb
    from leukodx.errors import ImageError
    from leukodx.evaluation.metrics import SegmentationAccumulator
    from leukodx.inference.instances import reference_components, scaled_params, split_instances

    if shift not in (None, "lab"):
        raise DatasetError(f"Unknown shift {shift!r}.", "Use --shift lab, or leave it out.")
    acc = SegmentationAccumulator()
    per_class: dict[str, SegmentationAccumulator] = {}
    have, missing = masked_samples(samples)
    labels = {s.path: s.label for s in have}
    unreadable: list[str] = []
    t0 = time.perf_counter()
    chunk = max(1, batch_size) * 4
    for i in range(0, len(have), chunk):
        fields, refs, names = [], [], []
        for s in have[i:i + chunk]:
            try:
                rgb = read_rgb(s.image)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref = read_reference_mask(s.mask, mask_threshold, size=(rgb.shape[1], rgb.shape[0]))
            except ImageError as exc:
                unreadable.append(f"{s.path} ({exc.reason})")
                continue
            if shift == "lab":
                from leukodx.evaluation.shift import lab_shift, rng_for

                rgb, ref = lab_shift(rgb, rng_for(shift_seed, s.path), mask=ref)
            fields.append(rgb)
            refs.append(ref.astype(bool))
            names.append(s.path)
        probs = predict_probabilities(model, fields, input_size, device, batch_size)
        for p, ref, name in zip(probs, refs, names, strict=True):
            pred = p > probability
            params = scaled_params(pred.shape)
            n_pred = len(split_instances(pred, **params)[1])
            n_ref = reference_components(ref, params["min_area"], params["max_hole"])
            acc.add(pred, ref, n_pred, n_ref, name)
            label = labels.get(name)
            if label is not None:
                per_class.setdefault(label, SegmentationAccumulator()).add(pred, ref, n_pred, n_ref, name)
        if progress is not None:
            progress(min(i + chunk, len(have)), len(have))
    res = acc.result()
    res["n_missing_masks"] = len(missing)
    res["per_class"] = {c: {k: v for k, v in a.result().items() if k != "per_image"}
                        for c, a in sorted(per_class.items())}
    res["n_unreadable"] = len(unreadable)
    if unreadable:
        res["unreadable"] = unreadable
    res["probability_threshold"] = probability
    res["mask_threshold"] = mask_threshold
    res["shift"] = shift
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["count_rule"] = ("predicted: leukodx.inference.instances.split_instances (touching cells split); "
                         "reference: connected components of the reference mask, same speck rule")
    best, worst = acc.best_worst(3)
    res["best_fields"] = [r["name"] for r in best]
    res["worst_fields"] = [r["name"] for r in worst]
    return res


# ---------------------------------------------------------------------------------------------------------------
# training


def build_segmenter_model(cfg):
    """(model, arch_kwargs) from cfg.arch ("unet", "unet-fpn-gelu", or "<name>:<timm encoder>") and cfg.arch_kwargs."""
    from leukodx.models.registry import create_model
    from leukodx.models.segmenters import parse_arch

    arch, extra = parse_arch(cfg.arch)
    arch_kwargs = {"normalization": cfg.normalization, **extra, **cfg.arch_kwargs}
    model = create_model("segment", arch, **arch_kwargs)
    return arch, model, arch_kwargs


def _counts(samples) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(s.label for s in samples))


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


def _load_initial_weights(model, source) -> None:
    """Start from the weights of a segmenter model directory (or its model.safetensors)."""
    from safetensors.torch import load_file

    from leukodx.errors import ModelError

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


def train_segmenter(cfg, *, split=None, log_fn=None, checkpoints: bool = True, evaluate_shift: bool = False,
                    min_mask_fraction: float | None = None) -> dict:
    """Train and score a segmenter as `cfg` (a leukodx.config.TrainConfig, task "segment") says.

    Writes RUN/config.json + model.safetensors (load_model), RUN/metrics.json ({"segmentation": ...} on the test
    split), RUN/history.json, RUN/split.csv, RUN/run_config.yaml, RUN/checkpoints/. `split` may be a
    leukodx.data.datasets.SplitInfo (the study passes one). Returns a summary (config, metrics, wall time).
    """
    from leukodx.config import save_run_config
    from leukodx.data.datasets import SegmentationDataset, load_split, samples_for_split, subset
    from leukodx.data.layout import load_dataset
    from leukodx.data.split import write_split
    from leukodx.data.transforms import segmentation_transforms
    from leukodx.models.checkpoint import save_model
    from leukodx.training import distributed as dist_utils
    from leukodx.training.engine import Trainer, start_run

    t_start = time.perf_counter()
    out, device, info, log = start_run(cfg, data_hint="a folder with Original/ and Segmented/", log_fn=log_fn,
                                       cpu_threads=cfg.threads)

    ds = load_dataset(cfg.data)
    require_masks(ds, cfg.data)
    if split is None:
        split = load_split(cfg.data, cfg.split, strategy=cfg.split_strategy, seed=cfg.seed, val=cfg.val_fraction,
                           test=cfg.test_fraction, common_test=cfg.common_test, test_seed=cfg.test_seed)
    train_s = subset(samples_for_split(cfg.data, split, "train", ds), cfg.max_train_images, cfg.seed)
    val_s = subset(samples_for_split(cfg.data, split, "val", ds), cfg.max_val_images, cfg.seed)
    test_s = subset(samples_for_split(cfg.data, split, "test", ds), cfg.max_test_images, 0)

    arch, model, arch_kwargs = build_segmenter_model(cfg)
    if cfg.pretrained:
        _load_initial_weights(model, cfg.pretrained)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.arch} {arch_kwargs}: {n_params / 1e6:.2f} M parameters, {cfg.image_size} px, device {device}")

    t_decode = time.perf_counter()
    train_tf, eval_tf = segmentation_transforms(cfg.image_size, cfg.augment)
    skip = cfg.skip_near_empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # resized masks are counted in the summary instead
        train_ds = SegmentationDataset(train_s, train_tf, cfg.mask_threshold, skip_near_empty=skip)
        val_ds = SegmentationDataset(val_s, eval_tf, cfg.mask_threshold, skip_near_empty=skip)
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

    from leukodx.training.classify import _loader

    pin = device.type == "cuda"
    sampler = None
    if info.enabled:
        from leukodx.data.datasets import EpochSampler

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

    input_size = (cfg.image_size, cfg.image_size)
    test_metrics = shift_metrics = None
    if test_s:
        test_metrics = evaluate_segmenter(model, test_s, input_size, mask_threshold=cfg.mask_threshold,
                                          device=device, batch_size=max(cfg.batch_size, 16))
        if evaluate_shift:
            shift_metrics = evaluate_segmenter(model, test_s, input_size, mask_threshold=cfg.mask_threshold,
                                               shift="lab", device=device, batch_size=max(cfg.batch_size, 16))
    from leukodx.inference.instances import MAX_HOLE, MIN_AREA, MIN_DISTANCE, REFERENCE_SIDE, H

    wall = time.perf_counter() - t_start
    config = {
        "task": "segment",
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "classes": list(ds.classes),
        "input_size": [cfg.image_size, cfg.image_size],
        "normalization": cfg.normalization,
        "input": "float32 N x 3 x H x W, RGB 0..255 (normalisation is inside the model); output logits N x 1 x H x W",
        "output": "logits of leukocyte foreground; sigmoid > thresholds.probability is the mask",
        "mask_threshold": cfg.mask_threshold,
        "thresholds": {
            "probability": PROBABILITY_THRESHOLD,
            "instances": {"min_area": MIN_AREA, "min_distance": MIN_DISTANCE, "h": H, "max_hole": MAX_HOLE,
                          "reference_side": REFERENCE_SIDE,
                          "note": "pixels of a 224 px field; leukodx.inference.instances.scaled_params rescales"},
        },
        "n_parameters": n_params,
        "training": {
            "data": str(Path(cfg.data).resolve()),
            "split_file": split.summary.get("split_file"),
            "split_strategy": split.summary.get("strategy"),
            "split_seed": split.summary.get("seed"),
            "common_test": split.summary.get("common_test"),
            "test_seed": split.summary.get("test_seed"),
            "split_note": split.summary.get("note", "Split by field and duplicate group; not by patient."),
            "counts": {"train": _counts(train_ds.samples), "val": _counts(val_ds.samples), "test": _counts(test_s)},
            "masks": {"train": tsum, "val": vsum},
            "reference_mask_rule": f"grayscale(Segmented) > {cfg.mask_threshold}",
            "loss": "BCE + soft Dice (batch-global)",
            "early_stopping_metric": "validation global Dice at probability 0.5",
            "epochs_run": len(history),
            "best_epoch": trainer.best_epoch,
            "stopped_early": trainer.stopped_early,
            "resumed_from_epoch": trainer.resumed_from,
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(wall, 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "config": cfg.to_dict(),
        },
        "metrics": {"val_dice": trainer.best_metric, "test": brief(test_metrics), "test_lab_shift": brief(shift_metrics)},
    }
    save_model(out, model, config)
    seg = dict(test_metrics) if test_metrics is not None else {"n_images": 0}
    per_image = seg.pop("per_image", None)
    metrics = {"segmentation": seg, "model": str(out), "split": "test", "training_data": config["training"]["counts"]}
    if shift_metrics is not None:
        sm = dict(shift_metrics)
        sm.pop("per_image", None)
        metrics["segmentation_lab_shift"] = sm
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    if per_image is not None:
        (out / "test_fields.json").write_text(json.dumps(per_image, indent=1, default=float))
    if test_metrics:
        log(_summary_line("test", test_metrics))
    if shift_metrics:
        log(_summary_line("test, lab shift", shift_metrics))
    log(f"model directory: {out} (wall time {wall:.0f} s)")
    dist_utils.cleanup()
    result.update({"config": config, "metrics": metrics, "test_metrics": test_metrics, "shift_metrics": shift_metrics,
                   "wall_seconds": wall, "n_parameters": n_params, "train_summary": tsum, "val_summary": vsum})
    return result


def _fmt(v, pct=False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f} %" if pct else f"{v:.4f}"


def _summary_line(name: str, m: dict) -> str:
    return (f"{name}: dice_global {_fmt(m['dice_global'])}, dice_global_all {_fmt(m['dice_global_all'])}, "
            f"pixel accuracy {_fmt(m['pixel_accuracy'], True)}, count MAE {_fmt(m['count_mae'])} "
            f"({m['n_images']} fields, {m['n_reference_failed']} with a failed reference mask, "
            f"{m.get('n_missing_masks', 0)} without a mask)")


# ---------------------------------------------------------------------------------------------------------------
# the study: U-Net vs U-Net-FPN-GELU, seeds, one common test set

STUDY_METRICS = ("dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy", "count_mae")


def _mean_std(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def summarize_study(runs: list[dict], archs: list[str]) -> dict:
    """Per architecture: mean ± std (sample std over seeds) of every study metric, test and lab shift."""
    out = {}
    for arch in archs:
        rs = [r for r in runs if r["arch"] == arch]
        entry = {"n_runs": len(rs), "test": {}, "test_lab_shift": {}}
        for m in STUDY_METRICS:
            entry["test"][m] = _mean_std([r["test"].get(m) for r in rs if r.get("test")])
            if any(r.get("test_lab_shift") for r in rs):
                entry["test_lab_shift"][m] = _mean_std([r["test_lab_shift"].get(m) for r in rs
                                                        if r.get("test_lab_shift")])
        entry["train_seconds"] = _mean_std([r["train_seconds"] for r in rs])
        entry["epochs_run"] = _mean_std([r["epochs_run"] for r in rs])
        entry["n_parameters"] = rs[0]["n_parameters"] if rs else None
        out[arch] = entry
    return out


def _pm(s: dict, pct: bool = False, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    k = 100 if pct else 1
    d = 2 if pct else digits
    return f"{k * s['mean']:.{d}f} ± {k * s['std']:.{d}f}"


def study_table(summary: dict) -> str:
    """A markdown table: one row per architecture, mean ± std over seeds."""
    has_shift = any(e["test_lab_shift"] for e in summary.values())
    head = ["architecture", "params", "runs", "dice_global", "dice_global_all", "dice_mean", "iou_global",
            "pixel accuracy %", "count_mae"] + (["dice_global, lab shift"] if has_shift else []) + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, e in summary.items():
        t = e["test"]
        row = [arch, f"{(e['n_parameters'] or 0) / 1e6:.2f} M", str(e["n_runs"]), _pm(t["dice_global"]),
               _pm(t["dice_global_all"]), _pm(t["dice_mean"]), _pm(t["iou_global"]),
               _pm(t["pixel_accuracy"], pct=True), _pm(t["count_mae"], digits=2)]
        if has_shift:
            row.append(_pm(e["test_lab_shift"].get("dice_global")))
        row.append(f"{e['train_seconds']['mean']:.0f}" if e["train_seconds"]["mean"] is not None else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _study_plots(out: Path, runs: list[dict], summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    archs = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (m, label, k) in zip(axes, [("dice_global", "Dice (global)", 1), ("pixel_accuracy", "pixel accuracy %", 100),
                                       ("count_mae", "count MAE (cells/field)", 1)], strict=True):
        means = [(summary[a]["test"][m]["mean"] or 0) * k for a in archs]
        stds = [(summary[a]["test"][m]["std"] or 0) * k for a in archs]
        ax.bar(range(len(archs)), means, yerr=stds, capsize=4, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][
            : len(archs)])
        for i, a in enumerate(archs):
            vals = [v * k for v in summary[a]["test"][m]["values"]]
            ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(archs)), archs, fontsize=8)
        ax.set_title(label, fontsize=9)
        if m != "count_mae" and any(means):
            lo = min(v for a in archs for v in summary[a]["test"][m]["values"]) * k
            ax.set_ylim(max(0, lo - (k * 0.05)), None)
    fig.suptitle("test split, mean ± std over seeds (dots: single runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    files.append("metrics.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    colours = {a: c for a, c in zip(archs, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"], strict=False)}
    for r in runs:
        hist = r.get("history") or []
        ax.plot([h["epoch"] for h in hist], [h.get("val_dice") for h in hist], color=colours.get(r["arch"], "k"),
                alpha=0.8, label=f"{r['arch']} seed {r['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "val_dice.png", dpi=110)
    plt.close(fig)
    files.append("val_dice.png")
    return files


def run_segmentation_study(data, archs: list[str], seeds: int, out, *, base_flags: dict, evaluate_shift: bool = False,
                           log_fn=None, test_seed: int = 0) -> dict:
    """Train every (arch, seed) on one common group-aware test set; DIR/results.json, DIR/table.md, plots.

    `base_flags` are train-segment settings (as for resolve_segment_config) shared by every run. Each seed draws its
    own train/val split of the remaining fields (make_split(common_test=True)). Runs already finished in
    DIR/runs/ (their metrics.json exists) are read back, not retrained.
    """
    from leukodx.cli.train_segment import resolve_segment_config
    from leukodx.data.datasets import SplitInfo
    from leukodx.data.split import make_split
    from leukodx.errors import LeukodxError

    log = log_fn or (lambda m: print(m, flush=True))
    if not archs:
        raise LeukodxError("No architectures given.", "Pass e.g. --archs unet,unet-fpn-gelu.")
    if seeds < 1:
        raise LeukodxError(f"--seeds {seeds} is not a positive number.", "Pass e.g. --seeds 3.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from leukodx.data.layout import load_dataset

    require_masks(load_dataset(data), data)
    t0 = time.perf_counter()
    runs: list[dict] = []
    test_paths = None
    for seed in range(seeds):
        rows, summary = make_split(data, strategy="sgdc", seed=seed, common_test=True, test_seed=test_seed)
        summary = {k: v for k, v in summary.items() if k != "counts"}
        summary["split_file"] = None
        tp = sorted(r["path"] for r in rows if r["split"] == "test")
        if test_paths is None:
            test_paths = tp
        elif tp != test_paths:  # make_split(common_test=True) guarantees it; check anyway
            raise LeukodxError("The seeds' test sets differ.", "Report this as a bug.")
        for arch in archs:
            name = f"{arch.replace(':', '-')}-seed{seed}"
            run_dir = out / "runs" / name
            if (run_dir / "metrics.json").is_file() and (run_dir / "config.json").is_file():
                cfgj = json.loads((run_dir / "config.json").read_text())
                mj = json.loads((run_dir / "metrics.json").read_text())
                hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else []
                log(f"[{name}] already done, read back")
                runs.append(_run_record(arch, seed, run_dir, cfgj, mj, hist))
                continue
            cfg = resolve_segment_config(None, **{**base_flags, "data": str(data), "out": str(run_dir), "arch": arch,
                                                 "seed": seed, "quiet": True})
            log(f"[{name}] training ({cfg.epochs} epochs max, {cfg.image_size} px, {cfg.arch_kwargs})")
            res = train_segmenter(cfg, split=SplitInfo(rows, summary), log_fn=lambda m, n=name: log(f"[{n}] {m}"),
                                  checkpoints=False, evaluate_shift=evaluate_shift)
            runs.append(_run_record(arch, seed, run_dir, res["config"], res["metrics"], res["history"]))
            if res.get("test_metrics"):
                log(f"[{name}] {res['train_seconds']:.0f} s training, {res['wall_seconds']:.0f} s in all; "
                    + _summary_line("test", res["test_metrics"]))
            _write_study(out, data, archs, seeds, runs, base_flags, time.perf_counter() - t0, test_paths)
    result = _write_study(out, data, archs, seeds, runs, base_flags, time.perf_counter() - t0, test_paths)
    result["plots"] = _study_plots(out, runs, result["summary"])
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _run_record(arch, seed, run_dir, config, metrics, history) -> dict:
    seg = metrics.get("segmentation") or {}
    shift = metrics.get("segmentation_lab_shift")
    tr = config.get("training", {})
    return {"arch": arch, "seed": seed, "dir": str(run_dir), "test": brief(seg),
            "test_lab_shift": brief(shift) if shift else None, "train_seconds": tr.get("train_seconds"),
            "wall_seconds": tr.get("wall_seconds"), "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"),
            "val_dice": (config.get("metrics") or {}).get("val_dice"), "n_parameters": config.get("n_parameters"),
            "arch_kwargs": config.get("arch_kwargs"), "masks": tr.get("masks"),
            "history": [{"epoch": h["epoch"], "val_dice": h.get("val_dice"), "train_loss": h.get("train_loss")}
                        for h in history]}


def _write_study(out: Path, data, archs, seeds, runs, base_flags, seconds, test_paths) -> dict:
    import platform

    summary = summarize_study(runs, archs)
    result = {
        "study": "segmentation: U-Net vs U-Net-FPN-GELU",
        "data": str(Path(data).resolve()),
        "archs": archs,
        "seeds": seeds,
        "settings": base_flags,
        "split": "sgdc, one common group-aware test set (test_seed 0) for every run; train/val redrawn per seed; "
                 "by field and duplicate group, not by patient (no patient IDs are published)",
        "n_test_fields": len(test_paths or []),
        "summary": summary,
        "runs": runs,
        "wall_seconds": round(seconds, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "table.md").write_text(study_table(summary))
    return result
