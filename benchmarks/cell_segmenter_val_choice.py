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

from leukodx.data import sources
from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES
from leukodx.data.images import read_rgb
from leukodx.data.split import read_split
from leukodx.evaluation.cells import (
    dice,
    masked_counts,
    score_boxed_field,
    score_centred_crop,
    summarize_scores,
)
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
    analysis = Analysis(None, a.model)
    stage = analysis.segmenter
    assert stage is not None
    stage.engine = CachedEngine(stage.engine)
    t0 = time.perf_counter()

    raabin_root, pbc_root, tq_root = a.data / "raabin-fields", a.data / "pbc", a.data / "all-taleqani"
    fields = {f.path: f for f in sources.read_raabin_fields(raabin_root)[0]}
    raabin = [(read_rgb(raabin_root / r["path"]), fields[r["path"]],
               sources.raabin_field_reference(raabin_root, fields[r["path"]]))
              for r in sources.read_source_split(ROOT / "benchmarks/splits/raabin-fields-seed0.csv", "val")
              [:a.max_raabin or None]]
    pbc_rows = sources.read_source_split(ROOT / "benchmarks/splits/pbc-seed0.csv", "val")
    pbc_rows = pbc_rows[::max(1, len(pbc_rows) // a.max_pbc)][:a.max_pbc]
    pbc = [(read_rgb(pbc_root / r["path"]), r["label"], sources.pbc_crop_reference(pbc_root, r["path"], r["label"]))
           for r in pbc_rows]
    tq_rows = [r for r in read_split(ROOT / "benchmarks/splits/taleqani-sgdc-seed0.csv", tq_root)
               if r["split"] == "val"]
    tq_rows = tq_rows[::max(1, len(tq_rows) // a.max_taleqani)][:a.max_taleqani]
    taleqani = [(read_rgb(tq_root / r["path"]), sources.taleqani_field_reference(tq_root, r["path"]))
                for r in tq_rows]
    load_s = time.perf_counter() - t0

    base = dict(stage.instance_params)
    results = []
    for mask, nuc, split in itertools.product(MASK, NUCLEUS, SPLITTING):
        stage.mask_threshold, stage.min_nucleus_fraction = mask, nuc
        stage.instance_params = {**base, **split}
        rs = analysis.analyze_many([x[0] for x in raabin])
        r_sum = summarize_scores([score_boxed_field(r, f.boxes, ref) for r, (_, f, ref) in zip(rs, raabin, strict=True)])
        ps = analysis.analyze_many([x[0] for x in pbc])
        p_sum = summarize_scores([score_centred_crop(r, ref, leukocyte=lab not in NOT_LEUKOCYTE_CLASSES)
                                  for r, (_, lab, ref) in zip(ps, pbc, strict=True)])
        ts = analysis.analyze_many([x[0] for x in taleqani])
        counts = [masked_counts(r.nucleus_mask, ref.nucleus, ref.nucleus_known) for r, (_, ref) in
                  zip(ts, taleqani, strict=True)]
        tq_dice = dice(*(int(sum(c[k] for c in counts)) for k in range(3))) or 0.0
        parts = {"raabin_one_centre": r_sum["one_centre_per_box"], "raabin_count_exact": r_sum["count_exact"],
                 "raabin_cell_dice": r_sum.get("cell_dice_global") or 0.0,
                 "raabin_nucleus_dice": r_sum.get("nucleus_dice_global") or 0.0,
                 "pbc_exactly_one": p_sum.get("exactly_one_centred_cell", 0.0),
                 "pbc_no_cell_on_non_leukocyte": 1.0 - p_sum.get("non_leukocyte_called_cell", 0.0),
                 "pbc_cell_dice": p_sum.get("cell_dice_global") or 0.0,
                 "taleqani_nucleus_dice": round(tq_dice, 4)}
        results.append({"mask": mask, "min_nucleus_fraction": nuc, **split, **parts,
                        "objective": round(float(np.mean(list(parts.values()))), 4)})
        print(json.dumps(results[-1]))
    best = max(results, key=lambda r: r["objective"])
    res = {"model": str(a.model), "subset": "val", "n_raabin": len(raabin), "n_pbc": len(pbc),
           "n_taleqani": len(taleqani), "load_seconds": round(load_s, 1),
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
