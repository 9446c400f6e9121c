"""Classification and segmentation metrics (numpy + scikit-learn; no torch).

The keys follow the metrics.json contract in DESIGN.md. Every value is a plain Python number, list or dict, so
the result can be written with `json.dumps` as it is.

    >>> import numpy as np
    >>> m = classification_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]), ["Benign", "Pre"])
    >>> m["accuracy"]
    1.0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from leukodx.models.model_config import CaseRule

ECE_BINS = 15
MIN_REFERENCE_FOREGROUND = 0.001  # a reference mask under 0.1 % foreground counts as failed (see DESIGN.md)


def _f(x) -> float | None:
    """A JSON-ready float (None for NaN/inf)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins on the confidence (the max probability): per bin the mean confidence, the accuracy
    and the count. Bin k holds confidences in (k/n, (k+1)/n]; a confidence of exactly 0 falls in bin 0."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    corr_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
    acc = np.where(count > 0, corr_sum / np.maximum(count, 1), np.nan)
    return {
        "edges": [k / n_bins for k in range(n_bins + 1)],
        "confidence": [_f(v) for v in mean_conf],
        "accuracy": [_f(v) for v in acc],
        "count": [int(c) for c in count],
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence| weighted by the bin's share."""
    confidence = np.asarray(confidence, dtype=np.float64)
    n = confidence.size
    if n == 0:
        raise ValueError("ECE of no predictions")
    bins = reliability_bins(confidence, correct, n_bins)
    per_bin = zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
    return float(sum(k / n * abs(a - c) for c, a, k in per_bin if k))


def _check_inputs(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be N x C, got shape {p.shape}")
    if p.shape[0] != y.size:
        raise ValueError(f"{y.size} labels but {p.shape[0]} rows of probabilities")
    if p.shape[1] != len(classes):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(classes)} classes were named")
    if y.size == 0:
        raise ValueError("no predictions to score")
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"labels must be class indices in 0..{len(classes) - 1}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or infinity")
    return y, p


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    benign: Sequence[str] | None = None,
) -> dict:
    """Metrics of a classifier's probabilities `probs` (N x C, rows summing to 1) against class indices `y_true`.

    The contract keys of docs/design.md (confusion_matrix: rows true, columns predicted), and: roc_auc_note
    (why the AUC is None, when it is), per-class roc_auc, nll, brier, reliability (bins for a reliability
    diagram) and, when a `benign` class (the model's `case_rule.benign`; default CaseRule's) is one of the
    classes, malignant_vs_benign (sensitivity and specificity of "not benign", with the predicted class as the
    call, and its AUC on 1 - p(benign)).
    Balanced accuracy averages the recall over the classes present in `y_true`; macro F1 averages F1 over the
    classes present in `y_true` or in the predictions.
    """
    from sklearn.metrics import roc_auc_score

    classes = list(classes)
    y, p = _check_inputs(y_true, probs, classes)
    n, c = p.shape
    pred = p.argmax(axis=1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)

    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    per_class: dict[str, dict] = {}
    f1s: list[float] = []
    recalls_present: list[float] = []
    for k, name in enumerate(classes):
        fp = predicted[k] - tp[k]
        fn = support[k] - tp[k]
        tn = n - tp[k] - fp - fn
        recall = _ratio(tp[k], support[k])
        f1 = _ratio(2 * tp[k], 2 * tp[k] + fp + fn)
        per_class[name] = {"precision": _ratio(tp[k], predicted[k]), "recall": recall,
                           "specificity": _ratio(tn, tn + fp), "f1": f1, "support": int(support[k])}
        if recall is not None:  # the class is present in y_true (support > 0)
            recalls_present.append(recall)
        if support[k] > 0 or predicted[k] > 0:
            f1s.append(f1 if f1 is not None else 0.0)

    # one-vs-rest ROC AUC: defined only when every class has positives and negatives in y_true
    absent = [classes[k] for k in range(c) if support[k] == 0]
    aucs: list[float] = []
    if absent:
        auc_macro, auc_note = None, f"class(es) {', '.join(absent)} absent from the evaluated images"
    elif c < 2:
        auc_macro, auc_note = None, "a single class"
    else:
        for k, name in enumerate(classes):
            a = float(roc_auc_score((y == k).astype(int), p[:, k]))
            per_class[name]["roc_auc"] = a
            aucs.append(a)
        auc_macro, auc_note = float(np.mean(aucs)), None

    confidence = p.max(axis=1)
    correct = pred == y
    p_true = np.clip(p[np.arange(n), y], 1e-12, 1.0)
    onehot = np.eye(c)[y]
    out: dict[str, Any] = {
        "n_images": int(n),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean(recalls_present)),
        "macro_f1": float(np.mean(f1s)),
        "roc_auc_macro": auc_macro,
        "ece": expected_calibration_error(confidence, correct),
        "confusion_matrix": cm.tolist(),
        "classes": classes,
        "per_class": per_class,
        "nll": float(-np.log(p_true).mean()),
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
        "mean_confidence": float(confidence.mean()),
        "reliability": reliability_bins(confidence, correct),
    }
    if auc_note:
        out["roc_auc_note"] = auc_note
    benign = list(CaseRule().benign if benign is None else benign)
    if set(benign) & set(classes):
        out["malignant_vs_benign"] = malignant_vs_benign(y, p, classes, benign)
    return out


