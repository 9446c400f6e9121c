"""The bundled two-output segmenter through the analysis: whole cells with their nucleus, no cell where there is no
leukocyte, and `predict --save-masks` (issue 20)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from leukodx.data.synthetic import synthetic_instances


@pytest.fixture(scope="module")
def analysis():
    from leukodx.inference.pipeline import load_analyzer

    return load_analyzer(threads=1)


def _without_leukocytes(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The field with every leukocyte painted over by the field's own background around it."""
    cover = ndi.binary_dilation(labels > 0, iterations=4)
    out = rgb.copy()
    out[cover] = np.median(rgb[~cover & (rgb.mean(axis=2) > np.percentile(rgb.mean(axis=2), 70))], axis=0)
    return out


def test_the_bundled_segmenter_has_two_outputs():
    from leukodx.assets import default_model_dir
    from leukodx.models.model_config import read_model_config

    cfg = read_model_config(default_model_dir("segment"))
    assert cfg.outputs == ["cell", "nucleus"] and cfg.arch_kwargs["out_channels"] == 2


def test_cells_are_whole_leukocytes_with_their_nucleus(analysis):
    rgb, labels = synthetic_instances("Pro", 224, seed=3)
    r = analysis.analyze(rgb)
    assert r.cells and r.nucleus_mask is not None and r.nucleus_mask.shape == rgb.shape[:2]
    assert not (r.nucleus_mask & ~r.mask).any()  # the nucleus lies inside the cells
    for c in r.cells:
        assert c.nucleus_area_px is not None and 0 < c.nucleus_area_px <= c.area_px
        assert c.nc_ratio == pytest.approx(c.nucleus_area_px / c.area_px, abs=1e-3)
    # each drawn leukocyte holds one detected centre (the synthetic smear's exact instances)
    centres = [labels[int(round(c.centroid[0])), int(round(c.centroid[1]))] for c in r.cells]
    assert sorted(k for k in centres if k) == list(range(1, int(labels.max()) + 1))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_field_without_leukocytes_gets_no_cells(analysis, seed):
    rgb, labels = synthetic_instances("Early", 224, seed=seed)
    r = analysis.analyze(_without_leukocytes(rgb, labels))
    assert r.cell_count == 0 and not r.cells


def test_predict_save_masks(tmp_path):
    from leukodx.cli import main

    rgb, _ = synthetic_instances("Pre", 224, seed=5)
    Image.fromarray(rgb).save(tmp_path / "field.png")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path / "field.png"), "--out", str(tmp_path / "out"), "--save-masks", "--no-heatmap"])
    assert exc.value.code in (0, None)
    row = next(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    cells = np.asarray(Image.open(tmp_path / "out" / row["cell_mask"]))
    nucleus = np.asarray(Image.open(tmp_path / "out" / row["nucleus_mask"]))
    assert cells.dtype == np.uint16 and cells.shape == rgb.shape[:2]
    assert len(np.unique(cells[cells > 0])) == int(row["cell_count"]) > 0
    assert set(np.unique(nucleus)) <= {0, 255} and (nucleus[cells == 0] == 0).all()
