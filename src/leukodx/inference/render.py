"""Pictures of an analysis: cell outlines (overlay) and the heat map (class activation map), one look for
`leukodx predict` and the web application:

    >>> png = overlay_png(rgb, result)      # bytes of a PNG: outlines, cell numbers and a caption band on top
    >>> png = heatmap_png(rgb, result)      # bytes of a PNG (the field when no heat map was computed)
    >>> png = overlay_png(*shrink(rgb, result, 1024), captioned=False)  # at most 1024 px, the field's own size

`captioned=False` draws the picture the size of the field, without numbers or caption, so that the web pages
can lay it over the field (they draw the cell numbers and a legend themselves).
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from leukodx.data.images import font

OUTLINE = (0, 230, 90)
FLAG_COLOURS = {"ok": (20, 120, 40), "low_confidence": (200, 120, 0), "out_of_distribution": (190, 30, 30),
                "unreadable": (120, 120, 120)}


def _png(img: Image.Image) -> bytes:
    """PNG at zlib level 1: about 20 % faster to write than level 3 for a file about 2 % larger (uploads wait on it)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def shrink(rgb: np.ndarray, result, max_side: int):
    """The field and its result's mask, instances and heat map scaled down to at most `max_side` pixels on the
    longer side (as they are when smaller), so that a huge microscope photo does not make a huge picture."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb, result
    size = (max(1, round(w * scale)), max(1, round(h * scale)))

    def resized(a, mode, dtype=None):
        if a is None:
            return None
        return np.asarray(Image.fromarray(a.astype(dtype or a.dtype)).resize(size, mode)).astype(a.dtype)

    near, smooth = Image.Resampling.NEAREST, Image.Resampling.BILINEAR
    return resized(rgb, smooth), replace(result, mask=resized(result.mask, near, np.int32),
                                         instances=resized(result.instances, near, np.int32),
                                         heatmap=resized(result.heatmap, smooth, np.float32))


def outline(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of an instance label image (or a bool mask)."""
    lab = labels.astype(np.int64)
    edge = np.zeros(lab.shape, bool)
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge &= lab > 0
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1) & (lab > 0)
    return edge


def _caption(img: Image.Image, text: str, colour) -> Image.Image:
    w, h = img.size
    size = max(10, min(24, w // 22))
    band = size + 8
    out = Image.new("RGB", (w, h + band), (255, 255, 255))
    out.paste(img, (0, band))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 0, w, band], fill=colour)
    draw.text((4, 3), text, fill=(255, 255, 255), font=font(size))
    return out


def caption_text(result) -> str:
    if result.label is None:
        return f"unreadable: {result.flag_reason}"[:120]
    txt = f"{result.label} {result.confidence:.0%} | {result.cell_count} cell{'s' if result.cell_count != 1 else ''}"
    if result.flag != "ok":
        txt += f" | {result.flag.replace('_', ' ')}"
    return txt


def _label_positions(result, shape) -> list[tuple[int, tuple[float, float]]]:
    """(cell number, (row, col)) per cell, from the instance image when it matches `shape` (so a resized
    result still gets its numbers in the right place), else from the cells' centroids."""
    lab = result.instances
    if lab is not None and lab.shape == tuple(shape) and lab.max() > 0:
        ids = [int(i) for i in np.unique(lab) if i > 0]
        return list(zip(ids, ndi.center_of_mass(np.ones(lab.shape, np.uint8), lab, ids), strict=True))
    return [(c.id, c.centroid) for c in (result.cells or [])]


def overlay_image(rgb: np.ndarray, result, captioned: bool = True) -> Image.Image:
    img = np.asarray(rgb, dtype=np.uint8).copy()
    labels = result.instances if result.instances is not None else result.mask
    if labels is not None and labels.shape == img.shape[:2]:
        width = max(1, round(min(img.shape[:2]) / 224))
        img[outline(labels, width)] = OUTLINE
    pil = Image.fromarray(img)
    if not captioned:
        return pil
    draw = ImageDraw.Draw(pil)
    face = font(max(10, min(img.shape[:2]) // 20))
    for k, (y, x) in _label_positions(result, img.shape[:2]):
        draw.text((x, y), str(k), fill=(255, 255, 0), font=face, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    return _caption(pil, caption_text(result), FLAG_COLOURS.get(result.flag, (60, 60, 60)))


def overlay_png(rgb: np.ndarray, result, *, captioned: bool = True) -> bytes:
    """The field with cell outlines (captioned: also their numbers, and a caption: label, confidence, cell count,
    flag)."""
    return _png(overlay_image(rgb, result, captioned))


def colormap(v: np.ndarray) -> np.ndarray:
    """A jet-like colour map: HxW in [0, 1] -> HxWx3 uint8 (blue low, red high)."""
    v = np.clip(v, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).astype(np.uint8)


def heatmap_png(rgb: np.ndarray, result, *, captioned: bool = True, alpha: float = 0.45) -> bytes:
    """The field blended with the heat map (class activation map) of the predicted class (the field alone when none)."""
    img = np.asarray(rgb, dtype=np.uint8)
    if result.heatmap is not None and result.heatmap.shape == img.shape[:2]:
        heat = colormap(result.heatmap).astype(np.float32)
        a = alpha * (0.3 + 0.7 * np.clip(result.heatmap, 0, 1))[..., None]
        img = (img.astype(np.float32) * (1 - a) + heat * a).astype(np.uint8)
        text = f"heat map: what drove {result.label}"
    else:
        text = "no heat map"
    return _png(_caption(Image.fromarray(img), text, (40, 40, 90)) if captioned else Image.fromarray(img))
