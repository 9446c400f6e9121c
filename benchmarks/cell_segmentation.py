"""Whole leukocytes on other labs' images (issues 20, 28): Raabin and Chula fields with every leukocyte boxed, PBC
crops with one centred cell, and Taleqani fields (nucleus Dice against the repaired references), through the analysis that `predict` and the web app run (`leukodx.inference.pipeline.Analysis`,
segmenter part, ONNX Runtime), scored by `leukodx.evaluation.cells` against the rule-made references of
`leukodx.data.cell_references` (docs/results/cell-references/). Contact sheets of the outlines are written too.

    python benchmarks/cell_segmentation.py --split test --out docs/results/cell-segmentation/bundled.json \
        [--segmenter DIR] [--sheets docs/results/cell-segmentation] [--worst DIR] [--max 0]

--magnify M resamples every image (and its boxes and references) by M first: a microscope of another
magnification or a smaller camera (0.5: half the pixels per side), which the analysis brings back to its working
scale by the red cells it measures. --shift S gives every image another lab's stain, camera colour, focus and JPEG
(`leukodx.evaluation.shift.lab_shift` at severity S, its magnification left out so the references stay aligned;
one draw per image, seeded by its index). pbc_cut: the PBC leukocyte crops cut to their central third (120 of 360 px,
the cell filling the crop and cut by its edges; `evaluation.cells.cut_crop`).

--worst writes <source>-worst.png: the 12 images of each source the segmenter gets most wrong (boxed fields: the
count error plus boxes without exactly one centre, then the lowest whole-cell Dice; crops: not exactly one cell on
the leukocyte, or a cell on a platelet / erythroblast, then the lowest Dice; Taleqani: the lowest nucleus Dice),
worst first, their paths and scores in the JSON's "worst".

Sources: Raabin-WBC fields (Kouzehkanan et al., Sci. Rep. 12, 1123, 2022) with the TXL-PBC boxes (MIT); PBC crops
(Acevedo et al., Data in Brief 30, 105474, 2020; CC BY 4.0); Chula fields (singgihbekti/WBC_Dataset, Chulalongkorn
University, MIT), labelled fields only. Splits: benchmarks/splits/{raabin-fields,pbc,chula-wbc}-seed0.csv.
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
from leukodx.evaluation.cells import dice, headline, load_parts, score_parts
from leukodx.inference.pipeline import Analysis
from leukodx.inference.render import overlay_image

ROOT = Path(__file__).resolve().parents[1]


def tile(rgb: np.ndarray, result, side: int = 224, boxes: np.ndarray | None = None, crop: tuple | None = None
         ) -> np.ndarray:
    img = overlay_image(rgb, result, captioned=False)
    if boxes is not None:  # the annotator's leukocyte boxes, yellow
        from PIL import ImageDraw

        draw = ImageDraw.Draw(img)
        for _, x0, y0, x1, y1 in boxes[boxes[:, 0] == 0]:
            draw.rectangle((x0, y0, x1, y1), outline=(255, 220, 0), width=max(1, rgb.shape[1] // 240))
    if crop is not None:
        img = img.crop(crop)
    img.thumbnail((side, side))
    out = np.full((side, side, 3), 255, np.uint8)
    a = np.asarray(img)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def badness(name: str, s: dict) -> tuple:
    """Higher is worse (module docstring)."""
    counts = s.get("nucleus" if name == "taleqani" else "cell")
    d = dice(*counts) if counts else None
    if name == "taleqani":
        return (0, 1.0 - (d if d is not None else 1.0))
    if "n_boxes" in s:
        err = abs(s["n_cells"] - s["n_boxes"]) + s["n_boxes"] - s["one_centre"] + s["outside_boxes"]
    else:
        err = int(s["n_inside"] != 1) if s["leukocyte"] else int(s["n_inside"] > 0)
    return (err, 1.0 - (d if d is not None else 1.0))


def window(rgb: np.ndarray, boxes: np.ndarray, per_box: list) -> tuple:
    """A square around the first leukocyte box without exactly one centre (else the first box), 3 box sides."""
    wbc = boxes[boxes[:, 0] == 0]
    if not len(wbc):
        return (0, 0, rgb.shape[1], rgb.shape[0])
    _, x0, y0, x1, y1 = wbc[next((j for j, n in enumerate(per_box) if n != 1), 0)]
    half = 1.5 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (int(max(0, cx - half)), int(max(0, cy - half)), int(min(rgb.shape[1], cx + half)),
            int(min(rgb.shape[0], cy + half)))


def worst_sheets(analysis, parts, per_image: dict, folder: Path, n: int = 12) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, scores in per_image.items():
        order = sorted(range(len(scores)), key=lambda i: badness(name, scores[i]), reverse=True)[:n]
        items = [getattr(parts, name)[i] for i in order]
        boxes = [x[1].boxes if name == "raabin" else x[1] if name == "chula" else None for x in items]
        crops = [window(x[0], b, scores[i]["per_box"]) if b is not None else None
                 for i, x, b in zip(order, items, boxes, strict=True)]
        tiles = [tile(x[0], r, 200, b, c) for x, r, b, c in zip(
            items, analysis.analyze_many([x[0] for x in items]), boxes, crops, strict=True)]
        Image.fromarray(contact_sheet(tiles)).quantize(96).save(folder / f"{name}-worst.png", optimize=True)
        out[name] = [{"path": parts.paths[name][i], "error": badness(name, scores[i])[0],
                      "dice": round(1.0 - badness(name, scores[i])[1], 4)} for i in order]
    return out


def magnified(parts, m: float):
    """Every image of `parts` resampled by m (box filter down, bilinear up), its boxes and references with it."""
    from dataclasses import replace

    def one(rgb: np.ndarray, ref):
        h, w = rgb.shape[:2]
        size = (max(8, round(w * m)), max(8, round(h * m)))
        img = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX if m < 1 else
                                                     Image.Resampling.BILINEAR))
        arrs = {k: np.asarray(Image.fromarray(v).resize(size, Image.Resampling.NEAREST))
                for k, v in ref.arrays().items()}
        return img, replace(ref, image=img, rbc_diameter_px=ref.rbc_diameter_px * m, **arrs)

    def boxes(b: np.ndarray) -> np.ndarray:
        return np.concatenate([b[:, :1], b[:, 1:] * m], 1) if len(b) else b

    for name in ("raabin", "chula", "pbc", "pbc_cut", "taleqani"):
        new = []
        for x in getattr(parts, name):
            img, ref = one(x[0], x[-1])
            mid = [] if name == "taleqani" else [x[1]] if name.startswith("pbc") else \
                [boxes(x[1])] if name == "chula" else [replace(x[1], boxes=boxes(x[1].boxes))]
            new.append((img, *mid, ref))
        setattr(parts, name, new)
    return parts


def shifted(parts, severity: float):
    """Every image of `parts` with a lab shift of `severity`, its geometry unchanged (see the module docstring)."""
    from dataclasses import replace

    from leukodx.evaluation.shift import apply_params, rng_for, sample_params

    for name in ("raabin", "chula", "pbc", "pbc_cut", "taleqani"):
        setattr(parts, name, [(apply_params(x[0], replace(sample_params(rng_for(0, f"{name}/{i}"), severity),
                                                          scale=1.0)), *x[1:])
                              for i, x in enumerate(getattr(parts, name))])
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--segmenter", type=Path, default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sheets", type=Path, default=None, help="folder for {raabin,pbc,taleqani}-outlines.jpg")
    ap.add_argument("--worst", type=Path, default=None, help="folder for <source>-worst.png (see above)")
    ap.add_argument("--max", type=int, default=0, help="at most this many images per source (0: all)")
    ap.add_argument("--magnify", type=float, default=1.0, help="resample every image by this factor first")
    ap.add_argument("--shift", type=float, default=0.0, help="a lab shift of this severity first (0: none)")
    ap.add_argument("--cut", type=float, default=1 / 3, help="pbc_cut: the central share of each crop's side kept")
    ap.add_argument("--cut-side", type=int, default=0, help="pbc_cut: resize the cut crops to this side (0: as cut)")
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
                     + (["--segmenter", str(a.segmenter)] if a.segmenter else [])
                     + (["--worst", str(a.worst)] if a.worst else []) + (["--max", str(a.max)] if a.max else [])
                     + (["--magnify", f"{a.magnify:g}"] if a.magnify != 1.0 else [])
                     + (["--shift", f"{a.shift:g}"] if a.shift else [])
                     + (["--cut", f"{a.cut:g}"] if a.cut != 1 / 3 else [])
                     + (["--cut-side", str(a.cut_side)] if a.cut_side else []))}
    t0 = time.perf_counter()
    parts = load_parts(a.data, ROOT / "benchmarks/splits", a.split, a.max, a.max, a.max, a.max)
    if a.cut != 1 / 3 or a.cut_side:
        from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES
        from leukodx.evaluation.cells import cut_crop

        parts.pbc_cut = [cut_crop(x, a.cut) for x in parts.pbc if x[1] not in NOT_LEUKOCYTE_CLASSES]
        if a.cut_side:
            parts.pbc_cut = [(np.asarray(Image.fromarray(x).resize((a.cut_side, a.cut_side), Image.Resampling.BOX)),
                              lab, ref) for x, lab, ref in parts.pbc_cut]
    if a.magnify != 1.0:
        parts = magnified(parts, a.magnify)
    if a.shift:
        parts = shifted(parts, a.shift)
    res.update(parts.describe())
    per_image: dict = {}
    res.update(score_parts(analysis, parts, per_image=per_image))
    res["headline"] = headline(res)
    if a.sheets:  # outlines on 24 images of each source, evenly spaced
        a.sheets.mkdir(parents=True, exist_ok=True)
        for name, images in (("raabin", [x[0] for x in parts.raabin]), ("pbc", [x[0] for x in parts.pbc]),
                             ("taleqani", [x[0] for x in parts.taleqani]), ("chula", [x[0] for x in parts.chula])):
            pick = images[::max(1, len(images) // 24)][:24]
            tiles = [tile(rgb, r) for rgb, r in zip(pick, analysis.analyze_many(pick), strict=True)]
            Image.fromarray(contact_sheet(tiles)).save(a.sheets / f"{name}-outlines.jpg", quality=85)
    if a.worst:
        res["worst"] = worst_sheets(analysis, parts, per_image, a.worst)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k in ("raabin", "pbc", "pbc_cut", "taleqani", "chula",
                                                                     "headline")}, indent=1))


if __name__ == "__main__":
    main()
