"""Calibration of a classifier on validation data, one rule for training and `leukodx calibrate`, and the fits
of the analysis' rules (cell agreement, a segmenter's post-processing) on validation parts only.

    >>> t = fit_temperature(val_logits, val_labels)
    >>> rec = fit_low_confidence(softmax(val_logits / t), val_labels)     # rec["threshold"]
    >>> report = calibrate_model("runs/cls", "data/", split_csv="split.csv")   # refits and writes config.json
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np

from leukodx.errors import DatasetError, ModelError

TARGET_ACCURACY = 0.99
MAX_FLAGGED = 0.04  # of the validation fields; the out-of-distribution flag adds its own ~1 %
MIN_THRESHOLD = 0.5


def fit_temperature(logits, labels) -> float:
    """The T > 0 minimising the negative log-likelihood of softmax(logits / T); 1.0 with nothing to fit on."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(round(np.exp(res.x), 4))


def fit_low_confidence(probs, labels, target_accuracy: float = TARGET_ACCURACY, max_flagged: float = MAX_FLAGGED,
                       floor: float = MIN_THRESHOLD) -> dict:
    """``thresholds.low_confidence``: the lowest calibrated confidence t (never under `floor`) at which the
    validation fields with confidence >= t are at least `target_accuracy` right, capped so that at most
    `max_flagged` of them fall below it (a flag must stay rare enough to be read). Returns the threshold and
    what it does on these fields (JSON-ready, stored as config ``low_confidence_fit``): reached (the target
    accuracy was met below the cap), coverage and accuracy above it."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rec = {"target_accuracy": target_accuracy, "max_flagged": max_flagged, "floor": floor, "n_val": int(len(y))}
    if len(y) == 0:
        return {**rec, "threshold": floor, "reached": False}
    conf = p.max(1)
    correct = p.argmax(1) == y
    cap = float(np.quantile(conf, max_flagged))
    chosen = next((float(t) for t in np.unique(conf) if correct[conf >= t].mean() >= target_accuracy), None)
    t = max(floor, cap if chosen is None else min(chosen, cap))
    kept = conf >= t
    return {**rec, "threshold": round(float(t), 6), "reached": chosen is not None and chosen <= cap,
            "val_coverage": float(kept.mean()), "val_accuracy_above": float(correct[kept].mean()) if kept.any() else None,
            "val_accuracy_all": float(correct.mean())}


def _split_items(data: Path, split_csv: Path | None, seed: int = 0):
    from leukodx.data.layout import load_dataset

    if split_csv is not None:
        from leukodx.data.split import read_split

        train, val = ([(Path(data) / r["path"], r["label"]) for r in read_split(split_csv, data, part)]
                      for part in ("train", "val"))
        how = f"split {split_csv} (train -> OOD fit, val -> temperature and thresholds)"
    else:
        ds = load_dataset(data)
        items = [(s.image, s.label) for s in ds.samples]
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(items))
        n_val = max(1, len(items) // 5)
        val = [items[i] for i in idx[:n_val]]
        train = [items[i] for i in idx[n_val:]]
        how = (f"a random 80/20 division of {data} (seed {seed}; pass --split to use the training split so "
               "validation fields are never ones the model was trained on)")
    if not val or not train:
        raise DatasetError(f"Calibration needs training and validation fields; got {len(train)} and {len(val)}.",
                           "Give a split CSV with train and val rows, or a larger data folder.")
    return train, val, how


def calibrate_model(model_dir: str | Path, data: str | Path, split_csv: str | Path | None = None,
                    max_images: int = 2000, seed: int = 0, ood_only: bool = False) -> dict:
    """Refit the temperature and low-confidence threshold (not with `ood_only`) on the validation fields'
    logits from the model's own engine, and the OOD checks (leukodx.deploy.ood_fit.fit_ood: its threshold on
    the validation fields and their lab-shifted copies); all written into RUN/config.json, the previous values
    under ``calibration.previous``. Returns the report."""
    from leukodx.data.images import read_field
    from leukodx.deploy.ood_fit import apply_ood, fit_ood
    from leukodx.inference.engines import softmax
    from leukodx.inference.pipeline import ClassifierStage
    from leukodx.models.checkpoint import load_model
    from leukodx.models.eager import load_eager
    from leukodx.models.model_config import write_model_config

    d = Path(model_dir)
    model, cfg = load_model(d)
    if cfg.get("task") != "classify":
        raise ModelError(f"{d} holds a {cfg.get('task')!r} model; calibration is for classifiers.",
                         "Give the classifier's model directory.")
    classes = list(cfg["classes"])
    train, val, how = _split_items(Path(data), Path(split_csv) if split_csv else None, seed)
    unknown = sorted({lab for _, lab in train + val} - set(classes))
    if unknown:
        raise DatasetError(f"{data} has classes {unknown} that the model does not know ({classes}).",
                           "Calibrate on data with the model's classes.")
    rng = np.random.default_rng(seed)
    if len(train) > max_images:
        train = [train[i] for i in sorted(rng.choice(len(train), max_images, replace=False))]
    stage = ClassifierStage(d, engine="onnx", eager=load_eager)
    logits = np.concatenate([stage.field_logits([read_field(p) for p, _ in val[i:i + 32]])
                             for i in range(0, len(val), 32)])
    y = np.array([classes.index(lab) for _, lab in val])
    t = fit_temperature(logits, y)
    p = softmax(logits / t)
    conf = p.max(1)
    correct = p.argmax(1) == y
    low_fit = fit_low_confidence(p, y)
    low = low_fit["threshold"]
    ood = fit_ood(model, cfg, [pth for pth, _ in train], val_images=[pth for pth, _ in val],
                  labels=[lab for _, lab in train])
    previous = {"temperature": cfg.get("temperature"),
                "low_confidence": (cfg.get("thresholds") or {}).get("low_confidence"),
                "ood_method": (cfg.get("ood") or {}).get("method")}
    raw = dict(cfg)
    if ood_only:  # keep the training run's temperature and threshold; report what they give here
        t = float(cfg.get("temperature") or 1.0)
        conf = softmax(logits / t).max(1)
        low = float((cfg.get("thresholds") or {}).get("low_confidence", MIN_THRESHOLD))
    else:
        raw["temperature"] = t
        raw.setdefault("thresholds", {})["low_confidence"] = low
        raw["low_confidence_fit"] = low_fit
    raw = apply_ood(raw, ood)
    report = {
        "data": str(data), "division": how, "n_train": len(train), "n_val": len(val), "temperature": t,
        "low_confidence": low, "val_accuracy": float(correct.mean()),
        "val_flagged_low_confidence": float((conf < low).mean()),
        "val_accuracy_unflagged": float(correct[conf >= low].mean()) if (conf >= low).any() else None,
        "ood_feature_threshold": ood["features"]["threshold"], "ood_stats_threshold": ood["image_stats"]["threshold"],
        "ood_feature_flag_rates": ood["features"].get("flag_rates"),
        "ood_rbc_diameter_224": ood["image_stats"].get("rbc_diameter_224"),
        "previous": previous, "refit": "ood only" if ood_only else "temperature, low_confidence, ood",
    }
    raw["calibration"] = report
    write_model_config(d, raw)
    return report


# min_blasts x max_blast_share_benign x min_blast_probability x max_unidentified_share (1.01: off)
AGREEMENT_GRID: tuple[tuple[float, ...], ...] = ((0, 1, 2, 3), (0.3, 0.5, 0.7, 1.01), (0.0, 0.6, 0.75, 0.9),
                                                 (0.5, 0.75, 1.01))
AGREEMENT_KEYS = ("min_blasts", "max_blast_share_benign", "min_blast_probability", "max_unidentified_share")
# mask threshold x min_nucleus_fraction x cell splitting
POST_GRID: tuple[tuple[float, ...], tuple[float, ...], tuple[dict[str, float], ...]] = (
    (0.4, 0.5, 0.6), (0.0, 0.05, 0.15),
    ({"min_distance": 7.0, "h": 2.0}, {"min_distance": 10.0, "h": 3.0}, {"min_distance": 13.0, "h": 4.0}))
# the crop segmenter's: one leukocyte fills its images, so wider splitting is tried (an eosinophil's two lobes)
CROP_SPLITS: tuple[dict[str, float], ...] = (
    {"min_distance": 10.0, "h": 3.0}, {"min_distance": 13.0, "h": 4.0}, {"min_distance": 16.0, "h": 5.0},
    {"min_distance": 20.0, "h": 6.0})


def fit_cell_agreement(classifier_dir: str | Path, data: str | Path, split_csv: str | Path,
                       segmenter_dir: str | Path | None = None, max_flagged: float = 0.05, write: bool = True,
                       log=print) -> dict:
    """The classifier's `cell_agreement` rule (leukodx.inference.agreement.cells_disagree), chosen on the val rows of
    `split_csv` only: every val field goes through the analysis once (the rule off), and each candidate of
    AGREEMENT_GRID is applied to the results. Chosen: the candidate that leaves the fewest of the imitated other
    lab's healthy fields (`evaluation.shift.lab_shift` at severity 1.5 of the benign val rows, where the field
    classifier errs most) called malignant unflagged, while at most `max_flagged` of the val fields are flagged;
    written into the classifier's config.json when `write`."""
    from leukodx.assets import default_model_dir
    from leukodx.data.images import read_rgb
    from leukodx.data.split import read_split
    from leukodx.evaluation.shift import lab_shift, rng_for
    from leukodx.inference.agreement import cells_disagree
    from leukodx.inference.pipeline import Analysis
    from leukodx.models.model_config import CellAgreement, update_model_config

    t0 = time.perf_counter()
    data, seg = Path(data), Path(segmenter_dir) if segmenter_dir else default_model_dir("segment")
    analysis = Analysis(classifier_dir, seg)
    assert analysis.classifier is not None
    analysis.classifier.config.cell_agreement = CellAgreement(min_blasts=0, max_blast_share_benign=1.01)  # off
    benign = analysis.classifier.config.case_rule.benign
    rows = [r for r in read_split(split_csv, data) if r["split"] == "val"]
    rgbs = [read_rgb(data / r["path"]) for r in rows]
    res_val = analysis.analyze_many(rgbs, names=[r["path"] for r in rows])
    healthy = [(r, rgb) for r, rgb in zip(rows, rgbs, strict=True) if r["label"] in benign]
    res_shift = analysis.analyze_many([lab_shift(rgb, rng_for(0, r["path"]), severity=1.5) for r, rgb in healthy])
    wrong = [r.label != row["label"] for r, row in zip(res_val, rows, strict=True)]
    mal_shift = [r.label is not None and r.label not in benign for r in res_shift]

    own = getattr(analysis.cell_classifier, "blast_threshold", None)

    def flags(results, rule) -> list[bool]:
        return [r.flag != "ok" or bool(r.label and cells_disagree(r.label, r.cells, benign, rule, own))
                for r in results]

    candidates = []
    for values in itertools.product(*AGREEMENT_GRID):
        choice = dict(zip(AGREEMENT_KEYS, values, strict=True))
        rule = CellAgreement.model_validate(choice)
        flag_val, flag_shift = flags(res_val, rule), flags(res_shift, rule)
        unflagged = [w for w, f in zip(wrong, flag_val, strict=True) if not f]
        candidates.append(choice | {
            "val_flagged": round(sum(flag_val) / len(flag_val), 4),
            "val_accuracy_unflagged": round(1 - sum(unflagged) / max(len(unflagged), 1), 4),
            "val_errors_flagged": round(sum(w and f for w, f in zip(wrong, flag_val, strict=True))
                                        / max(sum(wrong), 1), 4),
            "shifted_healthy_called_malignant_unflagged": round(
                sum(m and not f for m, f in zip(mal_shift, flag_shift, strict=True)) / len(res_shift), 4)})
        log(json.dumps(candidates[-1]))
    ok = [c for c in candidates if c["val_flagged"] <= max_flagged] or candidates[:1]
    best = min(ok, key=lambda c: (c["shifted_healthy_called_malignant_unflagged"], -c["val_accuracy_unflagged"],
                                  c["val_flagged"]))
    report = {"n_val": len(rows), "n_shifted_healthy": len(res_shift), "max_flagged": max_flagged, "chosen": best,
              "candidates": candidates, "seconds": round(time.perf_counter() - t0, 1),
              "classifier": str(classifier_dir), "segmenter": str(seg),
              "cells": str(getattr(analysis.cell_classifier, "dir", "bundled"))}
    if write:
        update_model_config(classifier_dir, cell_agreement={k: best[k] for k in AGREEMENT_KEYS} | {
            "choice": f"chosen on the val rows of {split_csv} by leukodx calibrate --cell-agreement"})
    return report


