"""The per-cell AI suggestion (leukodx.inference.cell_classifier): the bundled model loads and labels every cell;
its features do not move with white balance, brightness or magnification; bad model files are refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from leukodx.data.synthetic import synthetic_field
from leukodx.errors import ModelError
from leukodx.inference.cell_classes import AI_CELL_CLASSES
from leukodx.inference.cell_classifier import FEATURES, MODEL_FILE, CellClassifier, cell_features
from leukodx.inference.instances import cells_from_labels


def _field(label: str = "Pre", seed: int = 0, size: int = 224):
    rgb, mask = synthetic_field(label, size, seed=seed)
    labels, _ = ndi.label(mask)
    labels = labels.astype(np.int32)
    return rgb, labels, cells_from_labels(labels)


@pytest.fixture(scope="module")
def clf() -> CellClassifier:
    return CellClassifier.load()


def _fields():
    return [_field(c, s) for c in ("Benign", "Early", "Pre", "Pro") for s in (0, 1)]


def test_bundled_model_loads_and_labels_every_cell(clf):
    n = 0
    for rgb, labels, cells in _fields():
        clf.classify(rgb, labels, cells, None)
        for c in cells:
            assert c.ai_label in AI_CELL_CLASSES
            assert c.ai_confidence is not None and 0.5 <= c.ai_confidence <= 1.0
        score = clf.field_score(cells)
        assert score is not None and 0.0 <= score <= 1.0
        n += len(cells)
    assert n > 0
    assert 0.0 < clf.field_threshold < 1.0


def test_load_accepts_a_folder_or_the_file(tmp_path, clf):
    (tmp_path / MODEL_FILE).write_text(json.dumps(clf.spec))
    assert CellClassifier.load(tmp_path).field_threshold == clf.field_threshold
    assert CellClassifier.load(tmp_path / MODEL_FILE).field_threshold == clf.field_threshold


def test_empty_cell_list(clf):
    rgb, _, _ = _field()
    empty = np.zeros(rgb.shape[:2], np.int32)
    cells: list = []
    clf.classify(rgb, empty, cells, 17.0)
    assert cells == []
    assert clf.probabilities(rgb, empty, [], None).shape == (0,)
    assert cell_features(rgb, empty, [], None).shape == (0, len(FEATURES))
    assert clf.field_score([]) is None


CONTINUOUS = [i for i, n in enumerate(FEATURES) if n not in ("touches_border", "nucleus_pieces")]


def _std_features(clf, rgb, labels, cells, d):
    """The continuous features in units of their training standard deviation."""
    return np.nan_to_num((cell_features(rgb, labels, cells, d) - clf.mean) / clf.scale)[:, CONTINUOUS]


def _probs(clf, rgb, labels, cells, d):
    return clf.probabilities(rgb, labels, cells, d)


@pytest.mark.parametrize("gains,offset", [((0.9, 1.0, 1.08), 0.0), ((1.0, 1.0, 1.0), -12.0),
                                          ((1.06, 0.95, 0.92), -8.0)])
def test_white_balance_and_brightness_leave_the_labels(clf, gains, offset):
    for rgb, labels, cells in _fields():
        shifted = np.clip(rgb.astype(np.float64) * np.array(gains) + offset, 0, 255).round().astype(np.uint8)
        z0 = _std_features(clf, rgb, labels, cells, 17.0)
        z1 = _std_features(clf, shifted, labels, cells, 17.0)
        assert np.abs(z1 - z0).max() < 0.75  # in training standard deviations (pale spots: a few pixels)
        p0, p1 = _probs(clf, rgb, labels, cells, 17.0), _probs(clf, shifted, labels, cells, 17.0)
        assert np.abs(p1 - p0).max() < 0.1
        clear = np.abs(p0 - 0.5) > 0.1
        assert ((p0 >= 0.5) == (p1 >= 0.5))[clear].all()


def test_a_gain_change_cancels_exactly_in_optical_density(clf):
    """A per-channel gain (white balance / exposure) without clipping changes no colour feature beyond the
    rounding of the 8-bit pixels."""
    rgb, labels, cells = _field("Early", 3)
    darker = np.clip(rgb.astype(np.float64) * 0.8, 0, 255).round().astype(np.uint8)
    z0 = _std_features(clf, rgb, labels, cells, 17.0)
    z1 = _std_features(clf, darker, labels, cells, 17.0)
    assert np.abs(z1 - z0).max() < 0.25


def test_rescaling_the_field_with_its_red_cells_leaves_the_labels(clf):
    for rgb, labels, cells in _fields():
        big_rgb = np.repeat(np.repeat(rgb, 2, 0), 2, 1)
        big_labels = np.repeat(np.repeat(labels, 2, 0), 2, 1)
        big_cells = cells_from_labels(big_labels)
        assert [c.id for c in big_cells] == [c.id for c in cells]
        z0 = _std_features(clf, rgb, labels, cells, 16.0)
        z1 = _std_features(clf, big_rgb, big_labels, big_cells, 32.0)
        assert np.abs(z1 - z0).max() < 0.75
        p0, p1 = _probs(clf, rgb, labels, cells, 16.0), _probs(clf, big_rgb, big_labels, big_cells, 32.0)
        assert np.abs(p1 - p0).max() < 0.1
        clear = np.abs(p0 - 0.5) > 0.1
        assert ((p0 >= 0.5) == (p1 >= 0.5))[clear].all()


def test_size_is_measured_in_red_cells(clf):
    """The same pixels read as a larger cell when the red cells are smaller."""
    rgb, labels, cells = _field("Benign", 2)
    small_rbc = cell_features(rgb, labels, cells, 12.0)[:, FEATURES.index("log_area_rbc")]
    large_rbc = cell_features(rgb, labels, cells, 24.0)[:, FEATURES.index("log_area_rbc")]
    assert np.allclose(small_rbc - large_rbc, np.log(4.0))


def test_labels_of_cells_not_listed_are_ignored(clf):
    rgb, labels, cells = _field("Pre", 4)
    extra = labels.copy()
    extra[:6, :6] = int(labels.max()) + 5  # a labelled blob that is no listed cell
    clf.classify(rgb, extra, cells, None)
    assert all(c.ai_label in AI_CELL_CLASSES for c in cells)


def test_bad_inputs_are_refused():
    rgb, labels, cells = _field()
    with pytest.raises(ValueError, match="same size"):
        cell_features(rgb, labels[:-1], cells, None)


@pytest.mark.parametrize("content", ["not json at all {", "[1, 2, 3]", json.dumps({"format": "something else"}),
                                     "TRUNCATE"])
def test_a_bad_model_file_is_a_model_error_with_what_to_do(tmp_path, clf, content):
    if content == "TRUNCATE":
        spec = dict(clf.spec)
        spec["coef"] = spec["coef"][:-1]
        content = json.dumps(spec)
    p = tmp_path / MODEL_FILE
    p.write_text(content)
    with pytest.raises(ModelError) as e:
        CellClassifier.load(p)
    assert str(p) in e.value.message and "train_cell_classifier.py" in e.value.message


def test_a_missing_model_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="missing.*Reinstall"):
        CellClassifier.load(tmp_path / "nowhere")


def test_other_features_are_refused(tmp_path, clf):
    spec = dict(clf.spec)
    spec["features"] = list(FEATURES[::-1])
    with pytest.raises(ModelError, match="features"):
        CellClassifier(spec, "test")


def test_real_fields_of_leukaemia_score_higher_than_benign(real_data, clf):
    """On a few real Taleqani fields through the bundled segmenter, the field aggregate ranks leukaemic
    fields above benign ones (skipped without ../shared/data)."""
    from leukodx.assets import default_model_dir
    from leukodx.data.images import read_field
    from leukodx.inference.instances import field_cells
    from leukodx.inference.pipeline import SegmenterStage
    from leukodx.inference.scale import estimate_rbc_diameter

    seg = SegmenterStage(default_model_dir("segment"))
    scores: dict[str, list[float]] = {"Benign": [], "Early": []}
    for cls, got in scores.items():
        paths = sorted((real_data / "Original" / cls).glob("*.jpg"))[:6]
        rgbs = [read_field(p) for p in paths]
        for rgb, prob in zip(rgbs, seg.probabilities(rgbs), strict=True):
            labels, cells = field_cells(prob > seg.mask_threshold, seg.instance_params)
            clf.classify(rgb, labels, cells, estimate_rbc_diameter(rgb)[0])
            s = clf.field_score(cells)
            if s is not None:
                got.append(s)
    assert scores["Benign"] and scores["Early"]
    assert np.mean(scores["Early"]) > np.mean(scores["Benign"])
