"""Pictures for the pages, drawn by leukodx.inference.render at most `max_side` pixels on the longer side, so
that a huge microscope photo does not make a huge page (PNG bytes)."""

from __future__ import annotations

import numpy as np

from leukodx.inference import render


def overlay_png(rgb: np.ndarray, result, max_side: int = 1024) -> bytes:
    return render.overlay_png(*render.shrink(rgb, result, max_side))


def heatmap_png(rgb: np.ndarray, result, max_side: int = 1024) -> bytes | None:
    """None when the analysis has no heat map."""
    return None if result.heatmap is None else render.heatmap_png(*render.shrink(rgb, result, max_side))
