"""Out-of-distribution checks: is this a usable smear field, and does the model see it like its training fields?

A flag must mean "the model is likely wrong here, or this is not a usable smear field", never just "another
lab". Two checks (fitted by leukodx.deploy.ood_fit; scored here): the model-free **smear check**
(leukodx.inference.smear_check), and the **feature distance** (``features``): a class-conditional Mahalanobis
distance in the classifier's penultimate feature space, its covariance shared between classes and modelled as
probabilistic PCA (top-k principal directions + isotropic residual variance, shrunk); score = min over classes
of the squared distance / feature dimension. Colour and texture statistics are not checked (the former image
check): they flagged exactly the variation a robust model must tolerate, and did not predict errors.

    >>> scorer = OODScorer(config.ood, model_dir)
    >>> flagged, reason, score = scorer.check(features, tiles_rgb, rgb=field)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leukodx.inference.smear_check import check_smear
from leukodx.models.model_config import OOD_ARRAYS

IMAGE_CHECK_VERSION = 4  # 4: the smear check; 1-3 were colour/texture statistics (ignored now)
FEATURE_REASON = ("The image is unlike anything the model was trained on (its features are far from every "
                  "class of smear field), so the call is not reliable.")
FEATURE_ADVICE = "Read the field yourself; check that it is a stained peripheral blood smear at 100x."


def feature_scores(feats: np.ndarray, m: dict) -> np.ndarray:
    """The feature distance of each row of `feats` (probabilistic-PCA Mahalanobis, shared covariance)."""
    feats = np.asarray(feats, dtype=np.float64)
    means = np.asarray(m["means"], dtype=np.float64)
    comps = np.asarray(m["components"], dtype=np.float64)
    lam = np.asarray(m["variances"], dtype=np.float64)
    resid = float(m["residual_variance"])
    best = np.full(len(feats), np.inf)
    for mu in means:
        diff = feats - mu
        proj = diff @ comps.T
        in_sub = (proj**2 / lam).sum(1)
        res = np.maximum((diff**2).sum(1) - (proj**2).sum(1), 0.0) / resid
        best = np.minimum(best, (in_sub + res) / m["dim"])
    return best


class OODScorer:
    """Scores fields against a fitted config["ood"] dict. The smear check runs with or without one. The
    feature statistics' arrays live in a file beside config.json (``features.file``, written by
    leukodx.models.model_config.write_model_config); a directory from before keeps them inline."""

    def __init__(self, ood: dict | None, model_dir: str | Path | None = None):
        ood = ood or {}
        self.features = ood.get("features")
        if self.features and self.features.get("file"):
            if model_dir is None:
                raise ValueError("the OOD feature statistics are in a file: give the model directory")
            with np.load(Path(model_dir) / self.features["file"]) as arrays:
                self.features = {**self.features, **{k: arrays[k] for k in OOD_ARRAYS}}
        stats = ood.get("image_stats") or {}
        self.notes: list[str] = []
        if stats and stats.get("version") != IMAGE_CHECK_VERSION:
            self.notes.append("the colour statistics of an older leukodx are no longer used; the smear check runs "
                              "with the built-in red-cell size (refit with `leukodx calibrate --model RUN --data "
                              "DATA` to measure it on the model's training fields)")

    def feature_scores(self, feats: np.ndarray) -> np.ndarray | None:
        if not self.features or feats is None or feats.shape[1] != self.features["dim"]:
            return None
        return feature_scores(feats, self.features)

    def check(self, feats: np.ndarray | None, tiles: Sequence[np.ndarray] = (), rgb: np.ndarray | None = None,
              smear=None) -> tuple[bool, str, float | None]:
        """(flagged, reason, score) for one field: `feats` T x D and `tiles` T fields at model resolution;
        `smear` the field's smear check (leukodx.inference.smear_check; else it is run on `rgb`, the whole field
        at its own size, or the first tile). The reason says what is wrong and what to do. Score: the larger of
        the smear check's and the feature distance over its threshold (> 1 means flagged)."""
        field = rgb if rgb is not None else (tiles[0] if len(tiles) else None)
        score = None
        if smear is not None or field is not None:
            sm = smear if smear is not None else check_smear(np.asarray(field))
            if not sm.usable:
                return True, f"{sm.reason} {sm.advice}", float(sm.score)
            score = float(sm.score)
        fs = self.feature_scores(feats) if feats is not None else None
        if fs is not None and self.features is not None:
            threshold = float(self.features["threshold"])
            rel = float(fs.max()) / max(threshold, 1e-9)
            score = rel if score is None else max(score, rel)
            if rel > 1:
                return True, (f"{FEATURE_REASON} {FEATURE_ADVICE} (feature distance {fs.max():.3g} > "
                              f"{threshold:.3g})"), score
        return False, "", score
