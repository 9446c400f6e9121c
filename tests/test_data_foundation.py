"""Layouts, safe image reading, inspect and the bad inputs of the foundation issue."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukodx.data.images import MaskSizeWarning, open_image, read_reference_mask
from leukodx.data.inspect import inspect_dataset
from leukodx.data.layout import load_dataset
from leukodx.data.synthetic import make_synthetic_dataset, segmented_view, synthetic_field
from leukodx.errors import DatasetError, ImageError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukodx", *args], capture_output=True, text=True, timeout=120)


# ---- layouts -------------------------------------------------------------------------------------------


def test_public_layout(synthetic_data):
    ds = load_dataset(synthetic_data)
    assert ds.layout == "public" and ds.has_masks
    assert ds.classes == ["Benign", "Early", "Pre", "Pro"]
    assert ds.counts() == {c: 8 for c in ds.classes}
    assert all(s.mask is not None for s in ds.samples)
    assert ds.samples[0].path.startswith("Original/")


def test_flat_layout(tmp_path):
    make_synthetic_dataset(tmp_path, per_class=3, size=64, layout="flat")
    ds = load_dataset(tmp_path)
    assert ds.layout == "flat" and not ds.has_masks
    assert ds.counts() == {"Benign": 3, "Early": 3, "Pre": 3, "Pro": 3}
    report = inspect_dataset(str(tmp_path))
    assert report["n_images"] == 12 and report["masks"]["present"] is False


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    r = run_cli("data", "inspect", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one message (rich may wrap a long line)


def test_unknown_layout_names_the_expected_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no known layout") as exc:
        load_dataset(tmp_path)
    assert "Original/<class>" in str(exc.value)
    r = run_cli("data", "inspect", str(tmp_path))
    assert r.returncode == 2 and "no known layout" in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run_cli("--debug", "data", "inspect", str(tmp_path / "nope"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_empty_class_folder_is_reported_and_blocks_split(tmp_path):
    make_synthetic_dataset(tmp_path, per_class=3, size=64)
    shutil.rmtree(tmp_path / "Original" / "Pro")
    (tmp_path / "Original" / "Pro").mkdir()
    report = inspect_dataset(str(tmp_path))
    assert report["empty_classes"] == ["Pro"]
    r = run_cli("data", "split", str(tmp_path), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 2 and "Pro" in r.stderr and "hold no images" in r.stderr


# ---- bad images ----------------------------------------------------------------------------------------


@pytest.fixture()
def bad_data(tmp_path):
    root = make_synthetic_dataset(tmp_path / "bad", per_class=3, size=64)
    good = root / "Original" / "Benign" / "syn-Benign-000.jpg"
    data = good.read_bytes()
    (root / "Original" / "Benign" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "Original" / "Early" / "text.jpg").write_text("this is not an image\n")
    (root / "Original" / "Early" / "empty.jpg").write_bytes(b"")
    # a decompression bomb: a tiny PNG that declares 20000 x 20000 pixels
    Image.new("1", (20000, 20000)).save(root / "Original" / "Pre" / "bomb.png")
    # a mask whose size differs from its image
    Image.new("L", (40, 40), 255).save(root / "Segmented" / "Pro" / "syn-Pro-000.png")
    return root


def test_bad_images_each_get_a_reason(bad_data):
    reasons = {Path(p).name: r for p, r in
               ((u["path"], u["reason"]) for u in inspect_dataset(str(bad_data))["unreadable"])}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "decompression bomb" in reasons["bomb.png"] or "limit" in reasons["bomb.png"]


def test_inspect_carries_on_past_bad_files(bad_data):
    r = run_cli("data", "inspect", str(bad_data), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n_images"] == 16 and report["n_readable"] == 12
    assert {Path(u["path"]).name for u in report["unreadable"]} == {"truncated.jpg", "text.jpg", "empty.jpg", "bomb.png"}
    assert report["masks"]["size_mismatch_resized"] == ["Original/Pro/syn-Pro-000.jpg"]
    human = run_cli("data", "inspect", str(bad_data))
    assert human.returncode == 0 and "truncated" in human.stdout and "resized" in human.stdout


def test_open_image_errors_name_file_and_remedy(tmp_path):
    p = tmp_path / "fake.jpg"
    p.write_text("hello")
    with pytest.raises(ImageError) as exc:
        open_image(p)
    assert str(p) in exc.value.message and "Use JPEG, PNG, TIFF or BMP" in exc.value.message
    gif = tmp_path / "a.gif"
    Image.new("RGB", (64, 64)).save(gif)
    with pytest.raises(ImageError, match="format GIF is not accepted"):
        open_image(gif)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    with pytest.raises(ImageError, match="minimum side"):
        open_image(tiny)


def test_modes_are_converted_to_rgb(tmp_path):
    arr16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("L", (64, 64), 77).save(tmp_path / "grey.tif")
    for name in ("g16.png", "rgba.png", "grey.tif"):
        img = open_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (64, 64)
    assert np.asarray(open_image(tmp_path / "rgba.png"))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert np.asarray(open_image(tmp_path / "g16.png")).max() > 200  # 16-bit scaled, not clipped to black


def test_mask_size_mismatch_is_resized_with_warning(tmp_path):
    Image.new("L", (40, 40), 255).save(tmp_path / "m.png")
    with pytest.warns(MaskSizeWarning, match="resized"):
        m = read_reference_mask(tmp_path / "m.png", size=(64, 48))
    assert m.shape == (48, 64) and m.all()


# ---- synthetic smears -----------------------------------------------------------------------------------


def test_synthetic_masks_are_exact_through_the_reference_rule(tmp_path):
    img, mask = synthetic_field("Pro", 128, seed=3)
    assert img.shape == (128, 128, 3) and mask.any()
    seg = segmented_view(img, mask)
    Image.fromarray(seg).save(tmp_path / "s.png")
    assert (read_reference_mask(tmp_path / "s.png") == mask).all()


def test_synthetic_classes_differ_in_morphology_not_colour():
    def stats(label):
        areas, nuc_colour = [], []
        for s in range(12):
            img, mask = synthetic_field(label, 224, seed=s)
            areas.append(mask.sum())
            nuc_colour.append(img[mask].mean(0))
        return np.mean(areas), np.mean(nuc_colour, 0)

    benign_area, benign_col = stats("Benign")
    pro_area, pro_col = stats("Pro")
    assert pro_area > 2 * benign_area  # blasts are larger
    assert np.abs(benign_col - pro_col).max() < 40  # same stain distribution


def test_synthetic_is_deterministic():
    a, ma = synthetic_field("Early", 96, seed=5)
    b, mb = synthetic_field("Early", 96, seed=5)
    assert (a == b).all() and (ma == mb).all()


# ---- real data --------------------------------------------------------------------------------------------


def test_inspect_real_data(real_data):
    r = inspect_dataset(str(real_data))
    assert r["n_images"] == 2277
    assert r["classes"] == {"Benign": 352, "Early": 689, "Pre": 674, "Pro": 562}
    assert len(r["exact_duplicate_groups"]) == 25
    assert r["masks"]["near_empty"]["Pro"] == 154
    assert r["image_sizes"] == {"224x224": 2277}
    assert r["unreadable"] == []
