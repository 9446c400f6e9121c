"""The bundled cell-type model (src/leukodx/assets/cells) through the clinic runtime: it loads without torch,
labels every cell of a field in the model's vocabulary, keeps its answers under white-balance and brightness
changes that per-crop standardisation removes, follows the red-cell scale, and refuses bad directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage as ndi

from leukodx.assets import ASSETS
from leukodx.data.synthetic import synthetic_field
from leukodx.errors import ModelError
from leukodx.inference.cell_classes import KNOWN_CLASSES, UNIDENTIFIED
from leukodx.inference.cell_classifier import CellClassifier
from leukodx.inference.instances import cells_from_labels
from leukodx.models.model_config import read_model_config

MODEL_CLASSES = tuple(read_model_config(ASSETS / "cells").classes)  # the bundled model's, from its config
AI_CELL_CLASSES = (*MODEL_CLASSES, UNIDENTIFIED)


def _field(label: str = "Pre", seed: int = 0, size: int = 224):
    rgb, mask = synthetic_field(label, size, seed=seed)
    labels, _ = ndi.label(mask)
    labels = labels.astype(np.int32)
    return rgb, labels, cells_from_labels(labels)


@pytest.fixture(scope="module")
def clf() -> CellClassifier:
    return CellClassifier.load(threads=1)


def _fields():
    return [_field(c, s) for c in ("Benign", "Early", "Pre", "Pro") for s in (0, 1)]


def test_bundled_model_loads_and_labels_every_cell(clf):
    assert clf.classes == MODEL_CLASSES and clf.size == (64, 64) and set(AI_CELL_CLASSES) <= set(KNOWN_CLASSES)
    assert clf.temperature > 0 and 0 < clf.low_confidence < 1 and 0 < clf.field_threshold <= 1
    n = 0
    for rgb, labels, cells in _fields():
        p = clf.classify(rgb, labels, cells, None)
        assert p.shape == (len(cells), len(MODEL_CLASSES))
        for c in cells:
            assert c.ai_label in AI_CELL_CLASSES
            assert c.ai_confidence is not None and 0.0 < c.ai_confidence <= 1.0
            assert c.ai_probabilities is not None and list(c.ai_probabilities) == list(MODEL_CLASSES)
            assert sum(c.ai_probabilities.values()) == pytest.approx(1.0, abs=1e-3)
            assert max(c.ai_probabilities.values()) == pytest.approx(c.ai_confidence, abs=1e-4)
        score = clf.field_score(cells)
        assert score is None or 0.0 <= score <= 1.0
        n += len(cells)
    assert n > 0


def test_the_clinic_runtime_has_no_torch():
    import subprocess
    import sys

    code = ("import sys; from leukodx.inference.cell_classifier import CellClassifier; CellClassifier.load(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_empty_cell_list(clf):
    rgb, _, _ = _field()
    empty = np.zeros(rgb.shape[:2], np.int32)
    cells: list = []
    assert clf.classify(rgb, empty, cells, 17.0).shape == (0, len(MODEL_CLASSES))
    assert cells == [] and clf.field_score([]) is None


@pytest.mark.parametrize("gains,offset", [((0.9, 1.0, 1.08), 0.0), ((1.0, 1.0, 1.0), -12.0)])
def test_white_balance_and_brightness_barely_move_the_probabilities(clf, gains, offset):
    """Per-crop standardisation removes a per-channel gain and offset (up to 8-bit rounding and clipping)."""
    for rgb, labels, cells in _fields()[:4]:
        shifted = np.clip(rgb.astype(np.float64) * np.array(gains) + offset, 0, 255).round().astype(np.uint8)
        p0 = clf.probabilities(rgb, labels, cells, 17.0)
        p1 = clf.probabilities(shifted, labels, cells, 17.0)
        # not exact: the gain clips the bright background at 255, which moves the per-crop statistics a little
        assert np.abs(p1 - p0).max() < 0.25
        assert (p1.argmax(1) == p0.argmax(1)).mean() >= 0.8


def test_rescaling_the_field_with_its_red_cells_keeps_the_crops(clf):
    rgb, labels, cells = _field("Early", 3)
    big_rgb = np.repeat(np.repeat(rgb, 2, 0), 2, 1)
    big_labels = np.repeat(np.repeat(labels, 2, 0), 2, 1)
    big_cells = cells_from_labels(big_labels)
    p0 = clf.probabilities(rgb, labels, cells, 16.0)
    p1 = clf.probabilities(big_rgb, big_labels, big_cells, 32.0)
    assert np.abs(p1 - p0).max() < 0.2


def test_bad_inputs_are_refused(clf):
    rgb, labels, cells = _field()
    with pytest.raises(ValueError, match="same size"):
        clf.classify(rgb, labels[:-1], cells, None)


def test_a_missing_or_foreign_model_directory_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="missing"):
        CellClassifier.load(tmp_path / "nowhere")
    from leukodx.assets import default_model_dir

    with pytest.raises(ModelError, match="not a cell-type model"):
        CellClassifier.load(default_model_dir("classify"))


def test_a_replaced_onnx_file_is_refused(tmp_path, clf):
    d = tmp_path / "cells"
    shutil.copytree(clf.dir, d)
    from leukodx.assets import default_model_dir

    shutil.copyfile(default_model_dir("classify") / "model.onnx", d / "model.onnx")
    with pytest.raises(ModelError):
        CellClassifier.load(d)
    cfg = json.loads((clf.dir / "config.json").read_text())
    assert cfg["cells"]["never_predicted"] == ["smudge"]


def test_real_fields_of_leukaemia_show_more_blasts_than_benign(real_data, clf):
    """On a few real Taleqani fields through the bundled segmenter, leukaemic fields have a higher blast share
    than benign ones (skipped without ../shared/data)."""
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
            got.append(0.0 if s is None else s)
    assert scores["Benign"] and scores["Early"]
    assert np.mean(scores["Early"]) > np.mean(scores["Benign"])


def test_the_cell_facts_are_the_configs_typed_section_and_old_untyped_keys_load_the_same(tmp_path, clf):
    from leukodx.models.model_config import parse_model_config

    raw = json.loads((clf.dir / "config.json").read_text())
    cfg = parse_model_config(raw)
    assert cfg.cells is not None and cfg.cells.crop_rbc == raw["cells"]["crop_rbc"] == clf.width_rbc
    assert cfg.cells.field_threshold == raw["cells"]["field_threshold"] == clf.field_threshold
    assert cfg.cells.crop_size == raw["input_size"][0] == clf.size[0]
    assert cfg.to_json()["cells"]["field_fit"] == raw["cells"]["field_fit"]  # untyped keys kept
    old = raw | {"cells": {"crop_rbc": 5.0}, "input_size": [48, 48]}  # format 1: the crop size was the input's
    assert (parse_model_config(old).cells.crop_size, parse_model_config(old).cells.field_threshold) == (48, 0.5)
    assert parse_model_config(raw | {"cells": None}).cells is None
    d = tmp_path / "cells"
    shutil.copytree(clf.dir, d)
    (d / "config.json").write_text(json.dumps(raw | {"cells": raw["cells"] | {"crop_size": 32, "crop_rbc": 3}}))
    small = CellClassifier.load(d, threads=1)
    assert small.size == (32, 32) and small.width_rbc == 3.0
    rgb, labels, cells = _field()
    assert small.crops(rgb, cells, 17.0).shape == (len(cells), 32, 32, 3)
