"""Heat maps from the classifier's class activation maps (what predict and the web app show) against Grad-CAM
on the bundled classifier, on 24 real fields: max per-pixel difference and correlation.

    python benchmarks/heatmap_cam_vs_gradcam.py [MODEL_DIR]
"""

import glob
import sys

import numpy as np
import torch

from leukodx.assets import default_model_dir
from leukodx.data.images import read_field
from leukodx.inference import tiling
from leukodx.inference.pipeline import Analysis
from leukodx.models.eager import GradCAM, load_eager

cdir = sys.argv[1] if len(sys.argv) > 1 else default_model_dir("classify")
a = Analysis(cdir, None, engine="torch", eager=load_eager)
print("class activation maps in the model's outputs:", a.classifier.engine.net.has_cam)
fields = sorted(glob.glob("../shared/data/all-taleqani/Original/*/*.jpg"))[::97][:24]
grad_cam = GradCAM(a.classifier.engine.model)
diffs, cors = [], []
for path, r in zip(fields, a.analyze_many(fields, heatmap=True), strict=True):
    rgb = read_field(path)
    tiles, _, boxes = tiling.cut_tiles([rgb], a.classifier.size)
    cam = grad_cam(torch.from_numpy(tiling.to_batch(tiles)), [a.classes.index(r.label)] * len(tiles))
    heat = tiling.stitch(list(cam), boxes[0], *rgb.shape[:2])
    heat = np.clip(heat / max(heat.max(), 1e-6), 0, 1)
    diffs.append(float(np.abs(heat - r.heatmap).max()))
    cors.append(float(np.corrcoef(heat.ravel(), r.heatmap.ravel())[0, 1]))
print(f"max abs diff: max {max(diffs):.4f} mean {np.mean(diffs):.4f}; corr min {min(cors):.4f} ({len(fields)} fields)")
