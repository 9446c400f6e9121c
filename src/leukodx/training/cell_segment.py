"""Training of the two-output segmenter (channel 0 = whole leukocyte, channel 1 = nucleus) on several labs.

`train_cell_segmenter` draws 224-px crops at the Taleqani red-cell scale from `leukodx.training.cell_data` (Taleqani
fields, Raabin fields, PBC crops, synthetic smears; each source's references by its rule in
`leukodx.data.cell_references`), resizes each crop to the model input (image bilinear with antialiasing, targets
and their known masks bilinear then > 0.5) as the analysis resizes its 224-px windows, and trains with the masked
BCE + Dice loss (`cell_data.masked_bce_dice`: unknown pixels teach nothing).

- a weighted sampler draws each source with its weight (default Taleqani, Raabin, PBC 1 each, synthetic 0.2),
  whatever its size, with a fixed number of samples per epoch;
- AdamW, cosine schedule with one warm-up epoch (per step), gradient clipping;
- every epoch: global Dice per source and channel on the known pixels of the val part's centre crops; the epoch
  with the best mean over the real sources' channels is kept (its weights are written as soon as it is reached,
  so a run that is cut short still leaves a model directory);
- an optional wall-clock limit: no epoch is started that would end past it (estimated from the previous epoch);
- RUN/train.log (progress), RUN/history.json (each epoch), RUN/config.json + model.safetensors
  (`leukodx.models.save_model`; `outputs: ["cell", "nucleus"]`), RUN/model.onnx (`leukodx.deploy.export`).

Every reference is made once (and cached as .npz in ``cache_dir`` when given) before training starts, in this
process, so the data loader does no reference work and does not contend with training for the cores.

Example::

    from leukodx.training.cell_segment import train_cell_segmenter
    res = train_cell_segmenter("runs/cellseg", taleqani="DATA/all-taleqani", raabin="DATA/raabin-fields",
                               pbc="DATA/pbc", synthetic=200, pretrained="efficientnet_lite0",
                               samples_per_epoch=2000, epochs=4, time_limit_min=38)
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leukodx.errors import DatasetError, LeukodxError
from leukodx.training import cell_data

OUTPUTS = ["cell", "nucleus"]
REAL_SOURCES = ("taleqani", "raabin", "pbc")
DEFAULT_SOURCE_WEIGHTS = {"taleqani": 1.0, "raabin": 1.0, "pbc": 1.0, "synthetic": 0.2}
SPLIT_FILES = {"taleqani": "taleqani-sgdc-seed0.csv", "raabin": "raabin-fields-seed0.csv", "pbc": "pbc-seed0.csv"}
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
    "synthetic": "leukodx.data.synthetic smears: the generator's exact whole cells; nucleus unknown",
}
CITATIONS = {
    "taleqani": "Aria M., Ghaderzadeh M., Bashash D., Abolghasemi H., Asadi F., Hosseini A., \"Acute Lymphoblastic "
                "Leukemia (ALL) image dataset\", Kaggle (mehradaria/leukemia), 2021; Ghaderzadeh et al., "
                "International Journal of Intelligent Systems 37(8), 2022, doi:10.1002/int.22753. Research use only.",
    "raabin": "Kouzehkanan Z. M. et al., \"A large dataset of white blood cells containing cell locations and "
              "types, along with segmented nuclei and cytoplasm\", Scientific Reports 12, 1123 (2022), "
              "doi:10.1038/s41598-021-04426-x (Raabin-WBC); boxes: the TXL-PBC data set "
              "(lugan113/TXL-PBC_Dataset, MIT licence).",
    "pbc": "Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J., \"A dataset of microscopic "
           "peripheral blood cell images for development of automatic recognition systems\", Data in Brief 30 "
           "(2020) 105474, doi:10.1016/j.dib.2020.105474; Mendeley Data doi:10.17632/snkd93bnjr.1 (CC BY 4.0).",
}


# ---------------------------------------------------------------------------------------------------------------
# data


def _bundled_arch_kwargs(encoder: str) -> dict:
    """The bundled segmenter's architecture settings (its config.json) when `encoder` is its encoder."""
    from leukodx.assets import default_model_dir
    from leukodx.models.model_config import read_model_config

    kw = read_model_config(default_model_dir("segment")).arch_kwargs
    return {k: kw[k] for k in ("out_stride", "freeze_stages") if k in kw} if kw.get("encoder") == encoder else {}


