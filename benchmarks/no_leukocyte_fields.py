"""Synthetic smear fields with every leukocyte painted over (tests/test_whole_cells.py's `_without_leukocytes`)
through the analysis: how many get a cell outlined, and how many a cell counted (the cell model's leukocyte
kinds), per segmenter. The bundled segmenter must outline none (tests/test_whole_cells.py asserts seeds 1-3).

    python benchmarks/no_leukocyte_fields.py --segmenter DIR [--segmenter DIR2 ...] [--seeds 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segmenter", type=Path, action="append", default=None, help="model directory (repeatable; "
                    "default: the bundled one)")
    ap.add_argument("--seeds", type=int, default=8, help="fields: seeds 1..N of synthetic 'Early' smears")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from leukodx.data.synthetic import synthetic_instances
    from leukodx.inference.pipeline import load_analyzer
    from test_whole_cells import _without_leukocytes

    res = {}
    for seg in a.segmenter or [None]:
        analysis = load_analyzer(segmenter_dir=seg, threads=2)
        per = []
        for seed in range(1, a.seeds + 1):
            rgb, labels = synthetic_instances("Early", 224, seed=seed)
            r = analysis.analyze(_without_leukocytes(rgb, labels))
            per.append({"seed": seed, "outlined": len(r.cells), "counted": r.cell_count,
                        "kinds": sorted(c.ai_label or "" for c in r.cells)})
        res[str(seg or "bundled")] = {"fields": a.seeds, "with_a_cell_outlined": sum(p["outlined"] > 0 for p in per),
                                      "with_a_cell_counted": sum(p["counted"] > 0 for p in per), "per_field": per}
        print(seg or "bundled", {k: v for k, v in res[str(seg or "bundled")].items() if k != "per_field"}, flush=True)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
