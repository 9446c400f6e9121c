"""`leukodx evaluate` end to end on synthetic smears with tiny models, through the CLI (in-process)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from leukodx.cli import main
from leukodx.data.images import read_reference_mask
from leukodx.data.layout import TALEQANI_CLASSES as CLASSES
from leukodx.data.layout import load_dataset
from leukodx.data.synthetic import make_synthetic_dataset
from leukodx.models import create_model, save_model
from leukodx.models.registry import register

CLASSIFICATION_KEYS = {"n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                       "confusion_matrix", "classes", "per_class"}
PER_CLASS_KEYS = {"precision", "recall", "specificity", "f1", "support"}
SEGMENTATION_KEYS = {"n_images", "dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy",
                     "n_reference_failed", "count_mae"}


# ---------------------------------------------------------------------------------------------------------------
# tiny models


class ConstantSegmenter(nn.Module):
    """Logits of one constant value everywhere: every pixel foreground (bias > 0) or background."""

    def __init__(self, bias: float = 5.0):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([float(bias)]))

    def forward(self, x):
        return torch.zeros_like(x[:, :1]) + self.bias


class ConstantClassifier(nn.Module):
    def __init__(self, num_classes: int = 4, favourite: int = 0):
        super().__init__()
        logits = torch.zeros(num_classes)
        logits[favourite] = 3.0
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


register("segment", "test-constant")(lambda bias=5.0: ConstantSegmenter(bias))
register("classify", "test-constant")(lambda num_classes=4, favourite=0: ConstantClassifier(num_classes, favourite))


def save_classifier(d: Path, classes=CLASSES, size: int = 32, temperature: float = 1.0) -> Path:
    torch.manual_seed(0)
    net = create_model("classify", "smearnet", num_classes=len(classes))
    return save_model(d, net, {"task": "classify", "arch": "smearnet", "arch_kwargs": {"num_classes": len(classes)},
                               "classes": list(classes), "input_size": [size, size], "temperature": temperature})


def save_segmenter(d: Path, size: int = 32) -> Path:
    torch.manual_seed(0)
    net = create_model("segment", "unet", base_channels=4, depth=2)
    return save_model(d, net, {"task": "segment", "arch": "unet", "arch_kwargs": {"base_channels": 4, "depth": 2},
                               "input_size": [size, size], "thresholds": {"probability": 0.5},
                               "mask_threshold": 128})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"classify": save_classifier(root / "clf"), "segment": save_segmenter(root / "seg")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), per_class=3, size=64, seed=2)


def run(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


# ---------------------------------------------------------------------------------------------------------------
# the contract


def test_cli_writes_contract_metrics_report_and_lab_shift(capsys, tmp_path, data, models):
    out = tmp_path / "eval"
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(out), "--model", str(models["classify"]),
                     "--model", str(models["segment"]), "--shift", "lab", "--batch-size", "5")
    assert code == 0, text
    m = json.loads((out / "metrics.json").read_text())
    for section in ("classification", "classification_lab_shift"):
        assert CLASSIFICATION_KEYS <= m[section].keys(), section
        assert m[section]["n_images"] == 12
        assert m[section]["classes"] == list(CLASSES)
        for pc in m[section]["per_class"].values():
            assert PER_CLASS_KEYS <= pc.keys()
        assert np.array(m[section]["confusion_matrix"]).sum() == 12
    for section in ("segmentation", "segmentation_lab_shift"):
        assert SEGMENTATION_KEYS <= m[section].keys(), section
        assert m[section]["n_images"] == 12
        assert 0 <= m[section]["dice_global"] <= 1
        assert m[section]["count_mae"] is not None
    assert m["lab_shift"]["seed"] == 0 and m["lab_shift"]["magnification"] == pytest.approx([0.8, 1.2])
    assert m["classification"]["model"] == str(models["classify"])
    assert m["data"] == str(data) and m["split"]["subset"] == "all"
    assert "patient" in m["note"]
    # the shifted images really differ: the probabilities change
    assert m["classification_lab_shift"]["nll"] != m["classification"]["nll"]
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "lab-shifted" in report and "patient" in report
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"clf_confusion.png", "clf_roc.png", "clf_reliability.png", "seg_overlays.png",
            "clf_confusion_lab_shift.png", "lab_shift_examples.png"} <= plots
    preds = list(csv.DictReader(open(out / "classification_predictions_clf.csv")))
    assert len(preds) == 12 and "predicted_lab_shift" in preds[0]
    assert "accuracy" in text and "dice_global" in text  # the printed summary


def test_pipeline_numbers_match_a_model_with_a_known_answer(tmp_path, data):
    """Constant models: the classifier always says Pre, the segmenter marks every pixel. Metrics follow exactly."""
    from leukodx.evaluation.evaluate import evaluate

    clf = save_model(tmp_path / "const-clf", ConstantClassifier(4, favourite=2),
                     {"task": "classify", "arch": "test-constant", "arch_kwargs": {"favourite": 2},
                      "classes": list(CLASSES), "input_size": [32, 32]})
    seg = save_model(tmp_path / "const-seg", ConstantSegmenter(5.0),
                     {"task": "segment", "arch": "test-constant", "input_size": [32, 32]})
    m = evaluate(data, tmp_path / "out", [clf, seg], plots=False)
    c = m["classification"]
    assert c["accuracy"] == pytest.approx(0.25)
    assert c["confusion_matrix"] == [[0, 0, 3, 0]] * 4
    assert c["per_class"]["Pre"]["recall"] == 1.0 and c["per_class"]["Benign"]["recall"] == 0.0
    assert c["roc_auc_macro"] == pytest.approx(0.5)  # constant scores
    # the segmenter predicts everything: Dice per field = 2|R| / (|R| + N)
    ds = load_dataset(data)
    refs = [read_reference_mask(s.mask) for s in sorted(ds.samples, key=lambda s: s.path)]
    ok = [r for r in refs if r.mean() >= 0.001]
    s = m["segmentation"]
    assert s["dice_global"] == pytest.approx(2 * sum(r.sum() for r in ok) / sum(r.sum() + r.size for r in ok))
    assert s["dice_mean"] == pytest.approx(np.mean([2 * r.sum() / (r.sum() + r.size) for r in ok]))
    assert s["pixel_accuracy"] == pytest.approx(sum(r.sum() for r in ok) / sum(r.size for r in ok))
    assert s["n_reference_failed"] == len(refs) - len(ok)
    # the same predictions against the repaired references: the HSV masks where valid, the stain rule elsewhere
    from leukodx.data.images import read_field
    from leukodx.data.reference_masks import repaired_reference

    rep = [repaired_reference(read_field(s.image), r)[0]
           for s, r in zip(sorted(ds.samples, key=lambda s: s.path), refs, strict=True)]
    rr = s["repaired_references"]
    rep_ok = [r for r in rep if r.mean() >= 0.001]
    assert rr["dice_global"] == pytest.approx(2 * sum(r.sum() for r in rep_ok) / sum(r.sum() + r.size for r in rep_ok))
    assert sum(rr["reference_sources"].values()) == len(refs)


def test_default_models_split_csv_and_max_images(capsys, tmp_path, data, models, monkeypatch):
    import leukodx.assets as assets

    monkeypatch.setitem(assets.DEFAULT_MODELS, "classify", models["classify"])
    monkeypatch.setitem(assets.DEFAULT_MODELS, "segment", models["segment"])
    ds = load_dataset(data)
    split = tmp_path / "split.csv"
    with open(split, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        for i, s in enumerate(ds.samples):
            w.writerow({"path": s.path, "label": s.label, "split": "test" if i % 2 else "train", "group": f"g{i}"})
    out = tmp_path / "eval"
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(out), "--split", str(split),
                     "--max-images", "6")
    assert code == 0, text
    m = json.loads((out / "metrics.json").read_text())
    assert m["classification"]["n_images"] == 6 and m["segmentation"]["n_images"] == 6
    assert m["classification"]["model"] == str(models["classify"])
    assert m["split"]["subset"] == "test" and m["split"]["csv"] == str(split)
    test_paths = {s.path for i, s in enumerate(ds.samples) if i % 2}
    assert {r["name"] for r in m["segmentation"]["per_image"]} <= test_paths


def test_several_models_of_one_task_are_keyed_by_name(tmp_path, data, models):
    from leukodx.evaluation.evaluate import evaluate

    other = save_classifier(tmp_path / "clf-b", size=48, temperature=2.0)
    m = evaluate(data, tmp_path / "out", [models["classify"], other], plots=False, max_images=6)
    assert set(m["classification_models"]) == {"clf", "clf-b"}
    assert m["classification"]["model_name"] == "clf"  # the first one at the top level
    assert m["classification_models"]["clf-b"]["temperature"] == 2.0
    assert m["segmentation"]["skipped"] and m["segmentation"]["n_images"] == 0


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_missing_model_dir_is_a_clear_error(capsys, tmp_path, data):
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--model", str(tmp_path / "nope"))
    assert code == 2
    assert "does not exist" in text and "Traceback" not in text


def test_data_class_unknown_to_the_model(capsys, tmp_path, data):
    clf = save_classifier(tmp_path / "three", classes=("Benign", "Early", "Pre"))
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(clf))
    assert code == 2
    assert "Pro" in text and "Benign, Early, Pre" in text and "Traceback" not in text


def test_segmenter_without_masks_is_skipped_with_a_note(capsys, tmp_path, models):
    flat = make_synthetic_dataset(tmp_path / "flat", per_class=2, size=64, layout="flat")
    out = tmp_path / "o"
    code, text = run(capsys, "evaluate", "--data", str(flat), "--out", str(out), "--model", str(models["segment"]),
                     "--shift", "lab")
    assert code == 0, text
    m = json.loads((out / "metrics.json").read_text())
    assert "reference mask" in m["segmentation"]["skipped"]
    assert SEGMENTATION_KEYS <= m["segmentation"].keys()
    assert m["segmentation_lab_shift"]["skipped"]
    assert "Skipped" in (out / "report.html").read_text()


def test_missing_masks_are_counted(tmp_path, models):
    from leukodx.evaluation.evaluate import evaluate

    d = make_synthetic_dataset(tmp_path / "d", per_class=2, size=64)
    for p in list((d / "Segmented" / "Pre").iterdir()):
        p.unlink()
    m = evaluate(d, tmp_path / "o", [models["segment"]], plots=False)
    assert m["segmentation"]["n_images"] == 6 and m["segmentation"]["n_missing_masks"] == 2
    assert "2 of 8" in m["segmentation"]["missing_masks_note"]


def test_no_bundled_models_and_bad_options(capsys, tmp_path, data, models, monkeypatch):
    import leukodx.assets as assets

    monkeypatch.setitem(assets.DEFAULT_MODELS, "classify", tmp_path / "none-c")
    monkeypatch.setitem(assets.DEFAULT_MODELS, "segment", tmp_path / "none-s")
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"))
    assert code == 2 and "no bundled models" in text and "--model" in text
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--model", str(models["classify"]), "--shift", "clinic")
    assert code == 2 and "--shift" in text
    empty_split = tmp_path / "s.csv"
    empty_split.write_text("path,label,split,group\n")
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--model", str(models["classify"]), "--split", str(empty_split))
    assert code == 2 and "no 'test' rows" in text


def test_unknown_engine_is_a_clear_error(capsys, tmp_path, data, models):
    code, text = run(capsys, "evaluate", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--model", str(models["classify"]), "--engine", "tpu")
    assert code == 2 and "--engine" in text and "onnx" in text


def test_long_fields_are_tiled_like_the_analysis_pipeline(tmp_path):
    """A 2:1 field is cut into two square tiles; class probabilities are averaged, the mask stitched back."""
    from PIL import Image

    from leukodx.data.synthetic import segmented_view, synthetic_field
    from leukodx.evaluation.evaluate import evaluate
    from leukodx.inference.tiling import cut_tiles

    root = tmp_path / "wide"
    for label in CLASSES:
        (root / "Original" / label).mkdir(parents=True)
        (root / "Segmented" / label).mkdir(parents=True)
        for i in range(2):
            rgb, mask = synthetic_field(label, 96, seed=i)
            rgb, mask = rgb[24:72], mask[24:72]  # 96 wide x 48 high
            Image.fromarray(rgb).save(root / "Original" / label / f"f{i}.png")
            Image.fromarray(segmented_view(rgb, mask)).save(root / "Segmented" / label / f"f{i}.png")
    tiles, owner, boxes = cut_tiles([np.zeros((48, 96, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)], (32, 32))
    assert boxes[0] == [(0, 0, 48, 48), (0, 48, 48, 96)] and boxes[1] == [(0, 0, 40, 40)]
    assert owner.tolist() == [0, 0, 1] and tiles[0].shape == (32, 32, 3)
    seg = save_model(tmp_path / "seg", ConstantSegmenter(5.0),
                     {"task": "segment", "arch": "test-constant", "input_size": [32, 32]})
    clf = save_classifier(tmp_path / "clf")
    m = evaluate(root, tmp_path / "out", [clf, seg], plots=False)
    assert m["classification"]["n_images"] == 8
    ds = load_dataset(root)
    refs = [read_reference_mask(s.mask) for s in ds.samples]
    ok = [r for r in refs if r.mean() >= 0.001]
    assert m["segmentation"]["pixel_accuracy"] == pytest.approx(sum(r.sum() for r in ok) / sum(r.size for r in ok))


def test_unreadable_fields_are_listed_and_left_out(tmp_path, models):
    from leukodx.evaluation.evaluate import evaluate

    d = make_synthetic_dataset(tmp_path / "d", per_class=2, size=64)
    (d / "Original" / "Pre" / "broken.jpg").write_bytes(b"not a jpeg")
    m = evaluate(d, tmp_path / "o", [models["classify"]], plots=False)
    c = m["classification"]
    assert c["n_images"] == 8
    assert [u["path"] for u in c["unreadable"]] == ["Original/Pre/broken.jpg"]
    assert "1 image" in c["unreadable_note"]


def test_evaluating_the_training_data_without_a_split_is_flagged(tmp_path, data):
    from leukodx.evaluation.evaluate import evaluate

    torch.manual_seed(0)
    clf = save_model(tmp_path / "clf", create_model("classify", "smearnet", num_classes=4),
                     {"task": "classify", "arch": "smearnet", "arch_kwargs": {"num_classes": 4},
                      "classes": list(CLASSES), "input_size": [32, 32], "training": {"data": str(data)}})
    m = evaluate(data, tmp_path / "o", [clf], plots=False, max_images=4)
    assert any("training fields included" in n for n in m["notes"])
    assert "training fields included" in (tmp_path / "o" / "report.html").read_text()


def test_fields_from_the_models_own_training_split_are_counted(tmp_path, data):
    """A model directory that keeps its split.csv: evaluated fields that were its train/val rows are counted."""
    from leukodx.evaluation.evaluate import evaluate

    torch.manual_seed(0)
    clf = save_model(tmp_path / "clf", create_model("classify", "smearnet", num_classes=4),
                     {"task": "classify", "arch": "smearnet", "arch_kwargs": {"num_classes": 4},
                      "classes": list(CLASSES), "input_size": [32, 32], "training": {"data": str(data)}})
    ds = load_dataset(data)
    rows = [{"path": s.path, "label": s.label, "split": "train" if i < 4 else "test", "group": f"g{i}"}
            for i, s in enumerate(ds.samples)]
    for target in (clf / "split.csv", tmp_path / "other.csv"):
        with open(target, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
            w.writeheader()
            w.writerows(rows if target.parent == clf else [{**r, "split": "test"} for r in rows])
    m = evaluate(data, tmp_path / "o1", [clf], plots=False, split_csv=clf / "split.csv")
    assert m["notes"] == []  # its own held-out rows
    m = evaluate(data, tmp_path / "o2", [clf], plots=False, split_csv=tmp_path / "other.csv")
    assert any(n.startswith(f"4 of the {len(rows)} evaluated fields") for n in m["notes"])


def test_evaluate_and_predict_agree_field_by_field(tmp_path, data):
    """What is evaluated is what runs: the same labels and probabilities from `evaluate` and `predict`, on the
    ONNX engine both use by default, for every field (tiled ones included)."""
    from PIL import Image

    from leukodx.deploy.export import export_onnx
    from leukodx.evaluation.evaluate import evaluate
    from leukodx.inference.predict import run_predict

    clf = save_classifier(tmp_path / "clf", size=64, temperature=0.7)
    export_onnx(clf, clf / "model.onnx")
    wide = data / "Original" / "Pro" / "wide.png"  # a 2:1 field: tiled by both
    Image.fromarray(np.concatenate([np.asarray(Image.open(p).convert("RGB"))
                                    for p in sorted((data / "Original" / "Pro").glob("*"))[:2]], axis=1)).save(wide)
    try:
        m = evaluate(data, tmp_path / "eval", [clf], plots=False)
        run_predict([str(data / "Original")], tmp_path / "pred", classifier_dir=clf, heatmap=False,
                    overlays=False)  # the bundled segmenter, which evaluate runs beside a classifier
    finally:
        wide.unlink()
    ev = {r["path"]: r for r in csv.DictReader(open(tmp_path / "eval" / "classification_predictions_clf.csv"))}
    pr = {str(Path(r["path"]).relative_to(data)): r for r in csv.DictReader(open(tmp_path / "pred" / "predictions.csv"))}
    assert ev.keys() == pr.keys() and len(ev) == m["classification"]["n_images"] == 13
    for path, e in ev.items():
        p = pr[path]
        assert e["predicted"] == p["label"] and e["flag"] == p["flag"], path  # '' both: no leukocyte, no call
        for c in CLASSES if p["label"] else ():  # predict writes no probabilities without a call
            assert float(e[f"p_{c}"]) == pytest.approx(float(p[f"prob_{c}"]), abs=1e-4), (path, c)
