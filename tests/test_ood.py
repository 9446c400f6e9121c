"""fit_ood and OODScorer: the feature threshold covers lab-shifted held-out fields; the smear check runs with
or without a fit; an old colour-statistics fit is ignored with a note."""

from __future__ import annotations

import numpy as np
import pytest

from leukodx.data.synthetic import synthetic_field

CLASSES = ["Benign", "Early", "Pre", "Pro"]


@pytest.fixture(scope="module")
def fitted():
    import torch

    from leukodx.inference.ood import fit_ood
    from leukodx.models import create_model

    torch.manual_seed(0)
    model = create_model("classify", "smearnet", num_classes=4).eval()
    cfg = {"classes": CLASSES, "input_size": [64, 64]}
    train = [synthetic_field(CLASSES[i % 4], 224, seed=i)[0] for i in range(24)]
    val = [synthetic_field(CLASSES[i % 4], 224, seed=100 + i)[0] for i in range(12)]
    ood = fit_ood(model, cfg, train, val, labels=[CLASSES[i % 4] for i in range(24)])
    return model, cfg, ood


def test_fit_records_the_threshold_set(fitted):
    _, _, ood = fitted
    f = ood["features"]
    assert set(f["flag_rates"]) == {"held_out", "lab_shift_1", "lab_shift_1.5"}
    assert f["threshold"] > 0 and "lab-shifted" in f["threshold_set"]
    assert ood["image_stats"]["check"] == "smear" and ood["image_stats"]["version"] >= 4
    assert 14 < ood["image_stats"]["rbc_diameter_224"] < 26  # synthetic red cells: radius 8-11 px at 224


def test_scorer_flags_non_smear_and_passes_smears(fitted):
    import torch

    from leukodx.inference.engines import with_features
    from leukodx.inference.ood import OODScorer

    model, cfg, ood = fitted
    scorer = OODScorer(ood)
    net = with_features(model)

    def feats(rgb):
        from PIL import Image

        x = np.asarray(Image.fromarray(rgb).resize((64, 64)))
        with torch.inference_mode():
            return net(torch.from_numpy(x[None].astype(np.float32).transpose(0, 3, 1, 2)))[1].numpy(), x

    smear = synthetic_field("Pre", 224, seed=555)[0]
    f, tile = feats(smear)
    flagged, reason, score = scorer.check(f, [tile], rgb=smear)
    assert not flagged and reason == "" and score is not None

    grey = np.repeat(smear.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    f, tile = feats(grey)
    flagged, reason, score = scorer.check(f, [tile], rgb=grey)
    assert flagged and "black and white" in reason and score > 1


def test_old_fit_is_ignored_and_no_fit_still_checks():
    from leukodx.inference.ood import OODScorer

    old = OODScorer({"image_stats": {"version": 3, "lo": [0], "hi": [1], "threshold": 0.15}})
    assert old.notes and old.rbc_diameter_224 is None and old.enabled
    blank = np.full((224, 224, 3), 240, np.uint8)
    flagged, reason, _ = OODScorer(None).check(None, [blank], rgb=blank)
    assert flagged and "blank" in reason
