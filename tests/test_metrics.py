"""Metrics on known geometry and toy predictions with exact answers (no saved numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leukodx.evaluation.metrics import (
    SegmentationAccumulator,
    classification_metrics,
    expected_calibration_error,
    segmentation_metrics,
)

CLASSIFICATION_KEYS = {"n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                       "confusion_matrix", "classes", "per_class"}
SEGMENTATION_KEYS = {"n_images", "dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy",
                     "n_reference_failed", "count_mae"}
CLASSES = ["Benign", "Early", "Pre", "Pro"]


def disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def onehot_probs(pred: list[int], c: int = 4, conf: float = 1.0) -> np.ndarray:
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


# ---------------------------------------------------------------------------------------------------------------
# classification


def test_confusion_matrix_and_per_class_exact():
    y = [0, 0, 1, 1, 1, 2, 3, 3]
    pred = [0, 1, 1, 1, 2, 2, 3, 0]
    m = classification_metrics(y, onehot_probs(pred, conf=0.7), CLASSES)
    assert CLASSIFICATION_KEYS <= m.keys()
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
    assert m["n_images"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    # recalls: Benign 1/2, Early 2/3, Pre 1/1, Pro 1/2
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1 + 0.5) / 4)
    early = m["per_class"]["Early"]
    assert early["precision"] == pytest.approx(2 / 3)  # predicted Early: 3, right 2
    assert early["recall"] == pytest.approx(2 / 3)
    assert early["specificity"] == pytest.approx(4 / 5)  # 5 non-Early, 1 called Early
    assert early["f1"] == pytest.approx(2 / 3)
    assert early["support"] == 3
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 / 3, 2 * 1 / (2 + 1 + 0), 2 * 1 / (2 + 0 + 1)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    # malignant vs benign: true malignant 6, called benign 1 (Pro->Benign); true benign 2, called malignant 1
    mb = m["malignant_vs_benign"]
    assert mb["sensitivity"] == pytest.approx(5 / 6)
    assert mb["specificity"] == pytest.approx(1 / 2)
    json.dumps(m)  # JSON-ready as it is


def test_perfect_separation_gives_auc_one_and_absent_class_gives_none_with_reason():
    y = [0, 1, 2, 3, 0, 1]
    m = classification_metrics(y, onehot_probs(y, conf=0.9), CLASSES)
    assert m["roc_auc_macro"] == pytest.approx(1.0)
    assert m["accuracy"] == 1.0
    m2 = classification_metrics([0, 1, 1], onehot_probs([0, 1, 1], conf=0.9), CLASSES)
    assert m2["roc_auc_macro"] is None
    assert "Pre" in m2["roc_auc_note"] and "Pro" in m2["roc_auc_note"]
    assert m2["balanced_accuracy"] == 1.0  # over the classes present


def test_auc_of_reversed_scores_is_zero():
    y = [0, 0, 1, 1]
    p = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    m = classification_metrics(y, p, ["Benign", "Pre"])
    assert m["roc_auc_macro"] == pytest.approx(0.0)
    assert m["accuracy"] == 0.0


def test_ece_zero_when_calibrated_and_positive_when_overconfident():
    # calibrated: in a 0.8-confidence bin exactly 80 % are right
    y = [0] * 10
    pred = [0] * 8 + [1] * 2
    p = np.zeros((10, 2))
    for i, k in enumerate(pred):
        p[i, k], p[i, 1 - k] = 0.8, 0.2
    m = classification_metrics(y, p, ["Benign", "Pre"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    # overconfident: 99 % confidence, 50 % right -> ECE 0.49
    y = [0, 1, 0, 1]
    p = onehot_probs([0, 0, 0, 0], c=2, conf=0.99)
    m = classification_metrics(y, p, ["Benign", "Pre"])
    assert m["ece"] == pytest.approx(0.49)
    assert expected_calibration_error(np.array([0.99, 0.99]), np.array([1, 0])) == pytest.approx(0.49)


def test_nll_and_brier():
    y = [0, 1]
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    m = classification_metrics(y, p, ["Benign", "Pre"])
    assert m["nll"] == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2)
    assert m["brier"] == pytest.approx(((0.25 + 0.25) + (0.0625 + 0.0625)) / 2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], np.ones((3, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([0, 5], np.ones((2, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([], np.ones((0, 2)), ["a", "b"])


# ---------------------------------------------------------------------------------------------------------------
# segmentation


def test_shifted_discs_exact_dice_iou_and_pixel_accuracy():
    ref = disc(64, 32, 32, 10)
    pred = np.roll(ref, 4, axis=1)  # the same disc shifted 4 px right (stays inside the image)
    inter = np.count_nonzero(ref & pred)
    n = np.count_nonzero(ref)
    m = segmentation_metrics([pred], [ref])
    assert SEGMENTATION_KEYS <= m.keys()
    assert m["dice_global"] == pytest.approx(2 * inter / (2 * n))
    assert m["dice_mean"] == pytest.approx(m["dice_global"])
    assert m["iou_global"] == pytest.approx(inter / (2 * n - inter))
    assert m["pixel_accuracy"] == pytest.approx(1 - 2 * (n - inter) / 64**2)
    assert 0 < m["dice_global"] < 1


def test_global_vs_mean_dice_and_failed_references():
    big = disc(100, 50, 50, 20)
    small = disc(50, 25, 25, 5)
    empty_ref = np.zeros((40, 40), bool)
    spurious = disc(40, 20, 20, 3)
    preds = [big, np.zeros_like(small), spurious]
    refs = [big, small, empty_ref]
    m = segmentation_metrics(preds, refs, pred_counts=[1, 0, 1], ref_counts=[1, 1, 0], names=["a", "b", "c"])
    nb, ns, nsp = big.sum(), small.sum(), spurious.sum()
    assert m["n_images"] == 3
    assert m["n_reference_failed"] == 1
    assert m["dice_global"] == pytest.approx(2 * nb / (2 * nb + ns))
    assert m["dice_mean"] == pytest.approx(0.5)  # 1 and 0
    assert m["dice_global_all"] == pytest.approx(2 * nb / (2 * nb + ns + nsp))
    assert m["iou_global"] == pytest.approx(nb / (nb + ns))
    assert m["pixel_accuracy"] == pytest.approx(1 - ns / (100**2 + 50**2))
    assert m["count_mae"] == pytest.approx(0.5)  # |1-1| and |0-1|; the failed field is left out
    assert [r["name"] for r in m["per_image"]] == ["a", "b", "c"]
    json.dumps(m)


def test_threshold_of_reference_failure_is_one_per_mille():
    ref = np.zeros((100, 100), bool)
    ref.flat[:9] = True  # 0.09 %
    assert segmentation_metrics([ref], [ref])["n_reference_failed"] == 1
    ref.flat[:10] = True  # 0.1 %
    assert segmentation_metrics([ref], [ref])["n_reference_failed"] == 0


def test_accumulator_best_worst_and_shape_check():
    acc = SegmentationAccumulator()
    ref = disc(64, 32, 32, 10)
    for shift in (0, 2, 6, 12):
        acc.add(np.roll(ref, shift, axis=0), ref, name=f"s{shift}")
    best, worst = acc.best_worst(2)
    assert [r["name"] for r in best] == ["s0", "s2"]
    assert [r["name"] for r in worst] == ["s12", "s6"]
    assert acc.result()["count_mae"] is None
    with pytest.raises(ValueError):
        acc.add(np.zeros((3, 3), bool), np.zeros((4, 4), bool))


def test_agrees_with_scikit_learn_on_random_predictions():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(0, 1, (200, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(axis=1)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["nll"] == pytest.approx(skm.log_loss(y, p, labels=range(4)))
    precision = skm.precision_score(y, pred, average=None)
    assert [m["per_class"][c]["precision"] for c in CLASSES] == pytest.approx(list(precision))


def test_segmentation_metrics_says_when_masks_and_references_differ_in_number():
    from leukodx.evaluation.metrics import segmentation_metrics

    m = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="2 predicted masks but 1 reference masks"):
        segmentation_metrics([m, m], [m])
