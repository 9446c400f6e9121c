"""Calibration on validation outputs, one rule for training and `leukodx calibrate`: a softmax temperature and
the low-confidence threshold (numpy and scipy only).

- **temperature**: the T > 0 minimising the negative log-likelihood of softmax(logits / T).
- **low confidence**: the lowest calibrated confidence t (never under `floor`) at which the validation fields
  with confidence >= t are at least `target_accuracy` right, capped so that at most `max_flagged` of the
  validation fields fall below it: a flag must stay rare enough to be read, in distribution.

    >>> t = fit_temperature(val_logits, val_labels)
    >>> rec = fit_low_confidence(softmax(val_logits / t), val_labels)     # rec["threshold"]
"""

from __future__ import annotations

import numpy as np

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
