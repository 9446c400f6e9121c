"""The bundled models as a clinic runs them: `leukodx predict` on the held-out fields of a split and on a
lab-shifted copy of them (written to disk as JPEG files, as another lab's camera would give them).

Reports, for each: accuracy over all fields, the share flagged (by flag), accuracy over the unflagged and the
flagged fields, and the ECE of the confidence, from predictions.csv.

    python benchmarks/predict_held_out.py --data ../shared/data/all-taleqani \
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --out benchmarks/predict_held_out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.evaluation.metrics import expected_calibration_error


def _score(pred_csv: Path, truth: dict[str, str]) -> dict:
    rows = [r for r in csv.DictReader(open(pred_csv))]
    by_name = {Path(r["path"]).name: r for r in rows}
    flags = [by_name[n]["flag"] for n in truth]
    ok = np.array([f == "ok" for f in flags])
    correct = np.array([by_name[n]["label"] == t for n, t in truth.items()])
    conf = np.array([float(by_name[n]["confidence"] or 0) for n in truth])
    counts: dict[str, int] = {}
    for f in flags:
        counts[f] = counts.get(f, 0) + 1
    return {"n": len(truth), "accuracy_all": float(correct.mean()), "flagged": float(1 - ok.mean()), "flags": counts,
            "accuracy_unflagged": float(correct[ok].mean()) if ok.any() else None,
            "accuracy_flagged": float(correct[~ok].mean()) if (~ok).any() else None, "ece": expected_calibration_error(conf, correct)}


def main(argv=None) -> int:
    from leukodx.data.split import read_split
    from leukodx.evaluation.shift import lab_shift, rng_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--subset", default="test")
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="onnx", help="predict's --engine (onnx, onnx-int8)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = [r for r in read_split(args.split) if r["split"] == args.subset]
    exe = str(Path(sys.executable).with_name("leukodx"))
    res: dict = {"data": str(args.data), "split": str(args.split), "subset": args.subset, "n_rows": len(rows),
                 "engine": args.engine,
                 "lab_shift": {"severity": args.severity, "seed": args.seed, "saved_as": "JPEG quality 95"}}
    with tempfile.TemporaryDirectory(prefix="held-out-") as tmp:
        t = Path(tmp)
        for name in ("original", "shifted"):
            (t / name).mkdir()
        truth = {}
        for r in rows:
            rgb = np.asarray(Image.open(args.data / r["path"]).convert("RGB"))
            stem = r["path"].replace("/", "__")
            Image.fromarray(rgb).save(t / "original" / f"{stem}.png")
            shifted = lab_shift(rgb, rng_for(args.seed, r["path"]), severity=args.severity)
            Image.fromarray(shifted).save(t / "shifted" / f"{stem}.jpg", quality=95)
            truth[stem] = r["label"]
        for name, suffix in (("original", ".png"), ("shifted", ".jpg")):
            t0 = time.perf_counter()
            cmd = [exe, "predict", str(t / name), "--out", str(t / f"pred-{name}"), "--engine", args.engine]
            subprocess.run(cmd, check=True, capture_output=True)
            score = _score(t / f"pred-{name}" / "predictions.csv", {k + suffix: v for k, v in truth.items()})
            res["in_distribution" if name == "original" else "lab_shifted"] = {
                **score, "seconds": round(time.perf_counter() - t0, 1)}
        res["classifier"] = json.loads((t / "pred-original" / "predictions.json").read_text())["models"]["classifier"]
    args.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
