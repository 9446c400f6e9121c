"""Scores of the cell-type model on its crops: PBC per-class accuracy, Taleqani blast vs non-blast per cell
(weak labels) and per field (the blast share), Raabin leukocytes and negatives called not_leukocyte, and the fit
of the field threshold (the blast share above which a field counts as showing blasts).

    scores = score_crops(probs, data, low=0.4, field_threshold=0.3)   # data: a leukodx.data.cell_crops.CropData
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from leukodx.data.cell_crops import MODEL_CLASSES, NOT_LEUKOCYTE, CropData
from leukodx.data.sources import SOURCES
from leukodx.inference.cell_classes import NOT_COUNTED, UNIDENTIFIED

TALEQANI = SOURCES["taleqani"]
TALEQANI_MALIGNANT = tuple(c for c in TALEQANI.classes if c != TALEQANI.benign)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    rec = [float((pred[y == k] == k).mean()) for k in np.unique(y) if k >= 0]
    return float(np.mean(rec)) if rec else float("nan")


def field_shares(answers: list[str], paths: np.ndarray) -> dict[str, float | None]:
    """Share of blasts among counted leukocytes per image path (the runtime's field_score)."""
    per: dict[str, list[str]] = {}
    for a, p in zip(answers, paths.tolist(), strict=True):
        per.setdefault(p, []).append(a)
    out: dict[str, float | None] = {}
    for p, ans in per.items():
        counted = [a for a in ans if a not in NOT_COUNTED]
        out[p] = (sum(a == "blast" for a in counted) / len(counted)) if counted else None
    return out


def fit_field_threshold(shares: dict[str, float | None], malignant: dict[str, bool]) -> dict:
    """The blast share above which a field counts as showing blasts: the best balanced accuracy on the given
    fields (a field without counted cells scores 0)."""
    paths = sorted(shares)
    s = np.array([shares[p] if shares[p] is not None else 0.0 for p in paths])
    y = np.array([malignant[p] for p in paths], bool)
    if not y.any() or y.all():
        return {"threshold": 0.5, "n_fields": len(paths), "note": "one field class only: default"}
    best = (-1.0, 0.5)
    for t in np.unique(np.concatenate([s, [0.5]])):
        if t <= 0:
            continue
        call = s >= t
        ba = 0.5 * (call[y].mean() + (~call[~y]).mean())
        if ba > best[0] + 1e-12:
            best = (float(ba), float(t))
    return {"threshold": round(best[1], 4), "val_balanced_accuracy": round(best[0], 4), "n_fields": len(paths)}


def auc(score: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    r = rankdata(score)
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def score_crops(probs: np.ndarray, data: CropData, low: float, field_threshold: float | None = None) -> dict:
    """Held-out scores of calibrated probabilities for `data`'s crops: PBC per-class accuracy, Taleqani blast vs
    non-blast per cell (weak labels) and per field (the blast share), Raabin leukocytes called not_leukocyte,
    negatives called not_leukocyte, the unidentified share."""
    top = probs.argmax(1)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    answers = [MODEL_CLASSES[k] if q >= low else UNIDENTIFIED for k, q in zip(top, conf, strict=True)]
    ans = np.array(answers, dtype=str)
    out: dict = {"n_crops": int(len(data)), "unidentified_share": float((ans == UNIDENTIFIED).mean()) if len(ans) else None}
    for name in (s for s in ("pbc", "chula") if (data.source == s).any()):  # a typed label per crop
        pbc = data.source == name
        per = {}
        for cls in sorted(set(data.labels[pbc].tolist())):
            sel = pbc & (data.labels == cls)
            per[cls] = {"n": int(sel.sum()), "accuracy_top": round(float((top[sel] == MODEL_CLASSES.index(cls)).mean()), 4),
                        "accuracy_answer": round(float((ans[sel] == cls).mean()), 4),
                        "unidentified": round(float((ans[sel] == UNIDENTIFIED).mean()), 4),
                        "confusions": dict(Counter(ans[sel].tolist()).most_common(4))}
        ys = np.array([MODEL_CLASSES.index(c) for c in data.labels[pbc]])
        out[name] = {"per_class": per, "accuracy_top": round(float((top[pbc] == ys).mean()), 4),
                     "balanced_accuracy_top": round(balanced_accuracy(top[pbc], ys), 4), "n": int(pbc.sum())}
    tal = (data.source == "taleqani") & np.char.endswith(data.kind.astype(str), ":cell")
    if tal.any():
        y = np.isin(data.field_label[tal], TALEQANI_MALIGNANT)
        pb = probs[tal, MODEL_CLASSES.index("blast")]
        called = ans[tal] == "blast"
        cell = {"n": int(tal.sum()), "n_malignant_field_cells": int(y.sum()), "auc_p_blast": auc(pb, y),
                "sensitivity_blast_answer": round(float(called[y].mean()), 4) if y.any() else None,
                "specificity_blast_answer": round(float((~called[~y]).mean()), 4) if (~y).any() else None,
                "answers_benign_fields": dict(Counter(ans[tal][~y].tolist()).most_common()),
                "answers_malignant_fields": dict(Counter(ans[tal][y].tolist()).most_common())}
        shares = field_shares(ans[tal].tolist(), data.path[tal])
        fl = {p: lab for p, lab in zip(data.path[tal].tolist(), data.field_label[tal].tolist(), strict=True)}
        paths = sorted(shares)
        s = np.array([shares[p] if shares[p] is not None else 0.0 for p in paths])
        yf = np.array([fl[p] in TALEQANI_MALIGNANT for p in paths])
        fld: dict = {"n_fields": len(paths), "n_malignant": int(yf.sum()), "auc_blast_share": auc(s, yf),
                     "fields_without_counted_cells": int(sum(shares[p] is None for p in paths))}
        if field_threshold is not None:
            call = s >= field_threshold
            fld.update(threshold=field_threshold,
                       sensitivity=round(float(call[yf].mean()), 4) if yf.any() else None,
                       specificity=round(float((~call[~yf]).mean()), 4) if (~yf).any() else None,
                       accuracy=round(float((call == yf).mean()), 4))
            fld["per_class_called"] = {c: round(float(call[[fl[p] == c for p in paths]].mean()), 4)
                                       for c in TALEQANI.classes if any(fl[p] == c for p in paths)}
        out["taleqani"] = {"cells": cell, "fields": fld}
    raab = data.kind == "raabin:leukocyte"
    if raab.any():
        out["raabin_leukocytes"] = {"n": int(raab.sum()),
                                    "called_not_leukocyte": round(float((ans[raab] == NOT_LEUKOCYTE).mean()), 4),
                                    "answers": dict(Counter(ans[raab].tolist()).most_common())}
    neg = (data.labels == NOT_LEUKOCYTE) & (data.source != "pbc")
    if neg.any():
        out["negatives"] = {"n": int(neg.sum()),
                            "called_not_leukocyte": round(float((ans[neg] == NOT_LEUKOCYTE).mean()), 4),
                            "by_kind": {k: round(float((ans[neg & (data.kind == k)] == NOT_LEUKOCYTE).mean()), 4)
                                        for k in sorted(set(data.kind[neg].tolist()))}}
    return out


