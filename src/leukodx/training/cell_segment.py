"""Training of the two-output segmenter (channel 0 = whole leukocyte, channel 1 = nucleus) on several labs.

    cfg = resolve_config("cell_segment", overrides={"out": "runs/cellseg", "data": "DATA/all-taleqani",
                         "raabin": "DATA/raabin-fields", "pbc": "DATA/pbc", "splits": "benchmarks/splits",
                         "synthetic": 200, "pretrained": "efficientnet_lite0", "time_limit_s": 38 * 60})
    res = train_cell_segmenter(cfg)

224-px crops at the Taleqani red-cell scale come from `leukodx.data.cell_dataset` (each source's references by
its rule in `leukodx.data.cell_references`, all made before training starts, and cached in ``cfg.cache_dir``
when given, so the loader does no reference work), are resized to the model input as the analysis resizes its
windows (`to_input`) and train through the one engine with the masked BCE + Dice loss (unknown pixels teach
nothing). A weighted sampler draws each source with its weight (`DEFAULT_SOURCE_WEIGHTS`) whatever its size.
The epoch with the best `selection_score` is written as soon as it is reached, so a run cut short by
`cfg.time_limit_s` (counted from the start, references included) still leaves a model directory.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leukodx.data import cell_dataset as cell_data
from leukodx.data import sources
from leukodx.errors import DatasetError, LeukodxError
from leukodx.training.config import TrainConfig
from leukodx.training.losses import masked_bce_dice

OUTPUTS = ["cell", "nucleus"]
REAL_SOURCES = ("taleqani", "raabin", "pbc", "chula")
DEFAULT_SOURCE_WEIGHTS = {"taleqani": 1.0, "raabin": 1.0, "pbc": 1.0, "chula": 1.0, "synthetic": 0.2}
LABEL_RULES = {
    "taleqani": "nucleus = the repaired reference of Segmented/ (reference_masks.repaired_reference), supervised "
                "everywhere; cell = positive on the nucleus, unknown within 1.5 red-cell diameters of a nucleus, "
                "negative farther away; specks < 40 px unknown in both channels",
    "raabin": "inside each leukocyte box: whole cell = watershed of stained matter seeded at the nucleus "
              "(nuclear-stain score g-b optical density above its threshold) within the box's ellipse grown 8 %; "
              "outside every leukocyte box grown 15 % negative in both channels; a 0.05 d band on the outline unknown",
    "pbc": "the centred cell by the stain rule (nucleus nearest the centre plus lobes within 0.6 d, cell within "
           "1.3 d); other nuclei and 0.8 d around them unknown; platelet and erythroblast crops: cell negative "
           "(erythroblast nucleus unknown)",
    "chula": "Raabin's rule on every typed box (all leukocytes; no red cells boxed, so the stained matter outside "
             "the boxes is the red-cell colour reference), red cells 40 px; a field without a label file unknown "
             "everywhere (sources.chula_field_reference)",
    "synthetic": "leukodx.data.synthetic smears: the generator's exact whole cells; nucleus unknown",
}


# ---------------------------------------------------------------------------------------------------------------
# data


def source_split_items(name: str, root: str | Path, split: str, split_csv: str | Path | None,
                       splits_dir: str | Path | None) -> tuple[list[cell_data.CellItem], str]:
    """(items, where the split comes from) of one real source: ``split_csv``, else its registry split file in
    ``splits_dir``; Raabin and PBC without one: their hash rule (Chula: by slide). Taleqani needs its file."""
    csv = Path(split_csv) if split_csv else sources.split_path(name, splits_dir) if splits_dir else None
    if csv is not None and csv.is_file():
        return cell_data.source_items(name, root, csv, split), str(csv)
    if name == "taleqani":
        raise DatasetError(f"No Taleqani split file ({csv or 'none given'}).",
                           f"Pass --split (or --splits, the folder holding {sources.SOURCES[name].split_file}).")
    return cell_data.source_items(name, root, None, split), "sources.split_of (hash of the path, seed 0)"


def _subset(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    idx = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in idx]


def prepare_all(ds: cell_data.CellDataset, name: str, log: Callable[[str], None]) -> float:
    """Make (or read from the cache) every item's references now; returns the seconds it took."""
    t0 = last = time.perf_counter()
    for i in range(len(ds)):
        ds.prepared(i)
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            log(f"  references {name}: {i + 1}/{len(ds)} ({last - t0:.0f} s)")
    return time.perf_counter() - t0