def malignant_vs_benign(y: np.ndarray, p: np.ndarray, classes: Sequence[str], benign: Sequence[str]) -> dict:
    """The `benign` classes vs the other classes (all of them ALL subtypes): positive = malignant."""
    from sklearn.metrics import roc_auc_score

    b = [k for k, c in enumerate(classes) if c in benign]
    true_mal = ~np.isin(y, b)
    pred_mal = ~np.isin(p.argmax(axis=1), b)
    tp = int(np.sum(true_mal & pred_mal))
    fn = int(np.sum(true_mal & ~pred_mal))
    tn = int(np.sum(~true_mal & ~pred_mal))
    fp = int(np.sum(~true_mal & pred_mal))
    auc = None
    if 0 < true_mal.sum() < true_mal.size:
        auc = float(roc_auc_score(true_mal.astype(int), 1.0 - p[:, b].sum(axis=1)))
    return {
        "malignant_classes": [c for c in classes if c not in benign],
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "roc_auc": auc,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def roc_curves(y_true, probs, classes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve per class present with positives and negatives: {class: (fpr, tpr, auc)}."""
    from sklearn.metrics import auc, roc_curve

    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    out = {}
    for k, name in enumerate(classes):
        pos = y == k
        if 0 < pos.sum() < pos.size:
            fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
            out[name] = (fpr, tpr, float(auc(fpr, tpr)))
    return out


class SegmentationAccumulator:
    """Streaming segmentation metrics: `add` one field at a time (any size), `result()` at the end.

    Memory stays constant apart from one small record per field (for best/worst selection).

    - dice_global = sum 2|P∩R| / sum (|P| + |R|) over fields whose reference has >= 0.1 % foreground;
      dice_global_all the same over every field; dice_mean the mean per-field Dice over the dice_global fields;
      iou_global, pixel_accuracy and count_mae over the dice_global fields too.
    - n_reference_failed: fields whose reference has < 0.1 % foreground (the reference thresholding failed).
    """

    def __init__(self) -> None:
        self.per_image: list[dict] = []
        # sums over the fields with a usable reference ("ok") and over all fields ("all")
        self._sums = {k: dict.fromkeys(("inter", "pred", "ref", "union", "correct", "pixels"), 0)
                      for k in ("ok", "all")}
        self._count_err: list[float] = []
        self._count_missing = 0

    def add(self, pred_mask: np.ndarray, ref_mask: np.ndarray, pred_count: int | None = None,
            ref_count: int | None = None, name: str | None = None) -> dict:
        """Score one field; returns its record (name, dice, iou, reference_fraction, reference_failed, counts)."""
        pred = np.asarray(pred_mask).astype(bool)
        ref = np.asarray(ref_mask).astype(bool)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape"
                             + (f" ({name})" if name else ""))
        inter = int(np.count_nonzero(pred & ref))
        n_pred = int(np.count_nonzero(pred))
        n_ref = int(np.count_nonzero(ref))
        union = n_pred + n_ref - inter
        pixels = int(ref.size)
        frac = n_ref / pixels if pixels else 0.0
        failed = frac < MIN_REFERENCE_FOREGROUND
        sums = {"inter": inter, "pred": n_pred, "ref": n_ref, "union": union,
                "correct": pixels - (union - inter), "pixels": pixels}
        for g in ("all",) if failed else ("ok", "all"):
            for k, v in sums.items():
                self._sums[g][k] += v
        dice = 1.0 if n_pred + n_ref == 0 else 2 * inter / (n_pred + n_ref)
        iou = 1.0 if union == 0 else inter / union
        rec = {
            "name": name if name is not None else str(len(self.per_image)),
            "dice": float(dice),
            "iou": float(iou),
            "reference_fraction": float(frac),
            "predicted_fraction": float(n_pred / pixels) if pixels else 0.0,
            "reference_failed": bool(failed),
            "pred_count": None if pred_count is None else int(pred_count),
            "ref_count": None if ref_count is None else int(ref_count),
        }
        if not failed:
            if pred_count is None or ref_count is None:
                self._count_missing += 1
            else:
                self._count_err.append(abs(int(pred_count) - int(ref_count)))
        self.per_image.append(rec)
        return rec

    def result(self) -> dict:
        ok, all_ = self._sums["ok"], self._sums["all"]
        scored = [r for r in self.per_image if not r["reference_failed"]]
        out: dict[str, Any] = {
            "n_images": len(self.per_image),
            "n_scored": len(scored),
            "n_reference_failed": len(self.per_image) - len(scored),
            "min_reference_foreground": MIN_REFERENCE_FOREGROUND,
            "dice_global": _ratio(2 * ok["inter"], ok["pred"] + ok["ref"]),
            "dice_global_all": _ratio(2 * all_["inter"], all_["pred"] + all_["ref"]),
            "dice_mean": float(np.mean([r["dice"] for r in scored])) if scored else None,
            "iou_global": _ratio(ok["inter"], ok["union"]),
            "pixel_accuracy": _ratio(ok["correct"], ok["pixels"]),
            "pixel_accuracy_all": _ratio(all_["correct"], all_["pixels"]),
            "precision_global": _ratio(ok["inter"], ok["pred"]),
            "recall_global": _ratio(ok["inter"], ok["ref"]),
            "count_mae": float(np.mean(self._count_err)) if self._count_err else None,
            "count_n": len(self._count_err),
            "per_image": self.per_image,
        }
        if self._count_missing:
            out["count_note"] = f"{self._count_missing} scored field(s) had no cell counts"
        return out

    def best_worst(self, k: int = 3) -> tuple[list[dict], list[dict]]:
        """The k highest- and k lowest-Dice fields among those with a usable reference."""
        scored = sorted((r for r in self.per_image if not r["reference_failed"]), key=lambda r: r["dice"])
        return scored[::-1][:k], scored[:k]


def segmentation_metrics(
    pred_masks: Iterable[np.ndarray],
    ref_masks: Iterable[np.ndarray],
    pred_counts: Iterable[int] | None = None,
    ref_counts: Iterable[int] | None = None,
    names: Iterable[str] | None = None,
) -> dict:
    """`SegmentationAccumulator`'s metrics over paired binary masks (each pair the same size; pairs may differ
    in size); `count_mae` needs both count lists. ValueError when the lists differ in length."""
    acc = SegmentationAccumulator()
    preds, refs = list(pred_masks), list(ref_masks)
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predicted masks but {len(refs)} reference masks")
    absent = [None] * len(preds)
    for p, r, a, b, n in zip(preds, refs, absent if pred_counts is None else pred_counts,
                             absent if ref_counts is None else ref_counts, absent if names is None else names,
                             strict=True):
        acc.add(p, r, a, b, n)
    return acc.result()


def selective_metrics(y_true, probs, flags: Sequence[str]) -> dict:
    """How the flags work as a reject option: coverage (the share of fields left unflagged, ``ok``), accuracy
    over all fields and over the unflagged ones, the count per flag, and the risk-coverage curve of the
    confidence alone (fields sorted by confidence; risk = error rate of the most confident share)."""
    y, p = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    ok = np.asarray([f == "ok" for f in flags], bool)
    correct = p.argmax(1) == y
    order = np.argsort(-p.max(1), kind="stable")
    cum_err = np.cumsum(~correct[order])
    n = len(y)
    points = sorted({max(1, round(n * c / 20)) for c in range(1, 21)})
    return {
        "coverage": _f(ok.mean()) if n else None,
        "flag_rate": _f(1 - ok.mean()) if n else None,
        "flags": dict(Counter(flags)),
        "accuracy_all": _f(correct.mean()) if n else None,
        "accuracy_unflagged": _f(correct[ok].mean()) if ok.any() else None,
        "accuracy_flagged": _f(correct[~ok].mean()) if (~ok).any() else None,
        "risk_coverage": [{"coverage": _f(k / n), "risk": _f(cum_err[k - 1] / k)} for k in points] if n else [],
    }
