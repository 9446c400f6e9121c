"""Synthetic lab-to-lab variation: deterministic, really changes the field, keeps shape, keeps masks aligned."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from leukodx.data.synthetic import synthetic_field
from leukodx.evaluation.shift import (
    RGB_FROM_HED,
    apply_params,
    describe,
    lab_shift,
    magnify,
    other_camera,
    restain,
    rng_for,
    sample_params,
)


@pytest.fixture(scope="module")
def field():
    return synthetic_field("Pre", 96, seed=3)


def test_deterministic_per_seed_and_field(field):
    rgb, mask = field
    a, ma = lab_shift(rgb, rng_for(7, "Original/Pre/x.jpg"), mask=mask)
    b, mb = lab_shift(rgb, rng_for(7, "Original/Pre/x.jpg"), mask=mask)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c = lab_shift(rgb, rng_for(8, "Original/Pre/x.jpg"))
    d = lab_shift(rgb, rng_for(7, "Original/Pre/y.jpg"))
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert np.array_equal(lab_shift(rgb, 5), lab_shift(rgb, 5))


def test_changes_the_image_and_keeps_shape_and_dtype(field):
    rgb, _ = field
    for k in range(5):
        out = lab_shift(rgb, rng_for(0, k))
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() > 1.0


def test_severity_zero_is_identity_and_severity_scales_the_change(field):
    rgb, mask = field
    out, m = lab_shift(rgb, 1, mask=mask, severity=0)
    assert np.array_equal(out, rgb) and np.array_equal(m, mask)
    diffs = {s: np.mean([np.abs(lab_shift(rgb, rng_for(1, k), severity=s).astype(int) - rgb).mean()
                         for k in range(6)]) for s in (0.3, 1.5)}
    assert diffs[1.5] > diffs[0.3]


def test_restain_is_exact_identity_without_change(field):
    rgb, _ = field
    assert np.array_equal(restain(rgb, (1, 1, 1), (0, 0, 0), RGB_FROM_HED), rgb)
    stronger = restain(rgb, (1.3, 1.3, 1.0), (0, 0, 0), RGB_FROM_HED)
    assert stronger.astype(int).sum() < rgb.astype(int).sum()  # more stain, darker


def test_mask_follows_the_geometry(field):
    rgb, mask = field
    for scale in (0.8, 1.2):
        out, m = magnify(rgb, scale, mask)
        assert out.shape == rgb.shape and m.shape == mask.shape
        assert abs(m.sum() / mask.sum() - scale**2) < 0.15 * scale**2 + 0.05  # area scales ~ scale^2
        # leukocytes are the darkest structures: inside the mask is darker than outside
        grey = out.mean(axis=2)
        assert grey[m].mean() < grey[~m].mean() - 20
    # an image that is the mask painted black on white: after the geometry, image and mask still agree
    # everywhere but at the one-pixel rim where bilinear and nearest interpolation differ
    painted = np.where(mask[..., None], 0, 255).astype(np.uint8).repeat(3, axis=2)
    for scale in (0.8, 0.9, 1.1, 1.2):
        out, m = magnify(painted, scale, mask)
        dark = out[..., 0] < 128
        rim = ndi.binary_dilation(m) & ~ndi.binary_erosion(m)
        assert np.array_equal(dark & ~rim, m & ~rim)
        assert (dark != m).sum() <= 0.5 * rim.sum()


def test_full_shift_keeps_mask_on_the_cells():
    for seed in range(4):
        rgb, mask = synthetic_field("Early", 96, seed=seed)
        out, m = lab_shift(rgb, rng_for(seed, "f"), mask=mask)
        assert m.dtype == bool and m.shape == mask.shape and m.any()
        p = sample_params(rng_for(seed, "f"))
        _, m2 = apply_params(rgb, p, mask)
        assert np.array_equal(m, m2)  # the drawn parameters reproduce the variation
        grey = out.astype(float).mean(axis=2)
        assert grey[m].mean() < grey[~m].mean()


def _square_field(top: int, left: int, side: int = 40):
    rgb = np.full((224, 224, 3), 230, np.uint8)
    mask = np.zeros((224, 224), bool)
    rgb[top:top + side, left:left + side] = (90, 40, 120)
    mask[top:top + side, left:left + side] = True
    return rgb, mask


def test_other_camera_size_scale_and_alignment():
    from PIL import Image

    rgb, mask = _square_field(92, 92)
    out, m = other_camera(rgb, mask=mask)  # centred 4:3 window, the field's whole width -> 640 x 480
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8 and m.shape == (480, 640) and m.dtype == bool
    rows, cols = np.nonzero(m)
    assert cols.max() - cols.min() + 1 == pytest.approx(40 * 640 / 224, abs=2)  # x2.86 in both directions
    assert rows.max() - rows.min() + 1 == pytest.approx(40 * 480 / 168, abs=2)
    assert (rows.mean(), cols.mean()) == pytest.approx((239.5, 319.5), abs=1)
    dark = out.mean(axis=2) < 160
    assert (dark & m).sum() / (dark | m).sum() > 0.95  # the mask stays on its cells
    # the centred window is the whole field resized to 640 x 640 with its centre 480 rows kept
    whole = np.asarray(Image.fromarray(rgb).resize((640, 640), Image.Resampling.BICUBIC))[80:560]
    np.testing.assert_array_equal(out, whole)
    assert other_camera(rgb, size=(1280, 960)).shape == (960, 1280, 3)


def test_other_camera_random_window_is_deterministic_per_seed(field):
    rgb, _ = field
    mask = rgb.mean(axis=2) < 150
    a, ma = other_camera(rgb, np.random.default_rng(7), window=0.75, mask=mask)
    b, mb = other_camera(rgb, np.random.default_rng(7), window=0.75, mask=mask)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert a.shape == (480, 640, 3)
    windows = {other_camera(rgb, np.random.default_rng(s), window=0.75).tobytes() for s in range(6)}
    assert len(windows) > 1  # the window moves with the seed
    # a 168 x 126 window of a 224-px field enlarged to 640 x 480: x3.81
    sq, sq_mask = _square_field(100, 100, side=20)
    _, big = other_camera(sq, np.random.default_rng(0), window=0.75, mask=sq_mask)
    rows, cols = np.nonzero(big)
    assert cols.max() - cols.min() + 1 == pytest.approx(20 * 640 / 168, abs=2)
    assert rows.max() - rows.min() + 1 == pytest.approx(20 * 480 / 126, abs=2)


def test_description_is_json_and_documents_the_ranges():
    d = describe(1.0)
    json.dumps(d)
    assert d["magnification"] == pytest.approx([0.8, 1.2])
    assert d["jpeg_quality"] == [40, 90]
    p = sample_params(np.random.default_rng(0), 1.0)
    assert 0.8 <= p.scale <= 1.2 and 40 <= p.jpeg_quality <= 90 and 0 <= p.blur_sigma <= 1.5
    json.dumps(p.to_dict())


def test_bad_inputs(field):
    rgb, mask = field
    with pytest.raises(ValueError):
        lab_shift(rgb.astype(np.float32), 0)
    with pytest.raises(ValueError):
        lab_shift(rgb, 0, mask=mask[:10])
    with pytest.raises(ValueError):
        lab_shift(rgb, 0, severity=-1)


@pytest.mark.slow
def test_colour_shortcut_does_not_survive_the_lab_shift(real_data):
    """A colour-histogram classifier separates the real classes, and collapses under the lab shift (a shift too
    weak to break a colour shortcut would not test robustness)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    from leukodx.data.images import read_rgb
    from leukodx.data.layout import load_dataset

    ds = load_dataset(real_data)

    def hist(rgb, bins=8):
        q = (rgb.reshape(-1, 3) // (256 // bins)).astype(int)
        h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins**3).astype(float)
        return h / h.sum()

    imgs = [read_rgb(s.image) for s in ds.samples]
    y = np.array([ds.classes.index(s.label) for s in ds.samples])
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    x = np.stack([hist(im) for im in imgs])
    x_shift = np.stack([hist(lab_shift(imgs[i], rng_for(0, ds.samples[i].path))) for i in te])
    clf = RandomForestClassifier(200, random_state=0, n_jobs=1).fit(x[tr], y[tr])
    clean = np.mean(clf.predict(x[te]) == y[te])
    shifted = np.mean(clf.predict(x_shift) == y[te])
    assert clean > 0.95
    assert shifted < 0.75
