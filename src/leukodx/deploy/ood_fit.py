"""Fitting the out-of-distribution checks of a classifier (training install; the clinic runtime only scores them,
leukodx.inference.ood.OODScorer). The feature distance's threshold is set on held-out fields **and their
lab-shifted copies**, so that it fires on images the model has never seen anything like, not on a stain, white
balance or magnification it handles.

    >>> ood = fit_ood(model, config, train_images, val_images)   # -> dict, stored as config["ood"]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.data.images import open_image
from leukodx.evaluation.shift import lab_shift, rng_for
from leukodx.inference.ood import IMAGE_CHECK_VERSION, feature_scores
from leukodx.inference.scale import estimate_rbc_diameter
from leukodx.inference.smear_check import VERSION as SMEAR_VERSION

FEATURE_PERCENTILE = 99.5  # of held-out fields and their lab-shifted copies together
SHIFT_SEVERITIES = (1.0, 1.5)
MAX_COMPONENTS = 32
MAX_REFERENCE_IMAGES = 400  # training fields the red-cell diameter is measured on


def _fit_features(feats: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    feats = feats.astype(np.float64)
    d = feats.shape[1]
    means = np.stack([feats[labels == c].mean(0) if (labels == c).any() else feats.mean(0)
                      for c in range(n_classes)])
    centred = feats - means[labels]
    k = int(min(MAX_COMPONENTS, d, max(1, len(feats) - n_classes - 1)))
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / max(len(feats) - n_classes, 1)
    comps = vt[:k]
    lam = var[:k]
    resid = float(var[k:].sum() / max(d - k, 1)) if d > k else float(lam.min() * 0.1)
    resid = max(resid, 1e-6 * float(lam.max() + 1e-12))
    shrink = 0.1  # shrink the principal variances towards the residual one (stabilises small data)
    lam = (1 - shrink) * lam + shrink * resid + resid
    return {"means": means, "components": comps, "variances": lam, "residual_variance": resid, "dim": d}


def _native_images(images) -> Iterable[tuple[np.ndarray, str]]:
    """Yield (HxWx3 uint8 at the image's own size, key) from HxWx3 uint8 arrays, paths or bytes."""
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            yield np.ascontiguousarray(np.clip(item, 0, 255).astype(np.uint8)[..., :3]), str(i)
        elif isinstance(item, bytes):
            yield np.asarray(open_image(item)), str(i)
        else:
            yield np.asarray(open_image(Path(item))), str(item)


def _to_size(rgb: np.ndarray, size: Sequence[int]) -> np.ndarray:
    h, w = int(size[0]), int(size[1])
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))


