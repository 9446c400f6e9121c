"""Simulated commissioning (issue 29) on a lab the cell model never trained on: the Chulalongkorn fields.

Cuts a cell-centred crop (3 x the box's longer side, centred on it) of every labelled leukocyte box
(labels/*.txt, YOLO: 0 neutrophil, 1 eosinophil, 2 basophil, 3 lymphocyte, 4 monocyte) into DIR/<kind>/, with
DIR/cases.csv = the field's `group` (fields.csv), then runs `leukodx adapt --cells DIR --out OUT --kinds-only`
(no blasts exist there). Results: docs/results/issue29-commissioning/README.md.

    python benchmarks/commission_chula.py [--data ../shared/data/chula-wbc] [--per-kind 80] [--model CELLS] \
        --out /tmp/chula-adapt

--model: the cell model to commission (default the bundled one); once the bundled model has trained on Chula's
train groups, give a model trained the same way without Chula (`leukodx train cells` without --chula) so the lab
stays one it never saw.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

KINDS = ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte")


def cut_crops(data: Path, out: Path, per_kind: int | None = None, cases: bool = True) -> Path:
    """DIR/<kind>/<field>_<k>.png crops and DIR/cases.csv (not with cases=False: every cell its own group); at most
    `per_kind` crops per kind (fields in order)."""
    groups = {r["file"]: r["group"] for r in csv.DictReader((data / "fields.csv").open())}
    rows, n = [], dict.fromkeys(KINDS, 0)
    for lab in sorted((data / "labels").glob("*.txt")):
        img_path = data / "images" / (lab.stem + ".jpg")
        if not img_path.is_file() or img_path.name not in groups:
            continue
        im = Image.open(img_path).convert("RGB")
        w, h = im.size
        for k, line in enumerate(lab.read_text().split("\n")):
            parts = line.split()
            if len(parts) != 5 or not 0 <= int(parts[0]) < len(KINDS):
                continue
            kind = KINDS[int(parts[0])]
            if per_kind is not None and n[kind] >= per_kind:
                continue
            cx, cy, bw, bh = (float(v) for v in parts[1:])
            half = 1.5 * max(bw * w, bh * h)
            if half < 15:  # a degenerate box (a few pixels: one such in L-8_0730) is no cell
                continue
            box = (round(cx * w - half), round(cy * h - half), round(cx * w + half), round(cy * h + half))
            (out / kind).mkdir(parents=True, exist_ok=True)
            name = f"{kind}/{lab.stem}_{k}.png"
            im.crop(box).save(out / name)  # PIL fills beyond the field's edge with black
            rows.append((name, groups[img_path.name]))
            n[kind] += 1
    if cases:
        with (out / "cases.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([("file", "case"), *rows])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                    / "chula-wbc")
    ap.add_argument("--per-kind", type=int, default=80)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="cell model directory (default: the bundled one)")
    ap.add_argument("--ungrouped", action="store_true", help="no cases.csv: folds may split a slide (diagnostic)")
    a = ap.parse_args()
    from leukodx.deploy.commission import commission_cells

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lab = cut_crops(a.data, Path(tmp) / "lab", a.per_kind, cases=not a.ungrouped)
        cut = time.perf_counter() - t0
        rep = commission_cells(lab, a.out, model_dir=a.model, kinds_only=True)
    print(json.dumps({"cut_s": round(cut, 1), "seconds": rep["seconds"], "n_cells": rep["n_cells"],
                      "per_class": rep["per_class"], "n_cases": rep["n_cases"], "n_folds": rep["n_folds"],
                      "recall_adapted_cv": {k: v["recall"] for k, v in rep["adapted_cv"]["recall"].items()},
                      "recall_bundled": {k: v["recall"] for k, v in rep["bundled"]["recall"].items()},
                      "accuracy_adapted_cv": rep["adapted_cv"]["accuracy"], "accuracy_bundled": rep["bundled"]["accuracy"],
                      "recommendation": rep["recommendation"]}, indent=1))


if __name__ == "__main__":
    main()
