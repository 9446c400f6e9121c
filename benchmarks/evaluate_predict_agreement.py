"""Do `leukodx evaluate` and `leukodx predict` give the same answer for the same fields? (issue: one analysis path)

Runs both commands, as a user would, on DATA (or on the test rows of a split), with the bundled models, and
compares the per-field labels, flags and probabilities.

    python benchmarks/evaluate_predict_agreement.py --data ../shared/data/all-taleqani \
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --out benchmarks/evaluate_predict_agreement.json
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, help="score only the test rows of this split CSV")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    exe = str(Path(sys.executable).with_name("leukodx"))
    with tempfile.TemporaryDirectory(prefix="agree-") as tmp:
        t = Path(tmp)
        ev_cmd = [exe, "evaluate", "--data", str(args.data), "--out", str(t / "eval"), "--no-plots"]
        if args.split:
            ev_cmd += ["--split", str(args.split)]
            rows = list(csv.DictReader(open(args.split)))
            inputs = [str(args.data / r["path"]) for r in rows if r["split"] == "test"]
        else:
            inputs = [str(args.data / "Original")]
        pr_cmd = [exe, "predict", *inputs, "--out", str(t / "pred")]
        t0 = time.perf_counter()
        subprocess.run(ev_cmd, check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(pr_cmd, check=True, capture_output=True)
        t2 = time.perf_counter()
        metrics = json.loads((t / "eval" / "metrics.json").read_text())
        name = metrics["classification"]["model_name"]
        ev = {r["path"]: r for r in csv.DictReader(open(t / "eval" / f"classification_predictions_{name}.csv"))}
        pr = {str(Path(r["path"]).resolve().relative_to(args.data.resolve())): r
              for r in csv.DictReader(open(t / "pred" / "predictions.csv")) if r["label"]}
    common = sorted(ev.keys() & pr.keys())
    same_label = sum(ev[p]["predicted"] == pr[p]["label"] for p in common)
    same_flag = sum(ev[p]["flag"] == pr[p]["flag"] for p in common)
    pred_acc = sum(pr[p]["label"] == ev[p]["label"] for p in common) / len(common)
    classes = metrics["classification"]["classes"]
    max_diff = max(abs(float(ev[p][f"p_{c}"]) - float(pr[p][f"prob_{c}"])) for p in common for c in classes)
    res = {"command_evaluate": " ".join(ev_cmd[1:]), "command_predict": f"predict <{len(inputs)} paths> --out P",
           "n_evaluate": len(ev), "n_predict": len(pr), "n_common": len(common),
           "label_agreement": same_label / len(common), "flag_agreement": same_flag / len(common),
           "max_probability_difference": max_diff,
           "accuracy_evaluate": metrics["classification"]["accuracy"], "accuracy_predict": pred_acc,
           "seconds_evaluate": round(t1 - t0, 1), "seconds_predict": round(t2 - t1, 1),
           "classifier": metrics["classification"]["model"], "engine": metrics.get("engine")}
    args.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if same_label == len(common) == len(ev) else 1


if __name__ == "__main__":
    sys.exit(main())
