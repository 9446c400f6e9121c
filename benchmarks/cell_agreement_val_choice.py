"""The cell-agreement rule's candidates on validation rows (issue 21), measured and never written: what each rule
of leukodx.deploy.calibrate.AGREEMENT_GRID flags among the Taleqani val fields and among the imitated other
lab's healthy fields, and the one `leukodx calibrate --cell-agreement` would choose (the fit and its rule are
leukodx.deploy.calibrate.fit_cell_agreement).

    python benchmarks/cell_agreement_val_choice.py --data ../shared/data/all-taleqani \
        --out docs/results/cell-agreement/val_choice.json

The shipped rule (config `cell_agreement` of the bundled classifier) is written by the command:
    leukodx calibrate --model src/leukodx/assets/classifier --data ../shared/data/all-taleqani \
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --cell-agreement
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leukodx.assets import default_model_dir
from leukodx.deploy.calibrate import fit_cell_agreement

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "all-taleqani")
    ap.add_argument("--split", type=Path, default=ROOT / "benchmarks/splits/taleqani-sgdc-seed0.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-flagged", type=float, default=0.05)
    a = ap.parse_args()
    res = fit_cell_agreement(default_model_dir("classify"), a.data, a.split, max_flagged=a.max_flagged, write=False)
    res["command"] = f"python benchmarks/cell_agreement_val_choice.py --out {a.out}"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print("chosen:", json.dumps(res["chosen"]))


if __name__ == "__main__":
    main()
