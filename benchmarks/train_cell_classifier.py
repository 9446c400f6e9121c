"""Fit the per-cell AI suggestion (leukodx.inference.cell_classifier) from field labels, and measure it.

Cells come from what the product runs: the bundled segmenter (pipeline.SegmenterStage) and
instances.field_cells, with the red-cell diameter from scale.estimate_rbc_diameter. Weak labels: every cell of
a Benign field is 'lymphocyte' (hematogone), every cell of an Early / Pre / Pro field 'blast'. A weighted,
L2-penalised logistic regression (Newton's method, numpy) is fitted on the train rows of the split; the
candidates (penalty, linear or with squares, 0-2 rounds of a multiple-instance refinement) are compared on the
validation rows by the field-level AUC of the mean blast probability; Platt scaling and the field threshold
are fitted on the validation rows; the test rows are scored once, as they are and under the synthetic lab
shift (leukodx.evaluation.shift.lab_shift, seed 0, one variation per field), each shifted field segmented
and measured again as the product would.

    python benchmarks/train_cell_classifier.py --data ../shared/data/all-taleqani \
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --out src/leukodx/assets/cells \
        --results docs/results/cell-classifier

Writes OUT/cell_classifier.json (the model) and OUT/MODEL_CARD.md, RESULTS/metrics.json and RESULTS/README.md.
`--cache FILE.npz` keeps the extracted features between runs (delete it when the segmenter changes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from leukodx.inference.cell_classifier import (
    COLOUR_FEATURES,
    FEATURES,
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    CellClassifier,
    cell_features,
)

MALIGNANT = ("Early", "Pre", "Pro")
BATCH = 16
# pale nucleolus-like spots are found in under 1 % of the segmented Taleqani cells, so their training std is tiny
# (0.003) and a few pixels would move the standardised feature by many units: its unit is floored at 10 % of
# the nucleus
MIN_SCALE = {"pale_spots": 0.1}


# ----------------------------------------------------------------------------------------------- extraction
def _segment_fields(seg, rgbs):
    from leukodx.inference.instances import field_cells
    from leukodx.inference.scale import estimate_rbc_diameter

    out = []
    for rgb, prob in zip(rgbs, seg.probabilities(rgbs), strict=True):
        labels, cells = field_cells(prob > seg.mask_threshold, seg.instance_params)
        d, _conf = estimate_rbc_diameter(rgb)
        out.append((labels, cells, d))
    return out


def extract(data: Path, rows: list[dict], shift_seed: int) -> dict:
    """Features of every cell of every row (and of a lab-shifted copy of each test row)."""
    from leukodx.assets import default_model_dir
    from leukodx.data.images import read_field
    from leukodx.evaluation.shift import lab_shift, rng_for
    from leukodx.inference.pipeline import SegmenterStage

    seg = SegmenterStage(default_model_dir("segment"))
    jobs = [(r, False) for r in rows] + [(r, True) for r in rows if r["split"] == "test"]
    fields: dict[str, list] = {k: [] for k in ("path", "label", "split", "shifted", "n_cells", "rbc")}
    feats, owner = [], []
    t0 = time.time()
    for b in range(0, len(jobs), BATCH):
        batch = jobs[b:b + BATCH]
        rgbs = []
        for r, shifted in batch:
            rgb = read_field(data / r["path"])
            rgbs.append(lab_shift(rgb, rng_for(shift_seed, r["path"])) if shifted else rgb)
        for (r, shifted), rgb, (labels, cells, d) in zip(batch, rgbs, _segment_fields(seg, rgbs), strict=True):
            fi = len(fields["path"])
            f = cell_features(rgb, labels, cells, d)
            fields["path"].append(r["path"])
            fields["label"].append(r["label"])
            fields["split"].append(r["split"])
            fields["shifted"].append(shifted)
            fields["n_cells"].append(len(cells))
            fields["rbc"].append(np.nan if d is None else float(d))
            feats.append(f)
            owner.append(np.full(len(cells), fi))
        if (b // BATCH) % 20 == 0:
            print(f"  {b + len(batch)}/{len(jobs)} fields, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    out = {k: np.array(v) for k, v in fields.items()}
    out["features"] = np.concatenate(feats) if feats else np.zeros((0, len(FEATURES)))
    out["owner"] = np.concatenate(owner).astype(np.int64)
    out["extract_s"] = np.array(time.time() - t0)
    return out


# ----------------------------------------------------------------------------------------------- fitting
def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-np.clip(t, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float, iters: int = 50):
    """Weighted L2-penalised logistic regression by Newton's method (the intercept not penalised).
    Loss: sum(w * logloss) / sum(w) + lam / 2 * |coef|^2."""
    n, k = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], 1)
    beta = np.zeros(k + 1)
    wn = w / w.sum()
    pen = np.full(k + 1, lam)
    pen[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(xa @ beta)
        grad = xa.T @ (wn * (p - y)) + pen * beta
        hess = (xa * (wn * p * (1 - p))[:, None]).T @ xa + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def auc(score: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    pos, neg = int(y.sum()), int((1 - y).sum())
    if pos == 0 or neg == 0:
        return None
    r = rankdata(score)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of P(blast) against the weak labels (equal-width bins)."""
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (p >= lo) & (p < hi) if hi < 1 else (p >= lo)
        if sel.any():
            err += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(err)


