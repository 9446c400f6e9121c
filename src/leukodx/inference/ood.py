"""Out-of-distribution checks: is this field like the fields the classifier was trained on?

Two independent checks, both fitted on training images with thresholds chosen on held-out images:

1. **Feature distance** (``features``): a class-conditional Mahalanobis distance in the classifier's
   penultimate feature space. The covariance is shared between classes and modelled as probabilistic PCA
   (top-k principal directions + isotropic residual variance, shrunk), so it stays well conditioned and small
   enough to store in config.json. Score = min over classes of the squared distance / feature dimension.
2. **Image statistics** (``image_stats``): cheap, model-free numbers that move when the lab, stain, camera or
   magnification changes: background brightness and white balance, stain colour in optical-density space,
   stained area, sharpness, the autocorrelation length of the field (a magnification proxy) and the size of
   the largest stained blob. Each statistic's training range (0.5th-99.5th percentile) is stored; the score
   is how far outside its range the furthest statistic lies, in units of that range's width.

A field from another lab or microscope therefore gets `out_of_distribution` instead of a confident call.

    >>> ood = fit_ood(model, config, train_images)          # -> dict, stored as config["ood"]
    >>> scorer = OODScorer(config["ood"])
    >>> flagged, reason, score = scorer.check(features, tiles_rgb)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

FEATURE_PERCENTILE = 99.0
STATS_PERCENTILE = 99.0
STATS_MIN_THRESHOLD = 0.15  # a field must lie at least 15 % of a statistic's training range outside it
RANGE_QUANTILES = (0.5, 99.5)
MAX_COMPONENTS = 32

STAT_NAMES = ("bg_brightness", "bg_red_green", "bg_blue_green", "stain_od", "stain_od_red", "stain_od_blue",
              "stained_fraction", "sharpness", "acf_length", "largest_blob")
STAT_LABELS = {
    "bg_brightness": "background brightness", "bg_red_green": "white balance (red/green)",
    "bg_blue_green": "white balance (blue/green)", "stain_od": "stain density", "stain_od_red": "stain colour (red OD)",
    "stain_od_blue": "stain colour (blue OD)", "stained_fraction": "stained area", "sharpness": "sharpness (blur)",
    "acf_length": "magnification (texture scale)", "largest_blob": "magnification (largest cell)",
}


# ---------------------------------------------------------------------------------------------------------------
# image statistics


STATS_VERSION = 3  # bump when image_stats changes: older fits are then ignored (refit with leukodx calibrate)
STATS_SIDE = 112  # statistics are computed on the field resized to 112 x 112 (fast, and the same for all sizes)


def _quantile(a: np.ndarray, q: float) -> float:
    flat = a.ravel()
    k = int(round(q / 100 * (flat.size - 1)))
    return float(np.partition(flat, k)[k])


def image_stats(rgb: np.ndarray) -> np.ndarray:
    """The statistics of one field (HxWx3 uint8, as the model sees it), in STAT_NAMES order."""
    from PIL import Image

    # sharpness at the model's resolution: mean |Laplacian| / mean |gradient| (blur lowers it, contrast does not)
    g_full = rgb.astype(np.float32).mean(axis=2)
    gy, gx = np.gradient(g_full)
    sharp = float(np.abs(ndi.laplace(g_full)).mean() / (np.hypot(gx, gy).mean() + 1e-3))
    if rgb.shape[:2] != (STATS_SIDE, STATS_SIDE):
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((STATS_SIDE, STATS_SIDE), Image.BILINEAR))
    x = rgb.astype(np.float32)
    grey = x.mean(axis=2)
    bright_cut = _quantile(grey, 70)
    bg = grey >= bright_cut
    bgc = x[bg].mean(axis=0) + 1.0
    od = -np.log((x + 1.0) / 256.0)  # optical density per channel
    od_sum = od.sum(axis=2)
    dark_cut = _quantile(od_sum, 95)
    dark = od_sum >= dark_cut
    od_dark = od[dark].mean(axis=0)
    tot = float(od_dark.sum()) + 1e-6
    bg_od = float(-np.log(bgc / 256.0).sum())
    stained = od_sum > bg_od + 0.5
    # autocorrelation length: radius where the normalised autocorrelation of the grey field falls to 1/2
    g = grey - grey.mean()
    f = np.fft.rfft2(g)
    ac = np.fft.irfft2(np.abs(f) ** 2, s=g.shape)
    ac = np.fft.fftshift(ac) / (ac.flat[0] + 1e-6)
    cy, cx = np.array(ac.shape) // 2
    row = ac[cy, cx:cx + min(cx, 48)]
    col = ac[cy:cy + min(cy, 48), cx]
    prof = (row[: min(len(row), len(col))] + col[: min(len(row), len(col))]) / 2
    below = np.nonzero(prof < 0.5)[0]
    if len(below) and below[0] > 0:  # interpolate where the profile crosses 1/2
        i = int(below[0])
        acf_len = i - 1 + float((prof[i - 1] - 0.5) / (prof[i - 1] - prof[i] + 1e-9))
    else:
        acf_len = float(below[0]) if len(below) else float(len(prof))
    acf_len = acf_len / np.sqrt(grey.size) * 224.0  # in units of a 224-px field
    lab, n = ndi.label(od_sum >= _quantile(od_sum, 90))
    blob = float(np.bincount(lab.ravel())[1:].max()) / lab.size if n else 0.0
    return np.array([
        float(bgc.mean()), float(bgc[0] / bgc[1]), float(bgc[2] / bgc[1]),
        tot, float(od_dark[0] / tot), float(od_dark[2] / tot),
        float(stained.mean()), sharp, acf_len, float(np.sqrt(blob)),
    ], dtype=np.float64)


def _stats_excess(stats: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far each statistic lies outside [lo, hi], in units of hi - lo (0 inside)."""
    width = np.maximum(hi - lo, 1e-6)
    return np.maximum(0.0, np.maximum(lo - stats, stats - hi)) / width


