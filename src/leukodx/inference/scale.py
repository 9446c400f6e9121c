"""Red-cell diameter in pixels: how large the smear is magnified in an image, whatever its stain or colour, by
a radial-symmetry vote (after Loy & Zelinsky's fast radial symmetry transform; how: docs/inference.md,
"scale"), and the scale decision that brings a field's red cells to the training fields' size (`field_scale`;
its ranges and the training size are the model config's ``scale``, leukodx.models.model_config.ScaleRule).

    >>> d, conf = estimate_rbc_diameter(rgb)     # e.g. (16.2, 0.9) for a Taleqani field at 224 px
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from leukodx.errors import LeukodxError
from leukodx.models.model_config import ScaleRule

WORK_SIDE = 128  # the estimate is computed on the image resized so that its short side is at most this
MIN_RADIUS = 2.0  # px at working resolution: smaller cells cannot be told from noise
MAX_RADIUS_FRACTION = 1 / 6  # of the short side
COARSE_STEP = 1.15
FINE_STEP = 1.04
EDGE_PERCENTILE = 75.0  # the strongest quarter of the gradients vote
MAX_VOTERS = 8000
BIN_FRACTION = 0.5  # vote bins are r / 2 wide
MIN_PEAK_RATIO = 1.5  # below this, no round objects stand out: no estimate
FULL_CONFIDENCE_RATIO = 2.5  # at and above this, confidence 1


def _grey_work(rgb: np.ndarray, work_side: int) -> tuple[np.ndarray, float]:
    """The image as float grey at working resolution, and the factor from working to original pixels."""
    rgb = np.asarray(rgb)
    img = Image.fromarray(np.ascontiguousarray(rgb if rgb.ndim == 2 else rgb[..., :3]).astype(np.uint8, copy=False))
    img = img.convert("L")
    w, h = img.size
    f = 1.0
    if min(h, w) > work_side:
        f = min(h, w) / work_side
        nh, nw = max(1, round(h / f)), max(1, round(w / f))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        f = h / nh
    return np.asarray(img, dtype=np.float32), f


def _voters(grey: np.ndarray):
    """Strong-gradient pixels (a fixed, evenly spread subset) and their unit gradient directions."""
    g = ndi.uniform_filter(grey, 2)  # light smoothing against JPEG and sensor noise
    gy = ndi.sobel(g, 0)
    gx = ndi.sobel(g, 1)
    mag = np.hypot(gx, gy)
    flat = mag.ravel()
    k = int(EDGE_PERCENTILE / 100 * (flat.size - 1))
    cut = max(float(np.partition(flat, k)[k]), 4.0)  # 4 grey levels per px (Sobel units): below is noise
    idx = np.flatnonzero(flat > cut)
    if len(idx) > MAX_VOTERS:  # an evenly spaced subset: the same image always gives the same answer
        idx = idx[np.linspace(0, len(idx) - 1, MAX_VOTERS).astype(np.int64)]
    ys, xs = np.divmod(idx, grey.shape[1])
    m = flat[idx]
    return (ys.astype(np.float32), xs.astype(np.float32), (gy.ravel()[idx] / m).astype(np.float32),
            (gx.ravel()[idx] / m).astype(np.float32))


@lru_cache(maxsize=64)
def _bins(radii: bytes, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The vote-bin grids of `_concentration` for radii (float64 bytes) on an h x w image: 1 / bin size, rows
    and columns of each grid, each grid's start in one flat array, and which flat bins are a grid's border
    (read-only; the same for every field of one size)."""
    r = np.frombuffer(radii, dtype=np.float64)
    inv = (1.0 / (BIN_FRACTION * r)).astype(np.float32)[:, None]
    nh = np.ceil(h * inv[:, 0]).astype(np.int64) + 4
    nw = np.ceil(w * inv[:, 0]).astype(np.int64) + 4
    sizes = nh * nw
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    border = np.zeros(int(sizes.sum()), bool)
    for k in range(len(r)):
        blk = border[starts[k]:starts[k] + sizes[k]].reshape(nh[k], nw[k])
        blk[0], blk[-1], blk[:, 0], blk[:, -1] = True, True, True, True
    for a in (inv, nh, nw, starts, border):
        a.flags.writeable = False
    return inv, nh, nw, starts, border