def fit_post_processing(segmenter_dir: str | Path, data: str | Path, splits_dir: str | Path, max_raabin: int = 0,
                        max_pbc: int = 240, max_taleqani: int = 120, write: bool = True, log=print,
                        crop: bool = False) -> dict:
    """A two-output segmenter's post-processing (the mask threshold, the nucleus rule, the cell splitting of
    POST_GRID), chosen on the val parts of Raabin, PBC, Taleqani and Chula (by slide) under `data` only (leukodx.evaluation.cells;
    test parts are never read): the network runs once per image (its outputs are cached) and each candidate
    re-runs only the steps after it; chosen by the mean of the rates (`headline`'s objective), written into the
    segmenter's config.json when `write`. `crop`: the crop segmenter's instead (its config's `crop_segmenter`;
    splitting from CROP_SPLITS), scored on the same parts, of which it outlines the PBC crops whole and cut."""
    from leukodx.evaluation.cells import headline, load_parts, score_parts
    from leukodx.inference.pipeline import Analysis
    from leukodx.models.model_config import read_model_config, write_model_config

    class CachedEngine:
        def __init__(self, engine):
            self.engine, self.cache, self.source = engine, {}, engine.source

        def run(self, batch: np.ndarray) -> dict:
            key = hashlib.sha1(np.ascontiguousarray(batch).tobytes()).hexdigest()
            if key not in self.cache:
                self.cache[key] = self.engine.run(batch)
            return self.cache[key]

    analysis = Analysis(None, segmenter_dir, cell_classifier=False)  # the segmenter alone
    stage = analysis.segmenter
    assert stage is not None
    stage.engine = CachedEngine(stage.engine)
    if crop:
        crops = stage.crops
        if crops is None:
            raise ModelError(f"{segmenter_dir}/config.json names no crop_segmenter: there is no crop model to fit.",
                             "Leave out --crop, or give the directory of a segmenter that has one.")
        stage, segmenter_dir = crops, crops.dir
        stage.engine = CachedEngine(stage.engine)
    t0 = time.perf_counter()
    parts = load_parts(data, splits_dir, "val", max_raabin, max_pbc, max_taleqani, max_chula=0)
    load_s = time.perf_counter() - t0
    base = dict(stage.instance_params)
    results = []
    for mask, nuc, split in itertools.product(*POST_GRID[:2], CROP_SPLITS if crop else POST_GRID[2]):
        stage.mask_threshold, stage.min_nucleus_fraction = mask, nuc
        stage.instance_params = {**base, **split}
        results.append({"mask": mask, "min_nucleus_fraction": nuc, **split,
                        **headline(score_parts(analysis, parts))})
        log(json.dumps(results[-1]))
    best = max(results, key=lambda r: r["objective"])
    report = {"model": str(segmenter_dir), "subset": "val", **parts.describe(), "load_seconds": round(load_s, 1),
              "seconds": round(time.perf_counter() - t0, 1), "chosen": best, "candidates": results}
    if write:
        cfg = read_model_config(segmenter_dir).to_json()
        cfg["thresholds"]["mask"] = best["mask"]
        cfg["thresholds"]["instances"].update(min_nucleus_fraction=best["min_nucleus_fraction"],
                                              min_distance=best["min_distance"], h=best["h"])
        cfg["thresholds"]["choice"] = (f"chosen on the val parts of Raabin, PBC, Taleqani and Chula by leukodx calibrate "
                                       f"--post-processing{' --crop' if crop else ''} (objective {best['objective']})")
        write_model_config(segmenter_dir, cfg)
    return report
