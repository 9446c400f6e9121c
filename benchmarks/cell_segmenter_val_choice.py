"""A two-output segmenter's post-processing candidates on validation parts only (issue 20), measured and never
written: the mask threshold, the nucleus rule and the cell splitting of leukodx.deploy.calibrate.POST_GRID,
scored with leukodx.evaluation.cells on the val parts of Raabin fields, PBC crops and Taleqani fields (test
parts are never read), and the one `leukodx calibrate --post-processing` would choose (the fit is
leukodx.deploy.calibrate.fit_post_processing).

    python benchmarks/cell_segmenter_val_choice.py --model RUN --out docs/results/cell-segmentation/val_choice.json

The shipped values (the bundled segmenter's `thresholds`) are written by the command:
    leukodx calibrate --model src/leukodx/assets/segmenter --data ../shared/data --split benchmarks/splits \
        --post-processing
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leukodx.deploy.calibrate import fit_post_processing

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-raabin", type=int, default=0, help="0: all val fields")
    ap.add_argument("--max-pbc", type=int, default=240)
    ap.add_argument("--max-taleqani", type=int, default=120)
    a = ap.parse_args()
    res = fit_post_processing(a.model, a.data, ROOT / "benchmarks/splits", a.max_raabin, a.max_pbc, a.max_taleqani,
                              write=False)
    res["command"] = f"python benchmarks/cell_segmenter_val_choice.py --model {a.model} --out {a.out}"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print("chosen:", json.dumps(res["chosen"]))


if __name__ == "__main__":
    main()
