"""Single-cell crops through the whole analysis (`leukodx predict`'s engine): PBC leukocyte crops of one split
cut and resized as labs export single cells, scored on whether the leukocyte is counted and typed as its class.

    python benchmarks/single_cell_crops.py --split val --out FILE [--segmenter DIR] [--pad mirror|auto] [--n 120]

Variants of each crop (360 x 363 px, red cells 68 px): `cut120`, its central 120 px (the leukocyte fills it and
is cut by the edges); `cut180`; `cut240to120`, its central 240 px resized to 120 px (the whole cell in a small
crop); `to257`, the whole crop resized to 257 px. `--pad mirror` frames every cell crop of the cell model by
mirroring (the rule before issue 28's cut-cell work); `auto` is `inference.cell_classifier.crop_cells`' default.
Scores: `counted` (at least one leukocyte counted), `right_type` (a cell typed as the crop's class), `called`
(the field got a class call), `called_leukaemic` (a leukaemic field call on these normal cells) and
`called_leukaemic_unflagged` (such a call without a flag). Platelet and erythroblast crops (whole) are scored apart:
`outlined`, `counted` (the field's count includes a cell) and `typed_as_its_kind`. The scale is the analysis' own estimate (no lab scale given).

Source: PBC (Acevedo et al., Data in Brief 30, 105474, 2020; CC BY 4.0); split benchmarks/splits/pbc-seed0.csv.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.evaluation.cells import centre_square

ROOT = Path(__file__).resolve().parents[1]


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BOX))


VARIANTS = {"cut120": lambda a: centre_square(a, 120), "cut180": lambda a: centre_square(a, 180),
            "cut240to120": lambda a: _resize(centre_square(a, 240), 120), "to257": lambda a: _resize(a, 257)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--segmenter", type=Path, default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--pad", default="auto", choices=("auto", "mirror"))
    ap.add_argument("--n", type=int, default=120, help="crops, evenly spaced over the split's leukocyte rows")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES
    from leukodx.data.images import read_rgb
    from leukodx.data.split import read_split
    from leukodx.inference import cell_classifier
    from leukodx.inference.pipeline import load_analyzer

    if a.pad == "mirror":
        crop = cell_classifier.crop_cells
        cell_classifier.crop_cells = lambda *x, **k: crop(*x, **{**k, "pad": "symmetric"})  # type: ignore[assignment]
    rows = [r for r in read_split(ROOT / "benchmarks/splits/pbc-seed0.csv", part=a.split)
            if r["label"] not in NOT_LEUKOCYTE_CLASSES]
    rows = rows[::max(1, len(rows) // a.n)][:a.n]
    analysis = load_analyzer(segmenter_dir=a.segmenter)
    assert analysis.classifier is not None
    benign = analysis.classifier.config.case_rule.benign
    t0 = time.perf_counter()
    res: dict = {"split": a.split, "pad": a.pad, "segmenter": str(a.segmenter or "bundled"), "n": len(rows),
                 "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    for name, fn in VARIANTS.items():
        rs = analysis.analyze_many([fn(read_rgb(a.data / r["path"])) for r in rows], batch_size=8)
        res[name] = {"counted": round(float(np.mean([r.cell_count > 0 for r in rs])), 4),
                     "right_type": round(float(np.mean([any(c.ai_label == r0["label"] for c in r.cells)
                                                        for r, r0 in zip(rs, rows, strict=True)])), 4),
                     "called": round(float(np.mean([r.label is not None for r in rs])), 4),
                     # these are normal cells: a leukaemic field call on one is wrong, and should be flagged
                     "called_leukaemic": round(float(np.mean([r.label is not None and r.label not in benign
                                                              for r in rs])), 4),
                     "called_leukaemic_unflagged": round(float(np.mean([
                         r.label is not None and r.label not in benign and r.flag == "ok" for r in rs])), 4)}
        print(name, res[name], flush=True)
    # the crops of what is no leukocyte (whole, as exported): a platelet should get no leukocyte counted, and an
    # erythroblast (a nucleated red cell, which a differential reports apart) its own type
    for kind in sorted(NOT_LEUKOCYTE_CLASSES):
        others = [r for r in read_split(ROOT / "benchmarks/splits/pbc-seed0.csv", part=a.split) if r["label"] == kind]
        others = others[::max(1, len(others) // a.n)][:a.n]
        rs = analysis.analyze_many([read_rgb(a.data / r["path"]) for r in others], batch_size=8)
        res[kind] = {"n": len(rs), "outlined": round(float(np.mean([len(r.cells) > 0 for r in rs])), 4),
                     "counted": round(float(np.mean([r.cell_count > 0 for r in rs])), 4),
                     "typed_as_its_kind": round(float(np.mean([any(c.ai_label == kind for c in r.cells)
                                                               for r in rs])), 4)}
        print(kind, res[kind], flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
