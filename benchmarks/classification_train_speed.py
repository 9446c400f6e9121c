"""Training speed of the CPU-friendly classifiers on this machine: ms per field for one optimiser step
(forward + backward + AdamW, batch 32) and for the strong augmentation, at several input sizes.

    .venv/bin/python benchmarks/classification_train_speed.py [--archs smearnet,smearnet-wide] [--sizes 96,128,160]
        [--threads N] [--out FILE.json]

An epoch of the default recipe (oversampling) on the Taleqani train split is ~1,930 fields, so
seconds per epoch ~ 1.93 x (step ms + augment ms). The load average is printed because other jobs on shared
cores slow everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from leukodx.data.synthetic import synthetic_field
from leukodx.data.transforms import ClassificationTransform
from leukodx.models.registry import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="smearnet,smearnet-wide")
    ap.add_argument("--sizes", default="96,128,160")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    img, _ = synthetic_field("Pro", 224, 0)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        aug = ClassificationTransform(size, "strong")
        aug(img)
        t = time.perf_counter()
        for _ in range(32):
            aug(img)
        aug_ms = (time.perf_counter() - t) / 32 * 1000
        for arch in args.archs.split(","):
            model = create_model("classify", arch, num_classes=4).train()
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            x = torch.rand(args.batch, 3, size, size) * 255
            y = torch.randint(0, 4, (args.batch,))
            for i in range(args.steps + 1):
                if i == 1:
                    t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            step_ms = (time.perf_counter() - t) / (args.steps * args.batch) * 1000
            row = {"arch": arch, "size": size, "step_ms_per_field": round(step_ms, 2),
                   "augment_ms_per_field": round(aug_ms, 2),
                   "epoch_s_estimate_1930_fields": round(1.93 * (step_ms + aug_ms), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "torch": torch.__version__}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
