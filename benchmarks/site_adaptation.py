"""`leukodx adapt` on an imitated other lab: does adapting to the lab's own unlabelled fields help?

One imitated lab = `lab_shift` (leukodx.evaluation.shift) with ONE draw of lab parameters for all its fields: every
field gets a fresh generator in the same state (`rng_for(seed, "imitated-lab")`), so every field has the same
stain, white balance, brightness, contrast, magnification, blur and JPEG quality, as one lab's fields do. The
lab's copies of the Taleqani val rows (for adapting, unlabelled) and test rows (for scoring) are written as JPEG
files; then, through the command line as a clinic runs it:

    leukodx adapt --data LAB/val --out ADAPTED
    leukodx predict LAB/test --out P1                                      # bundled models
    leukodx predict LAB/test --out P2 --classifier ADAPTED/classifier --segmenter ADAPTED/segmenter
    leukodx predict TEST_AS_IS --out P3 --classifier ADAPTED/... (the adapted models on this hospital's fields)

Each scored on accuracy over all fields, accuracy over unflagged fields and the share flagged (by flag).

    python benchmarks/site_adaptation.py --data ../shared/data/all-taleqani \
        --split benchmarks/splits/taleqani-sgdc-seed0.csv --labs 0 1 2 --out docs/results/site-adaptation
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CELL_DISAGREEMENT = "The field is called"  # the start of the cells-disagree reason (a low_confidence flag)


def _kind(row: dict) -> str:
    """The flag, with a low_confidence flag from the cells' disagreement (not the model's confidence) apart."""
    if row["flag"] == "low_confidence" and row["flag_reason"].startswith(CELL_DISAGREEMENT):
        return "cells_disagree"
    return row["flag"]


def _score(pred_csv: Path, truth: dict[str, str]) -> dict:
    """Accuracy over all fields; `flagged` and `accuracy_unflagged` count the flags adaptation acts on
    (out_of_distribution, low_confidence from the calibrated confidence, unreadable); the cells-disagree flag
    (the cell model's, which reads the field as it is) is counted apart, and in `flagged_any`."""
    by_name = {Path(r["path"]).name: r for r in csv.DictReader(open(pred_csv))}
    kinds = [_kind(by_name[n]) for n in truth]
    ok = np.array([k in ("ok", "cells_disagree") for k in kinds])
    correct = np.array([by_name[n]["label"] == t for n, t in truth.items()])
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return {"n": len(truth), "accuracy_all": round(float(correct.mean()), 4),
            "accuracy_unflagged": round(float(correct[ok].mean()), 4) if ok.any() else None,
            "flagged": round(float(1 - ok.mean()), 4),
            "flagged_any": round(float(np.mean([k != "ok" for k in kinds])), 4), "flags": counts}


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return round(time.perf_counter() - t0, 1)


def main(argv=None) -> int:
    from leukodx.data.images import read_field
    from leukodx.data.split import read_split
    from leukodx.evaluation.shift import lab_shift, rng_for, sample_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--labs", type=int, nargs="+", default=[0], help="lab seeds (one imitated lab each)")
    ap.add_argument("--severity", type=float, default=1.5)
    ap.add_argument("--limit", type=int, default=None, help="first N val and test rows only (a smoke test)")
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json")
    args = ap.parse_args(argv)
    rows = read_split(args.split)
    val = [r for r in rows if r["split"] == "val"][:args.limit]
    test = [r for r in rows if r["split"] == "test"][:args.limit]
    truth = {Path(r["path"]).name: r["label"] for r in test}
    exe = str(Path(sys.executable).with_name("leukodx"))
    predict = [exe, "predict", "--no-heatmap", "--no-overlays", "--workers", "2"]
    t_all = time.perf_counter()
    res: dict = {"command": "python benchmarks/site_adaptation.py " + " ".join(argv or sys.argv[1:]),
                 "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                            "2 CPU cores shared with a training run",
                 "data": str(args.data), "split": str(args.split), "n_val": len(val), "n_test": len(test),
                 "lab_shift": {"severity": args.severity, "draw": "one draw per lab: rng_for(seed, 'imitated-lab') "
                               "fresh for every field", "saved_as": "JPEG quality 95"},
                 "labs": []}
    with tempfile.TemporaryDirectory(prefix="site-adapt-") as tmp:
        t = Path(tmp)
        as_is = [str(args.data / r["path"]) for r in test]
        p_home = t / "pred-home-bundled"
        sec = _run(predict + as_is + ["--out", str(p_home)])
        res["home_bundled"] = _score(p_home / "predictions.csv", truth) | {"seconds": sec}
        print("this hospital's test fields, bundled models:", res["home_bundled"], flush=True)
        for seed in args.labs:
            lab = t / f"lab{seed}"
            params = sample_params(rng_for(seed, "imitated-lab"), args.severity)
            for subset, rs in (("val", val), ("test", test)):
                for r in rs:
                    dst = lab / subset / r["path"]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shifted = lab_shift(read_field(args.data / r["path"]), rng_for(seed, "imitated-lab"),
                                        severity=args.severity)
                    Image.fromarray(shifted).save(dst.with_suffix(".jpg"), quality=95)
            adapted = t / f"adapted{seed}"
            sec_adapt = _run([exe, "adapt", "--data", str(lab / "val"), "--out", str(adapted)])
            adaptation = json.loads((adapted / "classifier" / "config.json").read_text())["adaptation"]
            models = ["--classifier", str(adapted / "classifier"), "--segmenter", str(adapted / "segmenter")]
            entry: dict = {"seed": seed, "params": params.to_dict(), "adapt_seconds": sec_adapt,
                           "adaptation": {k: adaptation[k] for k in ("n_used", "n_stain_fields", "stain", "refit",
                                                                     "ood", "not_smear")}}
            for name, extra, paths in (("bundled", [], [str(lab / "test")]),
                                       ("adapted", models, [str(lab / "test")]),
                                       ("adapted_on_home_fields", models, as_is)):
                p = t / f"pred-{seed}-{name}"
                sec = _run(predict + paths + ["--out", str(p)] + extra)
                entry[name] = _score(p / "predictions.csv", truth) | {"seconds": sec}
                print(f"lab {seed} {name}:", entry[name], flush=True)
            res["labs"].append(entry)
    keys = ("accuracy_all", "accuracy_unflagged", "flagged")
    res["mean_over_labs"] = {name: {k: round(float(np.mean([lab[name][k] for lab in res["labs"]])), 4)
                                    for k in keys} for name in ("bundled", "adapted", "adapted_on_home_fields")}
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res["mean_over_labs"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
