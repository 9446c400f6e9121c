"""Whole-leukocyte and nucleus references for the two-channel segmenter, one rule per source.

Channel 0 (``cell``) is the whole leukocyte (nucleus + cytoplasm; it defines instances), channel 1
(``nucleus``) its nucleus. Each source supervises what it can; ``cell_known`` / ``nucleus_known`` are the loss
masks (1 = supervised, 0 = unknown). Pure numpy / scipy / scikit-image; every size is a multiple of the
image's red-cell diameter ``d`` (its own pixels), so the rules hold at any magnification. The rules in full
(colour measures, the watershed, `raabin_reference`, `pbc_reference`, `taleqani_reference`) and how their
constants were measured: docs/results/cell-references/README.md, "data/cell_references.py: the rules in full".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BACKGROUND_PERCENTILE = 97.0
MIN_FOREGROUND_OD = 0.12
HOLE_AREA_D2 = 0.35  # holes under this many red-cell areas are filled
NUCLEUS_MARGIN = 0.15  # over the red cells' 90th percentile of s
NUCLEUS_FLOOR = 0.35  # the nucleus threshold's lowest value (OD units)
BAND_D = 0.05  # unknown band on each side of a rule-made outline
OPEN_D = 0.06
RBC_CORE_D = 0.22
NEAR_NUCLEUS_RBC_D = 0.6
RAABIN_ELLIPSE_GROW = 1.08
RAABIN_BOX_MARGIN = 0.15
PBC_RADIUS_D = 1.3
PBC_LOBE_D = 0.6
PBC_OTHER_NUCLEUS_AREA = 0.2  # red-cell areas: smaller stained blobs are platelets
PBC_OTHER_RING_D = 0.8
NEAR_NUCLEUS_D = 1.5  # Taleqani: cell unknown within this many red-cell diameters of a nucleus
TALEQANI_MIN_NUCLEUS_PX = 40  # at 17-px red cells (reference_masks.MIN_OBJECT_PX)
NOT_LEUKOCYTE_CLASSES = ("platelet", "erythroblast")
WORK_D = 40.0  # the rules run with red cells at most this many px across (the image is downsampled first)


@dataclass
class CellReference:
    """One image's references: uint8 HxW 0/1 arrays; ``rbc_diameter_px`` in the image's own pixels."""

    image: np.ndarray
    cell: np.ndarray
    nucleus: np.ndarray
    cell_known: np.ndarray
    nucleus_known: np.ndarray
    rbc_diameter_px: float

    def arrays(self) -> dict[str, np.ndarray]:
        return {"cell": self.cell, "nucleus": self.nucleus, "cell_known": self.cell_known,
                "nucleus_known": self.nucleus_known}


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD per channel (float32 HxWx3), ``-log((I + 1) / (bg + 1))`` with the background ``bg`` the 97th
    percentile per channel of a 3 x 3 mean (white balance and lamp brightness cancel)."""
    x = ndi.uniform_filter(np.asarray(rgb)[..., :3].astype(np.float32), (3, 3, 1))
    bg = np.percentile(x.reshape(-1, 3), BACKGROUND_PERCENTILE, axis=0)
    return (-np.log(np.clip((x + 1.0) / (bg + 1.0), 1e-3, 1.0))).astype(np.float32)


def _disk(r: float) -> np.ndarray:
    k = max(0, int(round(r)))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    return (yy**2 + xx**2) <= max(r, 0.5) ** 2


def _fill_small_holes(m: np.ndarray, max_area: float) -> np.ndarray:
    holes = ndi.binary_fill_holes(m) & ~m
    lab, n = ndi.label(holes)
    if n == 0:
        return m
    small = np.bincount(lab.ravel()) <= max_area
    small[0] = False
    return m | small[lab]


