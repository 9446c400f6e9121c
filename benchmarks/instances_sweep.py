"""Choose the cell-splitting parameters (thresholds.instances) on validation rows only (issue 10).

The segmenter runs once per field (the analysis pipeline's stage, at the training scale); every parameter setting
then splits the same masks. Two sets, both from the split's val rows: the fields as they are, and the imitated
other camera of benchmarks/counting.py (leukodx.evaluation.shift.other_camera: a 4:3 window enlarged 3.8x to
640 x 480, lab-shifted). Scored against the connected components of the repaired references: count MAE, count
exact, and the share of reference cells holding exactly one detected centre. The chosen setting minimises the
mean count MAE of the two sets.

    python benchmarks/instances_sweep.py --data ../shared/data/all-taleqani \\
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --segmenter RUN --out docs/results/instances-sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import read_pair, reference_labels, test_rows  # noqa: E402

from leukodx.evaluation.shift import lab_shift, other_camera  # noqa: E402
from leukodx.inference import tiling  # noqa: E402
from leukodx.inference.instances import cells_from_labels, field_cells  # noqa: E402
from leukodx.inference.pipeline import SegmenterStage, prepare_field  # noqa: E402

GRID = {"min_area": (40, 60, 90), "min_distance": (7, 10, 13), "h": (2.0, 3.0), "close_radius": (0.0, 1.5, 2.5)}


def work_mask(stage: SegmenterStage, rgb: np.ndarray):
    prep, _ = prepare_field(rgb)
    p = stage.probabilities([prep.work], [prep.boxes])[0]
    vh, vw = prep.valid
    return p[:vh, :vw] > stage.mask_threshold, prep


def count(mask, prep, params) -> list:
    lab, cells = field_cells(mask, params, at_reference=prep.known)
    if prep.factor != 1.0:
        cells = cells_from_labels(tiling.labels_to_original(lab, prep))
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--segmenter", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    stage = SegmenterStage(args.segmenter)
    rng = np.random.default_rng(0)
    fields = {"val": [], "val_other_camera": []}
    for i, row in enumerate(test_rows(args.split, args.limit, "val")):
        rgb, ref = read_pair(args.data, row["path"])
        m, prep = work_mask(stage, rgb)
        fields["val"].append((m, prep, reference_labels(ref)))
        big, big_ref = other_camera(rgb, rng, window=0.75, mask=ref)
        m, prep = work_mask(stage, lab_shift(big, 10_000 + i))
        fields["val_other_camera"].append((m, prep, reference_labels(big_ref, 640 / 168)))
    base = dict(stage.instance_params)
    results = []
    for values in itertools.product(*GRID.values()):
        params = {**base, **dict(zip(GRID, values, strict=True))}
        rec: dict = {"params": {k: params[k] for k in GRID}}
        for name, items in fields.items():
            errs, one, n_ref = [], 0, 0
            for m, prep, ref in items:
                cells = count(m, prep, params)
                n = int(ref.max())
                hits = np.zeros(n + 1, int)
                for c in cells:
                    r, q = int(round(c.centroid[0])), int(round(c.centroid[1]))
                    if 0 <= r < ref.shape[0] and 0 <= q < ref.shape[1]:
                        hits[ref[r, q]] += 1
                one += int((hits[1:] == 1).sum())
                n_ref += n
                errs.append(len(cells) - n)
            e = np.array(errs)
            rec[name] = {"count_mae": round(float(np.abs(e).mean()), 3), "count_exact_pct":
                         round(100 * float((e == 0).mean()), 2), "bias": round(float(e.mean()), 3),
                         "one_centre_pct": round(100 * one / max(n_ref, 1), 2)}
        rec["score"] = round((rec["val"]["count_mae"] + rec["val_other_camera"]["count_mae"]) / 2, 4)
        results.append(rec)
    results.sort(key=lambda r: r["score"])
    out = {"segmenter": str(args.segmenter), "n_fields": len(fields["val"]), "grid": GRID, "current": base,
           "best": results[0], "top": results[:10], "all": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["top"][:5], indent=1))


if __name__ == "__main__":
    main()
