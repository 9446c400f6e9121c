"""Side by side: the validation (and test) figures of cell-model runs (`leukodx train cells` directories, or the
bundled model's directory), as a markdown table; used to show that a retrain through the one engine reproduces
the old trainer's figures (docs/results/issue27/README.md).

    python benchmarks/cell_model_runs.py src/leukodx/assets/cells /tmp/runs/old-f0 /tmp/runs/new-f0 --part val
    PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/cell_model_runs.py --crops-hash --data ../shared/data

``--crops-hash``: the number and sha256 of the crops (pixels and every column) that `training.cells.collect` makes
from the three sources with the project's split files, so two versions of the code can be shown to train on the
same crops (``--limit-per-class`` as `leukodx train cells`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = (
    ("PBC balanced accuracy (top class)", ("pbc", "balanced_accuracy_top")),
    ("PBC accuracy (top class)", ("pbc", "accuracy_top")),
    ("Taleqani cells: AUC of p(blast), malignant vs benign fields", ("taleqani", "cells", "auc_p_blast")),
    ("Taleqani cells: sensitivity of the 'blast' answer", ("taleqani", "cells", "sensitivity_blast_answer")),
    ("Taleqani cells: specificity of the 'blast' answer", ("taleqani", "cells", "specificity_blast_answer")),
    ("Taleqani fields: AUC of the blast share", ("taleqani", "fields", "auc_blast_share")),
    ("Taleqani fields: accuracy at the field threshold", ("taleqani", "fields", "accuracy")),
    ("Raabin leukocytes called not_leukocyte", ("raabin_leukocytes", "called_not_leukocyte")),
    ("negatives called not_leukocyte", ("negatives", "called_not_leukocyte")),
    ("unidentified share", ("unidentified_share",)),
    ("crops scored", ("n_crops",)),
)


def _get(d: dict | None, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def figures(run: Path, part: str) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    scores = (cfg.get("metrics") or {}).get(part)
    hist = (cfg.get("training") or {}).get("history") or []
    best = max((h.get("val_balanced_accuracy") for h in hist if h.get("val_balanced_accuracy") is not None),
               default=None)
    return {"rows": {name: _get(scores, path) for name, path in ROWS}, "temperature": cfg.get("temperature"),
            "low_confidence": (cfg.get("thresholds") or {}).get("low_confidence"),
            "field_threshold": (cfg.get("cells") or {}).get("field_threshold"),
            "best_val_balanced_accuracy": best, "epochs": len(hist)}


def crops_hash(data: Path, splits: Path, limit_per_class: int | None) -> tuple[int, str]:
    import hashlib

    import numpy as np

    from leukodx.training.cells import collect

    crops = collect(data / "pbc", data / "all-taleqani", data / "raabin-fields", pbc_split=splits / "pbc-seed0.csv",
                    taleqani_split=splits / "taleqani-sgdc-seed0.csv",
                    raabin_split=splits / "raabin-fields-seed0.csv", seed=0, limit_per_class=limit_per_class,
                    log=lambda m: None)
    h = hashlib.sha256()
    for k in ("crops", "labels", "split", "source", "kind", "path", "field_label"):
        h.update(np.ascontiguousarray(getattr(crops, k)).tobytes())
    return len(crops), h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*", help="model directories (config.json with metrics)")
    ap.add_argument("--part", choices=("val", "test"), default="val")
    ap.add_argument("--crops-hash", action="store_true", help="print the number and sha256 of the collected crops")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--splits", type=Path, default=Path("benchmarks/splits"))
    ap.add_argument("--limit-per-class", type=int, default=None)
    a = ap.parse_args()
    if a.crops_hash:
        print(*crops_hash(a.data, a.splits, a.limit_per_class))
        return
    cols = [figures(r, a.part) for r in a.runs]
    print(f"| {a.part} | " + " | ".join(str(r) for r in a.runs) + " |")
    print("|---|" + "---|" * len(a.runs))
    for name, _ in ROWS:
        print(f"| {name} | " + " | ".join(_fmt(c["rows"][name]) for c in cols) + " |")
    for key in ("best_val_balanced_accuracy", "epochs", "temperature", "low_confidence", "field_threshold"):
        print(f"| {key.replace('_', ' ')} | " + " | ".join(_fmt(c[key]) for c in cols) + " |")


if __name__ == "__main__":
    main()