def foreground(od: np.ndarray, d: float) -> np.ndarray:
    """Stained matter (red cells, leukocytes incl. pale cytoplasm, platelets), small holes filled (bool HxW):
    ``tot`` above the background mode (median of ``tot`` under the lower multi-Otsu threshold) plus
    max(MIN_FOREGROUND_OD, 3 robust standard deviations of that mode), capped at the lower multi-Otsu threshold."""
    from skimage.filters import threshold_multiotsu

    tot = od.sum(-1)
    try:
        t0 = float(threshold_multiotsu(tot, 3)[0])
    except ValueError:  # a flat image
        t0 = MIN_FOREGROUND_OD
    t, low = t0, tot[tot < t0]
    if low.size > 100:
        mode = float(np.median(low))
        spread = 1.4826 * float(np.median(np.abs(low - mode)))
        t = min(t0, mode + max(MIN_FOREGROUND_OD, 3 * spread))
    fg = tot > max(t, MIN_FOREGROUND_OD)
    fg = ndi.binary_opening(fg, _disk(1.0))
    return _fill_small_holes(fg, HOLE_AREA_D2 * np.pi * (d / 2) ** 2)


def _remove_small(m: np.ndarray, min_px: float) -> np.ndarray:
    lab, n = ndi.label(m)
    if n == 0:
        return m
    keep = np.bincount(lab.ravel()) >= min_px
    keep[0] = False
    return keep[lab]


def _band(m: np.ndarray, d: float) -> np.ndarray:
    k = _disk(max(0.75, BAND_D * d))
    return ndi.binary_dilation(m, k) & ~ndi.binary_erosion(m, k, border_value=1)


def _clean_nucleus(m: np.ndarray, d: float) -> np.ndarray:
    """Chromatin texture closed (disc 0.04 d) and holes filled: the nucleus, not its dark clumps."""
    return ndi.binary_fill_holes(ndi.binary_closing(m, _disk(max(1.0, 0.04 * d))))


