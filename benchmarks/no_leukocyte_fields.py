"""Images without a leukocyte through the analysis: how many get a cell outlined, and how many a cell counted (the
cell model's leukocyte kinds), per segmenter. The bundled segmenter must outline none on the synthetic fields
(tests/test_whole_cells.py asserts seeds 1-3).

- Synthetic smear fields with every leukocyte painted over (tests/test_whole_cells.py's `_without_leukocytes`).
- With `--data`: real windows clear of every leukocyte. From each Raabin and labelled Chula field of the `--split`
  part, the largest square at each corner that no leukocyte box (grown 15 %) touches, if at least `--min-side`
  of the field's short side; red cells, platelets and plasma only, as a crop or a high-magnification field shows
  them.

    python benchmarks/no_leukocyte_fields.py --segmenter DIR [--segmenter DIR2 ...] [--seeds 8]
        [--data ../shared/data --splits benchmarks/splits --split val] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def corner_windows(rgb: np.ndarray, boxes: np.ndarray, min_side: float) -> list[np.ndarray]:
    """The largest square at each corner of `rgb` clear of every box (N x 5: class, x0, y0, x1, y1; grown 15 %),
    where its side is at least `min_side` x the short side."""
    h, w = rgb.shape[:2]
    free = np.ones((h, w), bool)
    for _, x0, y0, x1, y1 in boxes:
        gx, gy = 0.075 * (x1 - x0), 0.075 * (y1 - y0)
        free[max(0, int(y0 - gy)):int(np.ceil(y1 + gy)), max(0, int(x0 - gx)):int(np.ceil(x1 + gx))] = False
    out = []
    for flip_y, flip_x in ((0, 0), (0, 1), (1, 0), (1, 1)):
        f = free[::-1 if flip_y else 1, ::-1 if flip_x else 1]
        side = 0
        while side < min(h, w) and f[:side + 1, :side + 1].all():
            side += 1
        if side >= min_side * min(h, w):
            ys = slice(h - side, h) if flip_y else slice(0, side)
            xs = slice(w - side, w) if flip_x else slice(0, side)
            out.append(rgb[ys, xs])
    return out


def real_windows(data: Path, splits: Path, split: str, min_side: float) -> dict[str, list[np.ndarray]]:
    from leukodx.evaluation.cells import load_parts

    parts = load_parts(data, splits, split=split, max_pbc=1, max_taleqani=1)
    out = {"raabin": [], "chula": []}
    for rgb, fld, _ in parts.raabin:
        out["raabin"] += corner_windows(rgb, fld.boxes[fld.boxes[:, 0] == 0], min_side)
    for rgb, boxes, _ in parts.chula:
        out["chula"] += corner_windows(rgb, boxes, min_side)
    return out


def score(analysis, images: list[np.ndarray]) -> dict:
    rs = analysis.analyze_many(images)
    return {"images": len(rs), "with_a_cell_outlined": sum(len(r.cells) > 0 for r in rs),
            "with_a_cell_counted": sum(r.cell_count > 0 for r in rs),
            "as_single_cell_crops": sum("single-cell crop" in r.size_note for r in rs),
            "kinds": sorted(c.ai_label or "" for r in rs for c in r.cells)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segmenter", type=Path, action="append", default=None, help="model directory (repeatable; "
                    "default: the bundled one)")
    ap.add_argument("--seeds", type=int, default=8, help="fields: seeds 1..N of synthetic 'Early' smears")
    ap.add_argument("--data", type=Path, default=None, help="also real windows: the folder of raabin-fields/ and "
                    "chula-wbc/")
    ap.add_argument("--splits", type=Path, default=ROOT / "benchmarks" / "splits")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--min-side", type=float, default=0.3, help="a window's least side, x the field's short side")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from leukodx.data.synthetic import synthetic_instances
    from leukodx.inference.pipeline import load_analyzer
    from test_whole_cells import _without_leukocytes

    windows = real_windows(a.data, a.splits, a.split, a.min_side) if a.data else {}
    res = {"split": a.split if a.data else None, "min_side": a.min_side, "segmenters": {}}
    for seg in a.segmenter or [None]:
        analysis = load_analyzer(segmenter_dir=seg, threads=2)
        per = []
        for seed in range(1, a.seeds + 1):
            rgb, labels = synthetic_instances("Early", 224, seed=seed)
            r = analysis.analyze(_without_leukocytes(rgb, labels))
            per.append({"seed": seed, "outlined": len(r.cells), "counted": r.cell_count,
                        "kinds": sorted(c.ai_label or "" for c in r.cells)})
        out = {"fields": a.seeds, "with_a_cell_outlined": sum(p["outlined"] > 0 for p in per),
               "with_a_cell_counted": sum(p["counted"] > 0 for p in per), "per_field": per}
        out |= {f"{src}_windows": score(analysis, w) for src, w in windows.items()}
        res["segmenters"][str(seg or "bundled")] = out
        print(seg or "bundled", {k: v for k, v in out.items() if k != "per_field"}, flush=True)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
