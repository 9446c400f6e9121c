"""The batched cell splitting (issue 23: all components of a field on one canvas) gives the labels of one
`split_instances` call per component, bit for bit: on random blob masks (cells touching each other and the
field's edges and corners, holes, specks, thin pieces), on synthetic smear masks and, when the data is there,
through the pipeline on real fields (benchmarks/pipeline_snapshot.py compares whole analyses)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import h_maxima

from _instances_reference import split_per_component_reference
from leukodx.inference.instances import (
    _split_per_component,
    cells_from_labels,
    field_cells,
    h_maxima_fast,
)


def blobs(seed: int, shape=(224, 224), n=12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(-10, shape[0] + 10), rng.uniform(-10, shape[1] + 10)
        ry, rx = rng.uniform(4, 26, 2)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    for _ in range(3):  # holes and specks
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        m[max(cy - 2, 0):cy + 2, max(cx - 2, 0):cx + 2] ^= True
    return m


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("base,at_reference", [(None, True), ({"min_distance": 14, "close_radius": 1.5}, True),
                                               (None, False), ({"h": 0.7, "max_hole": 0}, True)])
def test_batched_split_is_the_per_component_split(seed, base, at_reference):
    shape = [(224, 224), (160, 300), (97, 131)][seed % 3]
    mask = blobs(seed, shape, n=6 + seed)
    want = split_per_component_reference(mask, base, at_reference)
    got = _split_per_component(mask, base, at_reference)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_batched_split_edge_cases():
    for mask in (np.zeros((50, 60), bool), np.ones((50, 60), bool), np.eye(40, dtype=bool),
                 np.pad(np.ones((30, 30), bool), 1)):
        assert np.array_equal(_split_per_component(mask, None), split_per_component_reference(mask, None))


@pytest.mark.parametrize("seed", range(6))
def test_h_maxima_fast_is_skimage(seed):
    m = blobs(100 + seed)
    s = ndi.gaussian_filter(ndi.distance_transform_edt(m), 1.0) * m
    for h in (0.3, 2.0, 5.5, 1e6):
        assert np.array_equal(h_maxima_fast(s, h), h_maxima(s, h))


def test_cells_from_labels_centroids_are_center_of_mass():
    lab = _split_per_component(blobs(7), None, True)
    n = int(lab.max())
    cells = cells_from_labels(lab)
    com = ndi.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, np.arange(1, n + 1))
    assert [c.centroid for c in cells] == [(round(float(r), 2), round(float(c), 2)) for r, c in com]
    assert [c.area_px for c in cells] == list(np.bincount(lab.ravel())[1:])


def test_field_cells_on_a_synthetic_smear_mask():
    from leukodx.data.synthetic import MORPHOLOGY, synthetic_field

    for i, cls in enumerate(MORPHOLOGY):
        _, mask = synthetic_field(cls, 224, seed=i)[:2]
        mask = np.asarray(mask) > 0
        lab, cells = field_cells(mask, None, at_reference=True)
        assert np.array_equal(lab, split_per_component_reference(mask, None, True))
        assert len(cells) == int(lab.max())