def _nucleus_threshold(s: np.ndarray, window_fg: np.ndarray, rbc_px: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    rbc_hi = float(np.percentile(s[rbc_px], 90)) if rbc_px.sum() >= 20 else 0.3
    t = max(rbc_hi + NUCLEUS_MARGIN, NUCLEUS_FLOOR)
    v = s[window_fg]
    if v.size < 10 or float(v.max() - v.min()) < 1e-6:  # no split to find
        return t
    return max(float(threshold_otsu(v)), t)


def _grow_cell(fg: np.ndarray, seed: np.ndarray, others: np.ndarray, allowed: np.ndarray, d: float) -> np.ndarray:
    """The seed's whole cell: marker-controlled watershed of the stained matter near the allowed region (rule:
    docs/results/cell-references)."""
    from skimage.segmentation import watershed

    # flood a wider region than the allowed one, so that red cells crossing its edge compete with their markers
    region = (fg & _near(allowed, d)) | seed
    # flood by shape, not by colour edges: the strong nucleus/cytoplasm edge would let touching red cells win
    # the cytoplasm; on the distance to unstained background, touching discs part at their neck
    relief = -ndi.gaussian_filter(ndi.distance_transform_edt(fg | seed), max(0.5, 0.03 * d))
    markers = np.zeros(fg.shape, np.int32)
    markers[others & region & ~seed] = 2
    markers[seed] = 1
    lab = watershed(relief, markers, mask=region)
    cell = ndi.binary_fill_holes((lab == 1) & allowed)
    opened = ndi.binary_opening(cell, _disk(OPEN_D * d))
    comp, n = ndi.label(opened)
    if n:
        keep = np.unique(comp[seed & (comp > 0)])
        cell = np.isin(comp, keep[keep > 0])
    else:
        cell = np.zeros_like(cell)
    return ndi.binary_fill_holes(cell | seed)


def _near(m: np.ndarray, r: float) -> np.ndarray:
    """Pixels within r of m (a dilation by a disc, via the distance transform)."""
    if not m.any():
        return np.zeros(m.shape, bool)
    return ndi.distance_transform_edt(~m) <= r


def _rbc_colour_core(od: np.ndarray, fg: np.ndarray, rbc_px: np.ndarray, nucleus_any: np.ndarray,
                     d: float) -> np.ndarray:
    """Stained pixels coloured like the image's red cells and well inside stained matter (cores)."""
    chrom = od / np.maximum(od.sum(-1, keepdims=True), 1e-3)
    if rbc_px.sum() < 20:
        return np.zeros(fg.shape, bool)
    ref = np.median(chrom[rbc_px], axis=0)
    dist = np.linalg.norm(chrom - ref, axis=-1)
    tau = float(np.percentile(dist[rbc_px], 75))
    deep = ndi.distance_transform_edt(fg) > RBC_CORE_D * d
    core = ndi.binary_opening(deep & (dist <= tau) & ~nucleus_any, _disk(max(1.0, 0.04 * d)))
    return _remove_small(core, 0.04 * np.pi * (d / 2) ** 2)  # specks in a granular cytoplasm are no red cell


def to_work_scale(rgb: np.ndarray, d: float) -> tuple[np.ndarray, float]:
    """(image downsampled so red cells are at most WORK_D px across, factor): the references are made and
    returned at that scale (the training data resamples to 17 px anyway; the rules are 10x faster there)."""
    from PIL import Image

    f = min(1.0, WORK_D / float(d))
    if f >= 0.999:
        return np.asarray(rgb)[..., :3], 1.0
    h, w = rgb.shape[:2]
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = Image.fromarray(np.ascontiguousarray(np.asarray(rgb)[..., :3])).resize((nw, nh), Image.Resampling.BOX)
    return np.asarray(small), nw / w


def _ellipse(shape: tuple[int, int], box: tuple[float, float, float, float], grow: float = 1.0) -> np.ndarray:
    x0, y0, x1, y1 = box
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ry, rx = max(1.0, (y1 - y0) / 2 * grow), max(1.0, (x1 - x0) / 2 * grow)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0


def _rect(shape: tuple[int, int], box: tuple[float, float, float, float], grow: float = 1.0) -> np.ndarray:
    x0, y0, x1, y1 = box
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    hy, hx = (y1 - y0) / 2 * grow, (x1 - x0) / 2 * grow
    m = np.zeros(shape, bool)
    m[max(0, int(np.floor(cy - hy))):max(0, int(np.ceil(cy + hy))),
      max(0, int(np.floor(cx - hx))):max(0, int(np.ceil(cx + hx)))] = True
    return m


def raabin_reference(rgb: np.ndarray, boxes: np.ndarray, rbc_diameter: float) -> CellReference:
    """References of a Raabin field. ``boxes``: N x 5 float (class, x0, y0, x1, y1) in pixels; class 0 =
    leukocyte, 1 = red cell, 2 = platelet. ``rbc_diameter`` in the field's pixels (`sources.raabin_rbc_diameter`).
    Made and returned at the working scale (`to_work_scale`); ``rbc_diameter_px`` is the diameter there."""
    rgb, f = to_work_scale(np.asarray(rgb), rbc_diameter)
    h, w = rgb.shape[:2]
    d = float(rbc_diameter) * f
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5).copy()
    boxes[:, 1:] *= f
    od = optical_density(rgb)
    s = od[..., 1] - od[..., 2]
    fg = foreground(od, d)
    wbc = [tuple(b[1:]) for b in boxes if int(b[0]) == 0]
    rbc = [tuple(b[1:]) for b in boxes if int(b[0]) == 1]
    wbc_area = np.zeros((h, w), bool)
    for b in wbc:
        wbc_area |= _rect((h, w), b, 1.0 + RAABIN_BOX_MARGIN)
    # red-cell pixels (the colour reference) and red-cell cores (watershed markers) from the red-cell boxes
    rbc_px = np.zeros((h, w), bool)
    rbc_core = np.zeros((h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for x0, y0, x1, y1 in rbc:
        rbc_px |= _ellipse((h, w), (x0, y0, x1, y1), 0.8)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        rbc_core |= (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= (RBC_CORE_D * d) ** 2
    rbc_px &= fg & ~wbc_area
    if rbc_px.sum() < 20:
        rbc_px = fg & ~wbc_area
    cell = np.zeros((h, w), bool)
    nucleus = np.zeros((h, w), bool)
    unknown = np.zeros((h, w), bool)
    min_nuc = 0.03 * np.pi * (d / 2) ** 2
    for b in wbc:
        allowed = _ellipse((h, w), b, RAABIN_ELLIPSE_GROW)
        t = _nucleus_threshold(s, fg & allowed, rbc_px)
        nuc = nuc_seed = _clean_nucleus(_remove_small((s > t) & allowed & fg, min_nuc), d)
        if not nuc.any():  # no nucleus found: seed at the box centre
            x0, y0, x1, y1 = b
            r = 0.15 * min(x1 - x0, y1 - y0)
            nuc_seed = (yy + 0.5 - (y0 + y1) / 2) ** 2 + (xx + 0.5 - (x0 + x1) / 2) ** 2 <= r**2
        # red cells whose centre lies well inside the box are overlapped by the cell: no marker there
        others = rbc_core & ~_near(nuc_seed, NEAR_NUCLEUS_RBC_D * d) & ~_ellipse((h, w), b, 0.8)
        c = _grow_cell(fg, nuc_seed, others, allowed, d)
        cell |= c
        nucleus |= nuc & c
        unknown |= _rect((h, w), b, 1.0 + RAABIN_BOX_MARGIN) & ~_rect((h, w), b) & ~c
    band = _band(cell, d) | _band(nucleus, d)
    cell_known = ~(unknown | band)
    return CellReference(rgb, cell.astype(np.uint8), nucleus.astype(np.uint8), cell_known.astype(np.uint8),
                         cell_known.astype(np.uint8), d)


def pbc_reference(rgb: np.ndarray, label: str, rbc_diameter: float) -> CellReference:
    """References of a PBC crop of class ``label``: its centred cell (rule: docs/results/cell-references)."""
    rgb, f = to_work_scale(np.asarray(rgb), rbc_diameter)
    h, w = rgb.shape[:2]
    d = float(rbc_diameter) * f
    od = optical_density(rgb)
    s = od[..., 1] - od[..., 2]
    fg = foreground(od, d)
    yy, xx = np.ogrid[:h, :w]
    r_centre = np.sqrt((yy + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2)
    far = r_centre > 1.4 * d
    # red-cell colour reference: stained pixels far from the centre with a low nuclear score
    s_far = s[fg & far]
    rbc_px = fg & far & (s < (float(np.percentile(s_far, 60)) if s_far.size else 0.3))
    t = _nucleus_threshold(s, fg & (r_centre < 1.2 * d), rbc_px)
    rbc_area = np.pi * (d / 2) ** 2
    nuc_all = _remove_small(_clean_nucleus((s > t) & fg, d), 0.01 * rbc_area)
    lab, n = ndi.label(nuc_all)
    seed = np.zeros((h, w), bool)
    if n:
        # the component nearest the centre (within 0.7 d), plus lobes within PBC_LOBE_D of it
        dist_c = ndi.distance_transform_edt(~(r_centre < 2))
        near = ndi.minimum(dist_c, lab, index=np.arange(1, n + 1))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        ok = (np.asarray(near) < 0.7 * d) & (sizes >= 0.03 * rbc_area)
        if ok.any():
            k = int(np.argmin(np.where(ok, near, np.inf))) + 1
            ids = np.unique(lab[_near(lab == k, PBC_LOBE_D * d) & nuc_all])
            seed = np.isin(lab, ids[ids > 0])
    if not seed.any():
        seed = r_centre <= 0.12 * d
    other_big = _remove_small(nuc_all & ~seed, PBC_OTHER_NUCLEUS_AREA * rbc_area)
    rbc_core = _rbc_colour_core(od, fg, rbc_px, nuc_all, d) & ~_near(seed, NEAR_NUCLEUS_RBC_D * d)
    allowed = ndi.distance_transform_edt(~seed) <= PBC_RADIUS_D * d
    cell = _grow_cell(fg, seed, rbc_core | other_big, allowed, d)
    nucleus = seed & cell
    unknown_both = _near(other_big, PBC_OTHER_RING_D * d) & ~cell
    if label in NOT_LEUKOCYTE_CLASSES:  # the centred object is negative, its outline unknown
        cell_known = ~unknown_both & ~_band(cell, d)
        nucleus_known = ~unknown_both
        if label == "erythroblast":
            nucleus_known &= ~_near(seed, BAND_D * d + 1)
        cell = nucleus = np.zeros((h, w), bool)
    else:
        cell_known = nucleus_known = ~(unknown_both | _band(cell, d) | _band(nucleus, d))
    return CellReference(rgb, cell.astype(np.uint8), nucleus.astype(np.uint8), cell_known.astype(np.uint8),
                         nucleus_known.astype(np.uint8), d)


def taleqani_reference(rgb: np.ndarray, nucleus_mask: np.ndarray, rbc_diameter: float = 17.0) -> CellReference:
    """References of a Taleqani field from its (repaired) nucleus reference mask (rule:
    docs/results/cell-references)."""
    rgb = np.asarray(rgb)[..., :3]
    nuc = np.asarray(nucleus_mask, bool)
    d = float(rbc_diameter)
    # specks of the HSV references (under TALEQANI_MIN_NUCLEUS_PX at 17-px red cells) are no nucleus we trust:
    # unknown in both channels, and they do not widen the unknown ring
    min_px = TALEQANI_MIN_NUCLEUS_PX * (d / 17.0) ** 2
    big = _remove_small(nuc, min_px)
    speck = nuc & ~big
    nucleus_known = ~_near(speck, 1.5)
    cell_known = (big | ~_near(big, NEAR_NUCLEUS_D * d)) & nucleus_known
    return CellReference(rgb, big.astype(np.uint8), nuc.astype(np.uint8), cell_known.astype(np.uint8),
                         nucleus_known.astype(np.uint8), d)


CELL_COLOUR = (0, 220, 0)  # whole-cell outline: green
NUCLEUS_COLOUR = (255, 40, 200)  # nucleus outline: magenta


def overlay(ref: CellReference, side: int = 224) -> np.ndarray:
    """One contact-sheet tile (side x side x 3 uint8): the image; pixels unknown in the cell channel dimmed and
    hatched (diagonal dark lines); the whole-cell outline green, the nucleus outline magenta."""
    from PIL import Image

    h, w = ref.image.shape[:2]
    f = side / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))

    def rs(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.NEAREST)) > 0

    im = np.asarray(Image.fromarray(ref.image).resize((nw, nh), Image.Resampling.BILINEAR)).astype(np.float32)
    unk = ~rs(ref.cell_known)
    yy, xx = np.mgrid[:nh, :nw]
    hatch = ((yy + xx) % 8) < 2
    im[unk] *= 0.55
    im[unk & hatch] = 40
    for m, col in ((rs(ref.cell), CELL_COLOUR), (rs(ref.nucleus), NUCLEUS_COLOUR)):
        edge = m & ~ndi.binary_erosion(m, border_value=0)
        edge = ndi.binary_dilation(edge) if side >= 200 else edge
        im[edge] = col
    out = np.full((side, side, 3), 255, np.uint8)
    out[:nh, :nw] = np.clip(im, 0, 255).astype(np.uint8)
    return out


def contact_sheet(tiles: list[np.ndarray], columns: int = 6, gap: int = 4) -> np.ndarray:
    """Tiles (equal size) in a grid with white gaps."""
    if not tiles:
        return np.full((8, 8, 3), 255, np.uint8)
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    out = np.full((rows * (th + gap) - gap, columns * (tw + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = t
    return out