def reference_rbc_diameter(natives: Sequence[np.ndarray], max_images: int = MAX_REFERENCE_IMAGES) -> dict | None:
    """The training fields' red-cell diameter in px of a 224-px field (median, 5th and 95th percentile)."""
    ds = []
    step = max(1, len(natives) // max_images)
    for rgb in list(natives)[::step][:max_images]:
        d, conf = estimate_rbc_diameter(rgb)
        if d is not None and conf >= 0.5:
            ds.append(d * 224.0 / min(rgb.shape[:2]))
    if len(ds) < 5:
        return None
    p5, med, p95 = np.percentile(ds, [5, 50, 95])
    return {"rbc_diameter_224": round(float(med), 3), "rbc_diameter_224_p5_p95": [round(float(p5), 3),
                                                                                  round(float(p95), 3)],
            "n_measured": len(ds)}


def fit_ood(model, config: dict, train_images, val_images=None, *, labels=None, max_images: int = 2000,
            batch_size: int = 32, seed: int = 0, shift_severities: Sequence[float] = SHIFT_SEVERITIES) -> dict:
    """Fit the checks. `train_images` / `val_images`: paths, bytes or HxWx3 uint8 arrays; `model`: any
    classifier module taking N x 3 x H x W RGB 0..255 at config["input_size"] (features: the input of its last
    linear layer).

    - feature distance: class means and a shared probabilistic-PCA covariance on `train_images`
      (class-conditional on `labels` when given, else on the classifier's predictions); threshold =
      FEATURE_PERCENTILE of the scores of the held-out fields (`val_images`, else a fixed 20 % of
      `train_images` kept out of the fit) together with their lab-shifted copies at `shift_severities`;
    - smear check: the red-cell diameter of the training fields (`reference_rbc_diameter`: the magnification
      the model was trained at, which the analysis resamples every field to).
    Returns a JSON-ready dict, stored as config["ood"].
    """
    import torch

    from leukodx.models.eager import with_features

    size = config["input_size"]
    classes = list(config.get("classes") or [])
    train_nat = list(_native_images(train_images))
    if labels is not None:
        labels = [classes.index(lab) if isinstance(lab, str) else int(lab) for lab in list(labels)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_nat))[:max_images]
    if val_images is None:
        n_hold = max(1, int(round(0.2 * len(order)))) if len(order) >= 10 else 0
        hold_idx, fit_idx = order[:n_hold], order[n_hold:]
        val_nat = [train_nat[i] for i in hold_idx]
        held_out = "20% of the training images, kept out of the fit"
    else:
        fit_idx = order
        val_nat = list(_native_images(val_images))[:max_images]
        held_out = "the validation images"
    fit = [_to_size(train_nat[i][0], size) for i in fit_idx]
    fit_labels = None if labels is None else np.array([labels[i] for i in fit_idx])
    if len(fit) < 2:
        raise ValueError("fit_ood needs at least 2 training images")

    net = with_features(model).eval()

    def features(imgs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        fs, ps = [], []
        with torch.inference_mode():
            for i in range(0, len(imgs), batch_size):
                x = torch.from_numpy(np.stack(imgs[i:i + batch_size]).astype(np.float32).transpose(0, 3, 1, 2))
                logits, f = net(x)
                fs.append(f.numpy())
                ps.append(logits.argmax(1).numpy())
        return np.concatenate(fs), np.concatenate(ps)

    f_fit, p_fit = features(fit)
    n_classes = max(len(classes), int(p_fit.max()) + 1)
    lab = fit_labels if fit_labels is not None else p_fit
    fm = _fit_features(f_fit, lab, n_classes)
    per_set = {}
    if val_nat:
        val = [_to_size(rgb, size) for rgb, _ in val_nat]
        per_set["held_out"] = feature_scores(features(val)[0], fm)
        for sev in shift_severities:  # one draw per image key
            shifted = [_to_size(lab_shift(rgb, rng_for(seed, key), severity=sev), size)
                       for rgb, key in val_nat]
            per_set[f"lab_shift_{sev:g}"] = feature_scores(features(shifted)[0], fm)
    else:  # too few images to hold any out: score the fit images themselves
        per_set["fit"] = feature_scores(f_fit, fm)
    pooled = np.concatenate(list(per_set.values()))
    feat_thr = float(np.percentile(pooled, FEATURE_PERCENTILE))
    ref = reference_rbc_diameter([train_nat[i][0] for i in fit_idx])
    return {
        "method": "smear-check+ppca-mahalanobis",
        "n_fit": len(fit), "n_held_out": len(val_nat), "held_out": held_out,
        "class_conditional": "labels" if fit_labels is not None else "predictions",
        "features": {
            "dim": int(fm["dim"]), "means": fm["means"], "components": fm["components"],
            "variances": fm["variances"], "residual_variance": float(f"{fm['residual_variance']:.6g}"),
            "threshold": feat_thr, "percentile": FEATURE_PERCENTILE,
            "threshold_set": "held-out fields and their lab-shifted copies (severities "
                             + ", ".join(f"{s:g}" for s in shift_severities) + ")",
            "flag_rates": {k: round(float((v > feat_thr).mean()), 4) for k, v in per_set.items()},
        },
        "image_stats": {  # the model-free part: the smear check (leukodx.inference.smear_check)
            "check": "smear", "version": IMAGE_CHECK_VERSION, "smear_check_version": SMEAR_VERSION,
            "threshold": 1.0,  # its score is > 1 exactly when it flags
            **(ref or {"rbc_diameter_224": None, "note": "too few red cells measured; the built-in "
                                                         "default scale.rbc_diameter_224 is used"}),
        },
    }


def apply_ood(config: dict, ood: dict) -> dict:
    """`config` with the fitted checks: ``ood``, and the measured red-cell reference in ``scale``."""
    out = dict(config) | {"ood": ood}
    d = (ood.get("image_stats") or {}).get("rbc_diameter_224")
    if d is not None:
        out["scale"] = dict(out.get("scale") or {}) | {"rbc_diameter_224": float(d)}
    return out