# ---------------------------------------------------------------------------------------------------------------
# feature distance (probabilistic-PCA Mahalanobis, shared covariance)


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


def _feature_scores(feats: np.ndarray, m: dict) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    means = np.asarray(m["means"], dtype=np.float64)
    comps = np.asarray(m["components"], dtype=np.float64)
    lam = np.asarray(m["variances"], dtype=np.float64)
    resid = float(m["residual_variance"])
    best = None
    for mu in means:
        diff = feats - mu
        proj = diff @ comps.T
        in_sub = (proj**2 / lam).sum(1)
        res = np.maximum((diff**2).sum(1) - (proj**2).sum(1), 0.0) / resid
        s = (in_sub + res) / m["dim"]
        best = s if best is None else np.minimum(best, s)
    return best


def _rounded(a, sig: int = 6):
    arr = np.asarray(a, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.{sig}g}"))(arr).tolist() if arr.size else arr.tolist()


# ---------------------------------------------------------------------------------------------------------------
# fitting


def _as_model_inputs(images, size: Sequence[int]) -> Iterable[np.ndarray]:
    """Yield HxWx3 uint8 fields at model resolution from paths, bytes, arrays or an N x 3 x H x W tensor."""
    from PIL import Image

    from leukodx.data.images import open_image

    h, w = int(size[0]), int(size[1])
    if hasattr(images, "detach"):  # a torch tensor N x 3 x H x W in 0..255
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.transpose(0, 2, 3, 1)
        images = list(np.clip(images, 0, 255).astype(np.uint8))
    for item in images:
        if isinstance(item, tuple):  # (path, label) pairs
            item = item[0]
        if hasattr(item, "detach"):  # one torch tensor 3 x H x W (or H x W x 3)
            item = item.detach().cpu().numpy()
        if isinstance(item, np.ndarray):
            arr = item
            if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
                arr = arr.transpose(1, 2, 0)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        elif isinstance(item, Image.Image):
            img = item.convert("RGB")
        else:
            img = open_image(item if isinstance(item, bytes) else Path(item))
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        yield np.asarray(img)


