"""Scoring whole-leukocyte outlines against boxes and centred-cell references (leukodx.evaluation.cells)."""

from __future__ import annotations

import numpy as np

from leukodx.data.cell_references import CellReference
from leukodx.evaluation.cells import score_boxed_field, score_centred_crop, summarize_scores
from leukodx.inference.instances import cells_from_labels
from leukodx.inference.types import FieldResult


def _result(labels: np.ndarray, nucleus: np.ndarray | None = None) -> FieldResult:
    cells = cells_from_labels(labels)
    return FieldResult(path="f", label=None, cells=cells, cell_count=len(cells), mask=labels > 0,
                       nucleus_mask=nucleus, instances=labels)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_boxes_one_centre_count_and_dice():
    lab = np.zeros((100, 100), np.int32)
    lab[_disc(lab.shape, 30, 30, 10)] = 1  # in box 1
    lab[_disc(lab.shape, 30, 70, 8)] = 2  # box 2 holds two centres: a cell split in two
    lab[_disc(lab.shape, 34, 78, 4)] = 3
    lab[_disc(lab.shape, 85, 85, 5)] = 4  # in no box: a red cell counted
    boxes = np.array([[0, 18, 18, 42, 42], [0, 58, 18, 86, 42], [1, 0, 80, 10, 90]], float)  # (cls, x0, y0, x1, y1)
    ref_cell = _disc(lab.shape, 30, 30, 10) | _disc(lab.shape, 30, 70, 9)
    ref = CellReference(np.zeros((100, 100, 3), np.uint8), ref_cell.astype(np.uint8), ref_cell.astype(np.uint8),
                        np.ones((100, 100), np.uint8), np.ones((100, 100), np.uint8), 10.0)
    s = score_boxed_field(_result(lab), boxes, ref)
    assert s["n_boxes"] == 2 and s["per_box"] == [1, 2] and s["one_centre"] == 1 and s["outside_boxes"] == 1
    summ = summarize_scores([s])
    assert summ["one_centre_per_box"] == 0.5 and summ["count_mae"] == 2 and summ["count_exact"] == 0
    inter, pred, refn = s["cell"]
    assert 0.85 < 2 * inter / (pred + refn) < 0.97  # the extra red cell and the split cell's overhang cost Dice


def test_centred_crop_exactly_one_and_non_leukocyte():
    lab = np.zeros((90, 90), np.int32)
    lab[_disc(lab.shape, 45, 45, 15)] = 1
    ref_cell = _disc(lab.shape, 45, 45, 14).astype(np.uint8)
    ref = CellReference(np.zeros((45, 45, 3), np.uint8), ref_cell[::2, ::2], ref_cell[::2, ::2],
                        np.ones((45, 45), np.uint8), np.ones((45, 45), np.uint8), 20.0)  # a downsampled reference
    s = score_centred_crop(_result(lab), ref, leukocyte=True)
    assert s["n_inside"] == 1 and 2 * s["cell"][0] / (s["cell"][1] + s["cell"][2]) > 0.9
    empty = CellReference(ref.image, np.zeros_like(ref.cell), np.zeros_like(ref.cell), ref.cell_known,
                          ref.nucleus_known, 20.0)
    s2 = score_centred_crop(_result(lab), empty, leukocyte=False)  # a platelet crop where a cell was found
    s3 = score_centred_crop(_result(np.zeros_like(lab)), empty, leukocyte=False)
    summ = summarize_scores([s, s2, s3])
    assert summ["exactly_one_centred_cell"] == 1.0 and summ["non_leukocyte_called_cell"] == 0.5


def test_cut_crop_keeps_the_centre_third_with_its_reference_and_joins_the_headline():
    from leukodx.evaluation.cells import cut_crop, headline

    rgb = np.arange(360 * 363 * 3, dtype=np.int64).reshape(360, 363, 3).astype(np.uint8)
    cell = _disc((360, 363), 180, 181, 90).astype(np.uint8)
    ref = CellReference(rgb, cell, cell, np.ones_like(cell), np.ones_like(cell), 68.0)
    img, lab, cut = cut_crop((rgb, "neutrophil", ref))
    assert img.shape == (120, 120, 3) and lab == "neutrophil" and np.array_equal(img, rgb[120:240, 121:241])
    assert cut.cell.shape == (120, 120) and cut.cell.all() and np.array_equal(cut.image, img)  # the cell fills it
    assert cut.rbc_diameter_px == 68.0
    half = CellReference(rgb[::3, ::3], cell[::3, ::3], cell[::3, ::3], np.ones_like(cell[::3, ::3]),
                         np.ones_like(cell[::3, ::3]), 68.0)  # a reference at its own scale: cut alike
    assert cut_crop((rgb, "neutrophil", half))[2].cell.shape == (40, 40)
    base = {"raabin": {}, "pbc": {}, "taleqani": {}}
    h = headline(base | {"pbc_cut": {"exactly_one_centred_cell": 0.5, "cell_dice_global": 0.7}})
    assert h["pbc_cut_exactly_one"] == 0.5 and h["pbc_cut_cell_dice"] == 0.7
    assert "pbc_cut_exactly_one" not in headline(base)
