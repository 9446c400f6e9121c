"""Single cells from a leukocyte mask: touching and overlapping cells are split, specks removed, cells counted.

The mask is cleaned first (holes smaller than `max_hole` filled, which the stain thresholding of the reference
masks leaves inside nuclei; objects under `min_area` pixels removed). Cells are then separated by a marker
watershed on the distance transform: a marker is a maximum of the (lightly smoothed) distance transform that
stands at least `h` pixels above the saddle to any higher maximum (an h-maximum), and markers closer than
`min_distance` pixels are merged, so a rough outline does not turn one cell into several. Watershed pieces
under `min_area` are merged into the neighbour they share most border with.

The defaults are in pixels of a 224 x 224 Taleqani field (100x objective, leukocytes 150-1,500 px);
`scaled_params(shape)` rescales them for other field sizes.

Example::

    labels, cells = split_instances(mask)          # labels: int32 HxW, 0 = background
    print(len(cells), cells[0].area_px, cells[0].centroid)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from leukodx.inference.types import CellInstance

MIN_AREA = 40  # px: specks below this are not cells (a leukocyte at 224 px is >= ~150 px)
MIN_DISTANCE = 7  # px: two cell centres are at least this far apart
H = 2.0  # px: how far a distance-transform peak must rise above its saddle to mark a cell of its own
MAX_HOLE = 150  # px: holes up to this size inside an object are filled (thresholding gaps in a nucleus)
REFERENCE_SIDE = 224  # the field side the defaults are tuned for

_EIGHT = np.ones((3, 3), bool)


CLOSE_RADIUS = 0.0  # px: a binary closing with a disc of this radius first joins pieces of one cell

DEFAULT_PARAMS = {"min_area": MIN_AREA, "min_distance": MIN_DISTANCE, "h": H, "max_hole": MAX_HOLE,
                  "reference_side": REFERENCE_SIDE, "close_radius": CLOSE_RADIUS}
MAX_INSTANCE_SIDE = 1024  # px: larger fields are counted on a downscaled mask, labels mapped back


def scaled_params(shape: tuple[int, int], reference_side: int = REFERENCE_SIDE, base: dict | None = None) -> dict:
    """The instance parameters (`base`, default the module's, in pixels of a `reference_side` field) rescaled
    to a field of `shape` (H, W)."""
    b = {**DEFAULT_PARAMS, **(base or {})}
    s = min(shape[:2]) / float(b.get("reference_side", reference_side))
    return {"min_area": max(1, round(b["min_area"] * s * s)), "min_distance": max(1, round(b["min_distance"] * s)),
            "h": b["h"] * s, "max_hole": round(b["max_hole"] * s * s),
            "close_radius": float(b.get("close_radius", 0.0)) * s}


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
    """Label single cells in a leukocyte mask (bool HxW).

    With `close_radius` > 0 the mask is first closed with a disc of that radius (pieces of one cell a few px
    apart, such as the lobes of a neutrophil's nucleus, joined); the watershed then splits what is two cells.
    Returns (labels int32 HxW with 0 = background and 1..n the cells, [CellInstance]), cells numbered in
    raster order of their first pixel. Areas are in pixels of the cleaned mask (small holes filled).
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    full = clean_mask(close_gaps(mask, close_radius), min_area, max_hole)
    labels_full = np.zeros(full.shape, np.int32)
    if not full.any():
        return labels_full, []
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
    ws = _merge_small_pieces(ws.astype(np.int64), min_area)
    # renumber 1..n in raster order
    _, first = np.unique(ws.ravel(), return_index=True)
    old = np.unique(ws.ravel())
    order = [o for _, o in sorted(zip(first, old, strict=True)) if o != 0]
    lut = np.zeros(int(ws.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    labels_full[r0:r1, c0:c1] = lut[ws]
    labels = labels_full
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


def count_cells(mask, **params) -> int:
    """Number of single cells in a leukocyte mask (see `split_instances`)."""
    return len(split_instances(mask, **params)[1])


def reference_components(mask, min_area: int = MIN_AREA, max_hole: int = MAX_HOLE) -> int:
    """Connected components (8-connected) of a reference mask after the same speck rule as `split_instances`."""
    m = clean_mask(mask, min_area, max_hole)
    return int(ndi.label(m, structure=_EIGHT)[1])


def cells_from_labels(lab: np.ndarray) -> list[CellInstance]:
    """CellInstance per label 1..K of an instance image (area, centroid (row, col), bbox (r0, c0, r1, c1))."""
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    cents = ndi.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, idx)
    objs = ndi.find_objects(lab)
    cells: list[CellInstance] = []
    for k in range(n):
        if areas[k] == 0 or objs[k] is None:
            continue
        sl = objs[k]
        cells.append(CellInstance(id=len(cells) + 1, area_px=int(areas[k]),
                                  centroid=(round(float(cents[k][0]), 2), round(float(cents[k][1]), 2)),
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
    """`split_instances` with its parameters scaled to the mask (as they are with `at_reference`), run on each
    connected component's padded bounding box: the same cells (the split is local to a component), faster."""
    b = {**DEFAULT_PARAMS, **(base or {})}
    params = scaled_params((b["reference_side"],) * 2, base=base) if at_reference else scaled_params(mask.shape,
                                                                                                       base=base)
    mask = close_gaps(mask, params.pop("close_radius", 0.0))  # before the components: it joins separate pieces
    comp, n = ndi.label(mask, structure=_EIGHT)
    out = np.zeros(mask.shape, np.int32)
    h, w = mask.shape
    pad, next_id = 2, 0
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None or (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < params["min_area"]:
            continue  # even with its holes filled it stays under the minimum cell area
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        lab, _ = split_instances(comp[y0:y1, x0:x1] == k, **params)
        if lab.max() == 0:
            continue
        view = out[y0:y1, x0:x1]
        fg = lab > 0
        view[fg] = lab[fg] + next_id
        next_id += int(lab.max())
    return out


def field_cells(mask: np.ndarray, base: dict | None = None, at_reference: bool = False
                ) -> tuple[np.ndarray, list[CellInstance]]:
    """The cells of a whole field's leukocyte mask, as the analysis pipeline counts them (`base`: a segmenter's
    ``thresholds.instances``). `at_reference`: the mask is at the training scale (red cells resampled to the
    training fields' size), so the parameters hold as they are; else they are scaled to the field's short side
    (a field of unknown scale). Fields with a short side over MAX_INSTANCE_SIDE are split on a downscaled mask
    and the labels mapped back. Returns (labels, cells)."""
    from leukodx.inference.tiling import resize_float, resize_labels

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


def keep_nucleated(labels: np.ndarray, nucleus: np.ndarray, min_fraction: float
                   ) -> tuple[np.ndarray, list[CellInstance]]:
    """Only the cells whose nucleus covers at least `min_fraction` of them (every leukocyte has a nucleus; a red
    cell's rim, a platelet clump or a smudge of background has none), renumbered 1..K."""
    n = int(labels.max()) if labels.size else 0
    if n == 0 or min_fraction <= 0:
        return labels, cells_from_labels(labels)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    nuc = np.bincount(labels[nucleus], minlength=n + 1)
    keep = nuc >= min_fraction * np.maximum(area, 1)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    out = lut[labels]
    return out, cells_from_labels(out)
