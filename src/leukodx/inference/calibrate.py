"""(Re)fit a classifier's calibration on validation data: temperature, low-confidence threshold, OOD checks.

    >>> report = calibrate_model("runs/cls", "data/", split_csv="split.csv")

- **temperature**: minimises the negative log-likelihood of softmax(logits / T) on the validation fields.
- **thresholds.low_confidence**: the lowest calibrated confidence t at which the validation fields with
  confidence >= t are at least `target_accuracy` correct, capped so that at most `max_flagged` of the
  validation fields fall below it (and never under 0.5 for 4 classes... see `choose_low_confidence`).
- **ood**: `leukodx.inference.ood.fit_ood`: the feature-distance model on the training fields, its threshold on
  the validation fields together with their lab-shifted copies (so another lab's stain is not flagged), and the
  training fields' red-cell diameter for the smear check. Any classifier: features are the input of its last
  linear layer.
Everything is written back into RUN/config.json (the previous values are kept under ``calibration.previous``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leukodx.errors import DatasetError, ModelError

TARGET_ACCURACY = 0.99
MAX_FLAGGED = 0.15
MIN_THRESHOLD = 0.5


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    z = logits.astype(np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def choose_low_confidence(conf: np.ndarray, correct: np.ndarray, target_accuracy: float = TARGET_ACCURACY,
                          max_flagged: float = MAX_FLAGGED, floor: float = MIN_THRESHOLD) -> float:
    """Lowest t with accuracy(conf >= t) >= target, but flagging at most `max_flagged` of the fields; >= floor."""
    order = np.sort(np.unique(conf))
    cap = float(np.quantile(conf, max_flagged)) if len(conf) else floor
    chosen = None
    for t in order:
        kept = conf >= t
        if kept.sum() == 0:
            break
        if correct[kept].mean() >= target_accuracy:
            chosen = float(t)
            break
    t = cap if chosen is None else min(chosen, cap)
    return float(max(t, floor))


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
    import torch

    from leukodx.inference.engines import with_features
    from leukodx.inference.ood import _as_model_inputs, fit_ood
    from leukodx.models.checkpoint import CONFIG, load_model

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
    net = with_features(model).eval()
    logits = []
    imgs_val = list(_as_model_inputs([p for p, _ in val], cfg["input_size"]))
    with torch.inference_mode():
        for i in range(0, len(imgs_val), 32):
            x = torch.from_numpy(np.stack(imgs_val[i:i + 32]).astype(np.float32).transpose(0, 3, 1, 2))
            logits.append(net(x)[0].numpy())
    logits = np.concatenate(logits)
    y = np.array([classes.index(lab) for _, lab in val])
    t = fit_temperature(logits, y)
    z = logits / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf = p.max(1)
    correct = p.argmax(1) == y
    low = choose_low_confidence(conf, correct)
    ood = fit_ood(model, cfg, [pth for pth, _ in train], val_images=[pth for pth, _ in val],
                  labels=[lab for _, lab in train])
    previous = {"temperature": cfg.get("temperature"),
                "low_confidence": (cfg.get("thresholds") or {}).get("low_confidence"),
                "ood_method": (cfg.get("ood") or {}).get("method")}
    cfg_path = d / CONFIG
    raw = json.loads(cfg_path.read_text())
    if ood_only:  # keep the training run's temperature and threshold; report what they give here
        t = float(cfg.get("temperature") or 1.0)
        z = logits / t
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        conf = p.max(1)
        low = float((cfg.get("thresholds") or {}).get("low_confidence", MIN_THRESHOLD))
    else:
        raw["temperature"] = t
        raw.setdefault("thresholds", {})["low_confidence"] = low
    raw["ood"] = ood
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
    tmp = cfg_path.with_name(CONFIG + ".tmp")
    tmp.write_text(json.dumps(raw, indent=2, default=str))
    tmp.replace(cfg_path)
    return report
