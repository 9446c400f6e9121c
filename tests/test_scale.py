"""The red-cell scale: decisions, resampling and windows, and counts that hold at any magnification."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukodx.data.synthetic import synthetic_instances
from leukodx.inference import tiling
from leukodx.inference.scale import field_scale
from leukodx.models.model_config import ScaleRule

AS_IS_RANGE, SCALE_RANGE = ScaleRule().as_is, ScaleRule().resample

REF = ScaleRule().rbc_diameter_224


def _resize(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC))


def test_scale_decisions():
    assert field_scale(REF, 0.9, (224, 224)).factor == 1.0  # the training size: used as is
    assert field_scale(REF * AS_IS_RANGE[1], 0.9, (224, 224)).factor == 1.0
    s = field_scale(REF * 4, 0.9, (480, 640))
    assert s.known and s.factor == pytest.approx(0.25) and s.um_per_px == pytest.approx(7.5 / (REF * 4))
    s = field_scale(REF * 0.5, 0.9, (224, 224))
    assert s.known and s.factor == pytest.approx(2.0)
    for d, conf, why in ((None, 0.0, "could not be estimated"), (REF, 0.2, "could not be estimated"),
                         (REF * SCALE_RANGE[1] * 1.2, 0.9, "larger"), (REF * SCALE_RANGE[0] * 0.8, 0.9, "smaller")):
        s = field_scale(d, conf, (480, 640))
        assert not s.known and why in s.reason and s.um_per_px is None


def test_prepare_resamples_pads_and_maps_back():
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    p = tiling.prepare(rgb, 0.22)
    assert p.valid == (106, 141) and p.work.shape[:2] == (224, 224) and p.boxes == [(0, 0, 224, 224)]
    assert tiling.to_original(np.ones(p.work.shape[:2], np.float32), p).shape == (480, 640)
    big = tiling.prepare(rgb, 1.0)  # at the training scale already: 224-px windows over the whole field
    assert len(big.boxes) == 3 * 3 and all(b[2] - b[0] == 224 and b[3] - b[1] == 224 for b in big.boxes)
    assert tiling.prepare(rgb[:224, :224], 1.0).boxes == [(0, 0, 224, 224)]  # a training field: one window
    unknown = tiling.prepare(rgb, None)  # scale unknown: the field's own pixels, tiles of its short side
    assert not unknown.known and unknown.boxes == [(0, 0, 480, 480), (0, 160, 480, 640)]


@pytest.fixture(scope="module")
def bundled():
    from leukodx.inference.pipeline import load_analyzer

    return load_analyzer()


def test_counts_hold_when_the_same_field_is_magnified(bundled):
    """The same synthetic fields at 0.5x, 2x and 4x (cells 0.5-4 times as many pixels across) get the count they
    get at 1x, and their red cells are brought back to the training size. With the bundled models (measured:
    19 of 24 the same as at 1x, mean error against the true count 0.47 over all scales) the bounds below leave a
    margin for other machines' arithmetic; benchmarks/counting.py reports the numbers."""
    same, total, errs = 0, 0, []
    for i in range(8):
        img, lab = synthetic_instances(("Benign", "Early", "Pre", "Pro")[i % 4], 224, seed=300 + i)
        base = bundled.analyze(img)
        errs.append(abs(base.cell_count - int(lab.max())))
        for f in (0.5, 2.0, 4.0):
            r = bundled.analyze(_resize(img, f))
            assert r.scale_factor is not None and 12 < r.rbc_diameter_px * r.scale_factor < 26
            assert r.mask.shape == (round(224 * f),) * 2 and r.cell_count == len(r.cells)
            same += int(r.cell_count == base.cell_count)
            total += 1
            errs.append(abs(r.cell_count - int(lab.max())))
    assert same / total >= 0.6, (same, total)
    assert np.mean(errs) <= 0.75, errs


def test_another_cameras_field_is_counted_at_the_training_scale(bundled):
    """A 640 x 480 field whose cells are 3.8x larger than the training fields' is resampled, not flagged for its
    magnification, and its cells (in the field's own pixels) are as many as in the original field."""
    hits = 0
    for i in range(4):
        img, lab = synthetic_instances(("Benign", "Early", "Pre", "Pro")[i], 224, seed=400 + i)
        crop = img[49:175, 28:196]  # 168 x 126, 4:3
        big = np.asarray(Image.fromarray(crop).resize((640, 480), Image.Resampling.BICUBIC))
        r = bundled.analyze(big)
        assert r.scale_factor is not None and r.scale_factor < 0.45
        # not flagged for its scale (the cell model's own flag may name "camera or magnification" among its causes)
        assert not (r.flag == "out_of_distribution" and "magnification" in r.flag_reason), r.flag_reason
        assert all(0 <= c.centroid[0] < 480 and 0 <= c.centroid[1] < 640 for c in r.cells)
        assert all(c.area_um2 is not None and c.area_um2 > 0 for c in r.cells)
        small = bundled.analyze(crop)
        hits += int(r.cell_count == small.cell_count)
    assert hits >= 3