def check_source(name: str, root: str | Path) -> None:
    """One clear error when a source folder is missing or holds nothing usable (a Raabin label file missing
    included)."""
    from leukodx.data import sources

    p = Path(root)
    if not p.is_dir():
        flag = {"taleqani": "--data", "raabin": "--raabin", "pbc": "--pbc"}[name]
        raise DatasetError(f"{flag} {root}: no such folder.", f"Point {flag} to the {name} data folder.")
    if name == "taleqani":
        if not (p / "Original").is_dir() or not (p / "Segmented").is_dir():
            raise DatasetError(f"--data {root} has no Original/ and Segmented/ folders.",
                               "Give the Taleqani data folder (Original/<class>/, Segmented/<class>/).")
    elif name == "raabin":
        sources.read_raabin_fields(p)  # raises on a missing images/ folder or label file
    elif name == "pbc":
        sources.read_pbc(p)


def source_split_items(name: str, root: str | Path, split: str, split_csv: str | Path | None,
                       splits_dir: str | Path) -> tuple[list[cell_data.CellItem], str]:
    """(items, where the split comes from) of one real source."""
    csv = Path(split_csv) if split_csv else Path(splits_dir) / SPLIT_FILES[name]
    if name == "taleqani":
        if not csv.is_file():
            raise DatasetError(f"Split file {csv} does not exist.",
                               "Pass --split benchmarks/splits/taleqani-sgdc-seed0.csv (run from the repository).")
        return cell_data.source_items(name, root, csv, split), str(csv)
    if csv.is_file():
        return cell_data.source_items(name, root, csv, split), str(csv)
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
    inter = torch.zeros(2, dtype=torch.float64)
    psum = torch.zeros(2, dtype=torch.float64)
    tsum = torch.zeros(2, dtype=torch.float64)
    nknown = torch.zeros(2, dtype=torch.float64)
    loss, n = 0.0, 0
    for x, t, k in loader:
        x, t, k = to_input(x.to(device), t.to(device), k.to(device), size)
        logits = model(x).float()
        loss += float(cell_data.masked_bce_dice(logits, t, k)) * len(x)
        n += len(x)
        p = (torch.sigmoid(logits) > threshold).float() * k
        tt = t * k
        inter += (p * tt).sum((0, 2, 3)).double().cpu()
        psum += p.sum((0, 2, 3)).double().cpu()
        tsum += tt.sum((0, 2, 3)).double().cpu()
        nknown += k.sum((0, 2, 3)).double().cpu()
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
    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {cpu}"
    return f"{cpu}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {platform.system()}"


def _folder(root: str | Path | None) -> str | None:
    return str(Path(root).resolve()) if root else None


def _bundled_instances() -> dict:
    """The bundled segmenter's cell-splitting parameters (the defaults when it is absent)."""
    from leukodx.assets import DEFAULT_MODELS
    from leukodx.inference.instances import DEFAULT_PARAMS

    try:
        cfg = json.loads((DEFAULT_MODELS["segment"] / "config.json").read_text())
        inst = dict(cfg["thresholds"]["instances"])
    except (OSError, KeyError, ValueError):
        inst = {**DEFAULT_PARAMS, "note": "pixels of a 224 px field; leukodx.inference.instances.scaled_params "
                "rescales"}
    inst.setdefault("min_nucleus_fraction", 0.0)
    return inst


