"""The cell gallery's crops: every leukocyte centred on its whole-cell box, at ONE micrometre scale for
all cells of all fields, with a scale bar (docs/review.md, "The cell gallery"). When a field's scale is
unknown the crop is one image pixel per crop pixel, without a scale bar.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

CROP_UM = 24.0  # every crop shows 24 um x 24 um of the smear (a large blast is about 20 um across)
CROP_PX = 120  # drawn at 120 x 120 pixels: 5 pixels per um
BAR_UM = 5.0  # the scale bar drawn in every crop of known scale
BACKGROUND = (200, 200, 200)  # outside the field's edge


def um_per_px(cells: Iterable[dict] | None, result: dict | None = None) -> float | None:
    """The field's micrometres per pixel: from its cells' areas (area_um2 / area_px), else the stored result's
    `um_per_px`; None when unknown."""
    ratios = sorted(
        math.sqrt(float(c["area_um2"]) / float(c["area_px"])) for c in (cells or [])
        if c.get("area_um2") and c.get("area_px") and float(c["area_um2"]) > 0 and float(c["area_px"]) > 0
    )
    if ratios:
        return ratios[len(ratios) // 2]
    v = (result or {}).get("um_per_px")
    try:
        v = float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
    return v if v and v > 0 and math.isfinite(v) else None


def crop_box(bbox: list[int] | tuple[int, ...], scale_um_per_px: float | None,
             side: int = CROP_PX) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the field's pixels of a cell's crop: a square centred on its whole-cell box
    (row0, col0, row1, col1), CROP_UM wide at the field's scale, or `side` image pixels when the scale is
    unknown. It may reach past the image's edge (that part is drawn grey)."""
    r0, c0, r1, c1 = (float(v) for v in bbox)
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    half = (CROP_UM / scale_um_per_px if scale_um_per_px else float(side)) / 2
    return cx - half, cy - half, cx + half, cy + half


@lru_cache(maxsize=6)
def _field_image(path: str, mtime_ns: int):
    """The decoded field (a gallery asks for all of a field's cells at once: decode it once)."""
    from PIL import Image

    with Image.open(path) as opened:
        return opened.convert("RGB")


@lru_cache(maxsize=4096)
def _crop(path: str, mtime_ns: int, bbox: tuple[int, int, int, int], scale: float | None, side: int) -> bytes:
    from PIL import Image, ImageDraw

    im = _field_image(path, mtime_ns)
    left, top, right, bottom = (round(v) for v in crop_box(bbox, scale, side))
    canvas = Image.new("RGB", (max(1, right - left), max(1, bottom - top)), BACKGROUND)  # grey past the edges
    box = (max(0, left), max(0, top), min(im.width, right), min(im.height, bottom))
    if box[2] > box[0] and box[3] > box[1]:
        canvas.paste(im.crop(box), (box[0] - left, box[1] - top))
    out = canvas if canvas.size == (side, side) else canvas.resize((side, side), Image.Resampling.LANCZOS)
    if scale:
        draw = ImageDraw.Draw(out)
        bar = round(BAR_UM * side / CROP_UM)
        x0, y0 = 6, side - 10
        draw.rectangle((x0 - 1, y0 - 1, x0 + bar + 1, y0 + 4), fill=(0, 0, 0))
        draw.rectangle((x0, y0, x0 + bar, y0 + 3), fill=(255, 255, 255))
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def crop_png(path: Path, bbox: list[int], scale_um_per_px: float | None, side: int = CROP_PX) -> bytes:
    """A PNG of one cell cut from the stored field image at the gallery's one scale (cached in memory)."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    scale = round(float(scale_um_per_px), 6) if scale_um_per_px else None
    return _crop(str(path), path.stat().st_mtime_ns, (r0, c0, r1, c1), scale, side)