def _concentration(ys, xs, dy, dx, radii: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per radius r (rows of dy, dx): how concentrated the votes are, as the sum of squared vote counts per bin
    (bins BIN_FRACTION * r wide) over the number of votes and the outline length 2 pi r; the mean of two bin
    grids offset by half a bin. All radii in one bincount; votes off the image land in a border bin that is
    not counted. (The counts are integers: squared and summed as int64 they are the float64 sums exactly.)"""
    radii = np.ascontiguousarray(radii, dtype=np.float64)
    inv, nh, nw, starts, border = _bins(radii.tobytes(), h, w)
    total = np.zeros(len(radii))
    py, px = (ys + dy) * inv, (xs + dx) * inv
    top_y = (nh - 1)[:, None].astype(np.float32)
    top_x = (nw - 1)[:, None].astype(np.float32)
    nw_i = nw[:, None].astype(np.intp)  # bin indices as intp, the type bincount counts in (no copy)
    st_i = starts[:, None].astype(np.intp)
    n_bins = len(border)
    by = np.empty(py.shape, np.float32)
    bx = np.empty(px.shape, np.float32)
    for off in (1.0, 1.5):
        np.add(py, off, out=by)
        np.maximum(by, 0, out=by)
        np.minimum(by, top_y, out=by)
        np.add(px, off, out=bx)
        np.maximum(bx, 0, out=bx)
        np.minimum(bx, top_x, out=bx)
        flat = by.astype(np.intp)
        flat *= nw_i
        flat += bx.astype(np.intp)
        flat += st_i
        m = np.bincount(flat.ravel(), minlength=n_bins)
        m[border] = 0
        m *= m
        total += np.add.reduceat(m, starts)
    return total / 2 / max(ys.shape[-1], 1) / (2 * np.pi * radii)


def _ratios(vot, radii, h: int, w: int) -> np.ndarray:
    """Vote concentration across the edges over that along them, per radius."""
    ys, xs, uy, ux = vot
    radii = np.asarray(radii, dtype=np.float64)
    if len(ys) < 20:
        return np.zeros(len(radii))
    r = radii[:, None].astype(np.float32)
    a = _concentration(ys, xs, -r * uy, -r * ux, radii, h, w)
    null = _concentration(ys, xs, -r * ux, r * uy, radii, h, w)
    return a / np.maximum(null, 1e-9)


def _coarse_radii(h: int, w: int) -> np.ndarray:
    rmax = min(h, w) * MAX_RADIUS_FRACTION
    n = int(np.floor(np.log(max(rmax, MIN_RADIUS) / MIN_RADIUS) / np.log(COARSE_STEP))) + 1
    return MIN_RADIUS * COARSE_STEP ** np.arange(max(n, 1))


def _peak(radii: np.ndarray, ratio: np.ndarray) -> tuple[float, float, int]:
    k = int(np.argmax(ratio))
    lr = np.log(radii)
    if 0 < k < len(radii) - 1:
        y0, y1, y2 = ratio[k - 1:k + 2]
        den = y0 - 2 * y1 + y2
        off = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5)) if den < 0 else 0.0
        left, right = lr[k] - lr[k - 1], lr[k + 1] - lr[k]
        return float(np.exp(lr[k] + off * (right if off > 0 else left))), float(y1), k
    return float(radii[k]), float(ratio[k]), k


def estimate_rbc_diameter(rgb: np.ndarray, work_side: int = WORK_SIDE, min_confidence: float = 0.0
                          ) -> tuple[float | None, float]:
    """(typical red-cell diameter in the image's own pixels, or None; confidence 0..1) for an HxWx3 image.
    The diameter is given from a peak ratio of MIN_PEAK_RATIO on, or from `min_confidence` where that is lower."""
    grey, f = _grey_work(rgb, work_side)
    h, w = grey.shape
    vot = _voters(grey)
    radii = _coarse_radii(h, w)
    ratio = _ratios(vot, radii, h, w)
    if len(radii) < 3 or not np.any(ratio > 0):
        return None, 0.0
    _, _, k = _peak(radii, ratio)
    # refine on a fine grid around the coarse peak
    lo, hi = radii[max(k - 1, 0)], radii[min(k + 1, len(radii) - 1)]
    n = int(np.ceil(np.log(hi / lo) / np.log(FINE_STEP))) + 1
    fine = lo * FINE_STEP ** np.arange(n)
    fine = fine[fine <= hi * 1.0001]
    ratio_f = _ratios(vot, fine, h, w)
    r_best, peak, _ = _peak(fine, ratio_f)
    peak = max(peak, float(ratio[k]))
    at_edge = k == 0 or k == len(radii) - 1
    conf = float(np.clip((peak - 1.0) / (FULL_CONFIDENCE_RATIO - 1.0), 0.0, 1.0))
    if at_edge or (peak < MIN_PEAK_RATIO and not 0 < min_confidence <= conf):
        return None, conf if not at_edge else min(conf, 0.2)
    return float(2 * r_best * f), conf


# ---------------------------------------------------------------------------------------------------------------
# the field's scale: how the analysis resamples a field so that its red cells have the training fields' size

REFERENCE_RBC_UM = 7.5  # a normal red cell's diameter in micrometres: the ruler every smear carries
MIN_SCALE_CONFIDENCE = 0.55  # below this the red-cell estimate is not trusted (the smear check's no_cells rule)
FALLBACK_SIDE = 224  # the training fields' side: a field of unknown scale is resized so its short side is this
MEASURED = "measured red cells"  # FieldScale.source; the others: "estimated from ...", GIVEN
GIVEN = "given by the lab"
UM_PER_PX_RANGE = (0.02, 5.0)  # a camera calibration outside this is a typing error, not a microscope


def check_um_per_px(value: object) -> float:
    """A lab's calibration in micrometres per image pixel (`predict --um-per-px`, the web setting), checked: a
    number within UM_PER_PX_RANGE, else a LeukodxError that says what to give."""
    try:
        um = float(str(value).strip())
    except ValueError:
        um = float("nan")
    lo, hi = UM_PER_PX_RANGE
    if not lo <= um <= hi:  # also refuses nan and inf
        raise LeukodxError(f"The scale {value!r} um per pixel is not usable: give a number between {lo:g} and "
                           f"{hi:g}.", "Use the camera's calibration in micrometres per image pixel (about 0.1 "
                           "with a 100x objective), or leave it out to estimate the scale from the image.")
    return um


CALIBRATION_DOUBT = 1.5  # a lab's scale that makes confidently measured red cells this far off 7.5 um is doubted


def calibration_doubt(um_per_px: float | None, rbc_diameter_px: float | None, confidence: float) -> str:
    """"" when the lab's scale agrees with the red cells measured in the field (confidence at least
    MIN_SCALE_CONFIDENCE) within CALIBRATION_DOUBT, or they were not measured; else a sentence that says so and
    what to do. The lab's scale is still used: it may be right where the red cells are not normal."""
    if not um_per_px or not rbc_diameter_px or confidence < MIN_SCALE_CONFIDENCE:
        return ""
    um = float(um_per_px) * float(rbc_diameter_px)
    if 1 / CALIBRATION_DOUBT <= um / REFERENCE_RBC_UM <= CALIBRATION_DOUBT:
        return ""
    return (f"At the given {um_per_px:g} um per pixel the red cells measure {um:.1f} um across, not about "
            f"{REFERENCE_RBC_UM:g}: check the camera's calibration, or leave it out to use the red cells.")


@dataclass
class FieldScale:
    """A field's red-cell size and the resampling `factor` (working px per image px; 1.0: as is) that brings
    its red cells to the training size. Not `known` (the estimate untrusted, or outside the rule's `resample`
    range): `factor` maps the short side to FALLBACK_SIDE and `reason` says why."""

    diameter_px: float | None
    confidence: float
    factor: float
    known: bool
    magnification: float | None = None
    reason: str = ""
    source: str = MEASURED  # how the red-cell size is known: MEASURED, "estimated from ..." or GIVEN

    @property
    def um_per_px(self) -> float | None:
        """Micrometres per image pixel, from red cells 7.5 um across (None when the scale is unknown)."""
        return REFERENCE_RBC_UM / self.diameter_px if self.known and self.diameter_px else None


def field_scale(diameter_px: float | None, confidence: float, shape: tuple[int, int],
                rule: ScaleRule | None = None, source: str = MEASURED) -> FieldScale:
    """The scale decision for a field of `shape` (H, W) whose red cells measure `diameter_px` (its own pixels):
    used as is within `rule.as_is` of the training magnification, resampled within `rule.resample`, else
    unknown (flagged, and analysed as if its short side were FALLBACK_SIDE). `source`: how the diameter is known;
    only a measured one must reach MIN_SCALE_CONFIDENCE."""
    rule = rule or ScaleRule()
    reference, lo_hi, as_is = rule.rbc_diameter_224, rule.resample, rule.as_is
    fallback = FALLBACK_SIDE / max(1, min(int(shape[0]), int(shape[1])))
    if diameter_px is None or (source == MEASURED and confidence < MIN_SCALE_CONFIDENCE):
        return FieldScale(diameter_px, confidence, fallback, False, None,
                          "No red cells could be measured, so the field's magnification (its scale) could not be "
                          "estimated.")
    m = float(diameter_px) / float(reference)
    if not lo_hi[0] <= m <= lo_hi[1]:
        side = "smaller" if m < 1 else "larger"
        return FieldScale(diameter_px, confidence, fallback, False, m,
                          f"The red cells are {1 / m if m < 1 else m:.1f} times {side} than in the training fields "
                          f"({diameter_px:.0f} px across instead of {reference:.0f} px), outside the "
                          f"{lo_hi[0]:g}x-{lo_hi[1]:g}x the analysis can resample.", source)
    factor = 1.0 if as_is[0] <= m <= as_is[1] else 1.0 / m
    return FieldScale(diameter_px, confidence, factor, True, m, "", source)