def _design(f, mean, scale, quadratic):
    z = np.nan_to_num((f - mean) / scale, nan=0.0).clip(-6, 6)
    return np.concatenate([z, z * z], 1) if quadratic else z


def _weights(owner: np.ndarray, y_field: np.ndarray) -> np.ndarray:
    """Each field weighs 1 in all (shared by its cells); benign and malignant fields weigh the same in total."""
    counts = np.bincount(owner)
    w = 1.0 / counts[owner]
    yc = y_field[owner]
    for v in (0, 1):
        sel = yc == v
        if sel.any():
            w[sel] *= 0.5 / w[sel].sum()
    return w


def field_scores(p: np.ndarray, owner: np.ndarray, field_ids: np.ndarray) -> np.ndarray:
    """Mean P(blast) per field (NaN: no cells)."""
    n = int(field_ids.max()) + 1 if field_ids.size else 0
    s = np.bincount(owner, p, n)
    c = np.bincount(owner, None, n)
    out = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    return out[field_ids]


class Fitted:
    def __init__(self, mean, scale, quadratic, coef, intercept, mask=None):
        self.mean, self.scale, self.quadratic, self.coef, self.intercept = mean, scale, quadratic, coef, intercept
        self.mask = mask  # features used (others held at the training mean)

    def logit(self, f):
        if self.mask is not None:
            f = np.where(self.mask, f, self.mean)
        return _design(f, self.mean, self.scale, self.quadratic) @ self.coef + self.intercept


def fit_candidate(f, y_cell, owner, y_field, lam, quadratic, mil_rounds, mean, scale, mask=None):
    ff = f if mask is None else np.where(mask, f, mean)
    x = _design(ff, mean, scale, quadratic)
    w = _weights(owner, y_field)
    y = y_cell.astype(float).copy()
    coef, b = fit_logistic(x, y, w, lam)
    for _ in range(mil_rounds):
        # multiple-instance refinement: cells of malignant fields that look at least as benign as the median
        # benign cell are relabelled 'lymphocyte'; each malignant field keeps its most blast-like cell 'blast'
        t = x @ coef + b
        tau = np.median(t[y_cell == 0])
        y = y_cell.astype(float).copy()
        y[(y_cell == 1) & (t <= tau)] = 0.0
        top = np.full(int(owner.max()) + 1, -np.inf)
        np.maximum.at(top, owner, t)
        y[(y_cell == 1) & (t >= top[owner])] = 1.0
        coef, b = fit_logistic(x, y, w, lam)
    return Fitted(mean, scale, quadratic, coef, b, mask)