def to_input(x: torch.Tensor, target: torch.Tensor, known: torch.Tensor, size: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 224-px crops resized to the model input as the analysis resizes its windows: the image
    bilinear (antialiased, as PIL), target and known bilinear then > 0.5."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x, target, known
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    tk = F.interpolate(torch.cat([target, known], 1), size=(size, size), mode="bilinear", antialias=True,
                       align_corners=False) > 0.5
    c = target.shape[1]
    return x, tk[:, :c].float(), tk[:, c:].float()


# ---------------------------------------------------------------------------------------------------------------
# validation


@torch.inference_mode()
def validate(model, loader, size: int, device: torch.device, threshold: float = 0.5) -> dict[str, Any]:
    """Global Dice per channel on known pixels (sigmoid > threshold), the masked loss, and the counts."""
    model.eval()
    sums = torch.zeros(4, 2, dtype=torch.float64)  # per channel: overlap, predicted, reference, known pixels
    loss, n = 0.0, 0
    for x, t, k in loader:
        x, t, k = to_input(x.to(device), t.to(device), k.to(device), size)
        logits = model(x).float()
        loss += float(masked_bce_dice(logits, t, k)) * len(x)
        n += len(x)
        p = (torch.sigmoid(logits) > threshold).float() * k
        tt = t * k
        sums += torch.stack([(p * tt).sum((0, 2, 3)), p.sum((0, 2, 3)), tt.sum((0, 2, 3)),
                             k.sum((0, 2, 3))]).double().cpu()
    inter, psum, tsum, nknown = sums
    out: dict[str, Any] = {"n": n, "loss": loss / max(n, 1)}
    for c, name in enumerate(OUTPUTS):
        den = float(psum[c] + tsum[c])
        out[f"dice_{name}"] = None if nknown[c] == 0 or den == 0 else 2 * float(inter[c]) / den
        out[f"known_px_{name}"] = int(nknown[c])
    return out


def selection_score(val: dict[str, dict]) -> float:
    """The best-epoch metric: the mean of the real sources' channel Dices (every source's when none is real)."""
    real = [s for s in val if s in REAL_SOURCES] or list(val)
    vals = [val[s][f"dice_{c}"] for s in real for c in OUTPUTS if val[s].get(f"dice_{c}") is not None]
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# training


def _log_to(path: Path, log_fn: Callable[[str], None] | None) -> Callable[[str], None]:
    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(path, "a") as f:
            f.write(line + "\n")
        if log_fn is not None:
            log_fn(msg)

    return log


def _machine(device: torch.device) -> str:
    from leukodx.cpus import usable_cores

    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {cpu}"
    return f"{cpu}, {usable_cores()} CPU cores, {torch.get_num_threads()} torch threads, {platform.system()}"


def bundled_settings(encoder: str) -> tuple[dict, dict]:
    """(architecture settings, cell-splitting parameters) of the bundled segmenter (assets/segmenter/config.json):
    its arch_kwargs beyond the encoder when it uses `encoder` (e.g. out_stride, freeze_stages), else none; its
    thresholds.instances (the inference defaults when it is absent)."""
    from leukodx.assets import DEFAULT_MODELS
    from leukodx.inference.instances import DEFAULT_PARAMS

    try:
        cfg = json.loads((DEFAULT_MODELS["segment"] / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    kw = cfg.get("arch_kwargs") or {}
    arch = {k: v for k, v in kw.items() if k not in ("normalization", "encoder", "out_channels")} \
        if kw.get("encoder") == encoder else {}
    inst = dict((cfg.get("thresholds") or {}).get("instances") or {
        **DEFAULT_PARAMS, "note": "pixels of a 224 px field; leukodx.inference.instances.scaled_params rescales"})
    inst.setdefault("min_nucleus_fraction", 0.0)
    return arch, inst


def _data(cfg: TrainConfig, log: Callable[[str], None]):
    """(train dataset, val datasets per source, items and counts per source, where each split comes from)."""
    given = {"taleqani": cfg.data, "raabin": cfg.raabin, "pbc": cfg.pbc, "chula": cfg.chula}
    train_items: list[cell_data.CellItem] = []
    val_items: dict[str, list[cell_data.CellItem]] = {}
    split_used: dict[str, str] = {}
    for name, root in given.items():
        if root is None:
            continue
        csv = cfg.split if name == "taleqani" else None
        tr, where = source_split_items(name, root, "train", csv, cfg.splits)
        va, _ = source_split_items(name, root, "val", csv, cfg.splits)
        if not tr:
            raise DatasetError(f"No training rows of {name} in {where}.", "Check the split file and the folder.")
        train_items += _subset(tr, cfg.max_train_images, cfg.seed)
        val_items[name] = _subset(va, cfg.max_val_images, cfg.seed)
        split_used[name] = where
    n, seed = cfg.synthetic, cfg.seed
    if n:
        train_items += cell_data.synthetic_items(n, seed=seed)
        n_sv = max(2, n // 5)
        val_items["synthetic"] = cell_data.synthetic_items(min(n_sv, cfg.max_val_images or n_sv), seed=seed + 10**6)
        split_used["synthetic"] = f"{n} generated (seeds {seed}..), val {len(val_items['synthetic'])} " \
                                  f"(seeds {seed + 10**6}..)"
    train_ds = cell_data.CellDataset(train_items, augment=True, cache_dir=cfg.cache_dir, seed=seed,
                                     cut_cells=cfg.cut_cells, low_magnification=cfg.low_magnification,
                                     cut_negatives=cfg.cut_negatives)
    val_ds = {s: cell_data.CellDataset(v, augment=False, cache_dir=cfg.cache_dir, seed=seed)
              for s, v in val_items.items() if v}
    counts = {s: {"train": sum(it.source == s for it in train_items), "val": len(val_items.get(s, []))}
              for s in [*(k for k, r in given.items() if r is not None), *(["synthetic"] if n else [])]}
    log("sources: " + ", ".join(f"{s} {c['train']} train / {c['val']} val" for s, c in counts.items()))
    t_prep = time.perf_counter()
    prepare_all(train_ds, "train", log)
    for s, ds in val_ds.items():
        prepare_all(ds, f"val {s}", log)
    log(f"references ready in {time.perf_counter() - t_prep:.0f} s" + (f" (cache {cfg.cache_dir})" if cfg.cache_dir
                                                                       else ""))
    return train_ds, val_ds, train_items, counts, split_used, given


def train_cell_segmenter(cfg: TrainConfig, *, export: bool = True,
                         log_fn: Callable[[str], None] | None = None) -> dict:
    """Train the two-output segmenter (module docstring) and write the model directory ``cfg.out``.

    ``cfg.data`` / ``raabin`` / ``pbc`` / ``chula``: the sources' folders (None leaves one out); ``cfg.split``:
    Taleqani's split CSV, else the registry's split files in ``cfg.splits`` (Raabin and PBC: their hash rule
    when absent). The architecture's settings: the bundled segmenter's for its encoder (`bundled_settings`), then
    ``cfg.arch_kwargs`` over them. ``cfg.max_train_images`` / ``max_val_images``: a fixed random subset of each
    source. Returns {"out", "history", "best_epoch", "val", "wall_seconds", "config", "stopped_by"}.
    """
    from leukodx.models.checkpoint import save_model
    from leukodx.models.model_config import update_model_config
    from leukodx.models.registry import create_model
    from leukodx.models.segmenters import parse_arch
    from leukodx.training.config import save_run_config
    from leukodx.training.engine import Trainer, resolve_device, seed_everything
    from leukodx.training.segment import fmt, load_initial_weights

    t_start = time.perf_counter()
    if not cfg.out:
        raise LeukodxError("No output folder given.", "Pass --out RUN.")
    out = Path(cfg.out)
    if (out / "config.json").is_file():
        raise LeukodxError(f"{out} already holds a model directory.", "Choose another --out.")
    if not any((cfg.data, cfg.raabin, cfg.pbc, cfg.chula)) and not cfg.synthetic:
        raise DatasetError("No training data given.", "Pass --data, --raabin, --pbc, --chula and/or --synthetic N.")
    sources.check_all({"taleqani": cfg.data, "raabin": cfg.raabin, "pbc": cfg.pbc, "chula": cfg.chula},
                      flags={"taleqani": "--data"})
    samples = cfg.samples_per_epoch or 2000
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out / "run_config.yaml")
    log = _log_to(out / "train.log", log_fn)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    t_prep = time.perf_counter()
    train_ds, val_ds, train_items, counts, split_used, given = _data(cfg, log)
    prep_seconds = time.perf_counter() - t_prep

    # --- model ---------------------------------------------------------------------------------------------
    arch_name, extra = parse_arch(cfg.arch)
    bundled_arch, instances = bundled_settings(extra.get("encoder", ""))
    kwargs = {"normalization": cfg.normalization, **extra, **bundled_arch, **cfg.arch_kwargs, "out_channels": 2}
    model = create_model("segment", arch_name, **kwargs)
    pretrained_record = load_initial_weights(model, cfg.pretrained, log)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{arch_name} {kwargs}: {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
        f"{cfg.image_size} px, device {dev}, {torch.get_num_threads()} threads")

    weights = DEFAULT_SOURCE_WEIGHTS
    sampler = torch.utils.data.WeightedRandomSampler(train_ds.sample_weights(weights), samples, replacement=True,
                                                     generator=torch.Generator().manual_seed(cfg.seed))

    def _worker_init(_: int) -> None:
        torch.set_num_threads(1)

    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                                         worker_init_fn=_worker_init, drop_last=samples >= cfg.batch_size)
    val_loaders = {s: torch.utils.data.DataLoader(ds, batch_size=32, num_workers=0) for s, ds in val_ds.items()}

    def prepare(batch, training: bool):
        x, target, known = batch
        return to_input(x, target, known, cfg.image_size)

    def validate_fn(tr) -> tuple[float, float, dict]:
        val = {s: validate(tr.model, vl, cfg.image_size, tr.device) for s, vl in val_loaders.items()}
        score = selection_score(val)
        loss = f"{np.mean(tr.batch_losses):.4f}" if tr.batch_losses else "n/a"
        log(f"epoch {tr.epoch + 1}: train loss {loss}; val " + "; ".join(f"{s} cell {fmt(v['dice_cell'])} nucleus {fmt(v['dice_nucleus'])}"
                               for s, v in val.items()) + f"; score {score:.4f}")
        n = sum(v["n"] for v in val.values())
        return sum(v["loss"] * v["n"] for v in val.values()) / max(n, 1), score, {"val": val, "score": score}

    def build_config(tr, final: bool) -> dict:
        best = tr.history[tr.best_epoch - 1] if tr.best_epoch else {}
        return {
            "task": "segment", "arch": arch_name, "arch_kwargs": kwargs,
            "classes": sorted({it.label for it in train_items if it.source == "taleqani"}),
            "outputs": list(OUTPUTS), "input_size": [cfg.image_size, cfg.image_size],
            "normalization": cfg.normalization,
            "input": "float32 N x 3 x H x W, RGB 0..255 (normalisation is inside the model); output logits "
                     "N x 2 x H x W",
            "output": "logits; channel 0 = whole leukocyte (defines the cells), channel 1 = its nucleus; "
                      "sigmoid > thresholds.mask is the mask",
            "thresholds": {"mask": 0.5, "instances": instances},
            "n_parameters": n_params,
            "training": {
                "trainer": "leukodx.training.cell_segment.train_cell_segmenter (leukodx.training.engine.Trainer)",
                "sources": {s: {"folder": str(Path(given[s]).resolve()) if given.get(s) else None, "counts": counts[s],
                                "classes": dict(Counter(it.label for it in train_items if it.source == s))
                                if s in ("taleqani", "pbc") else None,
                                "split": split_used.get(s), "label_rule": LABEL_RULES[s],
                                "citation": sources.SOURCES[s].citation if s in sources.SOURCES else None,
                                "weight": weights.get(s, 0.0)}
                            for s in counts},
                "scale": f"every image resampled so red cells are {cell_data.TARGET_RBC_DIAMETER:g} px, 224-px "
                         f"crops (scale jitter U(0.8, 1.2), flips, 90-degree turns, stain/colour/blur on the image) "
                         f"resized to {cfg.image_size} px",
                "cut_cells": f"{cfg.cut_cells:g} of draws cut to U(0.7, 1.4) x one leukocyte's size, padded as the "
                             f"analysis pads a small image ({cfg.cut_negatives:g} of them centred on no leukocyte)",
                "low_magnification": f"{cfg.low_magnification:g} of draws resampled x U(0.35, 0.9) and back",
                "references_version": cell_data.RULES_VERSION,
                "pretrained": pretrained_record,
                "loss": "masked BCE + soft Dice per channel on known pixels (losses.masked_bce_dice)",
                "optimizer": f"AdamW lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, cosine with "
                             f"{cfg.warmup_epochs} warm-up epoch(s), gradient clip {cfg.grad_clip}",
                "sampler": f"weighted by source {weights}, {samples} samples per epoch, batch {cfg.batch_size}",
                "selection_metric": "mean global Dice (sigmoid > 0.5, known pixels) over the real sources' val "
                                    "parts and both channels",
                "epochs": cfg.epochs, "epochs_run": len(tr.history), "best_epoch": tr.best_epoch or 0,
                "stopped_by": tr.stopped_by if final else "running",
                "time_limit_min": cfg.time_limit_s / 60 if cfg.time_limit_s else None,
                "reference_seconds": round(prep_seconds, 1),
                "train_seconds": round(time.perf_counter() - tr.t_fit, 1),
                "wall_seconds": round(time.perf_counter() - t_start, 1),
                "machine": _machine(dev), "device": str(dev), "threads": torch.get_num_threads(),
                "torch_version": torch.__version__, "seed": cfg.seed,
            },
            "metrics": {"val": best.get("val", {}), "val_score": best.get("score")},
        }

    left = cfg.time_limit_s - (time.perf_counter() - t_start) if cfg.time_limit_s else None
    run_cfg = dataclasses.replace(cfg, time_limit_s=max(1.0, left) if left is not None else None, patience=0)
    trainer = Trainer(model, masked_bce_dice, loader, None, run_cfg, out, metric_fn=None, metric_name="score",
                      device=dev, checkpoints=False, log_fn=log, prepare=prepare, validate_fn=validate_fn,
                      on_best=lambda tr: save_model(out, tr.model, build_config(tr, final=False)))
    history = trainer.fit()

    # --- the model directory -------------------------------------------------------------------------------
    model.eval().cpu()
    config = build_config(trainer, final=True)
    save_model(out, model, config)
    log(f"best epoch {trainer.best_epoch} (score {trainer.best_metric:.4f}); stopped by {trainer.stopped_by}")
    if export:
        from leukodx.deploy.export import export_onnx

        rep = export_onnx(out, out / "model.onnx")
        log(f"ONNX: {rep['file']} ({rep['size_mb']} MB, max |diff| {rep['max_abs_diff']:.2g})")
    wall = time.perf_counter() - t_start
    config = update_model_config(out, training={**config["training"], "wall_seconds": round(wall, 1)}).to_json()
    log(f"model directory: {out} (wall time {wall:.0f} s)")
    return {"out": str(out), "history": history, "best_epoch": trainer.best_epoch or 0,
            "val": history[trainer.best_epoch - 1]["val"] if trainer.best_epoch else {}, "wall_seconds": wall,
            "config": config, "stopped_by": trainer.stopped_by}
