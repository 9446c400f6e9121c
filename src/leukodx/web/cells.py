"""The leukocytes of a case: what is stored per cell, the differential count and blast percentage.

The rules (what a cell counts as, EDGE, what is not counted): docs/review.md, "Cells, the differential and
the blast percentage". The vocabulary is leukodx.inference.cell_classes; the gallery's crops, web.gallery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from leukodx.inference.cell_classes import (
    BLAST,
    CELL_CLASS_WORDS,
    CELL_CLASSES,
    EXCLUDED,
    KNOWN_CLASSES,
    NOT_COUNTED,
)

UNCLASSIFIED = "unclassified"
EDGE = "edge"  # cut by the field's edge and not classed by a reviewer: shown, not counted
REVIEW_LABELS = (*CELL_CLASSES, EXCLUDED)  # what a reviewer may give a cell
CELL_KEYS = ("id", "area_px", "centroid", "bbox", "area_um2", "touches_border", "ai_label", "ai_confidence")
WORDS = {**CELL_CLASS_WORDS, UNCLASSIFIED: "No AI suggestion (not yet classified)",
         EDGE: "Cut by the field's edge (not counted unless you class it)"}
KEYS = {  # keyboard shortcuts in the cell gallery: key -> class (shown on the page)
    "b": "blast", "l": "lymphocyte", "n": "neutrophil", "m": "monocyte", "e": "eosinophil", "a": "basophil",
    "i": "ig", "r": "erythroblast", "s": "smudge", "t": "artefact", "x": EXCLUDED,
}


def stored_cells(result_cells: Iterable[dict] | None) -> list[dict]:
    """The cells of an analysis result (FieldResult.cells as dicts) as the web app stores them."""
    out = []
    for c in result_cells or []:
        d: dict = {k: c.get(k) for k in CELL_KEYS}
        d["id"] = int(c["id"])
        d["centroid"] = [float(v) for v in (d.get("centroid") or (0.0, 0.0))]
        d["bbox"] = [int(v) for v in (d.get("bbox") or (0, 0, 0, 0))]
        d["area_px"] = int(d.get("area_px") or 0)
        d["touches_border"] = bool(d.get("touches_border"))
        if d.get("ai_label") not in KNOWN_CLASSES:  # an unknown suggestion is no suggestion
            d["ai_label"], d["ai_confidence"] = None, None
        d["ai_confidence"] = None if d.get("ai_confidence") is None else float(d["ai_confidence"])
        d.update(label=None, reviewed_by=None, reviewed_at=None)
        out.append(d)
    return out


def ai_class(cell: dict) -> str:
    label = cell.get("ai_label")
    return label if label in KNOWN_CLASSES else UNCLASSIFIED


def ai_count_class(cell: dict) -> str:
    """What the AI's differential counts the cell as: EDGE for a cell cut by the field's edge, else its
    suggestion (or unclassified)."""
    return EDGE if cell.get("touches_border") else ai_class(cell)


def final_class(cell: dict) -> str:
    """The class the cell counts as: the reviewer's, else EDGE for a cell cut by the field's edge, else the AI's
    suggestion, else unclassified."""
    label = cell.get("label")
    return label if label in REVIEW_LABELS else ai_count_class(cell)


def differential(classes: Iterable[str]) -> dict[str, int]:
    n = Counter(classes)
    return {c: int(n.get(c, 0)) for c in (*KNOWN_CLASSES, EXCLUDED, UNCLASSIFIED, EDGE)}


def blast_percent(diff: dict[str, int]) -> float | None:
    counted = sum(v for c, v in diff.items() if c in KNOWN_CLASSES and c not in NOT_COUNTED)
    return None if counted == 0 else round(100.0 * diff.get(BLAST, 0) / counted, 1)


def cell_summary(fields_cells: Iterable[list[dict]]) -> dict:
    """The AI's and the reviewer's differential and blast %, over every field's cells."""
    cells = [c for cs in fields_cells for c in (cs or [])]
    ai = differential(ai_count_class(c) for c in cells)
    rev = differential(final_class(c) for c in cells)
    return {
        "n_cells": len(cells),
        "n_cells_reviewed": sum(1 for c in cells if c.get("label") in REVIEW_LABELS),
        "n_cells_ai_classified": sum(1 for c in cells if ai_class(c) != UNCLASSIFIED),
        "n_cells_at_edge": sum(1 for c in cells if final_class(c) == EDGE),
        "n_counted": sum(v for c, v in rev.items() if c in KNOWN_CLASSES and c not in NOT_COUNTED),
        "ai_differential": ai,
        "ai_blast_percent": blast_percent(ai),
        "differential": rev,
        "blast_percent": blast_percent(rev),
    }
