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


def scaled_params(shape: tuple[int, int], reference_side: int = REFERENCE_SIDE) -> dict:
    """The default instance parameters rescaled from a 224 px field to a field of `shape` (H, W)."""
    s = min(shape[:2]) / reference_side
    return {"min_area": max(1, round(MIN_AREA * s * s)), "min_distance": max(1, round(MIN_DISTANCE * s)),
            "h": H * s, "max_hole": round(MAX_HOLE * s * s)}


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


def split_instances(mask, min_area: int = MIN_AREA, min_distance: float = MIN_DISTANCE, h: float = H,
                    max_hole: int = MAX_HOLE) -> tuple[np.ndarray, list[CellInstance]]:
    """Label single cells in a leukocyte mask (bool HxW).

    Returns (labels int32 HxW with 0 = background and 1..n the cells, [CellInstance]), cells numbered in
    raster order of their first pixel. Areas are in pixels of the cleaned mask (small holes filled).
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    full = clean_mask(mask, min_area, max_hole)
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
