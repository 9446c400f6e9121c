"""The bundled two-output segmenter through the analysis: whole cells with their nucleus, no cell where there is no
leukocyte, and `predict --save-masks` (issue 20)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from leukodx.data.synthetic import synthetic_field, synthetic_instances


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
    # and a crop segmenter for images that a leukocyte fills (issue 28), of the same kind
    crop = read_model_config(default_model_dir("segment") / cfg.crop_segmenter.dir)
    assert crop.outputs == cfg.outputs and crop.crop_segmenter is None


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


def test_a_field_without_leukocytes_gets_no_call_and_is_left_out_of_the_case_call(analysis):
    """A field call rests on cells (issue 28): no leukocyte found, no class call, no error flag for it."""
    from leukodx.inference.pipeline import NO_LEUKOCYTE

    rgb, labels = synthetic_instances("Early", 224, seed=1)
    empty = analysis.analyze(_without_leukocytes(rgb, labels), heatmap=True)
    assert empty.cell_count == 0 and empty.label is None and empty.no_call_reason == NO_LEUKOCYTE
    assert empty.flag in ("ok", "out_of_distribution") and empty.heatmap is None and empty.probabilities
    called = analysis.analyze(synthetic_instances("Pro", 224, seed=3)[0])
    assert called.cell_count > 0 and called.label is not None and not called.no_call_reason
    case = analysis.summarize([empty, called])
    assert case.n_fields == 2 and case.n_analysed == 1 and case.total_cell_count == called.cell_count
    assert case.mean_probabilities == pytest.approx(called.probabilities, abs=1e-6)
    assert analysis.summarize([empty]).reasons == ["no leukocyte found in any field"]


def test_a_single_cell_crop_is_analysed_and_its_cell_outlined(analysis):
    """A crop that one leukocyte fills, its red cells cut by the edges (none measurable): analysed at an estimated
    scale, the leukocyte outlined (one detected centre on it), typed and counted."""
    from test_smear_check import _cell_crop

    for seed in (0, 1):
        crop, labels, _ = _cell_crop(seed)
        r = analysis.analyze(crop)
        assert r.scale_source.startswith("estimated from") and r.scale_factor is not None, r.size_note
        assert f"(scale {r.scale_source})" in r.size_note
        assert r.label is not None and r.cell_count >= 1, (seed, r.flag_reason, r.no_call_reason)
        on_cell = [c for c in r.cells if labels[int(round(c.centroid[0])), int(round(c.centroid[1]))] == 1]
        assert len(on_cell) == 1 and on_cell[0].ai_label is not None, [c.centroid for c in r.cells]


def test_a_single_cell_crops_call_comes_from_its_cell(analysis):
    """A single-cell crop is called from its cell: P(leukaemic) is its leukocyte's P(blast) from the cell model, and
    a leukaemic call is supported by one blast (a crop holds one cell); the size note says so."""
    from test_smear_check import _cell_crop

    benign = analysis.classifier.config.case_rule.benign
    for seed in (0, 1):
        r = analysis.analyze(_cell_crop(seed)[0])
        assert "outlined as a single-cell crop" in r.size_note and "called from its cell" in r.size_note
        blast = max(c.ai_probabilities["blast"] for c in r.cells if c.ai_label not in (None, "not_leukocyte"))
        assert r.malignant_probability == pytest.approx(blast, abs=1e-5)
        assert (r.label in benign) == (blast < 0.5) and r.confidence == r.probabilities[r.label]
        assert "the rule asks for at least" not in r.flag_reason


def test_a_crop_called_leukaemic_from_its_blast_is_flagged_for_its_subtype(analysis, monkeypatch):
    """A crop whose cell is a blast is called leukaemic, but its subtype is the field model's reading of one cell
    (right on 71 % of Taleqani's val cell crops): flagged, in words, and the case needs review."""
    from test_smear_check import _cell_crop

    clf = analysis.cell_classifier
    typed = clf.classify_many

    def as_blasts(fields):  # the cell model sees a blast in every cell
        typed(fields)
        for _, _, cells, _ in fields:
            for c in cells:
                c.ai_label, c.ai_confidence, c.ai_probabilities = "blast", 0.97, {"blast": 0.97, "lymphocyte": 0.03}

    monkeypatch.setattr(clf, "classify_many", as_blasts)
    r = analysis.analyze(_cell_crop(0)[0])
    benign = analysis.classifier.config.case_rule.benign
    assert r.label not in benign and r.malignant_probability == pytest.approx(0.97, abs=1e-5)
    assert r.flag == "low_confidence" and "subtype" in r.flag_reason and "one cell" in r.flag_reason, r.flag_reason
    assert "P(blast) 0.97, the subtype from the field model" in r.size_note
    assert analysis.summarize([r]).needs_review


def test_a_crop_called_benign_while_its_cell_may_be_a_blast_is_flagged(analysis, monkeypatch):
    """A crop called not leukaemic from its cell is flagged when the cell model still gives a blast a fair chance
    (P(blast) >= CROP_BLAST_DOUBT); a cell it is sure of is not."""
    from leukodx.inference.agreement import CROP_BLAST_DOUBT
    from test_smear_check import _cell_crop

    clf = analysis.cell_classifier
    typed = clf.classify_many
    benign = analysis.classifier.config.case_rule.benign
    for p_blast, flagged in ((0.25, True), (CROP_BLAST_DOUBT / 5, False)):
        def as_lymphocytes(fields, p=p_blast):
            typed(fields)
            for _, _, cells, _ in fields:
                for c in cells:
                    c.ai_label, c.ai_confidence = "lymphocyte", 1 - p
                    c.ai_probabilities = {"blast": p, "lymphocyte": 1 - p}

        monkeypatch.setattr(clf, "classify_many", as_lymphocytes)
        r = analysis.analyze(_cell_crop(0)[0])
        assert r.label in benign and r.malignant_probability == pytest.approx(p_blast, abs=1e-5)
        assert (r.flag == "low_confidence") is flagged, (r.flag, r.flag_reason)
        if flagged:
            assert "probability of 0.25" in r.flag_reason and "Read the cell yourself" in r.flag_reason


def test_a_crop_called_from_its_cell_is_not_flagged_for_looking_unlike_a_field(analysis, monkeypatch):
    """One cell is no field: the field model's features are far from its training fields on a crop. A crop called
    from its cell is not flagged out of distribution for that (a field still is); its score is kept."""
    from leukodx.inference.smear_check import check_smear
    from test_smear_check import _cell_crop

    crop = _cell_crop(0)[0]
    assert check_smear(crop).usable
    features = {**analysis.ood.features, "threshold": 1e-9}  # every field's features are "far"
    monkeypatch.setattr(analysis.ood, "features", features)
    r = analysis.analyze(crop)
    assert "called from its cell" in r.size_note and r.ood_score is not None and r.ood_score > 1
    assert r.flag != "out_of_distribution", r.flag_reason
    field = analysis.analyze(synthetic_field("Pre", 224, seed=3)[0])
    assert "called from its cell" not in field.size_note and field.flag == "out_of_distribution"


def test_the_lab_scale_wins_through_the_analysis(analysis):
    from test_smear_check import _cell_crop

    crop = _cell_crop(0)[0]
    r = analysis.analyze(crop, um_per_px=0.06)
    assert r.scale_source == "given by the lab" and r.um_per_px == pytest.approx(0.06)
    assert "(scale given by the lab)" in r.size_note
    assert analysis.analyze(crop).scale_source != "given by the lab"


def test_masks_overlay_and_predictions_json_describe_the_same_cells(tmp_path):
    """`predict --save-masks`, the overlay and predictions.json: the same cells, each with touches_border and
    nc_ratio (issue 28)."""
    import json

    from leukodx.cli import main
    from leukodx.inference.pipeline import load_analyzer
    from leukodx.inference.render import overlay_png

    rgb, _ = synthetic_instances("Pro", 224, seed=3)
    Image.fromarray(rgb).save(tmp_path / "field.png")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path / "field.png"), "--out", str(tmp_path / "out"), "--save-masks", "--no-heatmap"])
    assert exc.value.code in (0, None)
    row = next(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    field = json.loads((tmp_path / "out" / "predictions.json").read_text())["fields"][0]
    cells = np.asarray(Image.open(tmp_path / "out" / row["cell_mask"])).astype(np.int64)
    assert field["cells"] and sorted(c["id"] for c in field["cells"]) == sorted(np.unique(cells[cells > 0]))
    for c in field["cells"]:
        ys, xs = np.nonzero(cells == c["id"])
        assert c["area_px"] == len(ys) and c["bbox"] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        assert isinstance(c["touches_border"], bool) and c["touches_border"] == (
            ys.min() == 0 or xs.min() == 0 or ys.max() + 1 == cells.shape[0] or xs.max() + 1 == cells.shape[1])
        assert c["nc_ratio"] == pytest.approx(c["nucleus_area_px"] / c["area_px"], abs=1e-3)
    # the overlay is drawn from the same analysis: the same field gives the same cells and the same picture
    r = load_analyzer(threads=1).analyze(rgb)
    assert [c.id for c in r.cells] == [c["id"] for c in field["cells"]]
    overlay = Image.open(tmp_path / "out" / row["overlay"])
    assert np.array_equal(np.asarray(overlay), np.asarray(Image.open(io.BytesIO(overlay_png(rgb, r)))))


def _with_crop_segmenter(tmp_path, max_side_rbc: float, max_side_px: int | None = None):
    """A copy of the bundled segmenter whose config sends images at most `max_side_rbc` red cells across to a crop
    segmenter (here the bundled field segmenter itself, so only the routing differs)."""
    import json
    import shutil

    from leukodx.assets import default_model_dir

    src = default_model_dir("segment")
    d = tmp_path / "seg"
    d.mkdir(parents=True)
    for f in ("model.onnx", "model.safetensors"):
        shutil.copy(src / f, d / f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["crop_segmenter"] = {"dir": "small", "max_side_rbc": max_side_rbc, "max_side_px": max_side_px}
    (d / "config.json").write_text(json.dumps(cfg))
    small = d / "small"
    small.mkdir()
    for f in ("model.onnx", "model.safetensors"):
        shutil.copy(src / f, small / f)
    cfg.pop("crop_segmenter")
    (small / "config.json").write_text(json.dumps(cfg))
    return d


def test_an_image_a_leukocyte_fills_goes_to_the_crop_segmenter(tmp_path):
    """Images at most `crop_segmenter.max_side_rbc` red cells across (single-cell crops) are outlined by the crop
    segmenter, fields by the field segmenter; the size note and describe() say so."""
    from leukodx.inference.pipeline import Analysis
    from test_smear_check import _cell_crop

    a = Analysis(None, _with_crop_segmenter(tmp_path, 6.0), cell_classifier=False, threads=1)
    assert a.describe()["crop_segmenter"]["max_side_rbc"] == 6.0
    crop = _cell_crop(0)[0]  # 160 px, red cells 57 px: about 3 red cells across
    field = synthetic_instances("Pro", 224, seed=3)[0]  # about 12 red cells across
    r_crop, r_field = a.analyze_many([crop, field])
    assert "outlined as a single-cell crop" in r_crop.size_note and r_crop.cells
    assert "single-cell crop" not in r_field.size_note and r_field.cells
    # the same image where the lab says its red cells are 19 px (0.4 um/px): 8 red cells across, a field
    assert "single-cell crop" not in a.analyze(crop, um_per_px=0.4).size_note
    # larger in pixels than max_side_px (a camera's field whose red cells were measured too large): a field
    b = Analysis(None, _with_crop_segmenter(tmp_path / "px", 6.0, max_side_px=150), cell_classifier=False, threads=1)
    assert "single-cell crop" not in b.analyze(crop).size_note
    assert "single-cell crop" in b.analyze(crop[:150, :150]).size_note
    seen = []
    a.segmenter.crops.run = lambda fields: seen.extend(fields)  # the crop segmenter gets the crop alone
    a.analyze_many([crop, field])
    assert [f.result.path for f in seen] == [None] and len(seen) == 1


def test_a_missing_crop_segmenter_is_refused_with_what_to_do(tmp_path):
    import shutil

    from leukodx.errors import ModelError
    from leukodx.inference.pipeline import Analysis

    d = _with_crop_segmenter(tmp_path, 4.0)
    shutil.rmtree(d / "small")
    with pytest.raises(ModelError) as exc:
        Analysis(None, d, cell_classifier=False, threads=1)
    assert "small" in str(exc.value.message) and exc.value.hint