def platt(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    coef, b = fit_logistic(logit[:, None], y.astype(float), np.ones(len(y)), 0.0)
    return float(coef[0]), b


def choose_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """The threshold on the field score with the highest balanced accuracy (ties: the lowest such; placed
    halfway between neighbouring scores). Fields without cells (NaN) are benign whatever the threshold."""
    s = np.nan_to_num(score, nan=-1.0)
    cand = np.unique(s[s >= 0])
    mids = np.concatenate([[0.0], (cand[:-1] + cand[1:]) / 2, [1.0]]) if cand.size else np.array([0.5])
    best, best_t = -1.0, 0.5
    for t in mids:
        pred = s >= t
        sens = pred[y == 1].mean() if (y == 1).any() else 0.0
        spec = (~pred[y == 0]).mean() if (y == 0).any() else 0.0
        ba = (sens + spec) / 2
        if ba > best + 1e-12:
            best, best_t = ba, float(t)
    return best_t


def field_metrics(score: np.ndarray, y: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    has = ~np.isnan(score)
    s = np.nan_to_num(score, nan=0.0)  # no cells: no blast seen, called benign
    pred = s >= threshold
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    fp, fn = int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    sens = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    out = {
        "n_fields": int(len(y)), "n_malignant": int(y.sum()), "n_benign": int((y == 0).sum()),
        "n_fields_without_cells": int((~has).sum()),
        "fields_without_cells_by_class": {c: int((~has & (labels == c)).sum()) for c in ("Benign", *MALIGNANT)},
        "accuracy": (tp + tn) / len(y), "sensitivity": sens, "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "auc": auc(s, y),
        "auc_fields_with_cells": auc(score[has], y[has]),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        "sensitivity_by_class": {c: float(pred[labels == c].mean()) if (labels == c).any() else None
                                 for c in MALIGNANT},
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def cell_metrics(p: np.ndarray, y: np.ndarray) -> dict:
    return {"n_cells": int(len(y)), "n_blast_weak": int(y.sum()), "n_lymphocyte_weak": int((y == 0).sum()),
            "weak_label_accuracy": round(float(((p >= 0.5) == (y == 1)).mean()), 4) if len(y) else None,
            "weak_label_balanced_accuracy": round(float((((p[y == 1] >= 0.5).mean()) + (p[y == 0] < 0.5).mean()) / 2), 4)
            if (y == 1).any() and (y == 0).any() else None,
            "weak_label_auc": None if auc(p, y) is None else round(float(auc(p, y) or 0), 4),
            "ece_vs_weak_labels": round(ece(p, y), 4) if len(y) else None}


# ----------------------------------------------------------------------------------------------- timing
def time_inference(data: Path, rows: list[dict], model_path: Path) -> dict:
    """CellClassifier.classify as the pipeline will call it, timed on the test fields (after segmentation)."""
    from leukodx.assets import default_model_dir
    from leukodx.data.images import read_field
    from leukodx.inference.pipeline import SegmenterStage

    clf = CellClassifier.load(model_path)
    seg = SegmenterStage(default_model_dir("segment"))
    total_s, n_cells, n_fields, worst = 0.0, 0, 0, 0.0
    for b in range(0, len(rows), BATCH):
        batch = rows[b:b + BATCH]
        rgbs = [read_field(data / r["path"]) for r in batch]
        for rgb, (labels, cells, d) in zip(rgbs, _segment_fields(seg, rgbs), strict=True):
            t = time.perf_counter()
            clf.classify(rgb, labels, cells, d)
            dt = time.perf_counter() - t
            total_s += dt
            worst = max(worst, dt)
            n_cells += len(cells)
            n_fields += 1
    return {"fields": n_fields, "cells": n_cells, "ms_per_cell": round(1000 * total_s / max(n_cells, 1), 3),
            "ms_per_field": round(1000 * total_s / max(n_fields, 1), 3), "ms_per_field_max": round(1000 * worst, 2),
            "what": "CellClassifier.classify only (features + model), per test field after segmentation; "
                    "ms_per_cell = total time / total cells (the per-field work included)"}


# ----------------------------------------------------------------------------------------------- documents
def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _field_table(m: dict) -> str:
    rows = ["| fields | n | no cells | accuracy | sensitivity | specificity | balanced acc. | AUC | sens. Early / Pre / Pro |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, words in (("val", "validation"), ("test", "test (held out)"), ("test_lab_shift", "test, lab-shifted")):
        r = m["fields"][name]
        sc = r["sensitivity_by_class"]
        rows.append(f"| {words} | {r['n_fields']} ({r['n_benign']} benign) | {r['n_fields_without_cells']} | "
                    f"{_pct(r['accuracy'])} | {_pct(r['sensitivity'])} | {_pct(r['specificity'])} | "
                    f"{_pct(r['balanced_accuracy'])} | {r['auc']:.3f} | "
                    f"{_pct(sc['Early'])} / {_pct(sc['Pre'])} / {_pct(sc['Pro'])} |")
    return "\n".join(rows)


def _cell_table(m: dict) -> str:
    rows = ["| cells | n (weak blast / lymphocyte) | weak-label accuracy | balanced acc. | AUC | ECE vs weak labels |",
            "|---|---|---|---|---|---|"]
    for name, words in (("train", "train"), ("val", "validation"), ("test", "test"),
                        ("test_lab_shift", "test, lab-shifted")):
        r = m["cells"][name]
        rows.append(f"| {words} | {r['n_cells']} ({r['n_blast_weak']} / {r['n_lymphocyte_weak']}) | "
                    f"{_pct(r['weak_label_accuracy'])} | {_pct(r['weak_label_balanced_accuracy'])} | "
                    f"{r['weak_label_auc']:.3f} | {r['ece_vs_weak_labels']:.3f} |")
    return "\n".join(rows)


def _ablation_table(m: dict) -> str:
    rows = ["| features | field AUC test | field AUC lab-shifted | cell AUC test | cell AUC lab-shifted |",
            "|---|---|---|---|---|",
            f"| all {len(FEATURES)} (the bundled model) | {m['fields']['test']['auc']:.3f} | "
            f"{m['fields']['test_lab_shift']['auc']:.3f} | {m['cells']['test']['weak_label_auc']:.3f} | "
            f"{m['cells']['test_lab_shift']['weak_label_auc']:.3f} |"]
    for name, words in (("without_colour_features", "without the 4 colour features (size, shape, texture)"),
                        ("colour_features_only", "the 4 colour features only")):
        a = m["ablations"][name]
        rows.append(f"| {words} | {a['test']['auc']:.3f} | {a['test_lab_shift']['auc']:.3f} | "
                    f"{a['test']['cell_weak_label_auc']:.3f} | {a['test_lab_shift']['cell_weak_label_auc']:.3f} |")
    return "\n".join(rows)


def _method(m: dict) -> str:
    c = m["chosen"]
    return (
        f"- **Cells**: the bundled segmenter through `SegmenterStage` and `instances.field_cells` (what the "
        f"product runs), the red-cell diameter from `scale.estimate_rbc_diameter` (17 px when not found).\n"
        f"- **Features** ({len(FEATURES)}, `leukodx.inference.cell_classifier.FEATURES`): size and shape in "
        f"red-cell units (log area / red-cell area, solidity against a 16-direction star envelope, elongation, "
        f"touches the edge), the nucleus (the cell's pixels above its own isodata threshold of smoothed optical "
        f"density: fraction, solidity, pieces, cytoplasm rim in red-cell diameters), colour relative to the same "
        f"field (optical density against the field's own background, divided by the field's own red-cell OD: "
        f"nucleus and cytoplasm OD, two nucleus OD colour log-ratios), texture (OD coefficient of variation, "
        f"difference-of-Gaussians chromatin granularity with sigmas in red-cell units, nucleolus-like pale spots).\n"
        f"- **Labels**: weak, from the field: cells of Benign fields 'lymphocyte' (hematogones: a benign field "
        f"holds no blasts), cells of Early / Pre / Pro fields 'blast'. Each field weighs 1 (shared by its "
        f"cells); benign and malignant fields weigh the same in total.\n"
        f"- **Model**: logistic regression on the standardised features"
        f"{' and their squares' if c['quadratic'] else ''}, L2 penalty {c['lambda']}, fitted by Newton's method "
        f"in numpy on the train rows. Candidates (linear or with squares; penalty 0.001 / 0.01 / 0.1; 0, 1 or 2 "
        f"rounds of a multiple-instance refinement, in which cells of malignant fields that score at or below "
        f"the median benign cell are relabelled 'lymphocyte' while each malignant field keeps its top cell "
        f"'blast') were compared by the validation field AUC; chosen: {'squares' if c['quadratic'] else 'linear'}, "
        f"penalty {c['lambda']}, {c['mil_rounds']} refinement rounds (validation field AUC {c['val_field_auc']:.3f}; "
        f"the best within 0.002, preferring the simplest). All candidates are listed in metrics.json.\n"
        f"- **Calibration**: Platt scaling (a = {m['platt']['a']}, b = {m['platt']['b']}) on the validation cells "
        f"against their weak labels. `ai_confidence` is the calibrated probability of the label given.\n"
        f"- **Field aggregate**: the mean P(blast) of the field's cells; malignant when >= "
        f"{m['field_threshold']} (the highest balanced accuracy over the validation fields); a field without "
        f"cells has no score and counts as benign here.\n")


def _reading(m: dict) -> str:
    t, s = m["fields"]["test"], m["fields"]["test_lab_shift"]
    a = m["ablations"]
    return (
        f"- **In distribution the field aggregate separates benign from leukaemic fields** (test AUC "
        f"{t['auc']:.3f}, balanced accuracy {_pct(t['balanced_accuracy'])}), below the bundled field classifier "
        f"(96.48 % four-class accuracy on the same test rows, its model card), mostly on Pre and Pro fields: "
        f"Early fields are the ones it misses (sensitivity "
        f"{_pct(t['sensitivity_by_class']['Early'])}).\n"
        f"- **Most of it is colour.** The 4 colour features alone give a test field AUC of "
        f"{a['colour_features_only']['test']['auc']:.3f}; size, shape and texture alone "
        f"{a['without_colour_features']['test']['auc']:.3f}. The colour is measured relative to the field's own "
        f"background and red cells, which cancels a white-balance or exposure change, but not a stain that "
        f"colours nuclei and red cells differently, and each class of this data was photographed in its own "
        f"sessions (data README): part of what the model learnt may be the session's stain, not the cell.\n"
        f"- **Under the synthetic lab shift it degrades** (field AUC {s['auc']:.3f}, sensitivity "
        f"{_pct(s['sensitivity'])}, specificity {_pct(s['specificity'])}; cell AUC "
        f"{m['cells']['test_lab_shift']['weak_label_auc']:.3f}): the stain-strength and stain-hue parts of the "
        f"shift move the relative colour features. The shift is synthetic; real other labs' smears have not "
        f"been measured.\n"
        f"- **Weak labels**: a leukaemic field also holds normal lymphocytes, so 'blast' is a noisy label there "
        f"and the cell-level numbers are against field labels, not against a cytologist's call per cell. No "
        f"cell of this data has a per-cell expert label, so the per-cell accuracy against the truth is "
        f"**unknown**. Read `ai_label` / `ai_confidence` as a suggestion that orders the cells for review, not "
        f"as a count: a blast percentage from it is not a validated blast percentage.\n"
        f"- Splits are by image (near-duplicate groups kept together), not by patient (no patient IDs are "
        f"published): fields of one patient may sit on both sides.\n"
        f"- Fields without cells: {t['n_fields_without_cells']} of {t['n_fields']} test fields "
        f"({t['fields_without_cells_by_class']}), {s['n_fields_without_cells']} lab-shifted; they are called "
        f"benign by the aggregate (no blast seen). A better segmenter changes the cells, and the model must then be "
        f"refitted (the command above; delete any --cache file first).\n")


def model_card(m: dict) -> str:
    t, s = m["fields"]["test"], m["fields"]["test_lab_shift"]
    inf = m["inference"]
    return f"""# Cell classifier (per-cell AI suggestion) — model card

`cell_classifier.json`: the model behind `leukodx.inference.cell_classifier.CellClassifier.load()`. Each
segmented leukocyte gets `ai_label` 'blast' or 'lymphocyte' (hematogone) and `ai_confidence`. numpy/scipy
only (no torch, no scikit-learn), {inf['ms_per_cell']} ms per cell on {m['machine']['usable_cores']} shared CPU cores.
Generated by `benchmarks/train_cell_classifier.py`; full numbers in `docs/results/cell-classifier/`.

## How it was trained
{_method(m)}
Data: Taleqani ALL development part (Aria et al. 2021; Ghaderzadeh et al., Int J Intell Syst 37(8), 2022,
doi:10.1002/int.22753), split `{m['split']}` (train rows fitted, validation rows chosen and calibrated on,
test rows scored once). {m['counts']['cells']} cells in {m['counts']['fields']} fields. Fit wall time
{m['fit_wall_s']} s for the {len(m['candidates'])} candidates, Platt and the threshold (features extracted in
{m['feature_extraction_wall_s']} s, segmentation included).

## How well its field-level aggregate classifies held-out fields
| test fields | accuracy | sensitivity | specificity | AUC |
|---|---|---|---|---|
| as they are ({t['n_fields']}) | {_pct(t['accuracy'])} | {_pct(t['sensitivity'])} | {_pct(t['specificity'])} | {t['auc']:.3f} |
| lab-shifted ({s['n_fields']}) | {_pct(s['accuracy'])} | {_pct(s['sensitivity'])} | {_pct(s['specificity'])} | {s['auc']:.3f} |

Cells, against their weak labels: test AUC {m['cells']['test']['weak_label_auc']:.3f}, lab-shifted
{m['cells']['test_lab_shift']['weak_label_auc']:.3f}.

## Limits (read before use)
{_reading(m)}
## Intended use
A suggestion shown beside each cell in review, which a clinician confirms or overrides. Not a diagnosis, not
a validated blast count, and not for smears from other labs until measured there.

## Rebuild
    {m['command']}
"""


def results_readme(m: dict) -> str:
    inf = m["inference"]
    mach = m["machine"]
    return f"""# Cell classifier: per-cell AI suggestion from weak field labels

The per-cell model of `leukodx.inference.cell_classifier` (issue 13, Cells): how it was trained and how well
its field-level aggregate classifies held-out fields, in distribution and under the synthetic lab shift.
`metrics.json` holds every number here and more (all candidates, coefficients, train and validation rows).

    {m['command']}

## Method
{_method(m)}
## Field level: benign vs malignant from the mean blast probability (threshold {m['field_threshold']}, chosen on validation)
{_field_table(m)}

Lab shift: `leukodx.evaluation.shift.lab_shift` at severity 1, one variation per test field
(`rng_for({m['lab_shift']['seed']}, path)`), each shifted field segmented and measured again (red-cell
diameter re-estimated), as the product would. AUC over all fields, fields without cells scored 0.

## Cell level, against the weak labels
{_cell_table(m)}

## What drives it: refitted on feature subsets (same settings, own Platt and threshold)
{_ablation_table(m)}

## Reading
{_reading(m)}
## Cost
- Fit: {m['fit_wall_s']} s (all {len(m['candidates'])} candidates, Platt, threshold); feature extraction with
  segmentation of {m['counts']['fields']} + {m['counts']['test_fields_lab_shifted']} fields:
  {m['feature_extraction_wall_s']} s.
- Inference (`CellClassifier.classify`, features + model, measured by the script on the {inf['fields']} test
  fields, {inf['cells']} cells): **{inf['ms_per_cell']} ms per cell** (total time / total cells, the per-field
  work included), {inf['ms_per_field']} ms per field on average, {inf['ms_per_field_max']} ms at most.
- Machine: {mach['usable_cores']} CPU cores ({mach['processor']}, Python {mach['python']}), shared with another
  training job (load average {mach['load_average_start'][0]} at the start, {mach['load_average_end'][0]} at
  the end): the times are upper bounds for a quiet machine.
"""


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None, help="npz of extracted features, reused when present")
    ap.add_argument("--shift-seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not (args.data / "Original").is_dir():
        print(f"{args.data} has no Original/ folder: give the Taleqani data folder with --data.", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(args.split, newline="")))
    load_start = os.getloadavg()
    if args.cache and args.cache.is_file():
        z = np.load(args.cache, allow_pickle=False)
        ex = {k: z[k] for k in z.files}
        print(f"features from {args.cache}", file=sys.stderr)
    else:
        ex = extract(args.data, rows, args.shift_seed)
        if args.cache:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.cache, **ex)
    f, owner = ex["features"], ex["owner"]
    labels, split, shifted = ex["label"].astype(str), ex["split"].astype(str), ex["shifted"].astype(bool)
    y_field = np.isin(labels, MALIGNANT).astype(int)
    y_cell = y_field[owner]
    field_sel = {"train": (split == "train") & ~shifted, "val": (split == "val") & ~shifted,
                 "test": (split == "test") & ~shifted, "test_lab_shift": (split == "test") & shifted}
    cell_sel = {k: v[owner] for k, v in field_sel.items()}

    def subset(name):
        fids = np.flatnonzero(field_sel[name])
        cs = cell_sel[name]
        return fids, cs

    tr_f, tr_c = subset("train")
    remap = np.full(len(labels), -1)
    remap[tr_f] = np.arange(len(tr_f))
    f_tr, own_tr = f[tr_c], remap[owner[tr_c]]
    mean = np.nanmean(f_tr, 0)
    scale = np.nanstd(f_tr, 0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    for name, floor in MIN_SCALE.items():
        i = FEATURES.index(name)
        scale[i] = max(scale[i], floor)

    # candidates, compared on validation fields
    t_fit = time.time()
    va_f, va_c = subset("val")
    candidates = []
    for quadratic in (False, True):
        for lam in (1e-3, 1e-2, 1e-1):
            for mil in (0, 1, 2):
                m = fit_candidate(f_tr, y_cell[tr_c], own_tr, y_field[tr_f], lam, quadratic, mil, mean, scale)
                pv = _sigmoid(m.logit(f[va_c]))
                sv = field_scores(pv, owner[va_c], va_f)
                a = auc(np.nan_to_num(sv, nan=0.0), y_field[va_f]) or 0.0
                candidates.append({"quadratic": quadratic, "lambda": lam, "mil_rounds": mil,
                                   "val_field_auc": round(a, 4), "val_cell_auc": round(auc(pv, y_cell[va_c]) or 0, 4),
                                   "model": m})
                print(f"  quadratic={quadratic} lambda={lam} mil={mil}: val field AUC {a:.4f}", file=sys.stderr)
    # best validation field AUC; within 0.002 of it, the simplest (linear, larger penalty, fewer rounds)
    top = max(c["val_field_auc"] for c in candidates)
    near = [c for c in candidates if c["val_field_auc"] >= top - 0.002]
    best = sorted(near, key=lambda c: (c["quadratic"], -c["lambda"], c["mil_rounds"]))[0]
    model: Fitted = best["model"]
    a_pl, b_pl = platt(model.logit(f[va_c]), y_cell[va_c])

    def prob(m: Fitted, a: float, b: float, sel):
        return _sigmoid(a * m.logit(f[sel]) + b)

    threshold = choose_threshold(field_scores(prob(model, a_pl, b_pl, va_c), owner[va_c], va_f), y_field[va_f])
    fit_s = time.time() - t_fit

    spec = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "features": list(FEATURES),
        "mean": mean.tolist(), "scale": scale.tolist(), "quadratic": bool(best["quadratic"]),
        "coef": model.coef.tolist(), "intercept": model.intercept, "platt": {"a": a_pl, "b": b_pl},
        "field_threshold": threshold, "aggregate": "mean blast probability of the field's cells",
        "training": {
            "data": "Taleqani ALL (development part), train rows of " + args.split.name,
            "labels": "weak: cells of Benign fields 'lymphocyte', of Early/Pre/Pro fields 'blast'",
            "mil_rounds": best["mil_rounds"], "lambda": best["lambda"],
            "weights": "each field weighs 1 (shared by its cells); benign and malignant fields equal in total",
            "calibration": "Platt scaling on the validation cells against their weak labels",
            "threshold": "highest balanced accuracy over the validation fields (fields without cells: benign)",
            "cells_from": "bundled segmenter (assets/segmenter) + instances.field_cells; red-cell diameter from "
                          "scale.estimate_rbc_diameter",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / MODEL_FILE
    model_path.write_text(json.dumps(spec, indent=1) + "\n")
    clf = CellClassifier.load(model_path)  # what ships, checked against the fit
    chk = clf.blast_probability(f[va_c][:50])
    assert np.allclose(chk, prob(model, a_pl, b_pl, va_c)[:50], atol=1e-9)

    results: dict = {"cells": {}, "fields": {}}
    for name in ("train", "val", "test", "test_lab_shift"):
        fids, cs = subset(name)
        p = prob(model, a_pl, b_pl, cs)
        results["cells"][name] = cell_metrics(p, y_cell[cs])
        results["fields"][name] = field_metrics(field_scores(p, owner[cs], fids), y_field[fids], labels[fids],
                                                threshold)
    ablations = {}
    for name, mask in (("without_colour_features", ~np.isin(FEATURES, COLOUR_FEATURES)),
                       ("colour_features_only", np.isin(FEATURES, COLOUR_FEATURES))):
        m = fit_candidate(f_tr, y_cell[tr_c], own_tr, y_field[tr_f], best["lambda"], best["quadratic"],
                          best["mil_rounds"], mean, scale, mask)
        a2, b2 = platt(m.logit(f[va_c]), y_cell[va_c])
        thr = choose_threshold(field_scores(prob(m, a2, b2, va_c), owner[va_c], va_f), y_field[va_f])
        ab = {"features": [n for n, k in zip(FEATURES, mask, strict=True) if k], "field_threshold": round(thr, 4)}
        for split_name in ("test", "test_lab_shift"):
            fids, cs = subset(split_name)
            p = prob(m, a2, b2, cs)
            fm = field_metrics(field_scores(p, owner[cs], fids), y_field[fids], labels[fids], thr)
            ab[split_name] = {"cell_weak_label_auc": cell_metrics(p, y_cell[cs])["weak_label_auc"],
                              **{k: fm[k] for k in ("auc", "accuracy", "sensitivity", "specificity")}}
        ablations[name] = ab

    timing = time_inference(args.data, [r for r in rows if r["split"] == "test"], model_path)
    load_end = os.getloadavg()
    coef_table = {n: round(float(c), 4) for n, c in zip(FEATURES, model.coef[:len(FEATURES)], strict=True)}
    metrics = {
        "model": str(model_path), "method": "handcrafted stain-robust per-cell features + logistic regression "
                                           "(weak field labels" + (", multiple-instance refinement" if best["mil_rounds"] else "") + ")",
        "split": str(args.split), "lab_shift": {"function": "leukodx.evaluation.shift.lab_shift", "seed": args.shift_seed,
                                                 "severity": 1.0, "one variation per test field (rng_for(seed, path))"
                                                 : True},
        "chosen": {k: best[k] for k in ("quadratic", "lambda", "mil_rounds", "val_field_auc", "val_cell_auc")},
        "candidates": [{k: v for k, v in c.items() if k != "model"} for c in candidates],
        "platt": {"a": round(a_pl, 4), "b": round(b_pl, 4)},
        "field_threshold": round(threshold, 4),
        "threshold_rule": "highest balanced accuracy on validation fields, score = mean calibrated P(blast) of the "
                          "field's cells; fields without cells are called benign",
        "coefficients_standardised": coef_table,
        **results,
        "ablations": ablations,
        "counts": {"fields": int(len(labels) - shifted.sum()), "test_fields_lab_shifted": int(shifted.sum()),
                   "cells": int((~shifted[owner]).sum()), "cells_lab_shifted": int(shifted[owner].sum())},
        "fit_wall_s": round(fit_s, 2),
        "feature_extraction_wall_s": round(float(ex["extract_s"]), 1),
        "inference": timing,
        "machine": {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in load_end],
                    "note": "2 CPU cores shared with another training job while this ran"},
        "command": "python benchmarks/train_cell_classifier.py --data ../shared/data/all-taleqani --split "
                   "benchmarks/splits/taleqani-sgdc-seed0.csv --out src/leukodx/assets/cells --results "
                   "docs/results/cell-classifier",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(metrics))
    (args.results / "README.md").write_text(results_readme(metrics))
    print(json.dumps({k: metrics[k] for k in ("chosen", "field_threshold", "fit_wall_s", "inference")}, indent=1))
    print(json.dumps({"test": results["fields"]["test"], "test_lab_shift": results["fields"]["test_lab_shift"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
