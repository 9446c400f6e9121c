"""Heat maps from the ONNX/engine class activation maps against Grad-CAM on the bundled classifier (24 real fields):
max per-pixel difference and correlation. Usage: python benchmarks/heatmap_cam_vs_gradcam.py [MODEL_DIR]"""
import glob
import sys

import numpy as np
import torch

from leukodx.assets import default_model_dir
from leukodx.inference import tiling
from leukodx.inference.gradcam import GradCAM
from leukodx.inference.pipeline import Analysis

cdir = sys.argv[1] if len(sys.argv) > 1 else default_model_dir("classify")
a = Analysis(cdir, None, engine="torch")
print("has_cam", a.classifier.engine.net.has_cam)
fs = sorted(glob.glob('/work/shared/data/all-taleqani/Original/*/*.jpg'))[::97][:24]
rs = a.analyze_many(fs, heatmap=True)
g = GradCAM(a.torch_classifier())
diffs, cors = [], []
for p, r in zip(fs, rs):
    from leukodx.data.images import read_field
    rgb = read_field(p)
    tiles, owner, boxes = tiling.cut_tiles([rgb], a.classifier.size)
    cam = g(torch.from_numpy(tiling.to_batch(tiles)), [a.classes.index(r.label)] * len(tiles))
    heat = tiling.stitch(list(cam), boxes[0], *rgb.shape[:2]); heat = np.clip(heat / max(heat.max(), 1e-6), 0, 1)
    diffs.append(float(np.abs(heat - r.heatmap).max())); cors.append(float(np.corrcoef(heat.ravel(), r.heatmap.ravel())[0, 1]))
print("max abs diff: max %.4f mean %.4f; corr min %.4f" % (max(diffs), np.mean(diffs), min(cors)))