def fit_ood(model, config: dict, train_images, val_images=None, *, labels=None, max_images: int = 2000,
            batch_size: int = 32, seed: int = 0) -> dict:
    """Fit both checks on `train_images` (paths, bytes, HxWx3 arrays or an N x 3 x H x W tensor in 0..255).

    The thresholds are the 99th percentile of the scores of held-out in-distribution images: `val_images` when
    given, else a fixed 20 % of `train_images` kept out of the fit. `labels` (class index or name per train
    image) make the feature means class-conditional; without them the classifier's own predictions are used.
    Returns a JSON-ready dict, stored by training as config["ood"].
    """
    import torch

    from leukodx.inference.engines import with_features

    size = config["input_size"]
    classes = list(config.get("classes") or [])
    train = list(_as_model_inputs(train_images, size))
    if labels is not None:
        labels = [classes.index(lab) if isinstance(lab, str) else int(lab) for lab in list(labels)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))[:max_images]
    if val_images is None:
        n_hold = max(1, int(round(0.2 * len(order)))) if len(order) >= 10 else 0
        hold_idx, fit_idx = order[:n_hold], order[n_hold:]
        val = [train[i] for i in hold_idx]
        held_out = "20% of the training images, kept out of the fit"
    else:
        fit_idx = order
        val = list(_as_model_inputs(val_images, size))[:max_images]
        held_out = "the validation images"
    fit = [train[i] for i in fit_idx]
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
    s_fit = np.stack([image_stats(im) for im in fit])
    lo, hi = np.percentile(s_fit, RANGE_QUANTILES, axis=0)
    if val:
        f_val, _ = features(val)
        feat_val = _feature_scores(f_val, fm)
        stat_val = _stats_excess(np.stack([image_stats(im) for im in val]), lo, hi).max(1)
    else:  # too few images to hold any out: score the fit images themselves
        feat_val = _feature_scores(f_fit, fm)
        stat_val = _stats_excess(s_fit, lo, hi).max(1)
    feat_thr = float(np.percentile(feat_val, FEATURE_PERCENTILE))
    stat_thr = float(max(np.percentile(stat_val, STATS_PERCENTILE), STATS_MIN_THRESHOLD))
    return {
        "method": "ppca-mahalanobis+image-stats",
        "n_fit": len(fit), "n_held_out": len(val), "held_out": held_out,
        "class_conditional": "labels" if fit_labels is not None else "predictions",
        "features": {
            "dim": int(fm["dim"]), "means": _rounded(fm["means"]), "components": _rounded(fm["components"]),
            "variances": _rounded(fm["variances"]), "residual_variance": float(f"{fm['residual_variance']:.6g}"),
            "threshold": feat_thr, "percentile": FEATURE_PERCENTILE,
            "held_out_flag_rate": float((feat_val > feat_thr).mean()),
        },
        "image_stats": {
            "version": STATS_VERSION, "side": STATS_SIDE, "names": list(STAT_NAMES), "lo": _rounded(lo), "hi": _rounded(hi), "threshold": stat_thr,
            "range_quantiles": list(RANGE_QUANTILES), "percentile": STATS_PERCENTILE,
            "min_threshold": STATS_MIN_THRESHOLD, "held_out_flag_rate": float((stat_val > stat_thr).mean()),
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# scoring


class OODScorer:
    """Scores fields against a fitted config["ood"] dict. Both parts are optional."""

    def __init__(self, ood: dict | None):
        ood = ood or {}
        self.features = ood.get("features")
        self.stats = ood.get("image_stats")
        self.notes: list[str] = []
        if self.stats and self.stats.get("version") != STATS_VERSION:
            self.notes.append("image statistics were fitted by an older leukodx and are not used; refit them with "
                              "`leukodx calibrate --model RUN --data DATA`")
            self.stats = None
        if self.stats:
            self._lo = np.asarray(self.stats["lo"], dtype=np.float64)
            self._hi = np.asarray(self.stats["hi"], dtype=np.float64)
            self._names = list(self.stats.get("names") or STAT_NAMES)

    @property
    def enabled(self) -> bool:
        return bool(self.features or self.stats)

    def feature_scores(self, feats: np.ndarray) -> np.ndarray | None:
        if not self.features or feats is None or feats.shape[1] != self.features["dim"]:
            return None
        return _feature_scores(feats, self.features)

    def check(self, feats: np.ndarray | None, tiles: Sequence[np.ndarray]) -> tuple[bool, str, float | None]:
        """(flagged, reason, score) for one field: `feats` T x D and `tiles` T fields at model resolution.
        The score is the larger of the two, each divided by its threshold (> 1 means flagged)."""
        reasons, score = [], None
        fs = self.feature_scores(feats) if feats is not None else None
        if fs is not None:
            rel = float(fs.max()) / max(self.features["threshold"], 1e-9)
            score = rel
            if rel > 1:
                reasons.append(f"features unlike the training fields (distance {fs.max():.3g} > "
                               f"{self.features['threshold']:.3g})")
        if self.stats:
            st = np.mean([image_stats(t) for t in tiles], axis=0)
            exc = _stats_excess(st, self._lo, self._hi)
            rel = float(exc.max()) / max(self.stats["threshold"], 1e-9)
            score = rel if score is None else max(score, rel)
            if rel > 1:
                worst = [i for i in np.argsort(-exc) if exc[i] > self.stats["threshold"]][:3]
                parts = [f"{STAT_LABELS.get(self._names[i], self._names[i])} {st[i]:.3g} outside "
                         f"{self._lo[i]:.3g}-{self._hi[i]:.3g}" for i in worst]
                reasons.append("image unlike the training fields: " + "; ".join(parts))
        return bool(reasons), "; ".join(reasons), score
