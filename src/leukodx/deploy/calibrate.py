"""Calibration of a classifier on validation data, one rule for training and `leukodx calibrate`.

    >>> t = fit_temperature(val_logits, val_labels)
    >>> rec = fit_low_confidence(softmax(val_logits / t), val_labels)     # rec["threshold"]
    >>> report = calibrate_model("runs/cls", "data/", split_csv="split.csv")   # refits and writes config.json

- **temperature**: the T > 0 minimising the negative log-likelihood of softmax(logits / T), on the validation
  fields' logits from the model's own engine (the analysis pipeline's tiling and resizing).
- **low confidence** (``thresholds.low_confidence``): the lowest calibrated confidence t (never under `floor`) at
  which the validation fields with confidence >= t are at least `target_accuracy` right, capped so that at most
  `max_flagged` of the validation fields fall below it: a flag must stay rare enough to be read, in distribution.
- **ood** (`calibrate_model` only): `leukodx.deploy.ood_fit.fit_ood`: the feature-distance model on the
  training fields, its threshold on the validation fields together with their lab-shifted copies (so another
  lab's stain is not flagged), and the training fields' red-cell diameter (the config's ``scale``). Any
  classifier: features are the input of its last linear layer.
`calibrate_model` writes everything back into RUN/config.json (the previous values under ``calibration.previous``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leukodx.errors import DatasetError, ModelError

TARGET_ACCURACY = 0.99
MAX_FLAGGED = 0.04  # of the validation fields; the out-of-distribution flag adds its own ~1 %
MIN_THRESHOLD = 0.5


def fit_temperature(logits, labels) -> float:
    """1.0 when there is nothing to fit on."""
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
    """The threshold and what it does on the validation fields (JSON-ready, stored as config
    ``low_confidence_fit``): threshold, reached (the target accuracy was met below the cap), coverage and
    accuracy above it."""
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

        rows = read_split(split_csv, data)
        tr = [(Path(data) / r["path"] if isinstance(r, dict) else Path(data) / r.path,
               r["label"] if isinstance(r, dict) else r.label,
               r["split"] if isinstance(r, dict) else r.split) for r in rows]
        train = [(p, lab) for p, lab, s in tr if s == "train"]
        val = [(p, lab) for p, lab, s in tr if s == "val"]
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
                    max_images: int = 2000, seed: int = 0, ood_only: bool = False, progress=None) -> dict:

    from leukodx.deploy.ood_fit import apply_ood, fit_ood
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
    from leukodx.data.images import read_field
    from leukodx.inference.engines import softmax
    from leukodx.inference.pipeline import ClassifierStage

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
