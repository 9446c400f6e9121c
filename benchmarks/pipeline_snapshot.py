"""Everything the analysis says about some fields, in one JSON, to compare two commits exactly (a speed-up must
not change a count, a flag, a label or a cell outline):

    python benchmarks/pipeline_snapshot.py --list FIELDS.txt --out BEFORE.json [--engine onnx] [--batch-size 1]
    python benchmarks/pipeline_snapshot.py --compare BEFORE.json AFTER.json [--out SUMMARY.json]

Per field: label, flag, confidence, probabilities, malignant probability, OOD score, red-cell diameter and
confidence, scale factor, cell count, smear-check kind, a SHA-256 of the mask, the instance image and the
nucleus mask, and per cell its area, centroid, bbox, nucleus area, N:C ratio, AI label and confidence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

EXACT = ("label", "flag", "cell_count", "scale_factor", "mask_sha", "instances_sha", "nucleus_sha", "n_cells",
         "cell_labels", "cell_geometry")
CLOSE = ("confidence", "malignant_probability", "ood_score", "rbc_diameter_px", "rbc_confidence")


def _sha(a) -> str | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.tobytes() + str(a.shape).encode() + str(a.dtype).encode()).hexdigest()[:16]


def snapshot(paths: list[str], engine: str, batch_size: int) -> dict:
    from leukodx.inference.pipeline import load_analyzer

    a = load_analyzer(engine=engine)
    out = {}
    for r in a.analyze_many(paths, batch_size=batch_size):
        cells = r.cells or []
        out[str(r.path)] = {
            "label": r.label, "flag": r.flag, "confidence": r.confidence,
            "probabilities": r.probabilities, "malignant_probability": r.malignant_probability,
            "ood_score": r.ood_score, "rbc_diameter_px": r.rbc_diameter_px, "rbc_confidence": r.rbc_confidence,
            "scale_factor": r.scale_factor, "cell_count": r.cell_count, "n_cells": len(cells),
            "mask_sha": _sha(r.mask), "instances_sha": _sha(r.instances), "nucleus_sha": _sha(r.nucleus_mask),
            "cell_labels": [c.ai_label for c in cells],
            "cell_confidences": [c.ai_confidence for c in cells],
            "cell_geometry": [[c.area_px, list(c.centroid), list(c.bbox), c.nucleus_area_px, c.nc_ratio,
                               c.touches_border] for c in cells],
        }
    return {"engine": engine, "batch_size": batch_size, "fields": out}


def compare(before: dict, after: dict) -> dict:
    b, a = before["fields"], after["fields"]
    common = sorted(b.keys() & a.keys())
    diffs: list[dict] = []
    max_dev: dict[str, float] = {}
    for p in common:
        for k in EXACT:
            if b[p].get(k) != a[p].get(k):
                diffs.append({"path": p, "key": k, "before": b[p].get(k), "after": a[p].get(k)})
        for k in CLOSE:
            x, y = b[p].get(k), a[p].get(k)
            if (x is None) != (y is None):
                diffs.append({"path": p, "key": k, "before": x, "after": y})
            elif x is not None:
                max_dev[k] = max(max_dev.get(k, 0.0), abs(float(x) - float(y)))
        for c in b[p]["probabilities"] or {}:
            d = abs(b[p]["probabilities"][c] - (a[p]["probabilities"] or {}).get(c, np.nan))
            max_dev["probability"] = max(max_dev.get("probability", 0.0), float(d))
        cb, ca = b[p]["cell_confidences"], a[p]["cell_confidences"]
        if len(cb) == len(ca):
            for x, y in zip(cb, ca, strict=True):
                if x is not None and y is not None:
                    max_dev["cell_confidence"] = max(max_dev.get("cell_confidence", 0.0), abs(x - y))
    return {"n_before": len(b), "n_after": len(a), "n_common": len(common),
            "engines": [before.get("engine"), after.get("engine")],
            "exact_keys": list(EXACT), "n_fields_differing": len({d["path"] for d in diffs}),
            "n_cells_before": sum(b[p]["n_cells"] for p in common),
            "n_cells_after": sum(a[p]["n_cells"] for p in common),
            "max_abs_difference": {k: round(v, 8) for k, v in max_dev.items()}, "differences": diffs[:50]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", type=Path, help="a text file, one field path a line")
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.compare:
        res = compare(json.loads(a.compare[0].read_text()), json.loads(a.compare[1].read_text()))
        text = json.dumps(res, indent=1)
        print(text)
        if a.out:
            a.out.write_text(text + "\n")
        return 0 if res["n_fields_differing"] == 0 and res["n_common"] == res["n_before"] else 1
    if a.list is None or a.out is None:
        ap.error("--list and --out (or --compare)")
    paths = [ln.strip() for ln in a.list.read_text().splitlines() if ln.strip()]
    a.out.write_text(json.dumps(snapshot(paths, a.engine, a.batch_size)) + "\n")
    print(f"wrote {a.out} ({len(paths)} fields)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
