"""Choose a two-output segmenter's post-processing on validation parts only (issue 20): the mask threshold, the
nucleus rule (a cell whose nucleus covers less than this fraction of it is no leukocyte) and the cell-splitting
parameters. Test parts are never read.

Every val image goes through the analysis pipeline (`Analysis(None, RUN)`, ONNX Runtime, what `predict` runs);
the network runs once per image (its outputs are cached) and each candidate re-runs only the steps after it.
Scored with leukodx.evaluation.cells on the val parts of Raabin fields (one centre per leukocyte box, count exact,
whole-cell and nucleus Dice), PBC crops (exactly one centred cell; no cell on a platelet or erythroblast; Dice)
and Taleqani fields (nucleus Dice against the repaired references). The objective is the mean of those rates.

    python benchmarks/cell_segmenter_val_choice.py --model RUN --out docs/results/cell-segmentation/val_choice.json \
        [--write]    # --write stores the chosen values in RUN/config.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np

from leukodx.evaluation.cells import headline, load_parts, score_parts
from leukodx.inference.pipeline import Analysis
from leukodx.models.model_config import read_model_config, write_model_config

ROOT = Path(__file__).resolve().parents[1]
MASK = (0.4, 0.5, 0.6)
NUCLEUS = (0.0, 0.05, 0.15)
SPLITTING = ({"min_distance": 7.0, "h": 2.0}, {"min_distance": 10.0, "h": 3.0}, {"min_distance": 13.0, "h": 4.0})


class CachedEngine:
    """The network's outputs per batch, computed once (the candidates differ only after it)."""

    def __init__(self, engine):
        self.engine, self.cache, self.source = engine, {}, engine.source

    def run(self, batch: np.ndarray) -> dict:
        key = hashlib.sha1(np.ascontiguousarray(batch).tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.engine.run(batch)
        return self.cache[key]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-raabin", type=int, default=0, help="0: all val fields")
    ap.add_argument("--max-pbc", type=int, default=240)
    ap.add_argument("--max-taleqani", type=int, default=120)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    analysis = Analysis(None, a.model, cell_classifier=False)  # the segmenter alone
    stage = analysis.segmenter
    assert stage is not None
    stage.engine = CachedEngine(stage.engine)
    t0 = time.perf_counter()

    parts = load_parts(a.data, ROOT / "benchmarks/splits", "val", a.max_raabin, a.max_pbc, a.max_taleqani)
    load_s = time.perf_counter() - t0

    base = dict(stage.instance_params)
    results = []
    for mask, nuc, split in itertools.product(MASK, NUCLEUS, SPLITTING):
        stage.mask_threshold, stage.min_nucleus_fraction = mask, nuc
        stage.instance_params = {**base, **split}
        results.append({"mask": mask, "min_nucleus_fraction": nuc, **split,
                        **headline(score_parts(analysis, parts))})
        print(json.dumps(results[-1]))
    best = max(results, key=lambda r: r["objective"])
    res = {"model": str(a.model), "subset": "val", **parts.describe(), "load_seconds": round(load_s, 1),
           "seconds": round(time.perf_counter() - t0, 1), "chosen": best, "candidates": results,
           "command": f"python benchmarks/cell_segmenter_val_choice.py --model {a.model} --out {a.out}"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print("chosen:", json.dumps(best))
    if a.write:
        cfg = read_model_config(a.model).to_json()
        cfg["thresholds"]["mask"] = best["mask"]
        cfg["thresholds"]["instances"].update(min_nucleus_fraction=best["min_nucleus_fraction"],
                                              min_distance=best["min_distance"], h=best["h"])
        cfg["thresholds"]["choice"] = (f"chosen on the val parts of Raabin, PBC and Taleqani by "
                                       f"benchmarks/cell_segmenter_val_choice.py (objective {best['objective']})")
        write_model_config(a.model, cfg)


if __name__ == "__main__":
    main()
