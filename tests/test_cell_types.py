"""The cell-type classifier: crops at the red-cell scale (mirrored at the field's edge, never dropped), the ONNX
runtime (one batched call per field, 'unidentified' below its threshold), the trainer's input checks and a
tiny training run on synthetic crops (no real data needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from leukodx.data.synthetic import synthetic_field
from leukodx.errors import DatasetError, ModelError
from leukodx.inference.cell_classes import CELL_CLASS_WORDS, KNOWN_CLASSES, NOT_COUNTED, UNIDENTIFIED
from leukodx.inference.cell_classifier import CellClassifier, crop_cells
from leukodx.inference.instances import cells_from_labels
from leukodx.inference.types import CellInstance

torch = pytest.importorskip("torch")
cells_training = pytest.importorskip("leukodx.training.cells")
from leukodx.data import cell_crops, sources  # noqa: E402
from leukodx.training.config import resolve_config  # noqa: E402

MODEL_CLASSES = cells_training.MODEL_CLASSES
AI_CELL_CLASSES = (*MODEL_CLASSES, UNIDENTIFIED)


# ------------------------------------------------------------------------------------------------- crops
def _ramp(h: int = 50, w: int = 70) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 5 % 256, xx * 3 % 256, (yy + xx) % 256], -1).astype(np.uint8)


def test_a_crop_inside_the_field_is_the_field_resized():
    rgb = _ramp()
    # red cells 4 px: a crop 16 px wide; centred on pixel (24.5, 34.5) in pixel-centre terms = rows 17..33
    out = crop_cells(rgb, [(24.5, 34.5)], 4.0, size=16)
    assert out.shape == (1, 16, 16, 3)
    assert np.array_equal(out[0], rgb[17:33, 27:43])


def test_crops_at_the_border_are_mirrored_not_dropped():
    rgb = _ramp()
    # centres on pixel corners (a pixel's centre is k + 0.5 in the crop's continuous frame): whole-pixel crops
    centres = [(-0.5, -0.5), (48.5, 68.5), (0.0, 35.0), (25.0, 69.0)]
    out = crop_cells(rgb, centres, 4.0, size=16)
    assert out.shape == (4, 16, 16, 3)  # one crop per centre, whatever its place
    # the corner crops equal crops of the explicitly mirrored field
    padded = np.pad(rgb, ((8, 8), (8, 8), (0, 0)), mode="symmetric")
    assert np.array_equal(out[0], padded[0:16, 0:16])
    assert np.array_equal(out[1], padded[49:65, 69:85])
    black = crop_cells(rgb, centres[:1], 4.0, size=16, pad="constant")
    assert (black[0, :7, :7] == 0).all() and black[0, 8:, 8:].any()


def test_an_image_a_leukocyte_fills_is_framed_by_its_background_not_mirrored():
    # a 40-px single-cell image: dark cell on a pale plasma corner; red cells 16 px -> crops 64 px wide (> 40 / 0.75)
    rgb = np.full((40, 40, 3), (90, 40, 140), np.uint8)
    rgb[:20, :] = (235, 225, 230)  # its upper half: plasma, the brightest quarter
    out = crop_cells(rgb, [(20.0, 20.0)], 16.0, size=64)
    assert (out[0, :8, :8] == (235, 225, 230)).all()  # the frame: the background's colour, not a mirrored cell
    assert (out[0, -8:, -8:] == (235, 225, 230)).all()
    assert np.array_equal(crop_cells(rgb, [(20.0, 20.0)], 16.0, size=64, pad="symmetric")[0, -8:, -8:],
                          np.pad(rgb, ((12, 12), (12, 12), (0, 0)), mode="symmetric")[-8:, -8:])
    # an image 3 red cells wide or more is mirrored as before
    wide = np.tile(rgb, (2, 2, 1))  # 80 px >= 0.75 x 96 (red cells 24 px)
    assert np.array_equal(crop_cells(wide, [(40.0, 40.0)], 24.0, size=96),
                          crop_cells(wide, [(40.0, 40.0)], 24.0, size=96, pad="symmetric"))


def test_a_crop_wider_than_the_field_still_comes_back():
    rgb = _ramp(20, 20)
    out = crop_cells(rgb, [(10.0, 10.0)], 30.0, size=64)  # 120 px wide, the field 20
    assert out.shape == (1, 64, 64, 3) and out.std() > 0


def test_crops_follow_the_red_cell_scale():
    """A field twice as large with twice the red-cell diameter gives (nearly) the same crop."""
    from PIL import Image

    rgb, _ = synthetic_field("Pre", 128, seed=3)
    big = np.asarray(Image.fromarray(rgb).resize((256, 256)))
    a = crop_cells(rgb, [(64.0, 64.0)], 10.0, size=32).astype(float)
    b = crop_cells(big, [(128.5, 128.5)], 20.0, size=32).astype(float)
    assert np.abs(a - b).mean() < 12


# ------------------------------------------------------------------------------------------------- training
def _synthetic_crops(n_per: int = 12, seed: int = 0):
    """Discs on a pale background: 'blast' large purple, 'lymphocyte' small dark, 'not_leukocyte' pink."""
    rng = np.random.default_rng(seed)
    s = cell_crops.STORE_SIZE
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    looks = {"blast": (26, (150, 90, 200)), "lymphocyte": (14, (60, 30, 110)), "not_leukocyte": (15, (230, 150, 160))}
    crops, labels, split = [], [], []
    for part, n in (("train", n_per), ("val", n_per // 2), ("test", n_per // 2)):
        for lab, (r, col) in looks.items():
            for _ in range(n):
                img = np.full((s, s, 3), 235.0) + rng.normal(0, 4, (s, s, 3))
                disc = (yy - rng.normal(0, 1.5)) ** 2 + (xx - rng.normal(0, 1.5)) ** 2 <= (r * rng.uniform(0.9, 1.1)) ** 2
                img[disc] = np.array(col) + rng.normal(0, 6, 3)
                crops.append(np.clip(img, 0, 255).astype(np.uint8))
                labels.append(lab)
                split.append(part)
    k = len(labels)
    field_label = ["Benign" if lab == "lymphocyte" else "Pre" for lab in labels]
    src = ["pbc" if lab == "not_leukocyte" else "taleqani" for lab in labels]
    kind = [f"taleqani:{f}:cell" if s_ == "taleqani" else "pbc:platelet" for s_, f in zip(src, field_label, strict=True)]
    paths = [f"Original/{f}/f{i // 2}.jpg" for i, f in enumerate(field_label)]
    return cell_crops.CropData(np.stack(crops), np.array(labels), np.array(split), np.array(src),
                                   np.array(kind), np.array(paths), np.array(field_label)), k


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    data, _ = _synthetic_crops()
    out = tmp_path_factory.mktemp("cells") / "run"
    cfg = resolve_config("cells", overrides={"out": str(out), "epochs": 2, "time_limit_s": 30.0, "pretrained": "",
                                             "samples_per_epoch": 96, "batch_size": 32, "threads": 2})
    result = cells_training.train_on_crops(data, cfg, log=lambda m: None)
    return out, result


def test_a_tiny_training_run_writes_a_model_directory_with_onnx(tiny_model):
    import json

    out, result = tiny_model
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "classify" and cfg["classes"] == list(MODEL_CLASSES)
    assert cfg["input_size"] == [64, 64] and cfg["normalization"] == "per_image"
    assert cfg["temperature"] > 0 and 0 < cfg["thresholds"]["low_confidence"] < 1
    assert "Benign" in cfg["training"]["weak_label_rule"] and cfg["training"]["cleaning_rule"]
    assert set(cfg["training"]["citations"]) == {"pbc", "taleqani", "weights"}  # what it learnt from, no more
    assert "smudge" in cfg["cells"]["never_predicted"]
    assert (out / "model.onnx").is_file() and (out / "model.safetensors").is_file()
    assert result["test"]["n_crops"] > 0


def _field_cells(seed: int = 0):
    rgb, mask = synthetic_field("Pre", 224, seed=seed)
    labels, _ = ndi.label(mask)
    labels = labels.astype(np.int32)
    return rgb, labels, cells_from_labels(labels)


def test_the_onnx_runtime_classifies_a_fields_cells_in_one_batched_call(tiny_model):
    out, _ = tiny_model
    clf = CellClassifier.load(out, threads=1)
    rgb, labels, cells = _field_cells(1)
    extra = [CellInstance(id=99, area_px=10, centroid=(1.0, 1.0), bbox=(0, 0, 3, 3))]  # at the field's corner
    cells = cells + extra
    calls = []
    run = clf.engine.run

    def spy(batch):
        calls.append(batch.shape)
        return run(batch)

    clf.engine.run = spy
    probs = clf.classify(rgb, labels, cells, 17.0)
    assert calls == [(len(cells), 3, 64, 64)]  # one call, every cell in it (the corner one too)
    assert probs.shape == (len(cells), len(MODEL_CLASSES)) and np.allclose(probs.sum(1), 1)
    for c in cells:
        assert c.ai_label in AI_CELL_CLASSES and 0 < c.ai_confidence <= 1
    clf.classify(rgb, labels, [], 17.0)
    assert len(calls) == 1  # no cells, no call


def test_unidentified_below_the_threshold(tiny_model):
    clf = CellClassifier.load(tiny_model[0], threads=1)
    p = np.zeros((2, len(MODEL_CLASSES)))
    p[0, 0], p[0, 1:] = 0.91, 0.09 / (len(MODEL_CLASSES) - 1)
    p[1, :] = 1 / len(MODEL_CLASSES)
    clf.low_confidence = 0.5
    names, conf = clf.answer(p)
    assert names == ["blast", UNIDENTIFIED] and conf[0] == pytest.approx(0.91)
    rgb, labels, cells = _field_cells(2)
    clf.low_confidence = 1.01
    clf.classify(rgb, labels, cells, None)
    assert cells and all(c.ai_label == UNIDENTIFIED for c in cells)


def test_field_score_is_the_blast_share_of_counted_leukocytes():
    def cell(label):
        return CellInstance(id=1, area_px=1, centroid=(0.0, 0.0), bbox=(0, 0, 1, 1), ai_label=label, ai_confidence=0.9)

    cells = [cell("blast"), cell("lymphocyte"), cell("not_leukocyte"), cell(UNIDENTIFIED), cell("blast")]
    assert CellClassifier.field_score(cells) == pytest.approx(2 / 3)
    assert CellClassifier.field_score([cell("not_leukocyte")]) is None


def test_the_vocabulary_has_words_for_every_answer():
    assert set(AI_CELL_CLASSES) <= set(KNOWN_CLASSES)
    for c in KNOWN_CLASSES:
        assert CELL_CLASS_WORDS[c]
    assert CELL_CLASS_WORDS["ig"] == "Immature granulocyte" and CELL_CLASS_WORDS["not_leukocyte"] == "Not a leukocyte"
    assert {"not_leukocyte", UNIDENTIFIED, "excluded"} <= set(NOT_COUNTED)


def test_a_model_of_other_classes_answers_in_them_and_no_cells_section_is_refused(tmp_path, tiny_model):
    import json
    import shutil

    d = tmp_path / "other"
    shutil.copytree(tiny_model[0], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["classes"] = ["b0", "b1", "b2", "b3"] + cfg["classes"][4:]
    cfg["cells"] |= {"crop_rbc": 3.0, "field_threshold": 0.25}
    (d / "config.json").write_text(json.dumps(cfg))
    clf = CellClassifier.load(d, threads=1)
    assert clf.classes[:4] == ("b0", "b1", "b2", "b3") and (clf.width_rbc, clf.field_threshold) == (3.0, 0.25)
    rgb, labels, cells = _field_cells(3)
    clf.low_confidence = 0.0
    clf.classify(rgb, labels, cells, 17.0)
    assert cells and all(c.ai_label in clf.classes for c in cells)
    for change in ({"task": "segment"}, {"cells": None}):
        (d / "config.json").write_text(json.dumps(cfg | change))
        with pytest.raises(ModelError, match="not a cell-type model"):
            CellClassifier.load(d)
    with pytest.raises(ModelError, match="missing"):
        CellClassifier.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------- bad input
def test_the_crop_stores_labels_are_the_runtimes_names():
    from leukodx.inference.cell_classes import NOT_LEUKOCYTE

    assert cell_crops.NOT_LEUKOCYTE == NOT_LEUKOCYTE and NOT_LEUKOCYTE in cell_crops.MODEL_CLASSES
    assert set(cell_crops.MODEL_CLASSES) <= set(KNOWN_CLASSES)


def test_a_pbc_folder_without_the_classes_names_found_and_expected(tmp_path):
    (tmp_path / "neutrophil").mkdir()
    (tmp_path / "blasts").mkdir()
    with pytest.raises(DatasetError) as e:
        sources.check("pbc", tmp_path)
    msg = e.value.message
    assert "lacks" in msg and "basophil" in msg and "it holds blasts, neutrophil" in msg and "expected" in msg


def test_missing_folders_are_one_clear_line(tmp_path):
    with pytest.raises(DatasetError, match="PBC folder .* does not exist"):
        sources.check("pbc", tmp_path / "nope")
    (tmp_path / "tal" / "Original" / "Benign").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Segmented"):
        sources.check("taleqani", tmp_path / "tal")


def test_the_command_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from leukodx.cli import main

    (tmp_path / "pbc" / "neutrophil").mkdir(parents=True)
    (tmp_path / "tal").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["train", "cells", "--pbc", str(tmp_path / "pbc"), "--taleqani", str(tmp_path / "tal"),
              "--taleqani-split", str(tmp_path / "split.csv"), "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "lacks the class folder(s)" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------- Chula source
def _chula_folder(root, slides=("1", "2", "3", "4")):
    """A tiny chula-wbc folder: per slide a lymphocyte group (L-<slide>) and a neutrophil group (N-<slide>), 2
    frames each with one typed box; slide 1 frames 1..2 hold a further degenerate box; one field has no labels."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["file,group,part_in_source,kinds,n_boxes"]
    for s in slides:
        for letter, cls in (("L", 3), ("N", 0)):
            for k in range(2):
                name = f"{letter}-{s}_{k:04d}"
                Image.new("RGB", (120, 80), (200, 150, 160)).save(root / "images" / f"{name}.jpg")
                box = f"{cls} 0.5 0.5 0.5 0.7\n" + ("1 0.1 0.1 0.01 0.02\n" if s == "1" else "")
                if (s, letter, k) != ("4", "N", 1):
                    (root / "labels" / f"{name}.txt").write_text(box)
                rows.append(f"{name}.jpg,{letter}-{s},train,x,1")
    (root / "fields.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_chula_split_keeps_a_slide_on_one_side_and_each_kind_in_val_and_test(tmp_path):
    rows = sources.chula_split(_chula_folder(tmp_path / "chula", slides=("1", "2", "3", "4", "5", "6")))
    part_of_slide: dict = {}
    for r in rows:
        part_of_slide.setdefault(r["group"], set()).add(r["split"])
    assert all(len(p) == 1 for p in part_of_slide.values())  # L-3 and N-3 (one slide) never apart
    for kind in ("lymphocyte", "neutrophil"):
        assert {r["split"] for r in rows if r["label"] == kind} == {"train", "val", "test"}
    assert rows == sources.chula_split(tmp_path / "chula")  # deterministic


def test_the_chula_reader_gives_each_typed_box_its_kind_at_the_sources_scale(tmp_path):
    root = _chula_folder(tmp_path / "chula")
    samples = list(cell_crops.iter_chula(root))
    assert len(samples) == 15  # 16 fields, one without its label file (its leukocytes unknown, not absent)
    assert all(s.rbc_diameter == sources.SOURCES["chula"].rbc_diameter and len(s.centres) == 1 for s in samples)
    assert {s.path[len("images/"):][0]: s.labels[0] for s in samples} == {"L": "lymphocyte", "N": "neutrophil"}
    (root / "labels" / "L-2_0000.txt").write_text("7 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DatasetError, match="class 0 to 4"):
        list(cell_crops.iter_chula(root))
