"""Cell instances on known geometry: discs at known distances, a chain, specks, holes, empty masks."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.inference.instances import (
    clean_mask,
    reference_components,
    scaled_params,
    split_instances,
)

SHAPE = (120, 160)


def disc(center, r, shape=SHAPE):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= r * r


AREA_20 = int(disc((60, 60), 20).sum())


def test_two_separate_discs_exact_areas_and_centroids():
    mask = disc((60, 40), 20) | disc((60, 110), 20)
    labels, cells = split_instances(mask)
    assert len(cells) == 2 and labels.dtype == np.int32
    assert [c.area_px for c in cells] == [AREA_20, AREA_20]
    cents = sorted(c.centroid for c in cells)
    assert np.allclose(cents, [(60, 40), (60, 110)], atol=1e-6)
    assert cells[0].bbox == (40, 20, 81, 61)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert reference_components(mask) == 2


def test_touching_discs_are_two_cells_of_full_area():
    mask = disc((60, 50), 20) | disc((60, 90), 20)  # centres 40 px apart: the outlines touch
    labels, cells = split_instances(mask)
    assert len(cells) == 2
    assert all(abs(c.area_px - AREA_20) <= 2 for c in cells)
    assert sum(c.area_px for c in cells) == int(mask.sum())
    assert reference_components(mask) == 1  # the reference counts connected pieces


@pytest.mark.parametrize("d", [30, 24, 20])
def test_overlapping_discs_are_split(d):
    mask = disc((60, 50), 20) | disc((60, 50 + d), 20)
    labels, cells = split_instances(mask)
    assert len(cells) == 2
    assert sum(c.area_px for c in cells) == int(mask.sum())
    a, b = sorted(c.area_px for c in cells)
    assert b - a <= 0.05 * b  # split near the neck
    for c, x in zip(sorted(cells, key=lambda c: c.centroid[1]), (50, 50 + d), strict=True):
        assert abs(c.centroid[1] - x) < d / 2
        assert abs(c.centroid[0] - 60) < 1


def test_almost_coincident_discs_stay_one_cell():
    mask = disc((60, 60), 20) | disc((60, 66), 20)
    assert len(split_instances(mask)[1]) == 1


def test_chain_of_three():
    mask = disc((60, 40), 15) | disc((60, 67), 15) | disc((60, 94), 15)
    labels, cells = split_instances(mask)
    assert len(cells) == 3
    assert [round(c.centroid[1]) for c in sorted(cells, key=lambda c: c.centroid[1])] == pytest.approx(
        [40, 67, 94], abs=2)
    assert reference_components(mask) == 1


def test_small_cell_touching_a_large_one():
    small, big = disc((60, 40), 12), disc((60, 75), 20)
    labels, cells = split_instances(small | big)
    assert sorted(c.area_px for c in cells) == [int(small.sum()), int(big.sum())]


def test_empty_mask():
    labels, cells = split_instances(np.zeros(SHAPE, bool))
    assert cells == [] and labels.shape == SHAPE and not labels.any()
    assert len(split_instances(np.zeros(SHAPE, bool))[1]) == 0
    assert reference_components(np.zeros(SHAPE, bool)) == 0


def test_specks_are_ignored_by_both_counts():
    mask = disc((60, 60), 20).copy()
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 30, (15, 2)):  # single-pixel specks, top-left corner, far from the cell
        mask[y, x] = True
    mask[100:104, 120:124] = True  # a 16 px speck
    labels, cells = split_instances(mask)
    assert len(cells) == 1 and cells[0].area_px == AREA_20
    assert reference_components(mask) == 1
    assert len(split_instances(mask, min_area=10)[1]) == 2  # the 16 px speck counts once the rule allows it


def test_small_holes_filled_large_background_not():
    cell = disc((60, 60), 20)
    holed = cell & ~disc((60, 60), 3)
    assert clean_mask(holed).sum() == cell.sum()
    ring = disc((60, 60), 40, (120, 120)) & ~disc((60, 60), 25, (120, 120))  # a ring encloses ~2,000 px
    assert clean_mask(ring).sum() == ring.sum()


def test_bad_mask_shape():
    with pytest.raises(ValueError, match="2-D"):
        split_instances(np.zeros((4, 4, 3), bool))


def test_scaled_params():
    p = scaled_params((448, 448))
    assert p["min_area"] == 160 and p["min_distance"] == 14
    assert scaled_params((224, 224))["min_area"] == 40


def test_real_reference_masks_give_sensible_counts(real_data):
    from leukodx.data.images import read_reference_mask

    counts = []
    for cls in ("Benign", "Early", "Pre"):
        for f in sorted((real_data / "Segmented" / cls).glob("*.jpg"))[:5]:
            mask = read_reference_mask(f)
            n_ref, n_split = reference_components(mask), len(split_instances(mask)[1])
            counts.append((n_ref, n_split))
            assert n_split >= n_ref  # splitting only ever separates touching cells
            assert n_split <= 80
    assert any(n > 0 for n, _ in counts)


def test_close_radius_joins_the_lobes_of_one_cell_but_not_two_cells():
    """A lobed nucleus (three lobes 2-3 px apart) is one cell once its gaps are closed; two touching round cells
    of a blast's size stay two."""
    from leukodx.inference.instances import close_gaps, field_cells

    def count(mask, r):
        return len(field_cells(mask, {"min_distance": 14, "close_radius": r}, at_reference=True)[1])

    yy, xx = np.mgrid[0:80, 0:80]
    lobes = np.zeros((80, 80), bool)
    # lobes 9 px across, 3 px apart (a neutrophil at the training scale, red cells 17 px)
    for cy, cx in ((40, 28), (40, 40), (40, 52)):
        lobes |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 4.5**2
    assert count(lobes, 0.0) == 3 and count(lobes, 2.0) == 1
    assert (close_gaps(lobes, 0.0) == lobes).all() and close_gaps(lobes, 2.0).sum() > lobes.sum()
    two = ((yy - 40) ** 2 + (xx - 28) ** 2 <= 11**2) | ((yy - 40) ** 2 + (xx - 50) ** 2 <= 11**2)  # touching blasts
    assert count(two, 2.0) == 2