def train_cell_segmenter(
    out: str | Path, *, taleqani: str | Path | None = None, split: str | Path | None = None,
    raabin: str | Path | None = None, pbc: str | Path | None = None, splits_dir: str | Path = "benchmarks/splits",
    synthetic: int = 0, arch: str = "unet-fpn-gelu:tf_efficientnet_lite0", arch_kwargs: dict | None = None,
    pretrained: str | None = None, normalization: str = "per_image", image_size: int = 160, epochs: int = 4,
    samples_per_epoch: int = 2000, batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4,
    warmup_epochs: int = 1, grad_clip: float | None = 5.0, source_weights: dict[str, float] | None = None,
    time_limit_min: float | None = None, max_train_per_source: int | None = None,
    max_val_per_source: int | None = None, cache_dir: str | Path | None = None,
    workers: int = 0, threads: int | None = None, device: str = "auto", seed: int = 0,
    min_nucleus_fraction: float | None = None, export: bool = True, log_fn: Callable[[str], None] | None = None,
) -> dict:
    """Train the two-output segmenter (module docstring) and write the model directory `out`.

    ``split``: Taleqani's split CSV (default ``splits_dir``/taleqani-sgdc-seed0.csv); Raabin and PBC read theirs
    from ``splits_dir`` (their hash rule when absent). The architecture's settings: the bundled segmenter's for
    its encoder (tf_efficientnet_lite0: out_stride 2, freeze_stages 3), then ``arch_kwargs`` over them.
    ``min_nucleus_fraction`` None: the bundled segmenter's (0 when it has none). ``max_train_per_source`` /
    ``max_val_per_source``: a fixed random subset of each real source (smoke runs; the validation's cost).
    Returns {"out", "history", "best_epoch", "val", "wall_seconds", "config", "stopped_by"}.
    """
    from leukodx.models.checkpoint import save_model
    from leukodx.models.registry import create_model
    from leukodx.models.segmenters import parse_arch
    from leukodx.training.engine import resolve_device, seed_everything
    from leukodx.training.segment import _load_initial_weights

    t_start = time.perf_counter()
    deadline = t_start + 60 * time_limit_min if time_limit_min else None
    out = Path(out)
    if (out / "config.json").is_file():
        raise LeukodxError(f"{out} already holds a model directory.", "Choose another --out.")
    given = {"taleqani": taleqani, "raabin": raabin, "pbc": pbc}
    if not any(given.values()) and not synthetic:
        raise DatasetError("No training data given.", "Pass --data, --raabin, --pbc and/or --synthetic N.")
    for name, root in given.items():
        if root is not None:
            check_source(name, root)
    if samples_per_epoch < 1 or epochs < 1 or batch_size < 1:
        raise LeukodxError("--samples-per-epoch, --epochs and --batch-size must be at least 1.", "")
    out.mkdir(parents=True, exist_ok=True)
    log = _log_to(out / "train.log", log_fn)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    seed_everything(seed)

    # --- data ----------------------------------------------------------------------------------------------
    train_items: list[cell_data.CellItem] = []
    val_items: dict[str, list[cell_data.CellItem]] = {}
    split_used: dict[str, str] = {}
    for name, root in given.items():
        if root is None:
            continue
        tr, where = source_split_items(name, root, "train", split if name == "taleqani" else None, splits_dir)
        va, _ = source_split_items(name, root, "val", split if name == "taleqani" else None, splits_dir)
        if not tr:
            raise DatasetError(f"No training rows of {name} in {where}.", "Check the split file and the folder.")
        train_items += _subset(tr, max_train_per_source, seed)
        val_items[name] = _subset(va, max_val_per_source, seed)
        split_used[name] = where
    if synthetic:
        train_items += cell_data.synthetic_items(synthetic, seed=seed)
        n_sv = max(2, synthetic // 5)
        val_items["synthetic"] = cell_data.synthetic_items(min(n_sv, max_val_per_source or n_sv), seed=seed + 10**6)
        split_used["synthetic"] = f"{synthetic} generated (seeds {seed}..), val {len(val_items['synthetic'])} " \
                                  f"(seeds {seed + 10**6}..)"
    train_ds = cell_data.CellDataset(train_items, augment=True, cache_dir=cache_dir, seed=seed)
    val_ds = {s: cell_data.CellDataset(v, augment=False, cache_dir=cache_dir, seed=seed)
              for s, v in val_items.items() if v}
    counts = {s: {"train": sum(it.source == s for it in train_items), "val": len(val_items.get(s, []))}
              for s in [*(n for n, r in given.items() if r is not None), *(["synthetic"] if synthetic else [])]}
    log("sources: " + ", ".join(f"{s} {c['train']} train / {c['val']} val" for s, c in counts.items()))
    t_prep = time.perf_counter()
    prepare_all(train_ds, "train", log)
    for s, ds in val_ds.items():
        prepare_all(ds, f"val {s}", log)
    prep_seconds = time.perf_counter() - t_prep
    log(f"references ready in {prep_seconds:.0f} s" + (f" (cache {cache_dir})" if cache_dir else ""))

    # --- model ---------------------------------------------------------------------------------------------
    arch_name, extra = parse_arch(arch)
    kwargs = {"normalization": normalization, **extra, **_bundled_arch_kwargs(extra.get("encoder", "")),
              **(arch_kwargs or {}), "out_channels": 2}
    model = create_model("segment", arch_name, **kwargs)
    pretrained_record = _load_initial_weights(model, pretrained) if pretrained else None
    if pretrained_record:
        log(f"encoder: ImageNet weights {pretrained} ({pretrained_record['n_loaded']} tensors, "
            f"{pretrained_record['licence']})")
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{arch_name} {kwargs}: {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
        f"{image_size} px, device {dev}, {torch.get_num_threads()} threads")

    weights = source_weights or DEFAULT_SOURCE_WEIGHTS
    sampler = torch.utils.data.WeightedRandomSampler(train_ds.sample_weights(weights), samples_per_epoch,
                                                     replacement=True,
                                                     generator=torch.Generator().manual_seed(seed))

    def _worker_init(_: int) -> None:
        torch.set_num_threads(1)

    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, worker_init_fn=_worker_init,
                                         drop_last=samples_per_epoch >= batch_size)
    val_loaders = {s: torch.utils.data.DataLoader(ds, batch_size=32, num_workers=0) for s, ds in val_ds.items()}
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(loader)
    total = epochs * steps_per_epoch
    warm = min(warmup_epochs * steps_per_epoch, total // 2)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # --- loop ----------------------------------------------------------------------------------------------
    history: list[dict] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    stopped_by = "epochs"
    t_train = time.perf_counter()
    summary: dict[str, Any] = {}

    def build_config(final: bool) -> dict:
        inst = _bundled_instances()
        if min_nucleus_fraction is not None:
            inst["min_nucleus_fraction"] = float(min_nucleus_fraction)
        classes = sorted({it.label for it in train_items if it.source == "taleqani"})
        best = history[best_epoch - 1] if best_epoch else {}
        return {
            "task": "segment", "arch": arch_name, "arch_kwargs": kwargs, "classes": classes,
            "outputs": list(OUTPUTS), "input_size": [image_size, image_size], "normalization": normalization,
            "input": "float32 N x 3 x H x W, RGB 0..255 (normalisation is inside the model); output logits "
                     "N x 2 x H x W",
            "output": "logits; channel 0 = whole leukocyte (defines the cells), channel 1 = its nucleus; "
                      "sigmoid > thresholds.mask is the mask",
            "thresholds": {"mask": 0.5, "instances": inst},
            "n_parameters": n_params,
            "training": {
                "trainer": "leukodx.training.cell_segment.train_cell_segmenter",
                "sources": {s: {"folder": _folder(given.get(s)),
                                "counts": counts[s],
                                "classes": dict(Counter(it.label for it in train_items if it.source == s))
                                if s in ("taleqani", "pbc") else None,
                                "split": split_used.get(s), "label_rule": LABEL_RULES[s],
                                "citation": CITATIONS.get(s), "weight": weights.get(s, 0.0)}
                            for s in counts},
                "scale": f"every image resampled so red cells are {cell_data.TARGET_RBC_DIAMETER:g} px, 224-px "
                         f"crops (scale jitter U(0.8, 1.2), flips, 90-degree turns, stain/colour/blur on the image) "
                         f"resized to {image_size} px",
                "references_version": cell_data.RULES_VERSION,
                "pretrained": pretrained_record,
                "loss": "masked BCE + soft Dice per channel on known pixels (cell_data.masked_bce_dice)",
                "optimizer": f"AdamW lr {lr:g}, weight decay {weight_decay:g}, cosine with {warmup_epochs} warm-up "
                             f"epoch(s), gradient clip {grad_clip}",
                "sampler": f"weighted by source {weights}, {samples_per_epoch} samples per epoch, batch {batch_size}",
                "selection_metric": "mean global Dice (sigmoid > 0.5, known pixels) over the real sources' val "
                                    "parts and both channels",
                "epochs": epochs, "epochs_run": len(history), "best_epoch": best_epoch,
                "stopped_by": stopped_by if final else "running",
                "time_limit_min": time_limit_min,
                "reference_seconds": round(prep_seconds, 1),
                "train_seconds": round(time.perf_counter() - t_train, 1),
                "wall_seconds": round(time.perf_counter() - t_start, 1),
                "machine": _machine(dev), "device": str(dev), "threads": torch.get_num_threads(),
                "torch_version": torch.__version__, "seed": seed,
            },
            "metrics": {"val": best.get("val", {}), "val_score": best.get("score")},
        }

    epoch_seconds = 0.0
    for epoch in range(1, epochs + 1):
        if deadline is not None and history and time.perf_counter() + epoch_seconds > deadline:
            stopped_by = "time limit"
            log(f"stopped by the time limit ({time_limit_min:g} min): epoch {epoch} would end past it")
            break
        t0 = last = time.perf_counter()
        model.train()
        losses: list[float] = []
        for step, (x, t, k) in enumerate(loader, 1):
            x, t, k = to_input(x.to(dev), t.to(dev), k.to(dev), image_size)
            loss = cell_data.masked_bce_dice(model(x), t, k)
            if not torch.isfinite(loss):
                raise LeukodxError(f"The loss became {float(loss)} at epoch {epoch}, step {step}.",
                                   "Lower --lr; the best epoch so far is in the model directory.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if time.perf_counter() - last > 60:
                last = time.perf_counter()
                done = step * batch_size
                log(f"  epoch {epoch} step {step}/{steps_per_epoch}: loss {np.mean(losses[-20:]):.4f}, "
                    f"{done / (last - t0):.2f} samples/s")
        train_s = time.perf_counter() - t0
        val = {s: validate(model, vl, image_size, dev) for s, vl in val_loaders.items()}
        score = selection_score(val)
        epoch_seconds = time.perf_counter() - t0
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "first_batches_loss": float(np.mean(losses[:5])) if losses else None,
               "last_batches_loss": float(np.mean(losses[-5:])) if losses else None,
               "lr": optimizer.param_groups[0]["lr"], "val": val, "score": score,
               "train_seconds": round(train_s, 1), "epoch_seconds": round(epoch_seconds, 1),
               "samples_per_second": round(len(losses) * batch_size / max(train_s, 1e-9), 2)}
        history.append(rec)

        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        log(f"epoch {epoch}/{epochs}: loss {rec['train_loss']:.4f}, {rec['samples_per_second']} samples/s, "
            f"{epoch_seconds:.0f} s; val " + "; ".join(
                f"{s} cell {f(v['dice_cell'])} nucleus {f(v['dice_nucleus'])}" for s, v in val.items())
            + f"; score {score:.4f}")
        if best_state is None or (not math.isnan(score) and score > best_score):
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            save_model(out, model, build_config(final=False))
        (out / "history.json").write_text(json.dumps(history, indent=1, default=float))

    # --- the model directory -------------------------------------------------------------------------------
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval().cpu()
    config = build_config(final=True)
    save_model(out, model, config)
    (out / "history.json").write_text(json.dumps(history, indent=1, default=float))
    log(f"best epoch {best_epoch} (score {best_score:.4f}); stopped by {stopped_by}")
    if export:
        from leukodx.deploy.export import export_onnx

        rep = export_onnx(out, out / "model.onnx")
        log(f"ONNX: {rep['file']} ({rep['size_mb']} MB, max |diff| {rep['max_abs_diff']:.2g})")
    wall = time.perf_counter() - t_start
    from leukodx.models.model_config import update_model_config

    config = update_model_config(out, training={**config["training"], "wall_seconds": round(wall, 1)}).to_json()
    log(f"model directory: {out} (wall time {wall:.0f} s)")
    summary.update({"out": str(out), "history": history, "best_epoch": best_epoch,
                    "val": history[best_epoch - 1]["val"] if best_epoch else {}, "wall_seconds": wall,
                    "config": config, "stopped_by": stopped_by})
    return summary
