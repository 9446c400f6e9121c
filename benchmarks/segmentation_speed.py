"""Speed of segmenting one 224 x 224 field on this machine's CPU: PyTorch eager and ONNX Runtime, plus cell splitting.

    .venv/bin/python benchmarks/segmentation_speed.py [--model DIR] [--threads 2] [--repeats 50] [--out FILE.json]

Without --model the bundled segmenter (src/leukodx/assets/segmenter) is timed. A field is resized to the model's
input size, segmented (batch 1), the probability map resized back to 224 x 224 and thresholded; `instances` is
leukodx.inference.instances.split_instances on that mask. Reports the median and the 90th percentile over
--repeats runs after warm-up. The ONNX time needs `leukodx export onnx` (written to a temporary folder here);
it is skipped with a note when the export fails. Other jobs on the same cores inflate every number: the
machine's load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _stats(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1000
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "min_ms": round(float(a.min()), 2), "n": len(ts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from leukodx.assets import default_model_dir
    from leukodx.data.synthetic import synthetic_field
    from leukodx.inference.instances import scaled_params, split_instances
    from leukodx.models.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else default_model_dir("segment")
    model, cfg = load_model(model_dir)
    h, w = cfg["input_size"]
    rgb, _ = synthetic_field("Pre", 224, seed=0)
    from PIL import Image

    def prep() -> np.ndarray:
        small = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        return small.transpose(2, 0, 1)[None].astype(np.float32)

    def post(logits: np.ndarray) -> np.ndarray:
        p = torch.sigmoid(torch.from_numpy(logits))
        if p.shape[-2:] != (224, 224):
            p = F.interpolate(p, size=(224, 224), mode="bilinear", align_corners=False)
        return p[0, 0].numpy() > 0.5

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return post(model(torch.from_numpy(prep())).numpy())

    results: dict = {"model": str(model_dir), "arch": cfg["arch"], "arch_kwargs": cfg.get("arch_kwargs"),
                     "input_size": [h, w], "field": "224x224", "threads": args.threads,
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "load_average_before": os.getloadavg()}, "torch": torch.__version__}

    for _ in range(5):
        run_torch()
    ts = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        mask = run_torch()
        ts.append(time.perf_counter() - t)
    results["pytorch_segment"] = _stats(ts)

    params = scaled_params(mask.shape)
    ts = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        split_instances(mask, **params)
        ts.append(time.perf_counter() - t)
    results["instances"] = _stats(ts)

    try:
        import onnxruntime as ort

        from leukodx.deploy.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model_dir, path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name

            def run_onnx() -> np.ndarray:
                return post(sess.run(None, {name: prep()})[0])

            for _ in range(5):
                run_onnx()
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                run_onnx()
                ts.append(time.perf_counter() - t)
            results["onnxruntime_segment"] = _stats(ts)
    except Exception as exc:  # noqa: BLE001 - the export belongs to another module; say why it was skipped
        results["onnxruntime_segment"] = {"skipped": f"{exc.__class__.__name__}: {exc}"}
    results["machine"]["load_average_after"] = os.getloadavg()
    results["target_ms"] = 30
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
