"""Single cells from a leukocyte mask: touching and overlapping cells split, specks removed, cells counted.

The mask is cleaned (holes up to `max_hole` px filled: the reference masks' stain thresholding leaves them in
nuclei; objects under `min_area` px removed), then split by a marker watershed on the lightly smoothed
distance transform: a marker is an h-maximum (a peak at least `h` px above the saddle to any higher one),
markers closer than `min_distance` px merge, and pieces under `min_area` px join the neighbour they share most
border with. Defaults: pixels of a 224 x 224 Taleqani field (100x objective, leukocytes 150-1,500 px)::

    labels, cells = split_instances(mask)          # labels: int32 HxW, 0 = background
    print(len(cells), cells[0].area_px, cells[0].centroid)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from leukodx.inference.tiling import resize_float, resize_labels
from leukodx.inference.types import CellInstance

MIN_AREA = 40  # px: specks below this are not cells (a leukocyte at 224 px is >= ~150 px)
MIN_DISTANCE = 7  # px: two cell centres are at least this far apart
H = 2.0  # px: how far a distance-transform peak must rise above its saddle to mark a cell of its own
MAX_HOLE = 150  # px: holes up to this size inside an object are filled (thresholding gaps in a nucleus)
CLOSE_RADIUS = 0.0  # px: a binary closing with a disc of this radius first joins pieces of one cell
REFERENCE_SIDE = 224  # the field side the defaults are tuned for
DEFAULT_PARAMS = {"min_area": MIN_AREA, "min_distance": MIN_DISTANCE, "h": H, "max_hole": MAX_HOLE,
                  "reference_side": REFERENCE_SIDE, "close_radius": CLOSE_RADIUS}
MAX_INSTANCE_SIDE = 1024  # px: larger fields are counted on a downscaled mask, labels mapped back
_EIGHT = np.ones((3, 3), bool)


def scaled_params(shape: tuple[int, int], base: dict | None = None) -> dict:
    """The instance parameters (`base`, default the module's, in pixels of a `reference_side` field) rescaled
    to a field of `shape` (H, W)."""
    b = {**DEFAULT_PARAMS, **(base or {})}
    s = min(shape[:2]) / float(b["reference_side"])
    return {"min_area": max(1, round(b["min_area"] * s * s)), "min_distance": max(1, round(b["min_distance"] * s)),
            "h": b["h"] * s, "max_hole": round(b["max_hole"] * s * s), "close_radius": b["close_radius"] * s}


def _as_mask(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {m.shape}")
    return m.astype(bool, copy=False)


def clean_mask(mask, min_area: int = MIN_AREA, max_hole: int = MAX_HOLE) -> np.ndarray:
    """Fill holes up to `max_hole` px and remove objects under `min_area` px (8-connected)."""
    m = _as_mask(mask)
    if not m.any():
        return m.copy()
    if max_hole > 0:
        holes, n = ndi.label(~m)  # 4-connected background pieces
        if n:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = sizes <= max_hole
            fill[0] = False
            fill[border] = False
            m = m | fill[holes]
    if min_area > 1:
        lab, n = ndi.label(m, structure=_EIGHT)
        if n:
            keep = np.bincount(lab.ravel()) >= min_area
            keep[0] = False
            m = keep[lab]
    return m


def _merge_close_markers(markers: np.ndarray, n: int, dist: np.ndarray, min_distance: float) -> np.ndarray:
    """Markers whose peaks lie closer than `min_distance` become one marker (the higher peak's label)."""
    if n < 2:
        return markers
    flat = markers.ravel()
    on = flat > 0
    lab = flat[on]
    heights = np.zeros(n + 1)
    np.maximum.at(heights, lab, dist.ravel()[on])
    heights = heights[1:]
    rr, cc = np.divmod(np.flatnonzero(on), markers.shape[1])
    size = np.bincount(lab, minlength=n + 1)[1:].astype(float)
    # a marker is a plateau of the smoothed distance map: its centroid is its peak
    peaks = np.stack([np.bincount(lab, rr, n + 1)[1:] / size, np.bincount(lab, cc, n + 1)[1:] / size], axis=1)
    parent = np.arange(n + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = np.argsort(-heights)
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1:]:
            if np.hypot(*(peaks[a] - peaks[b])) < min_distance:
                ra, rb = find(a + 1), find(b + 1)
                if ra != rb:
                    hi, lo = (ra, rb) if heights[ra - 1] >= heights[rb - 1] else (rb, ra)
                    parent[lo] = hi
    roots = np.array([find(i) for i in range(n + 1)])
    return roots[markers]


def _merge_small_pieces(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Watershed pieces under `min_area` px join the neighbour they share most border with."""
    while True:
        sizes = np.bincount(labels.ravel())
        small = [k for k in np.nonzero((sizes > 0) & (sizes < min_area))[0] if k != 0]
        if not small:
            return labels
        changed = False
        for k in small:
            piece = labels == k
            ring = ndi.binary_dilation(piece, _EIGHT) & ~piece
            neighbours = labels[ring]
            neighbours = neighbours[neighbours > 0]
            if neighbours.size:
                labels[piece] = np.bincount(neighbours).argmax()
                changed = True
        if not changed:  # isolated small pieces (cannot happen after clean_mask): leave them
            return labels


def close_gaps(mask, radius: float) -> np.ndarray:
    """A binary closing with a disc of `radius` px (nothing below 0.5 px): gaps up to ~2 x radius joined."""
    mask = _as_mask(mask)
    if radius < 0.5 or not mask.any():
        return mask
    k = int(np.ceil(radius)) + 1
    return ndi.binary_closing(np.pad(mask, k), structure=_disc(radius))[k:-k, k:-k]


def _disc(r: float) -> np.ndarray:
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    return yy * yy + xx * xx <= r * r + 1e-6


def split_instances(mask, min_area: int = MIN_AREA, min_distance: float = MIN_DISTANCE, h: float = H,
                    max_hole: int = MAX_HOLE, close_radius: float = CLOSE_RADIUS) -> tuple[np.ndarray,
                                                                                             list[CellInstance]]:
    """(labels int32 HxW, 0 = background, 1..n in raster order of their first pixel; [CellInstance]) of a
    leukocyte mask. `close_radius` > 0 first closes the mask (a neutrophil's lobes a few px apart joined).
    Areas are in pixels of the cleaned mask (small holes filled)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    full = clean_mask(close_gaps(mask, close_radius), min_area, max_hole)
    labels = np.zeros(full.shape, np.int32)
    if not full.any():
        return labels, []
    # work inside the mask's bounding box (+ a margin for the smoothing), then place the labels back
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    r0, r1 = max(0, rows[0] - 3), min(full.shape[0], rows[-1] + 4)
    c0, c1 = max(0, cols[0] - 3), min(full.shape[1], cols[-1] + 4)
    m = full[r0:r1, c0:c1]
    dist = ndi.distance_transform_edt(m)
    smooth = ndi.gaussian_filter(dist, 1.0) * m
    peaks = h_maxima(smooth, h) if h > 0 else (smooth == ndi.maximum_filter(smooth, footprint=_EIGHT)) & m
    markers, n = ndi.label(peaks & m, structure=_EIGHT)
    markers = _merge_close_markers(markers, n, smooth, min_distance)
    # every object gets at least one marker (a flat or tiny object may have no h-maximum)
    comps, nc = ndi.label(m, structure=_EIGHT)
    has = np.zeros(nc + 1, bool)
    has[comps[markers > 0]] = True
    missing = ~has[comps] & m
    if missing.any():
        markers = markers.copy()
        offset = int(markers.max())
        markers[missing] = comps[missing] + offset
    ws = watershed(-smooth, markers, mask=m, connectivity=2)
    labels[r0:r1, c0:c1] = _raster_order(_merge_small_pieces(ws.astype(np.int64), min_area))
    cells = []
    objects = ndi.find_objects(labels)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        region = labels[sl] == k
        rr, cc = np.nonzero(region)
        cells.append(CellInstance(
            id=k,
            area_px=int(region.sum()),
            centroid=(float(rr.mean() + sl[0].start), float(cc.mean() + sl[1].start)),
            bbox=(int(sl[0].start), int(sl[1].start), int(sl[0].stop), int(sl[1].stop)),
        ))
    return labels, cells


def reference_components(mask, min_area: int = MIN_AREA, max_hole: int = MAX_HOLE) -> int:
    """Connected components (8-connected) of a reference mask after the same speck rule as `split_instances`."""
    m = clean_mask(mask, min_area, max_hole)
    return int(ndi.label(m, structure=_EIGHT)[1])


@lru_cache(maxsize=8)
def _pixel_indices(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel of an h x w image in raster order, as float64 (read-only)."""
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def cells_from_labels(lab: np.ndarray) -> list[CellInstance]:
    """CellInstance per label 1..K of an instance image (area, centroid (row, col), bbox (r0, c0, r1, c1)).

    The centroids are sums of row and column indices over counts, in the order of the pixels, as
    `scipy.ndimage.center_of_mass` computes them (bit for bit), with one `bincount` per axis."""
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return []
    flat = lab.ravel()
    fg = np.flatnonzero(flat)  # the labelled pixels in raster order: the same sums per label, in the same order
    ids = flat[fg]
    areas = np.bincount(ids, minlength=n + 1)
    rows, cols = _pixel_indices(*lab.shape)
    norm = areas.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cr = np.bincount(ids, rows[fg], minlength=n + 1) / norm
        cc = np.bincount(ids, cols[fg], minlength=n + 1) / norm
    objs = ndi.find_objects(lab)
    cells: list[CellInstance] = []
    for k in range(1, n + 1):
        sl = objs[k - 1]
        if areas[k] == 0 or sl is None:
            continue
        cells.append(CellInstance(id=len(cells) + 1, area_px=int(areas[k]),
                                  centroid=(round(float(cr[k]), 2), round(float(cc[k]), 2)),
                                  bbox=(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    return cells


def _renumber(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if len(ids) == 0 or (ids[-1] == len(ids)):
        return lab
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[lab]


def _split_per_component(mask: np.ndarray, base: dict | None, at_reference: bool = False) -> np.ndarray:
    """`split_instances` with its parameters scaled to the mask (as they are with `at_reference`) on each
    connected component's padded bounding box, all components split together on one canvas (`_split_crops`):
    bit for bit one `split_instances` call per component (tests/test_instances_batched.py checks it)."""
    side = {**DEFAULT_PARAMS, **(base or {})}["reference_side"]
    params = scaled_params((side, side) if at_reference else mask.shape, base)
    mask = close_gaps(mask, params.pop("close_radius"))  # before the components: it joins separate pieces
    comp, n = ndi.label(mask, structure=_EIGHT)
    out = np.zeros(mask.shape, np.int32)
    h, w = mask.shape
    pad = 2
    crops: list[tuple[int, int, int, int, int]] = []
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None or (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < params["min_area"]:
            continue  # even with its holes filled it stays under the minimum cell area
        crops.append((k, max(sl[0].start - pad, 0), min(sl[0].stop + pad, h), max(sl[1].start - pad, 0),
                      min(sl[1].stop + pad, w)))
    next_id = 0
    for (_, y0, y1, x0, x1), lab in zip(crops, _split_crops(comp, crops, params), strict=True):
        top = int(lab.max()) if lab.size else 0
        if top == 0:
            continue
        view = out[y0:y1, x0:x1]
        fg = lab > 0
        view[fg] = lab[fg] + next_id
        next_id += top
    return out


MIRROR = 24  # px: a crop side on the field's edge is mirrored this far on the canvas (the smoothing's reflection)
GAP = 2  # px of background between the crops on the canvas, beyond their own 2-px frame


def _split_crops(comp: np.ndarray, crops: list[tuple[int, int, int, int, int]], params: dict) -> list[np.ndarray]:
    """`split_instances(comp[y0:y1, x0:x1] == k, **params)[0]` for every crop (k, y0, y1, x0, x1), computed on
    one canvas that holds all crops apart from each other; a crop where the canvas could differ (a peak under
    `h`, distances near MIRROR on the field's edge) is split on its own. Why it gives the same numbers:
    docs/inference.md ("instances")."""
    if not crops:
        return []
    min_area, min_distance, hh, max_hole = (params["min_area"], params["min_distance"], params["h"],
                                            params["max_hole"])
    if hh <= 0:
        return [split_instances(comp[y0:y1, x0:x1] == k, min_area, min_distance, hh, max_hole)[0]
                for k, y0, y1, x0, x1 in crops]
    fh, fw = comp.shape
    # canvas layout: one row of slots; per side a margin of MIRROR (field edge) or GAP (frame side)
    slots = []
    x = GAP
    height = 0
    for k, y0, y1, x0, x1 in crops:
        edge = (y0 == 0, y1 == fh, x0 == 0, x1 == fw)  # top, bottom, left, right on the field's edge
        mt, mb, ml, mr = (MIRROR if e else GAP for e in edge)
        cy, cx = GAP + mt, x + ml
        slots.append((k, y0, y1, x0, x1, cy, cx, edge, (mt, mb, ml, mr)))
        x = cx + (x1 - x0) + mr + GAP
        height = max(height, GAP + mt + (y1 - y0) + mb + GAP)
    canvas = np.zeros((height, x), bool)
    for k, y0, y1, x0, x1, cy, cx, _, _ in slots:
        canvas[cy:cy + y1 - y0, cx:cx + x1 - x0] = comp[y0:y1, x0:x1] == k
    clean = clean_mask(canvas, min_area, max_hole)  # the canvas's border is one background piece with every gap
    # the distance transform and its smoothing, with the mirrored field edges
    mirrored = clean.copy()
    for _k, y0, y1, x0, x1, cy, cx, edge, (mt, mb, ml, mr) in slots:
        if any(edge):
            pads = ((mt if edge[0] else 0, mb if edge[1] else 0), (ml if edge[2] else 0, mr if edge[3] else 0))
            block = np.pad(clean[cy:cy + y1 - y0, cx:cx + x1 - x0], pads, mode="symmetric")
            mirrored[cy - pads[0][0]:cy + y1 - y0 + pads[0][1], cx - pads[1][0]:cx + x1 - x0 + pads[1][1]] = block
    dist = ndi.distance_transform_edt(mirrored)
    smooth = ndi.gaussian_filter(dist, 1.0) * clean
    out: list[np.ndarray | None] = [None] * len(slots)
    together = []
    for i, (k, y0, y1, x0, x1, cy, cx, edge, _) in enumerate(slots):
        sl = (slice(cy, cy + y1 - y0), slice(cx, cx + x1 - x0))
        m = clean[sl]
        if not m.any():
            out[i] = np.zeros(m.shape, np.int32)
            continue
        peak = float(smooth[sl].max())
        if peak <= hh + 1e-9 or (any(edge) and float(dist[sl][m].max()) >= MIRROR - 4):
            out[i] = split_instances(comp[y0:y1, x0:x1] == k, min_area, min_distance, hh, max_hole)[0]
            continue
        together.append(i)
    if together:
        # the h-maxima on a tight canvas of these crops alone, 1 px of background between them
        width = sum(slots[i][4] - slots[i][3] + 1 for i in together) - 1
        tight = np.zeros((max(slots[i][2] - slots[i][1] for i in together), width), np.float64)
        tight_mask = np.zeros(tight.shape, bool)
        places = []
        x = 0
        for i in together:
            k, y0, y1, x0, x1, cy, cx, _, _ = slots[i]
            sl = (slice(cy, cy + y1 - y0), slice(cx, cx + x1 - x0))
            tight[:y1 - y0, x:x + x1 - x0] = smooth[sl]
            tight_mask[:y1 - y0, x:x + x1 - x0] = clean[sl]
            places.append((i, sl, (slice(0, y1 - y0), slice(x, x + x1 - x0))))
            x += x1 - x0 + 1
        markers, _ = ndi.label(h_maxima_fast(tight, hh).astype(bool) & tight_mask, structure=_EIGHT)
        for i, sl, tsl in places:
            m = clean[sl]
            mk = markers[tsl]
            ids = np.unique(mk)
            ids = ids[ids > 0]
            if len(ids) <= 1:  # one cell: the component itself
                out[i] = m.astype(np.int32)
                continue
            lut = np.zeros(int(ids[-1]) + 1, np.int32)
            lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
            out[i] = _split_marked(m, smooth[sl], lut[mk], len(ids), min_area, min_distance)
    return [o if o is not None else np.zeros((1, 1), np.int32) for o in out]


def _split_marked(m: np.ndarray, smooth: np.ndarray, markers: np.ndarray, n: int, min_area: int,
                  min_distance: float) -> np.ndarray:
    """The end of `split_instances` for one object with its h-maxima markers (1..n, n >= 2, raster order)."""
    from skimage.segmentation import watershed

    markers = _merge_close_markers(markers, n, smooth, min_distance)
    ws = watershed(-smooth, markers, mask=m, connectivity=2)
    return _raster_order(_merge_small_pieces(ws.astype(np.int64), min_area))


def _raster_order(ws: np.ndarray) -> np.ndarray:
    """The labels of `ws` renumbered 1..n in raster order of their first pixel (0 stays 0), as int32."""
    old, first = np.unique(ws.ravel(), return_index=True)
    order = [o for _, o in sorted(zip(first, old, strict=True)) if o != 0]
    lut = np.zeros(int(ws.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[ws]


def h_maxima_fast(image: np.ndarray, h: float) -> np.ndarray:
    """`skimage.morphology.h_maxima(image, h)` for a float64 image >= 0 with h > 0, the same pixels, sorting only
    the pixels that are neither 0 nor the lowest seed (on a mostly empty canvas: a small part of it). The
    reconstruction is skimage's own loop (`reconstruction_loop`), given the values in ascending order; the
    order among equal values does not change a reconstruction."""
    try:  # skimage's compiled loop (a private module: if a skimage release moves it, the public function)
        from skimage.morphology._grayreconstruct import (  # type: ignore[import-not-found]
            reconstruction_loop,
        )
    except ImportError:  # pragma: no cover - depends on the installed skimage
        from skimage.morphology import h_maxima

        return h_maxima(image, h)
    image = np.asarray(image, dtype=np.float64)
    if h > np.ptp(image):
        return np.zeros(image.shape, dtype=np.uint8)
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    seed = image - h - resolution
    hh, ww = image.shape
    pad_value = np.min(seed)
    images = np.full((2, hh + 2, ww + 2), pad_value, dtype=np.float64)
    images[0, 1:-1, 1:-1] = seed
    images[1, 1:-1, 1:-1] = image
    isize = images.size
    signed = np.result_type(np.min_scalar_type(-isize), np.int32)
    unsigned = np.dtype(signed.char.upper())
    stride = ww + 2
    nb_strides = np.array([-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1], signed)
    image_stride = isize // 2
    flat = images.reshape(-1)
    low = flat == pad_value
    zero = (flat == 0.0) & ~low
    rest = np.flatnonzero(~(low | zero))
    rest = rest[np.argsort(flat[rest])]
    rv = flat[rest]
    cut = int(np.searchsorted(rv, 0.0))
    # ranks with ties equal, as skimage's rank_order: the lowest seed 0, then the values below 0, 0, above 0
    step = np.empty(len(rv), unsigned)
    if len(rv):
        step[0] = 1
        np.not_equal(rv[1:], rv[:-1], out=step[1:], casting="unsafe")
    has_zero = bool(zero.any())
    if cut < len(rv):
        step[cut] = 1 + int(has_zero)
    rank_rest = np.cumsum(step, dtype=unsigned)
    zero_rank = (int(rank_rest[cut - 1]) if cut else 0) + 1
    value_rank = np.zeros(isize, unsigned)
    value_rank[rest] = rank_rest
    value_rank[zero] = zero_rank
    value_map = np.empty(max(int(rank_rest[-1]) if len(rv) else 0, zero_rank) + 1, np.float64)
    value_map[0] = pad_value
    value_map[rank_rest] = rv
    if has_zero:
        value_map[zero_rank] = 0.0
    order = np.concatenate([np.flatnonzero(low), rest[:cut], np.flatnonzero(zero), rest[cut:]]).astype(signed)
    index_sorted = order[::-1]
    prev = np.empty(isize, signed)
    nxt = np.empty(isize, signed)
    prev[index_sorted[0]] = -1
    prev[index_sorted[1:]] = index_sorted[:-1]
    nxt[index_sorted[-1]] = -1
    nxt[index_sorted[:-1]] = index_sorted[1:]
    reconstruction_loop(value_rank, prev, nxt, nb_strides, index_sorted[0], image_stride)
    rec = value_map[value_rank[:image_stride]].reshape(hh + 2, ww + 2)[1:-1, 1:-1]
    return ((image - rec) >= h).astype(np.uint8)


def field_cells(mask: np.ndarray, base: dict | None = None, at_reference: bool = False
                ) -> tuple[np.ndarray, list[CellInstance]]:
    """(labels, cells) of a whole field's leukocyte mask as the analysis counts them (`base`: a segmenter's
    ``thresholds.instances``). `at_reference`: the mask is at the training scale and the parameters hold as
    they are; else they are scaled to its short side (split downscaled over MAX_INSTANCE_SIDE)."""
    mask = _as_mask(mask)
    h, w = mask.shape
    scale = min(1.0, MAX_INSTANCE_SIDE / min(h, w))
    if scale == 1.0:
        lab = _split_per_component(mask, base, at_reference)
    else:
        small = resize_float(mask.astype(np.float32), max(1, round(h * scale)), max(1, round(w * scale))) > 0.5
        if at_reference:  # the downscaled mask is no longer at the training scale: scale the parameters with it
            base = {**DEFAULT_PARAMS, **(base or {})}
            base = {**base, "reference_side": base["reference_side"] / scale}
        lab = _renumber(resize_labels(_split_per_component(small, base, at_reference), h, w) * mask)
    return lab, cells_from_labels(lab)


def keep_nucleated(labels: np.ndarray, nucleus: np.ndarray, min_fraction: float,
                   cells: list[CellInstance] | None = None) -> tuple[np.ndarray, list[CellInstance]]:
    """Only the cells whose nucleus covers at least `min_fraction` of them (every leukocyte has a nucleus; a red
    cell's rim, a platelet clump or a smudge of background has none), renumbered 1..K. `cells`: the cells of
    `labels` when known (`field_cells` gives them), returned as they are when every cell stays."""
    n = int(labels.max()) if labels.size else 0
    if n == 0 or min_fraction <= 0:
        return labels, cells if cells is not None else cells_from_labels(labels)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    nuc = np.bincount(labels[nucleus], minlength=n + 1)
    keep = nuc >= min_fraction * np.maximum(area, 1)
    keep[0] = False
    if cells is not None and keep[1:].all():
        return labels, cells
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    out = lut[labels]
    return out, cells_from_labels(out)
