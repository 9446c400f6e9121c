"""Scoring whole-leukocyte outlines on other labs' images: fields with boxed leukocytes (Raabin, Chula) and crops
with one centred cell (PBC), against the rule-made references of leukodx.data.cell_references.

    >>> s = score_boxed_field(result, boxes, reference)     # one field's counts, one-centre-per-box, Dice
    >>> s = score_centred_crop(result, reference, leukocyte=True)
    >>> summary = summarize_scores([s, ...])

Dice is computed on the reference's known pixels only (its `cell_known` / `nucleus_known`): the rules leave a thin
band around each outline, and other cells in a crop, unknown. The rules work on a downsampled copy (red cells at
most 40 px across): predictions are resampled (nearest) to the reference's size before they are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES


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
        out["nucleus"] = masked_counts(scored_nucleus(result), reference.nucleus, reference.nucleus_known)
    return out


def scored_nucleus(result) -> np.ndarray | None:
    """What nucleus references (and the study's Segmented/ masks, the stained nucleus) are scored against: a
    two-output segmenter's nucleus output; a one-output segmenter's only mask otherwise."""
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
        out["nucleus"] = masked_counts(scored_nucleus(result), reference.nucleus, reference.nucleus_known)
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
        err = np.array([s["n_cells"] - s["n_boxes"] for s in scores])
        out.update({"n_boxes": n_boxes,
                    "one_centre_per_box": round(sum(s["one_centre"] for s in scores) / max(n_boxes, 1), 4),
                    "count_exact": round(float(np.mean(err == 0)), 4),
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


@dataclass
class Parts:
    """The held-out images of the four labs with their rule-made references, read once and scored many times:
    Raabin fields (image, RaabinField, reference), PBC crops (image, class, reference), Taleqani fields
    (image, reference with the repaired nucleus reference) and labelled Chula fields (image, leukocyte boxes N x 5,
    reference)."""

    raabin: list = field(default_factory=list)
    pbc: list = field(default_factory=list)
    taleqani: list = field(default_factory=list)
    chula: list = field(default_factory=list)
    pbc_cut: list = field(default_factory=list)  # the PBC leukocyte crops cut to their central third (cut_crop)
    paths: dict = field(default_factory=dict)  # source -> its images' paths, in the order above

    def describe(self) -> dict:
        return {"n_raabin": len(self.raabin), "n_pbc": len(self.pbc), "n_taleqani": len(self.taleqani),
                "n_chula": len(self.chula), "n_pbc_cut": len(self.pbc_cut)}


def cut_crop(item: tuple, frac: float = 1 / 3) -> tuple:
    """A PBC crop (image, class, reference) cut to its central ``frac`` (120 px of a 360-px crop) with its
    reference (which may be at its own, smaller scale): a leukocyte that fills the crop and is cut by its edges,
    as some labs export single cells."""
    rgb, label, ref = item

    def centre(a: np.ndarray) -> np.ndarray:
        return centre_square(a, max(8, round(min(a.shape[:2]) * frac)))

    return centre(rgb), label, replace(ref, image=centre(ref.image), **{k: centre(v) for k, v in ref.arrays().items()})


def centre_square(a: np.ndarray, side: int) -> np.ndarray:
    """The central `side` x `side` of an image (as much as there is where it is smaller)."""
    h, w = a.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return a[y:y + side, x:x + side]


def taleqani_cell_crops(root: str | Path, split_csv: str | Path, parts: Sequence[str] = ("train", "val", "test"),
                        every: int = 1, side_rbc: float = 3.5) -> list[tuple[str, str, np.ndarray]]:
    """Cell-centred crops of Taleqani fields, as a lab exporting single cells cuts them: (path, field class, crop)
    for every `every`-th field of `parts` in the split file, `side_rbc` red cells wide around its first reference
    cell wholly inside the field (fields without one are left out). Their cells are an ALL hospital's blasts (the
    leukaemic classes) and hematogones read as lymphocytes (Benign)."""
    from leukodx.data.cell_crops import TALEQANI_RBC, iter_taleqani

    half = int(side_rbc * TALEQANI_RBC / 2)
    out = []
    for s in iter_taleqani(root, split_csv, parts=parts, negatives=False, every=every):
        h, w = s.rgb.shape[:2]
        inside = [(int(y), int(x)) for y, x in s.centres if half <= y <= h - half and half <= x <= w - half]
        if inside:
            y, x = inside[0]
            out.append((s.path, s.field_label or "", s.rgb[y - half:y + half, x - half:x + half]))
    return out


def _every(rows: list, n: int) -> list:
    return rows[::max(1, len(rows) // n)][:n] if n else rows


def load_parts(data: str | Path, splits: str | Path, split: str = "test", max_raabin: int = 0, max_pbc: int = 0,
               max_taleqani: int = 0, max_chula: int = 0) -> Parts:
    """The `split` part ("val" or "test") of each source under `data` (their registry folders: raabin-fields/,
    pbc/, all-taleqani/, chula-wbc/: its fields with a label file, split by slide), as their split files in
    `splits` divide them; `max_*` keeps an evenly spaced subset (0: all). A source whose folder is missing is left
    out."""
    from leukodx.data import sources
    from leukodx.data.images import read_rgb
    from leukodx.data.split import read_split

    data = Path(data)
    parts = Parts()

    def rows(name: str, n: int, check: bool = False) -> list[dict]:
        root = data / sources.SOURCES[name].folder
        out = _every(read_split(sources.split_path(name, splits), root if check else None, part=split), n)
        parts.paths[name] = [r["path"] for r in out]
        return out

    root = data / sources.SOURCES["raabin"].folder
    if root.is_dir():
        fields = {f.path: f for f in sources.read_raabin_fields(root)[0]}
        parts.raabin = [(read_rgb(root / r["path"]), fields[r["path"]],
                         sources.raabin_field_reference(root, fields[r["path"]])) for r in rows("raabin", max_raabin)]
    root = data / sources.SOURCES["pbc"].folder
    if root.is_dir():
        parts.pbc = [(read_rgb(root / r["path"]), r["label"], sources.pbc_crop_reference(root, r["path"], r["label"]))
                     for r in rows("pbc", max_pbc)]
        leuk = [i for i, x in enumerate(parts.pbc) if x[1] not in NOT_LEUKOCYTE_CLASSES]
        parts.pbc_cut = [cut_crop(parts.pbc[i]) for i in leuk]
        parts.paths["pbc_cut"] = [parts.paths["pbc"][i] for i in leuk]
    root = data / sources.SOURCES["taleqani"].folder
    if root.is_dir():
        parts.taleqani = [(read_rgb(root / r["path"]), sources.taleqani_field_reference(root, r["path"]))
                          for r in rows("taleqani", max_taleqani, check=True)]
    root = data / sources.SOURCES["chula"].folder
    if root.is_dir():
        labels = {r["path"]: root / "labels" / f"{Path(r['path']).stem}.txt" for r in rows("chula", 0)}
        parts.paths["chula"] = _every([p for p, lp in labels.items() if lp.is_file()], max_chula)
        for p in parts.paths["chula"]:
            ref = sources.chula_field_reference(root, p)  # it read the field: ref.image
            parts.chula.append((ref.image, sources.chula_boxes(labels[p], ref.image.shape[:2]), ref))
    return parts


def score_parts(analysis, parts: Parts, batch_size: int = 16, per_image: dict | None = None) -> dict:
    """The analysis (its segmenter part) on every image of `parts`: per source, summarize_scores of the boxed
    fields and centred crops, and the Taleqani fields' nucleus Dice against the repaired references.
    ``per_image``, when given, receives each source's list of per-image scores (in the order of `parts`)."""
    out: dict = {}
    keep = per_image if per_image is not None else {}
    for name, boxed in (("raabin", [(x[0], x[1].boxes, x[2]) for x in parts.raabin]), ("chula", parts.chula)):
        if boxed:
            rs = analysis.analyze_many([x[0] for x in boxed], batch_size=batch_size)
            keep[name] = [score_boxed_field(r, b, ref) for r, (_, b, ref) in zip(rs, boxed, strict=True)]
            out[name] = summarize_scores(keep[name])
    if parts.pbc:
        rs = analysis.analyze_many([x[0] for x in parts.pbc], batch_size=batch_size)
        keep["pbc"] = scores = [score_centred_crop(r, ref, leukocyte=lab not in NOT_LEUKOCYTE_CLASSES) | {"label": lab}
                                for r, (_, lab, ref) in zip(rs, parts.pbc, strict=True)]
        out["pbc"] = summarize_scores(scores)
        out["pbc"]["per_class_exactly_one"] = {
            c: round(float(np.mean([s["n_inside"] == 1 for s in scores if s["label"] == c])), 4)
            for c in sorted({s["label"] for s in scores}) if c not in NOT_LEUKOCYTE_CLASSES}
    if parts.pbc_cut:
        rs = analysis.analyze_many([x[0] for x in parts.pbc_cut], batch_size=batch_size)
        keep["pbc_cut"] = [score_centred_crop(r, ref) | {"label": lab}
                           for r, (_, lab, ref) in zip(rs, parts.pbc_cut, strict=True)]
        out["pbc_cut"] = summarize_scores(keep["pbc_cut"])
    if parts.taleqani:
        rs = analysis.analyze_many([x[0] for x in parts.taleqani], batch_size=batch_size)
        counts = [masked_counts(scored_nucleus(r), ref.nucleus, ref.nucleus_known)
                  for r, (_, ref) in zip(rs, parts.taleqani, strict=True)]
        keep["taleqani"] = [{"nucleus": c} for c in counts]
        d = dice(*(int(sum(c[k] for c in counts)) for k in range(3)))
        out["taleqani"] = {"n": len(rs), "nucleus_dice_global_repaired": None if d is None else round(d, 4)}
    return out


