"""Post-hoc calibration on validation outputs: a softmax temperature and a low-confidence threshold."""

from __future__ import annotations

import numpy as np
import torch


def _nll(logits: torch.Tensor, targets: torch.Tensor, t: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / t, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (log-grid search, then a finer grid).

    Returns 1.0 when there is nothing to fit on (no validation outputs)."""
    if len(targets) == 0:
        return 1.0
    logits, targets = logits.double(), targets.long()
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    losses = [_nll(logits, targets, t) for t in grid]
    i = int(np.nanargmin(losses))
    lo, hi = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), 41))
    losses = [_nll(logits, targets, t) for t in fine]
    return float(round(fine[int(np.nanargmin(losses))], 4))


def fit_low_confidence(probs: np.ndarray, targets: np.ndarray, target_accuracy: float = 0.99,
                       min_threshold: float = 0.5) -> dict:
    """The smallest confidence threshold t (>= min_threshold) such that the validation fields with top
    probability >= t are right at least `target_accuracy` of the time. Fields below t are flagged
    low_confidence for a clinician's closer look. When no threshold reaches the target, the one with the best
    accuracy among those keeping at least half of the fields is taken, and `reached` says so."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    if len(targets) == 0:
        return {"threshold": min_threshold, "reached": False, "n_val": 0, "target_accuracy": target_accuracy}
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    grid = np.round(np.arange(min_threshold, 0.996, 0.005), 3)
    rows = []
    for t in grid:
        keep = conf >= t
        cov = float(keep.mean())
        acc = float(correct[keep].mean()) if keep.any() else float("nan")
        rows.append((float(t), cov, acc))
    ok = [r for r in rows if r[2] == r[2] and r[2] >= target_accuracy]
    reached = bool(ok)
    if ok:
        t, cov, acc = ok[0]
    else:
        cand = [r for r in rows if r[1] >= 0.5 and r[2] == r[2]] or [rows[0]]
        t, cov, acc = max(cand, key=lambda r: (r[2], -r[0]))
    return {"threshold": t, "reached": reached, "target_accuracy": target_accuracy, "val_coverage": cov,
            "val_accuracy_above": acc, "val_accuracy_all": float(correct.mean()), "n_val": int(len(targets))}
