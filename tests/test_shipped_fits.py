"""The fits that ship are commands (leukodx.deploy): the one int8 accept rule, the cell model's int8 from its crops,
and the cell-agreement rule chosen on validation rows; each writes into the model's config.json only when asked."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from leukodx.assets import ASSETS, default_model_dir
from leukodx.deploy.export import INT8_MAX_DROP_POINTS, accept_int8

pytest.importorskip("onnxruntime")


def test_the_one_int8_accept_rule():
    fast, slow = {"int8_faster": True}, {"int8_faster": False}
    assert accept_int8({"accuracy": 90.0}, {"accuracy": 90.0 - INT8_MAX_DROP_POINTS}, fast)
    assert not accept_int8({"accuracy": 90.0}, {"accuracy": 89.6}, fast)
    assert not accept_int8({"accuracy": 90.0}, {"accuracy": 91.0}, slow)  # better but not faster
    both = {"accuracy": 90.0, "balanced_accuracy": 80.0}
    assert accept_int8(both, {"accuracy": 89.9, "balanced_accuracy": 79.8}, fast)
    assert not accept_int8(both, {"accuracy": 90.5, "balanced_accuracy": 79.5}, fast)  # every metric counts


def test_the_cell_models_int8_from_its_crops_is_judged_and_written_only_when_asked(tmp_path):
    from leukodx.data.synthetic import synthetic_field
    from leukodx.deploy.export import add_int8_crops
    from leukodx.inference.engines import INT8_FILE

    d = tmp_path / "cells"
    shutil.copytree(ASSETS / "cells", d)
    (d / INT8_FILE).unlink()
    before = (d / "config.json").read_text()
    rng = np.random.default_rng(0)
    crops = np.stack([synthetic_field("Pre", 64, seed=s)[0] for s in range(24)]).transpose(0, 3, 1, 2)
    crops = crops.astype(np.float32)
    y = rng.integers(0, 3, len(crops))
    rec = add_int8_crops(d, crops[:16], crops, y, float_convs=(3, 1), record=False)
    assert rec["metric"] == "accuracy and balanced accuracy" and rec["n_calibration"] == 16 and rec["n_eval"] == 24
    assert set(rec["drop_points"]) == {"accuracy", "balanced_accuracy"}
    kept = accept_int8({k: rec[f"{k}_fp32"] for k in rec["drop_points"]},
                       {k: rec[f"{k}_int8"] for k in rec["drop_points"]}, rec)
    assert rec["kept"] == kept and rec["max_drop_points"] == INT8_MAX_DROP_POINTS
    assert not (d / INT8_FILE).exists() and (d / "config.json").read_text() == before  # measured, not written
    if kept:
        add_int8_crops(d, crops[:16], crops, y, float_convs=(3, 1))
        assert (d / INT8_FILE).is_file()
        assert json.loads((d / "config.json").read_text())["onnx"]["int8"]["sha256"] == rec["sha256"]


def _split(tmp_path, data):
    rows = sorted(p.relative_to(data).as_posix() for p in (data / "Original").rglob("*.jpg"))
    split = tmp_path / "split.csv"
    with split.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])
        for i, p in enumerate(rows):
            w.writerow([p, p.split("/")[1], ("val", "train", "test")[i % 3], f"g{i}"])
    return rows, split


def test_calibrate_fits_on_the_train_and_val_rows_of_a_split(tmp_path, synthetic_data):
    pytest.importorskip("torch")
    from _tiny_models import make_tiny_models
    from leukodx.deploy.calibrate import calibrate_model

    rows, split = _split(tmp_path, synthetic_data)
    cdir, _ = make_tiny_models(tmp_path / "models")
    rep = calibrate_model(cdir, synthetic_data, split)
    assert (rep["n_train"], rep["n_val"]) == (sum(i % 3 == 1 for i in range(len(rows))),
                                              sum(i % 3 == 0 for i in range(len(rows))))
    assert json.loads((cdir / "config.json").read_text())["temperature"] == rep["temperature"]


def test_the_cell_agreement_rule_is_chosen_on_val_rows_and_written_into_the_classifier(tmp_path, synthetic_data):
    from leukodx.deploy.calibrate import AGREEMENT_GRID, fit_cell_agreement

    rows, split = _split(tmp_path, synthetic_data)
    cdir = tmp_path / "classifier"
    shutil.copytree(default_model_dir("classify"), cdir)
    before = (cdir / "config.json").read_text()
    rep = fit_cell_agreement(cdir, synthetic_data, split, max_flagged=1.0, write=False, log=lambda _: None)
    n_val = sum(i % 3 == 0 for i in range(len(rows)))
    assert rep["n_val"] == n_val and len(rep["candidates"]) == np.prod([len(v) for v in AGREEMENT_GRID])
    best = rep["chosen"]
    assert best["shifted_healthy_called_malignant_unflagged"] == min(
        c["shifted_healthy_called_malignant_unflagged"] for c in rep["candidates"])
    assert (cdir / "config.json").read_text() == before  # measured, not written
    fit_cell_agreement(cdir, synthetic_data, split, max_flagged=1.0, log=lambda _: None)
    written = json.loads((cdir / "config.json").read_text())["cell_agreement"]
    keys = ("min_blasts", "max_blast_share_benign", "min_blast_probability", "max_unidentified_share")
    assert {k: written[k] for k in keys} == {k: best[k] for k in keys}
    assert "leukodx calibrate --cell-agreement" in written["choice"]


def test_calibrate_names_what_a_rule_fit_needs(tmp_path):
    from clitools import run_cli

    for extra in (["--post-processing"], ["--cell-agreement"], ["--cell-agreement", "--post-processing",
                                                                  "--split", str(tmp_path)]):
        code, out = run_cli(["calibrate", "--model", str(default_model_dir("segment")), "--data", str(tmp_path),
                             *extra])
        assert code != 0 and "--cell-agreement" in out and "--post-processing" in out, out


def test_the_cell_models_int8_refuses_an_out_file_it_would_not_write(tmp_path):
    """The int8 of a cell-type model is made from and written into its own directory: `--out` elsewhere is refused
    in one line before any work, and nothing is written (it used to be ignored, overwriting RUN/model.onnx)."""
    from typer.testing import CliRunner

    from leukodx.cli import app

    run = tmp_path / "cells"
    run.mkdir()
    shutil.copy(ASSETS / "cells" / "config.json", run / "config.json")
    r = CliRunner().invoke(app, ["export", "onnx", "--model", str(run), "--int8", "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code != 0 and "Leave out --out" in " ".join(r.output.split())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cells", "config.json"]


def test_the_crop_segmenters_post_processing_is_fitted_into_its_own_config(tmp_path, monkeypatch):
    """`leukodx calibrate --post-processing --crop`: the crop model's mask threshold, nucleus rule and splitting
    are chosen on val parts and written into its own config.json; the field segmenter's is untouched. A segmenter
    without a crop model is refused in one message."""
    from leukodx.deploy import calibrate as cal
    from leukodx.errors import ModelError
    from leukodx.evaluation import cells

    data = ASSETS.parents[2].parent / "shared" / "data"
    if not (data / "pbc").is_dir():
        pytest.skip("shared data absent")
    seg = tmp_path / "segmenter"
    shutil.copytree(default_model_dir("segment"), seg)
    field_before = (seg / "config.json").read_text()
    real = cells.load_parts
    monkeypatch.setattr(cells, "load_parts", lambda d, s, split, *a, **k: real(d, s, split, 2, 16, 2, 2))
    rep = cal.fit_post_processing(seg, data, ASSETS.parents[2] / "benchmarks" / "splits", log=lambda _: None,
                                  crop=True)
    assert rep["model"] == str(seg / "crops") and len(rep["candidates"]) == 9 * len(cal.CROP_SPLITS)
    assert rep["n_pbc_cut"] > 0 and all("pbc_cut_exactly_one" in c for c in rep["candidates"])
    written = json.loads((seg / "crops" / "config.json").read_text())["thresholds"]
    assert written["mask"] == rep["chosen"]["mask"] and written["instances"]["h"] == rep["chosen"]["h"]
    assert "--post-processing --crop" in written["choice"]
    assert (seg / "config.json").read_text() == field_before
    cfg = json.loads(field_before)
    del cfg["crop_segmenter"]
    (seg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="no crop_segmenter"):
        cal.fit_post_processing(seg, data, tmp_path, crop=True, log=lambda _: None)
