"""Scoring whole-leukocyte outlines on other labs' images: fields with boxed leukocytes (Raabin) and crops with
one centred cell (PBC), against the rule-made references of leukodx.data.cell_references.

    >>> s = score_boxed_field(result, boxes, reference)     # one field's counts, one-centre-per-box, Dice
    >>> s = score_centred_crop(result, reference, leukocyte=True)
    >>> summary = summarize_scores([s, ...])

Dice is computed on the reference's known pixels only (its `cell_known` / `nucleus_known`): the rules leave a thin
band around each outline, and other cells in a crop, unknown. The rules work on a downsampled copy (red cells at
most 40 px across): predictions are resampled (nearest) to the reference's size before they are compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def masked_counts(pred: np.ndarray | None, ref: np.ndarray, known: np.ndarray) -> tuple[int, int, int]:
    """(intersection, predicted, reference) pixel counts over the known pixels (pred None: nothing predicted)."""
    k = known.astype(bool)
    r = ref.astype(bool) & k
    if pred is None:
        return 0, 0, int(r.sum())
    p = _to_shape(pred.astype(bool), r.shape) & k
    return int((p & r).sum()), int(p.sum()), int(r.sum())


def _to_shape(m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if m.shape == shape:
        return m
    rows = (np.arange(shape[0]) + 0.5) * m.shape[0] / shape[0]
    cols = (np.arange(shape[1]) + 0.5) * m.shape[1] / shape[1]
    return m[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def dice(inter: int, pred: int, ref: int) -> float | None:
    return None if pred + ref == 0 else 2.0 * inter / (pred + ref)


def _centres(result) -> np.ndarray:
    return np.array([c.centroid for c in result.cells], dtype=np.float64).reshape(-1, 2)


def score_boxed_field(result, boxes: np.ndarray, reference=None) -> dict:
    """A field whose every leukocyte is boxed (`boxes`: N x 5, class 0 = leukocyte, x0, y0, x1, y1 in px): how
    many detected cell centres fall in each leukocyte box (exactly one is right), the count against the number of
    boxes, centres in no box (red cells, platelets or debris counted), and the pixel counts for Dice."""
    wbc = boxes[boxes[:, 0] == 0] if len(boxes) else boxes
    cen = _centres(result)
    in_box = np.zeros((len(wbc), len(cen)), bool)
    for i, (_, x0, y0, x1, y1) in enumerate(wbc):
        in_box[i] = (cen[:, 0] >= y0) & (cen[:, 0] <= y1) & (cen[:, 1] >= x0) & (cen[:, 1] <= x1)
    per_box = in_box.sum(1)
    out = {"n_boxes": int(len(wbc)), "n_cells": int(result.cell_count), "per_box": per_box.tolist(),
           "one_centre": int((per_box == 1).sum()), "outside_boxes": int((~in_box.any(0)).sum()) if len(cen) else 0,
           "flag": result.flag}
    if reference is not None:
        out["cell"] = masked_counts(result.mask, reference.cell, reference.cell_known)
        out["nucleus"] = masked_counts(_nucleus(result), reference.nucleus, reference.nucleus_known)
    return out


def _nucleus(result) -> np.ndarray | None:
    """The nucleus output; a one-output segmenter's only mask (trained on nucleus references) otherwise."""
    return result.nucleus_mask if result.nucleus_mask is not None else result.mask


def score_centred_crop(result, reference, leukocyte: bool = True) -> dict:
    """A crop with one centred cell (`reference.cell`: its whole-cell mask; empty for a platelet or an
    erythroblast, which are no leukocytes). For a leukocyte: how many detected cells have their centre inside it
    (exactly one is right) and the Dice of that cell's own outline. For a non-leukocyte: whether any cell was
    found on the centred object."""
    h, w = reference.cell.shape
    fy, fx = (h / result.instances.shape[0], w / result.instances.shape[1]) if result.instances is not None else (
        1.0, 1.0)
    cen = _centres(result) * np.array([fy, fx])
    if leukocyte:
        target = reference.cell.astype(bool)
    else:  # the centred object: the middle third of the crop
        target = np.zeros((h, w), bool)
        target[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = True
    rows = np.clip(cen[:, 0].astype(int), 0, h - 1)
    cols = np.clip(cen[:, 1].astype(int), 0, w - 1)
    inside = [c for c, y, x in zip(result.cells, rows, cols, strict=True) if target[y, x]]
    out = {"leukocyte": leukocyte, "n_inside": len(inside), "n_cells": int(result.cell_count), "flag": result.flag}
    if leukocyte:
        own = None
        if len(inside) == 1 and result.instances is not None:
            own = result.instances == inside[0].id
        out["cell"] = masked_counts(own, reference.cell, reference.cell_known)
        out["nucleus"] = masked_counts(_nucleus(result), reference.nucleus, reference.nucleus_known)
    return out


def summarize_scores(scores: Sequence[dict]) -> dict:
    """Rates and global Dice over fields (score_boxed_field) or crops (score_centred_crop)."""
    if not scores:
        return {"n": 0}
    out: dict = {"n": len(scores), "flagged": round(float(np.mean([s["flag"] != "ok" for s in scores])), 4)}
    for part in ("cell", "nucleus"):
        parts = [s[part] for s in scores if part in s]
        if parts:
            i, p, r = (int(sum(v[k] for v in parts)) for k in range(3))
            d = dice(i, p, r)
            out[f"{part}_dice_global"] = None if d is None else round(d, 4)
    if "n_boxes" in scores[0]:
        n_boxes = sum(s["n_boxes"] for s in scores)
        err = [s["n_cells"] - s["n_boxes"] for s in scores]
        out.update({"n_boxes": n_boxes, "one_centre_per_box": round(sum(s["one_centre"] for s in scores) /
                                                                    max(n_boxes, 1), 4),
                    "count_exact": round(float(np.mean([e == 0 for e in err])), 4),
                    "count_mae": round(float(np.mean(np.abs(err))), 4),
                    "count_bias": round(float(np.mean(err)), 4),
                    "centres_outside_boxes_per_field": round(float(np.mean([s["outside_boxes"] for s in scores])),
                                                             4)})
    else:
        leuk = [s for s in scores if s["leukocyte"]]
        other = [s for s in scores if not s["leukocyte"]]
        if leuk:
            out["exactly_one_centred_cell"] = round(float(np.mean([s["n_inside"] == 1 for s in leuk])), 4)
            out["n_leukocyte_crops"] = len(leuk)
        if other:
            out["non_leukocyte_called_cell"] = round(float(np.mean([s["n_inside"] > 0 for s in other])), 4)
            out["n_non_leukocyte_crops"] = len(other)
    return out