def headline(scores: dict) -> dict:
    """The rates of `score_parts` that a lab relies on, each 0..1 and higher-is-better, and their mean
    (`objective`: what thresholds are chosen by on validation, and the study compares). Chula's and the cut PBC
    crops' rates join when they were scored."""
    r, p, t = scores.get("raabin", {}), scores.get("pbc", {}), scores.get("taleqani", {})
    parts = {"raabin_one_centre": r.get("one_centre_per_box"), "raabin_count_exact": r.get("count_exact"),
             "raabin_cell_dice": r.get("cell_dice_global"), "raabin_nucleus_dice": r.get("nucleus_dice_global"),
             "pbc_exactly_one": p.get("exactly_one_centred_cell"),
             "pbc_no_cell_on_non_leukocyte": None if p.get("non_leukocyte_called_cell") is None else round(
                 1.0 - p["non_leukocyte_called_cell"], 4),
             "pbc_cell_dice": p.get("cell_dice_global"), "taleqani_nucleus_dice": t.get("nucleus_dice_global_repaired")}
    if "pbc_cut" in scores:
        parts |= {"pbc_cut_exactly_one": scores["pbc_cut"].get("exactly_one_centred_cell"),
                  "pbc_cut_cell_dice": scores["pbc_cut"].get("cell_dice_global")}
    if "chula" in scores:
        c = scores["chula"]
        parts |= {"chula_one_centre": c.get("one_centre_per_box"), "chula_count_exact": c.get("count_exact"),
                  "chula_cell_dice": c.get("cell_dice_global")}
    parts = {k: float(v or 0.0) for k, v in parts.items()}
    return parts | {"objective": round(float(np.mean(list(parts.values()))), 4)}
