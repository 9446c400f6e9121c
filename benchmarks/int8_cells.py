"""int8 variants for the cell-type model, measured and never written: calibrated on training crops, judged on the
validation crops its own training was judged on (the sources in its config.json), by the one accept rule
(leukodx.deploy.export.accept_int8: accuracy and balanced accuracy each lose <= 0.3 points, and faster).

    python benchmarks/int8_cells.py [--model src/leukodx/assets/cells] --out docs/results/issue23/int8_cells.json
        [--n-calibration 400] [--method minmax|percentile] [--float-convs 3 1]

The shipped model.int8.onnx is made by the command (same rule, same inputs):
    leukodx export onnx --model src/leukodx/assets/cells --int8-only --n-calibration 400 --float-convs 3 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from leukodx.cli.export_onnx import cell_crops
from leukodx.deploy.export import add_int8_crops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("src/leukodx/assets/cells"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-calibration", type=int, default=400)
    ap.add_argument("--method", choices=("minmax", "percentile"), default="minmax")
    ap.add_argument("--float-convs", type=int, nargs=2, default=(0, 0), metavar=("FIRST", "LAST"),
                    help="leave this many convolutions at the start and at the end in float")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    calib, x_val, y_val = cell_crops(a.model, a.n_calibration)
    rec = add_int8_crops(a.model, calib, x_val, y_val, method=a.method, float_convs=tuple(a.float_convs),
                         record=False, collect_seconds=round(time.perf_counter() - t0, 1))
    text = json.dumps(rec, indent=1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
