"""Stain normalisation (leukodx.inference.stain) and `leukodx adapt` (leukodx.deploy.adapt)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leukodx.data.synthetic import synthetic_field
from leukodx.errors import DatasetError
from leukodx.inference.stain import field_stats, measure, normalize
from leukodx.models.model_config import StainRule, StainStats, read_model_config


def _tint(rgb: np.ndarray, gains=(0.8, 1.05, 0.9), power=(1.3, 0.8, 1.1)) -> np.ndarray:
    """Another stain and white balance: per channel a power of the transmission and a gain (optical density
    scaled and shifted)."""
    x = (rgb.astype(np.float64) + 1) / 256
    out = np.stack([256 * g * x[..., c] ** p - 1 for c, (g, p) in enumerate(zip(gains, power, strict=True))], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fields(n: int, tint: bool = False) -> list[np.ndarray]:
    out = [synthetic_field(("Benign", "Early", "Pre", "Pro")[i % 4], 224, seed=i)[0] for i in range(n)]
    return [_tint(f) for f in out] if tint else out


def test_normalize_maps_a_tinted_field_onto_the_target():
    plain, tinted = _fields(6), _fields(6, tint=True)
    target, source = measure(plain), measure(tinted)
    assert not np.allclose(source.mean, target.mean, atol=0.02)
    rule = StainRule(source=source, target=target)
    after = measure([normalize(f, rule) for f in tinted])
    assert np.allclose(after.mean, target.mean, atol=0.02)
    assert np.allclose(after.std, target.std, rtol=0.12)
    # closer to the untinted fields pixel by pixel, too
    err = lambda a, b: float(np.abs(a.astype(int) - b.astype(int)).mean())  # noqa: E731
    assert err(normalize(tinted[0], rule), plain[0]) < 0.5 * err(tinted[0], plain[0])


def test_normalize_identity_and_none():
    f = _fields(1)[0]
    assert normalize(f, None) is f
    s = measure(_fields(4))
    same = normalize(f, StainRule(source=s, target=s))
    assert same.dtype == np.uint8 and same.shape == f.shape
    assert np.abs(same.astype(int) - f.astype(int)).max() <= 1
    other = StainStats(mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3))
    assert np.array_equal(normalize(f, StainRule(source=s, target=other, strength=0.0)), f)


def test_field_stats_ignores_a_blank_field():
    assert field_stats(np.full((64, 64, 3), 250, np.uint8)) is None
    with pytest.raises(ValueError):
        measure([np.full((64, 64, 3), 250, np.uint8)])


def test_stain_config_is_optional_and_typed():
    for d in ("classifier", "segmenter"):
        from leukodx.assets import default_model_dir

        cfg = read_model_config(default_model_dir("classify" if d == "classifier" else "segment"))
        assert cfg.stain is None
        assert cfg.stain_reference is not None and cfg.stain_reference.n_images > 100


def test_adapt_models_writes_loadable_adapted_directories(tmp_path):
    from leukodx.deploy.adapt import adapt_models
    from leukodx.inference.pipeline import Analysis

    lab = tmp_path / "lab" / "day1"
    lab.mkdir(parents=True)
    for i, f in enumerate(_fields(12, tint=True)):
        Image.fromarray(f).save(lab / f"f{i}.png" if i % 2 else lab / f"f{i}.jpg", quality=92)
    (lab / "notes.txt").write_text("not an image")
    (lab / "broken.jpg").write_bytes(b"not a jpeg")
    rep = adapt_models(tmp_path / "lab", tmp_path / "out", max_images=20)
    assert rep["n_found"] == 13 and rep["n_used"] == 12 and "broken.jpg" in rep["unreadable"][0]
    for name in ("classifier", "segmenter"):
        cfg = read_model_config(tmp_path / "out" / name)
        assert cfg.stain is not None and cfg.stain.strength == 1.0
        assert cfg.stain.target == cfg.stain_reference
        block = cfg.model_extra["adaptation"]
        assert block["n_used"] == 12 and block["data"].endswith("lab") and block["date"]
    ccfg = read_model_config(tmp_path / "out" / "classifier")
    assert ccfg.ood["features"]["threshold"] >= ccfg.ood["features"]["trained_threshold"]
    assert "ood.features.threshold" in ccfg.model_extra["adaptation"]["refit"]
    analysis = Analysis(tmp_path / "out" / "classifier", tmp_path / "out" / "segmenter", threads=1,
                        cell_classifier=False)
    assert analysis.analyze(_fields(1, tint=True)[0]).label in analysis.classes
    # a second run into the same folder replaces the adapted directories
    adapt_models(tmp_path / "lab", tmp_path / "out", max_images=20)


def test_adapt_errors_name_the_problem(tmp_path):
    from leukodx.deploy.adapt import adapt_models

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        adapt_models(empty, tmp_path / "out")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"xx")
    (junk / "b.txt").write_text("x")
    with pytest.raises(DatasetError, match="a.jpg"):
        adapt_models(junk, tmp_path / "out")
    text = tmp_path / "text"
    text.mkdir()
    (text / "b.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images.*b.txt"):
        adapt_models(text, tmp_path / "out")
    with pytest.raises(DatasetError, match="not a folder"):
        adapt_models(tmp_path / "nowhere", tmp_path / "out")
