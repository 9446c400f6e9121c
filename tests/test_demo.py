"""The first-run demo: the whole pipeline on synthetic smears (slow: opt in with -m slow)."""

from __future__ import annotations

import csv
import json

import pytest

CLASSES = ["Benign", "Early", "Pre", "Pro"]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from leukodx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path), "--per-class", "8", "--size", "64", "--epochs", "1"])
    assert exc.value.code in (0, None)
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    c, s = metrics["classification"], metrics["segmentation"]
    assert metrics["split"]["subset"] == "test" and c["n_images"] == 8  # 2 test fields per class
    assert c["classes"] == CLASSES and sum(map(sum, c["confusion_matrix"])) == 8
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "coverage", "flag_rate"):
        assert 0.0 <= c[key] <= 1.0, (key, c[key])
    assert s["n_scored"] == 8 and s["n_missing_masks"] == 0 and s["count_n"] == 8
    for key in ("dice_global", "iou_global", "pixel_accuracy"):
        assert 0.0 <= s[key] <= 1.0, (key, s[key])
    assert s["count_mae"] >= 0
    assert (tmp_path / "evaluation" / "report.html").stat().st_size > 1000
    assert all((tmp_path / m / "model.onnx").is_file() for m in ("classifier", "segmenter"))
    with open(tmp_path / "predictions" / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:7] == ["path", "label", "confidence", "malignant_probability", "cell_count",
                                         "flag", "overlay"]
        rows = list(reader)
    assert len(rows) == 8 and all("/Original/Pro/" in r["path"] for r in rows)  # the demo predicts the Pro folder
    for r in rows:
        assert r["label"] in CLASSES and int(r["cell_count"]) >= 0
        assert sum(float(r[f"prob_{k}"]) for k in CLASSES) == pytest.approx(1.0, abs=1e-3)
        assert float(r["confidence"]) == pytest.approx(max(float(r[f"prob_{k}"]) for k in CLASSES), abs=1e-3)
        # 64-px fields are too small to measure red cells: the scale is unknown, which is always flagged
        assert r["flag"] == "out_of_distribution" and "too small" in r["flag_reason"] and r["scale_factor"] == ""
        assert (tmp_path / "predictions" / r["overlay"]).is_file()
    case = json.loads((tmp_path / "predictions" / "predictions.json").read_text())["case"]
    assert case["n_fields"] == 8 and case["needs_review"]
