"""Touching leukocytes in a crop: are both outlined apart by the crop segmenter?

    python benchmarks/touching_pair_crops.py --split val [--segmenter DIR ...] [--out FILE]

Every pair of leukocyte boxes that touch or overlap (the gap between them at most 15 % of the larger box's side)
in the Chula and Raabin fields of a split is cut out: a square 1.25 times the pair's extent, centred on it. Each
crop is analysed with the lab's scale given (`um_per_px` from the source's red-cell size: Chula 40 px, Raabin per
field), so it goes where a lab's calibrated crop goes. A pair is kept apart when each box holds exactly one cell
centre. Also counted: the crops the crop segmenter outlined (the size note says "single-cell crop"). `--sheet
FILE` draws the last segmenter's outlines (green) and the two boxes (yellow) on every crop.

Sources: Chula fields (singgihbekti/WBC_Dataset, Chulalongkorn University, MIT); Raabin-WBC fields (Kouzehkanan et
al., Sci. Rep. 12, 1123, 2022) with the TXL-PBC boxes (MIT). Splits: benchmarks/splits/*-seed0.csv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from leukodx.assets import default_model_dir
from leukodx.data.sources import SOURCES
from leukodx.evaluation.cells import load_parts
from leukodx.inference.pipeline import Analysis
from leukodx.inference.scale import REFERENCE_RBC_UM

ROOT = Path(__file__).resolve().parents[1]


def pair_crops(parts) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(source, crop, its two boxes (x0, y0, x1, y1) in the crop, red-cell diameter px) for every touching pair."""
    out = []
    for name in ("chula", "raabin"):
        for x in getattr(parts, name):
            rgb = x[0]
            boxes = x[1] if name == "chula" else x[1].boxes
            d = float(SOURCES["chula"].rbc_diameter or 40.0) if name == "chula" else float(x[1].rbc_diameter)
            b = boxes[boxes[:, 0] == 0][:, 1:].astype(float)
            for i in range(len(b)):
                for j in range(i + 1, len(b)):
                    p, q = b[i], b[j]
                    gap = max(max(p[0], q[0]) - min(p[2], q[2]), max(p[1], q[1]) - min(p[3], q[3]))
                    if gap > 0.15 * max(p[2] - p[0], q[2] - q[0], p[3] - p[1], q[3] - q[1]):
                        continue
                    x0, y0 = min(p[0], q[0]), min(p[1], q[1])
                    x1, y1 = max(p[2], q[2]), max(p[3], q[3])
                    half = 0.625 * max(x1 - x0, y1 - y0)
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                    X0, Y0 = int(max(0, cx - half)), int(max(0, cy - half))
                    X1, Y1 = int(min(rgb.shape[1], cx + half)), int(min(rgb.shape[0], cy + half))
                    out.append((name, rgb[Y0:Y1, X0:X1], np.array([p, q]) - [X0, Y0, X0, Y0], d))
    return out


def score(analysis: Analysis, pairs, tiles: list | None = None) -> dict:
    apart = routed = 0
    for _, crop, boxes, d in pairs:
        r = analysis.analyze(crop, um_per_px=REFERENCE_RBC_UM / d)
        if tiles is not None:
            from PIL import ImageDraw

            from leukodx.inference.render import overlay_image

            img = overlay_image(crop, r, captioned=False)
            for b in boxes:
                ImageDraw.Draw(img).rectangle(tuple(b), outline=(255, 220, 0))
            tiles.append(np.asarray(img.convert("RGB").resize((240, 240))))
        routed += "single-cell crop" in r.size_note
        per = [sum(bx[0] <= c.centroid[1] <= bx[2] and bx[1] <= c.centroid[0] <= bx[3] for c in r.cells)
               for bx in boxes]
        apart += per == [1, 1]
    return {"pairs": len(pairs), "kept_apart": apart, "outlined_as_crops": routed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--segmenter", type=Path, action="append", help="model directory (repeatable; default: bundled)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sheet", type=Path, help="contact sheet of the last segmenter's outlines (PNG)")
    a = ap.parse_args()
    parts = load_parts(a.data, ROOT / "benchmarks/splits", a.split, 0, 1, 1, 0)
    pairs = pair_crops(parts)
    res = {"split": a.split, "by_source": {s: sum(p[0] == s for p in pairs) for s in ("chula", "raabin")}}
    tiles: list = []
    for seg in a.segmenter or [default_model_dir("segment")]:
        tiles.clear()
        res[str(seg)] = score(Analysis(None, seg, cell_classifier=False), pairs, tiles)
    if a.sheet and tiles:
        from PIL import Image

        from leukodx.data.cell_references import contact_sheet

        Image.fromarray(contact_sheet(tiles)).save(a.sheet)
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
