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

    from leukodx.deploy.ood_fit import fit_ood
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

    from leukodx.inference.ood import OODScorer
    from leukodx.models.eager import with_features

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
    from leukodx.models.model_config import DEFAULT_RBC_DIAMETER_224, parse_model_config

    old_stats = {"image_stats": {"version": 3, "lo": [0], "hi": [1], "threshold": 0.15}}
    assert OODScorer(old_stats).notes
    cfg = parse_model_config({"format_version": 1, "task": "classify", "arch": "smearnet", "classes": ["a", "b"],
                              "input_size": [64, 64], "ood": old_stats})
    assert cfg.scale.rbc_diameter_224 == DEFAULT_RBC_DIAMETER_224  # an old colour fit gives no red-cell size
    blank = np.full((224, 224, 3), 240, np.uint8)
    flagged, reason, _ = OODScorer(None).check(None, [blank], rgb=blank)
    assert flagged and "blank" in reason


def test_feature_statistics_live_beside_config_and_old_inline_ones_load(tmp_path):
    """The OOD arrays go to a file beside config.json (small config); a config with them inline still scores the
    same, and the measured red-cell size becomes the config's scale section."""
    from leukodx.deploy.ood_fit import apply_ood
    from leukodx.inference.ood import OODScorer
    from leukodx.models.model_config import OOD_FILE, read_model_config, write_model_config

    rng = np.random.default_rng(0)
    feats = {"dim": 8, "means": rng.normal(size=(2, 8)), "components": np.linalg.qr(rng.normal(size=(8, 3)))[0].T,
             "variances": [3.0, 2.0, 1.0], "residual_variance": 0.5, "threshold": 2.0}
    ood = {"features": feats, "image_stats": {"version": 4, "rbc_diameter_224": 18.5}}
    raw = apply_ood({"task": "classify", "arch": "smearnet", "classes": ["a", "b"], "input_size": [64, 64]}, ood)
    write_model_config(tmp_path, raw)
    cfg = read_model_config(tmp_path)
    assert (tmp_path / OOD_FILE).is_file() and "means" not in cfg.ood["features"]
    assert cfg.scale.rbc_diameter_224 == 18.5
    x = rng.normal(size=(5, 8))
    inline = {"features": {**feats, "means": feats["means"].tolist(), "components": feats["components"].tolist()}}
    a = OODScorer(cfg.ood, tmp_path).feature_scores(x)
    b = OODScorer(inline).feature_scores(x)
    assert a is not None and b is not None and np.allclose(a, b) and (a > 0).all()
