"""Choose the bundled segmenter and its mask threshold on validation rows only (issue 10).

For each candidate model directory, every val row of the split goes through the analysis pipeline's segmenter
stage (ONNX Runtime, at the training scale, what `predict` runs); the foreground probabilities are thresholded
at several values and scored with global Dice against the HSV references (valid ones, >= 0.1 % foreground) and
the repaired references, in distribution and under the synthetic lab shift. Test rows are never read.

    python benchmarks/segmenter_val_choice.py --data ../shared/data/all-taleqani \\
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --model src/leukodx/assets/segmenter --model RUN \\
        --out docs/results/segmenter-choice.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.data.reference_masks import repaired_reference
from leukodx.evaluation.shift import lab_shift, rng_for
from leukodx.inference import tiling
from leukodx.inference.pipeline import SegmenterStage, prepare_field

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def probs(stage: SegmenterStage, rgb: np.ndarray) -> np.ndarray:
    prep, _ = prepare_field(rgb)
    p = stage.probabilities([prep.work], [prep.boxes])[0]
    return tiling.to_original(p, prep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(args.split.open()) if r["split"] == "val"][: args.limit]
    res: dict = {"split": str(args.split), "subset": "val", "n_fields": len(rows), "thresholds": THRESHOLDS,
                 "models": {}}
    for mdir in args.model:
        stage = SegmenterStage(mdir)
        t0 = time.perf_counter()
        acc = {(ref, sh, t): [0, 0] for ref in ("hsv", "repaired") for sh in ("in", "shift") for t in THRESHOLDS}
        for row in rows:
            rgb = np.asarray(Image.open(args.data / row["path"]).convert("RGB"))
            seg = args.data / row["path"].replace("Original/", "Segmented/", 1)
            hsv = np.asarray(Image.open(seg).convert("L")) > 128
            rep = repaired_reference(rgb, hsv)[0]
            s_rgb, s_hsv = lab_shift(rgb, rng_for(0, row["path"]), mask=hsv)
            s_rep = lab_shift(rgb, rng_for(0, row["path"]), mask=rep)[1]
            for sh, img, refs in (("in", rgb, {"hsv": hsv, "repaired": rep}),
                                  ("shift", s_rgb, {"hsv": s_hsv, "repaired": s_rep})):
                p = probs(stage, img)
                for t in THRESHOLDS:
                    m = p > t
                    for name, r in refs.items():
                        if r.mean() < 0.001:
                            continue
                        a = acc[(name, sh, t)]
                        a[0] += 2 * int((m & r).sum())
                        a[1] += int(m.sum() + r.sum())
        out = {f"{ref}/{sh}/{t}": round(v[0] / max(v[1], 1), 4) for (ref, sh, t), v in acc.items()}
        res["models"][str(mdir)] = {"dice_global": out, "seconds": round(time.perf_counter() - t0, 1)}
        print(mdir, json.dumps(out), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
