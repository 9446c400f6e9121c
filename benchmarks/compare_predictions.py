"""Do two `leukodx predict` runs give the same answer for the same fields? (a refactor or a speed-up must not
change labels, flags, probabilities or counts)

    python benchmarks/compare_predictions.py BEFORE/predictions.csv AFTER/predictions.csv [--out FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

COLUMNS = ("label", "flag", "confidence", "malignant_probability", "cell_count", "scale_factor", "ood_score")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    before = {r["path"]: r for r in csv.DictReader(open(a.before))}
    after = {r["path"]: r for r in csv.DictReader(open(a.after))}
    common = sorted(before.keys() & after.keys())
    cols = [c for c in before[common[0]] if c in COLUMNS or c.startswith("prob_")] if common else []
    diffs = [{"path": p, "column": c, "before": before[p][c], "after": after[p].get(c)}
             for p in common for c in cols if before[p][c] != after[p].get(c)]
    res = {"n_before": len(before), "n_after": len(after), "n_common": len(common), "columns": cols,
           "n_fields_differing": len({d["path"] for d in diffs}), "differences": diffs[:50]}
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return 0 if not diffs and len(common) == len(before) == len(after) else 1


if __name__ == "__main__":
    raise SystemExit(main())
