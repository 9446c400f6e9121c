"""Whole leukocytes on other labs' images (issue 20): Raabin fields with every leukocyte boxed, PBC crops with
one centred cell, and Taleqani fields (nucleus Dice against the repaired references), through the analysis that `predict` and the web app run (`leukodx.inference.pipeline.Analysis`,
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
from leukodx.data.cell_references import contact_sheet
from leukodx.evaluation.cells import headline, load_parts, score_parts
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
    ap.add_argument("--sheets", type=Path, default=None, help="folder for {raabin,pbc,taleqani}-outlines.jpg")
    ap.add_argument("--max", type=int, default=0, help="at most this many images per source (0: all)")
    ap.add_argument("--mask-threshold", type=float, default=None, help="override thresholds.mask (validation only)")
    ap.add_argument("--min-nucleus-fraction", type=float, default=None,
                    help="override thresholds.instances.min_nucleus_fraction (validation only)")
    ap.add_argument("--instances", type=json.loads, default=None,
                    help='override cell-splitting parameters, e.g. \'{"min_distance": 10, "h": 3}\' (validation only)')
    a = ap.parse_args()
    seg = a.segmenter or default_model_dir("segment")
    analysis = Analysis(None, seg, cell_classifier=False)  # the segmenter alone: counts are its cells
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
    parts = load_parts(a.data, ROOT / "benchmarks/splits", a.split, a.max, a.max, a.max)
    res.update(parts.describe())
    res.update(score_parts(analysis, parts))
    res["headline"] = headline(res)
    if a.sheets:  # outlines on 24 images of each source, evenly spaced
        a.sheets.mkdir(parents=True, exist_ok=True)
        for name, images in (("raabin", [x[0] for x in parts.raabin]), ("pbc", [x[0] for x in parts.pbc]),
                             ("taleqani", [x[0] for x in parts.taleqani])):
            pick = images[::max(1, len(images) // 24)][:24]
            tiles = [tile(rgb, r) for rgb, r in zip(pick, analysis.analyze_many(pick), strict=True)]
            Image.fromarray(contact_sheet(tiles)).save(a.sheets / f"{name}-outlines.jpg", quality=85)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k in ("raabin", "pbc", "taleqani", "headline")}, indent=1))


if __name__ == "__main__":
    main()
