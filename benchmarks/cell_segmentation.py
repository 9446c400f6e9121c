"""Whole leukocytes on other labs' images (issue 20): Raabin fields with every leukocyte boxed, and PBC crops with
one centred cell, through the analysis that `predict` and the web app run (`leukodx.inference.pipeline.Analysis`,
segmenter part, ONNX Runtime), scored by `leukodx.evaluation.cells` against the rule-made references of
`leukodx.data.cell_references` (docs/results/cell-references/). Contact sheets of the outlines are written too.

    python benchmarks/cell_segmentation.py --split test --out docs/results/cell-segmentation/bundled.json \
        [--segmenter DIR] [--sheets docs/results/cell-segmentation] [--max 0]

Sources: Raabin-WBC fields (Kouzehkanan et al., Sci. Rep. 12, 1123, 2022) with the TXL-PBC boxes (MIT); PBC crops
(Acevedo et al., Data in Brief 30, 105474, 2020; CC BY 4.0). Splits: benchmarks/splits/{raabin-fields,pbc}-seed0.csv.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.assets import default_model_dir
from leukodx.data import sources
from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES, contact_sheet
from leukodx.data.images import read_rgb
from leukodx.evaluation.cells import score_boxed_field, score_centred_crop, summarize_scores
from leukodx.inference.pipeline import Analysis
from leukodx.inference.render import overlay_image

ROOT = Path(__file__).resolve().parents[1]


def tile(rgb: np.ndarray, result, side: int = 224) -> np.ndarray:
    img = overlay_image(rgb, result, captioned=False)
    img.thumbnail((side, side))
    out = np.full((side, side, 3), 255, np.uint8)
    a = np.asarray(img)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--segmenter", type=Path, default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sheets", type=Path, default=None, help="folder for {raabin,pbc}-outlines.jpg")
    ap.add_argument("--max", type=int, default=0, help="at most this many images per source (0: all)")
    ap.add_argument("--mask-threshold", type=float, default=None, help="override thresholds.mask (validation only)")
    ap.add_argument("--min-nucleus-fraction", type=float, default=None,
                    help="override thresholds.instances.min_nucleus_fraction (validation only)")
    ap.add_argument("--instances", type=json.loads, default=None,
                    help='override cell-splitting parameters, e.g. \'{"min_distance": 10, "h": 3}\' (validation only)')
    a = ap.parse_args()
    seg = a.segmenter or default_model_dir("segment")
    analysis = Analysis(None, seg)
    stage = analysis.segmenter
    assert stage is not None
    if a.mask_threshold is not None:
        stage.mask_threshold = a.mask_threshold
    if a.min_nucleus_fraction is not None:
        stage.min_nucleus_fraction = a.min_nucleus_fraction
    if a.instances:
        stage.instance_params = {**stage.instance_params, **a.instances}
    res: dict = {"segmenter": str(seg), "outputs": stage.outputs, "split": a.split,
                 "mask_threshold": stage.mask_threshold, "min_nucleus_fraction": stage.min_nucleus_fraction,
                 "instances": stage.instance_params,
                 "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "command": " ".join(
                     ["python benchmarks/cell_segmentation.py", "--split", a.split, "--out", str(a.out)]
                     + (["--segmenter", str(a.segmenter)] if a.segmenter else []))}
    t0 = time.perf_counter()

    # Raabin: fields, every leukocyte boxed
    root = a.data / "raabin-fields"
    fields = {f.path: f for f in sources.read_raabin_fields(root)[0]}
    rows = sources.read_source_split(ROOT / "benchmarks/splits/raabin-fields-seed0.csv", a.split)
    rows = rows[:a.max] if a.max else rows
    scores, tiles = [], []
    for row in rows:
        f = fields[row["path"]]
        rgb = read_rgb(root / f.path)
        r = analysis.analyze(rgb, name=f.path)
        scores.append(score_boxed_field(r, f.boxes, sources.raabin_field_reference(root, f)) | {"path": f.path})
        if a.sheets and len(tiles) < 24:
            tiles.append(tile(rgb, r))
    res["raabin"] = summarize_scores(scores)
    res["raabin"]["worst"] = sorted(({"path": s["path"], "n_boxes": s["n_boxes"], "n_cells": s["n_cells"]}
                                     for s in scores), key=lambda s: -abs(s["n_cells"] - s["n_boxes"]))[:8]
    if a.sheets:
        a.sheets.mkdir(parents=True, exist_ok=True)
        Image.fromarray(contact_sheet(tiles)).save(a.sheets / "raabin-outlines.jpg", quality=85)

    # PBC: crops with one centred cell (platelet and erythroblast crops: no leukocyte at the centre)
    root = a.data / "pbc"
    rows = sources.read_source_split(ROOT / "benchmarks/splits/pbc-seed0.csv", a.split)
    if a.max:
        per_class: dict[str, list] = {}
        for row in rows:
            per_class.setdefault(row["label"], []).append(row)
        rows = [r for v in per_class.values() for r in v[:max(1, a.max // len(per_class))]]
    scores, tiles = [], []
    for row in rows:
        rgb = read_rgb(root / row["path"])
        r = analysis.analyze(rgb, name=row["path"])
        ref = sources.pbc_crop_reference(root, row["path"], row["label"])
        s = score_centred_crop(r, ref, leukocyte=row["label"] not in NOT_LEUKOCYTE_CLASSES)
        scores.append(s | {"label": row["label"]})
        if a.sheets and len(tiles) < 24 and len(scores) % max(1, len(rows) // 24) == 0:
            tiles.append(tile(rgb, r))
    res["pbc"] = summarize_scores(scores)
    res["pbc"]["per_class_exactly_one"] = {
        c: round(float(np.mean([s["n_inside"] == 1 for s in scores if s["label"] == c])), 4)
        for c in sorted({s["label"] for s in scores}) if c not in NOT_LEUKOCYTE_CLASSES}
    if a.sheets:
        Image.fromarray(contact_sheet(tiles)).save(a.sheets / "pbc-outlines.jpg", quality=85)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k in ("raabin", "pbc")}, indent=1))


if __name__ == "__main__":
    main()
