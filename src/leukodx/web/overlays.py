"""Pictures for the pages: the field with its cells outlined, and the field under its heat map (PNG bytes).

Uses leukodx.inference.render when it is there; otherwise draws them here. Both are drawn at most
`max_side` pixels on the longer side, so a huge microscope photo does not make a huge page.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

OUTLINE = (255, 214, 0)  # bright yellow: visible on purple nuclei and pink red cells
_STOPS = np.array(  # a perceptually ordered palette (dark blue -> cyan -> yellow -> red)
    [[48, 18, 59], [40, 120, 240], [30, 210, 200], [160, 250, 60], [250, 190, 40], [220, 40, 20]], float
)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _shrink(rgb: np.ndarray, result, max_side: int):
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb, result
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))

    def nearest(a):
        if a is None:
            return None
        return np.asarray(Image.fromarray(a.astype(np.int32)).resize(size, Image.NEAREST)).astype(a.dtype)

    heat = None
    if result.heatmap is not None:
        heat = np.asarray(Image.fromarray(result.heatmap.astype(np.float32)).resize(size, Image.BILINEAR))
    return small, replace(result, mask=nearest(result.mask), instances=nearest(result.instances), heatmap=heat)


def _outline(rgb: np.ndarray, result) -> np.ndarray:
    out = rgb.copy()
    labels = result.instances if result.instances is not None else (
        ndi.label(result.mask)[0] if result.mask is not None else None
    )
    if labels is None:
        return out
    thick = max(1, round(max(rgb.shape[:2]) / 300))
    edge = np.zeros(labels.shape, bool)
    for k in np.unique(labels):
        if k == 0:
            continue
        cell = labels == k
        edge |= cell & ~ndi.binary_erosion(cell, iterations=thick)
    out[edge] = OUTLINE
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(ndi.find_objects(labels.astype(np.int32)), start=1):
        if obj is None:
            continue
        y, x = obj[0].start, obj[1].start
        draw.rectangle([x, max(0, y - 11), x + 8 * len(str(i)) + 3, max(11, y)], fill=(0, 0, 0))
        draw.text((x + 2, max(0, y - 11)), str(i), fill=OUTLINE)
    return np.asarray(img)


def _colormap(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1) * (len(_STOPS) - 1)
    i = np.minimum(v.astype(int), len(_STOPS) - 2)
    f = (v - i)[..., None]
    return (_STOPS[i] * (1 - f) + _STOPS[i + 1] * f).astype(np.uint8)


def _heat(rgb: np.ndarray, result) -> np.ndarray:
    if result.heatmap is None:
        return rgb
    heat = result.heatmap.astype(np.float32)
    alpha = 0.25 + 0.45 * np.clip(heat, 0, 1)[..., None]
    return (rgb * (1 - alpha) + _colormap(heat) * alpha).astype(np.uint8)


def overlay_png(rgb: np.ndarray, result, max_side: int = 1024) -> bytes:
    rgb, result = _shrink(rgb, result, max_side)
    try:
        from leukodx.inference import render  # the pipeline's own drawing, when present
    except ImportError:
        render = None
    if render is not None and hasattr(render, "overlay_png"):
        return render.overlay_png(rgb, result)
    return _png(_outline(rgb, result))


def heatmap_png(rgb: np.ndarray, result, max_side: int = 1024) -> bytes | None:
    if result.heatmap is None:
        return None
    rgb, result = _shrink(rgb, result, max_side)
    try:
        from leukodx.inference import render
    except ImportError:
        render = None
    if render is not None and hasattr(render, "heatmap_png"):
        return render.heatmap_png(rgb, result)
    return _png(_heat(rgb, result))
