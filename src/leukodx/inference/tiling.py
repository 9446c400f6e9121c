"""How a field of any size and magnification becomes model inputs, and how model outputs go back to its pixels.

`prepare` resamples the field by its scale factor (leukodx.inference.scale.field_scale) into the *working
image*, mirror-pads it to the window (config `scale.window`) and plans its windows (`plan_tiles`); each window
is resized to the model input, as the training fields were. `stitch` and `to_original` bring per-pixel outputs
back: averaged where windows overlap, the padding cut off, resized to the field's own pixels. Resizing is PIL
bilinear (antialiased when shrinking) everywhere: in `predict`, `evaluate`, `bench` and the web app alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from leukodx.models.model_config import ScaleRule

SQUARE_ASPECT = 1.25
Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)


def _spans(length: int, window: int) -> list[tuple[int, int]]:
    if length <= window * SQUARE_ASPECT:
        return [(0, length)]
    n = math.ceil(length / window)
    return [(round(i * (length - window) / (n - 1)), round(i * (length - window) / (n - 1)) + window) for i in range(n)]


def plan_tiles(h: int, w: int, window: int) -> list[Box]:
    """Windows that cover an h x w working image (row-major): one span per axis up to window x SQUARE_ASPECT,
    else `window`-px spans spread evenly."""
    return [(y0, x0, y1, x1) for y0, y1 in _spans(h, window) for x0, x1 in _spans(w, window)]


@dataclass
class Prepared:
    """A field as the models see it: resampled by `factor` (working px per image px), then padded."""

    work: np.ndarray  # the working image, H' x W' x 3 uint8, padded to at least the window per side
    factor: float
    shape: tuple[int, int]  # the field's own (H, W)
    valid: tuple[int, int]  # the working image's (H, W) before padding
    boxes: list[Box]
    known: bool = True  # False: the scale is unknown and the field is used at its own pixels


def prepare(rgb: np.ndarray, factor: float | None = 1.0, window: int = ScaleRule().window) -> Prepared:
    """Resample `rgb` by `factor` (1.0: as is), mirror-pad it to at least `window` per side, plan its windows.

    factor None (the field's scale is unknown): the field is used at its own pixels, in windows of its short side
    (a square-ish field is one window; the rule before red-cell scale)."""
    h, w = rgb.shape[:2]
    if factor is None:
        return Prepared(rgb, 1.0, (h, w), (h, w), plan_tiles(h, w, min(h, w)), known=False)
    vh, vw = (h, w) if factor == 1.0 else (max(1, round(h * factor)), max(1, round(w * factor)))
    work = resize_rgb(rgb, vh, vw)
    ph, pw = max(0, window - vh), max(0, window - vw)
    if ph or pw:
        work = np.pad(work, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    return Prepared(work, float(factor), (h, w), (vh, vw), plan_tiles(work.shape[0], work.shape[1], window))


def to_original(a: np.ndarray, prep: Prepared) -> np.ndarray:
    """A float map over the working image back onto the field's own pixels (padding cut off, resized)."""
    vh, vw = prep.valid
    return resize_float(np.ascontiguousarray(a[:vh, :vw]), *prep.shape)


def labels_to_original(lab: np.ndarray, prep: Prepared) -> np.ndarray:
    """An instance image over the working image back onto the field's own pixels (nearest neighbour)."""
    vh, vw = prep.valid
    return resize_labels(np.ascontiguousarray(lab[:vh, :vw]), *prep.shape)


def size_note(prep: Prepared, size: Sequence[int], seg_size: Sequence[int] | None = None) -> str:
    """How a field was fed to the models, e.g. "resampled x0.22 from 640x480 to 142x107 (red cells to the
    training size), mirror-padded to 224x224; 1 window resized to 160x160; results returned at 640x480"."""
    h, w = prep.shape
    mh, mw = int(size[0]), int(size[1])
    sizes = [(mh, mw)] if seg_size is None else [(mh, mw), (int(seg_size[0]), int(seg_size[1]))]
    to = f"{mw}x{mh}" if len(sizes) == 1 or sizes[0] == sizes[1] else \
        f"{mw}x{mh} (classifier), {sizes[1][1]}x{sizes[1][0]} (segmenter)"
    ph, pw = prep.work.shape[:2]
    if prep.factor == 1.0 and (ph, pw) == (h, w) and (len(prep.boxes) == 1 or not prep.known):
        if all((h, w) == s for s in sizes):
            return f"used as is ({w}x{h})"
        return f"resized from {w}x{h} to {to}; segmentation returned at {w}x{h}"
    vh, vw = prep.valid
    parts = [] if prep.factor == 1.0 else [f"resampled x{prep.factor:.3g} from {w}x{h} to {vw}x{vh}"]
    if (ph, pw) != (vh, vw):
        parts.append(f"mirror-padded to {pw}x{ph}")
    n = len(prep.boxes)
    if prep.known:
        parts.append(f"{n} window{'s' if n > 1 else ''} resized to {to}")
    else:
        side = min(h, w)
        parts.append(f"tiled {w}x{h} into {n} overlapping {side}x{side} tiles, each resized to {to}")
    return "; ".join(parts) + f"; results returned at {w}x{h}"


def resize_rgb(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BILINEAR))


def resize_float(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape == (h, w):
        return a.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))


def resize_labels(lab: np.ndarray, h: int, w: int) -> np.ndarray:
    if lab.shape == (h, w):
        return lab.astype(np.int32, copy=False)
    return np.asarray(Image.fromarray(lab.astype(np.int32), mode="I").resize((w, h), Image.Resampling.NEAREST)).astype(np.int32)


def to_batch(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 tiles -> float32 N x 3 x H x W in 0..255 (the models' input)."""
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32)


def cut_tiles(rgbs: Sequence[np.ndarray], size: Sequence[int], boxes: Sequence[list[Box]] | None = None
              ) -> tuple[list[np.ndarray], np.ndarray, list[list[Box]]]:
    """Every field's tiles resized to the model input: (tiles, owner field of each tile, boxes per field).
    `boxes`: the windows per field (a `Prepared`'s); by default tiles of each image's short side."""
    mh, mw = int(size[0]), int(size[1])
    if boxes is None:
        boxes = [plan_tiles(rgb.shape[0], rgb.shape[1], min(rgb.shape[:2])) for rgb in rgbs]
    tiles = [resize_rgb(rgb[y0:y1, x0:x1], mh, mw) for rgb, field_boxes in zip(rgbs, boxes, strict=True)
             for y0, x0, y1, x1 in field_boxes]
    return tiles, np.repeat(np.arange(len(boxes), dtype=np.int64), [len(b) for b in boxes]), list(boxes)


def stitch(maps: Sequence[np.ndarray], boxes: Sequence[Box], h: int, w: int) -> np.ndarray:
    """Per-tile 2-D maps (any resolution) back onto an h x w field, averaged where tiles overlap."""
    if len(boxes) == 1:
        return resize_float(maps[0], h, w)
    acc = np.zeros((h, w), np.float32)
    cnt = np.zeros((h, w), np.float32)
    for m, (y0, x0, y1, x1) in zip(maps, boxes, strict=True):
        acc[y0:y1, x0:x1] += resize_float(m, y1 - y0, x1 - x0)
        cnt[y0:y1, x0:x1] += 1
    return acc / np.maximum(cnt, 1)
