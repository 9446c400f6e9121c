"""How a field of any size becomes model inputs, and how model outputs go back to the field's pixels.

A field is resized as a whole when it is square-ish (aspect ratio <= 1.25): its whole width and height map to
the model input, as the training fields were prepared. A longer field (e.g. 640 x 480 from another camera) is
**tiled** along its long side into the fewest square tiles of side = its short side that cover it (overlapping
evenly), each resized to the model input. Per-pixel outputs are stitched back at the original resolution,
averaged where tiles overlap. Resizing is PIL bilinear (antialiased when shrinking) everywhere: in `predict`,
`evaluate`, `bench` and the web app alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

SQUARE_ASPECT = 1.25
Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)


def plan_tiles(h: int, w: int) -> list[Box]:
    """Boxes that cover an h x w field: the whole field when square-ish, else square tiles of side min(h, w)
    spread evenly along the long side."""
    if max(h, w) / min(h, w) <= SQUARE_ASPECT:
        return [(0, 0, h, w)]
    side, long = min(h, w), max(h, w)
    n = math.ceil(long / side)
    starts = [round(i * (long - side) / (n - 1)) for i in range(n)]
    if w >= h:
        return [(0, s, h, s + side) for s in starts]
    return [(s, 0, s + side, w) for s in starts]


def size_note(h: int, w: int, boxes: Sequence[Box], size: Sequence[int], seg_size: Sequence[int] | None = None) -> str:
    """How a field was fed to the models, e.g. "resized from 640x480 to 128x128 (classifier), 160x160
    (segmenter); segmentation returned at 640x480"."""
    mh, mw = int(size[0]), int(size[1])
    sizes = [(mh, mw)] if seg_size is None else [(mh, mw), (int(seg_size[0]), int(seg_size[1]))]
    if all((h, w) == s for s in sizes):
        return f"used as is ({w}x{h})"
    to = f"{mw}x{mh}" if len(sizes) == 1 or sizes[0] == sizes[1] else \
        f"{mw}x{mh} (classifier), {sizes[1][1]}x{sizes[1][0]} (segmenter)"
    if len(boxes) == 1:
        return f"resized from {w}x{h} to {to}; segmentation returned at {w}x{h}"
    side = min(h, w)
    return (f"tiled {w}x{h} into {len(boxes)} overlapping {side}x{side} tiles along the long side, "
            f"each resized to {to}; segmentation stitched at {w}x{h}")


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


def cut_tiles(rgbs: Sequence[np.ndarray], size: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray,
                                                                       list[list[Box]]]:
    """Every field's tiles resized to the model input: (tiles, owner field of each tile, boxes per field)."""
    mh, mw = int(size[0]), int(size[1])
    tiles: list[np.ndarray] = []
    owner: list[int] = []
    boxes_per_field: list[list[Box]] = []
    for fi, rgb in enumerate(rgbs):
        boxes = plan_tiles(*rgb.shape[:2])
        boxes_per_field.append(boxes)
        for (y0, x0, y1, x1) in boxes:
            tiles.append(resize_rgb(rgb[y0:y1, x0:x1], mh, mw))
            owner.append(fi)
    return tiles, np.asarray(owner, dtype=np.int64), boxes_per_field


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
