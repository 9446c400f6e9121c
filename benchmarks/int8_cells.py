"""int8 for the cell-type model: calibrated on training crops, judged on the validation crops its own training
was judged on (PBC, Taleqani, Raabin: the sources in its config.json), kept only when accuracy and balanced
accuracy each lose <= 0.3 points and it is faster (leukodx.deploy.export: the same rule as `export onnx --int8`).

    python benchmarks/int8_cells.py [--model src/leukodx/assets/cells] --out docs/results/issue23/int8_cells.json
        [--write]   # with --write and a kept model: MODEL/model.int8.onnx and config.json's onnx.int8 record
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("src/leukodx/assets/cells"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-calibration", type=int, default=400)
    ap.add_argument("--method", choices=("minmax", "percentile"), default="minmax")
    ap.add_argument("--float-convs", type=int, nargs=2, default=(0, 0), metavar=("FIRST", "LAST"),
                    help="leave this many convolutions at the start and at the end in float")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)

    import onnxruntime as ort

    from leukodx.deploy.export import INT8_MAX_DROP_POINTS, int8_speed, quantize_file, stamp_metadata
    from leukodx.inference.engines import INT8_FILE, session_options
    from leukodx.io import file_sha256
    from leukodx.models.checkpoint import read_config
    from leukodx.models.model_config import update_model_config
    from leukodx.training.cells import MODEL_CLASSES, balanced_accuracy, centre_input, collect

    config = read_config(a.model)
    src = config["training"]["sources"]
    t0 = time.perf_counter()
    data = collect(src["pbc"]["dir"], src["taleqani"]["dir"], (src.get("raabin") or {}).get("dir"),
                   pbc_split=src["pbc"]["split"], taleqani_split=src["taleqani"]["split"],
                   raabin_split=(src.get("raabin") or {}).get("split"))
    collect_s = time.perf_counter() - t0
    single = data.single(MODEL_CLASSES)
    rng = np.random.default_rng(0)
    train = np.flatnonzero(data.split == "train")
    calib = np.sort(rng.choice(train, min(a.n_calibration, len(train)), replace=False))
    val = np.flatnonzero((data.split == "val") & (single >= 0))
    y = single[val]

    def inputs(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([centre_input(data.crops[idx[i:i + 256]]).numpy() for i in range(0, len(idx), 256)])

    x_val = inputs(val)
    temperature = float(config.get("temperature") or 1.0)

    def score(path: Path) -> dict:
        sess = ort.InferenceSession(str(path), sess_options=session_options(2), providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(["logits"], {"image": x_val[i:i + 128]})[0]
                                 for i in range(0, len(x_val), 128)])
        pred = (logits / temperature).argmax(1)
        return {"accuracy": round(100 * float((pred == y).mean()), 3),
                "balanced_accuracy": round(100 * balanced_accuracy(pred, y), 3), "pred": pred}

    with tempfile.TemporaryDirectory(prefix="leukodx-int8-cells-") as tmp:
        q = Path(tmp) / INT8_FILE
        t1 = time.perf_counter()
        x_cal = inputs(calib)
        quantize_file(a.model / "model.onnx", q, (x_cal[i:i + 16] for i in range(0, len(x_cal), 16)), a.method,
                      tuple(a.float_convs))
        stamp_metadata(q, a.model, config)
        f, i8 = score(a.model / "model.onnx"), score(q)
        speed = int8_speed(a.model / "model.onnx", q, tuple(config["input_size"]), batch=10)
        drops = {k: round(f[k] - i8[k], 3) for k in ("accuracy", "balanced_accuracy")}
        kept = bool(max(drops.values()) <= INT8_MAX_DROP_POINTS and speed["int8_faster"])
        rec = {"file": INT8_FILE if kept else None, "kept": kept, "metric": "accuracy and balanced accuracy",
               "accuracy_fp32": f["accuracy"], "accuracy_int8": i8["accuracy"],
               "balanced_accuracy_fp32": f["balanced_accuracy"], "balanced_accuracy_int8": i8["balanced_accuracy"],
               "drop_points": drops, "max_drop_points": INT8_MAX_DROP_POINTS,
               "agreement": round(100 * float((f["pred"] == i8["pred"]).mean()), 3),
               "n_calibration": len(calib), "n_eval": len(val),
               "eval_data": "validation crops (single-labelled) of the sources in config.json training.sources",
               "calibration_data": "training crops of the same sources", "calibration_method": a.method,
               "float_convs_first_last": list(a.float_convs),
               "quant_format": "QDQ", "per_channel": True,
               "seconds": round(time.perf_counter() - t1, 1), "collect_seconds": round(collect_s, 1), **speed}
        if kept:
            rec["sha256"] = file_sha256(q)
            rec["size_mb"] = round(q.stat().st_size / 1e6, 2)
            if a.write:
                shutil.copyfile(q, a.model / INT8_FILE)
                onnx_rec = dict(read_config(a.model).get("onnx") or {})
                onnx_rec["int8"] = rec
                update_model_config(a.model, onnx=onnx_rec)
    text = json.dumps(rec, indent=1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
