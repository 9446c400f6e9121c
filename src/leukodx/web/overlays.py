"""Pictures for the pages, at most `max_side` pixels on the longer side (so that a huge microscope photo does not
make a huge page), all the size of the field so that they can be laid over each other or toggled in the viewer:

- the outlines: the field with a thin (one display pixel) outline around each leukocyte, nothing on the nucleus
  (the cell numbers are drawn by the page, outside the cell);
- the heat map: the field blended with the class activation map, no caption (the page shows a legend).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from leukodx.inference import render

OUTLINE = (0, 230, 90)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """The outer boundary pixels of every instance (a one-pixel line on the cell's edge)."""
    return render.outline(labels, 1)


def overlay_png(rgb: np.ndarray, result, max_side: int = 1024) -> bytes:
    small, r = render.shrink(rgb, result, max_side)
    img = np.asarray(small, dtype=np.uint8).copy()
    labels = r.instances if r.instances is not None else r.mask
    if labels is not None and labels.shape == img.shape[:2]:
        img[outline_mask(labels)] = OUTLINE
    return _png(img)


def heatmap_png(rgb: np.ndarray, result, max_side: int = 1024, alpha: float = 0.5) -> bytes | None:
    """None when the analysis has no heat map."""
    if result.heatmap is None:
        return None
    small, r = render.shrink(rgb, result, max_side)
    img = np.asarray(small, dtype=np.uint8)
    if r.heatmap is None or r.heatmap.shape != img.shape[:2]:
        return None
    v = np.clip(r.heatmap, 0, 1)
    heat = render.colormap(v).astype(np.float32)
    a = alpha * (0.3 + 0.7 * v)[..., None]
    return _png((img.astype(np.float32) * (1 - a) + heat * a).astype(np.uint8))
