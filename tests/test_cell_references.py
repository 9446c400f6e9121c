"""The whole-cell / nucleus label rules (data/cell_references), the source readers (data/sources) and the
two-channel training data (data/cell_dataset)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from leukodx.data import cell_dataset as cell_data
from leukodx.data import cell_references as cr
from leukodx.data import sources
from leukodx.errors import DatasetError
from leukodx.training.losses import masked_bce_dice

DATA = Path("/work/shared/data")
D = 60.0  # red-cell diameter of the drawn images


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _drawn(size: int = 300, seed: int = 0, touching: bool = True):
    """A light field, a lilac cytoplasm disc with a purple nucleus in the centre, pink red cells around (one
    touching the cell). Returns (rgb, cell, nucleus, red cells, red-cell boxes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.ones((size, size, 3), np.float32) * np.array([240, 232, 228])
    c = size / 2
    cell = (yy - c) ** 2 + (xx - c) ** 2 <= 55**2
    nucleus = (yy - c - 6) ** 2 + ((xx - c + 4) / 1.15) ** 2 <= 30**2
    r = D / 2
    centres = [(c, c + 55 + r - 2)] if touching else []
    for a in np.linspace(0, 2 * np.pi, 9)[:-1] + 0.3:
        centres.append((c + np.sin(a) * 120, c + np.cos(a) * 120))
    rbc = np.zeros((size, size), bool)
    boxes = [(0, c - 55, c - 55, c + 55, c + 55)]
    for cy, cx in centres:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disc = d2 <= r**2
        pallor = np.exp(-d2 / (2 * (0.4 * r) ** 2))[..., None]
        colour = np.array([214, 150, 160]) * (1 - 0.3 * pallor) + np.array([240, 232, 228]) * 0.3 * pallor
        img[disc & ~cell] = colour[disc & ~cell]
        rbc |= disc & ~cell
        boxes.append((1, cx - r, cy - r, cx + r, cy + r))
    img[cell] = np.array([198, 182, 226])
    img[nucleus] = np.array([112, 58, 152])
    img = ndi.gaussian_filter(img, (1.0, 1.0, 0)) + rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), cell, nucleus, rbc, np.array(boxes, np.float64)


def _at_work(ref: cr.CellReference, *masks: np.ndarray) -> list[np.ndarray]:
    from PIL import Image

    h, w = ref.cell.shape
    return [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
            for m in masks]


@pytest.mark.parametrize("seed", [0, 1])
def test_pbc_rule_recovers_drawn_cell_and_nucleus(seed):
    rgb, cell, nucleus, rbc, _ = _drawn(seed=seed)
    ref = cr.pbc_reference(rgb, "lymphocyte", D)
    cell_w, nuc_w, rbc_w = _at_work(ref, cell, nucleus, rbc)
    assert _dice(ref.cell, cell_w) > 0.9
    assert _dice(ref.nucleus, nuc_w) > 0.9
    assert not (ref.cell.astype(bool) & ndi.binary_erosion(rbc_w, iterations=2)).any()  # no red cell in the cell
    assert (ref.nucleus <= ref.cell).all()
    assert ref.cell_known.mean() > 0.8


def test_raabin_rule_recovers_drawn_cell_and_negatives_outside_boxes():
    rgb, cell, nucleus, rbc, boxes = _drawn(seed=2)
    boxes[:, 1:] = boxes[:, 1:]  # already in pixels
    ref = cr.raabin_reference(rgb, boxes, D)
    cell_w, nuc_w, rbc_w = _at_work(ref, cell, nucleus, rbc)
    assert _dice(ref.cell, cell_w) > 0.9
    assert _dice(ref.nucleus, nuc_w) > 0.9
    assert not (ref.cell.astype(bool) & ndi.binary_erosion(rbc_w, iterations=2)).any()
    # red cells away from the leukocyte box are known negatives (hard negatives)
    far_rbc = ndi.binary_erosion(rbc_w, iterations=2) & (ref.cell_known > 0)
    assert far_rbc.sum() > 0.5 * rbc_w.sum()
    assert ref.cell[far_rbc].max() == 0


def test_not_leukocyte_classes_are_negative():
    rgb, _, nucleus, _, _ = _drawn(seed=3, touching=False)
    for label in ("platelet", "erythroblast"):
        ref = cr.pbc_reference(rgb, label, D)
        assert ref.cell.max() == 0 and ref.nucleus.max() == 0
        (nuc_w,) = _at_work(ref, ndi.binary_erosion(nucleus, iterations=4))
        assert ref.cell_known[nuc_w].all()  # the centred object is a known negative for the cell channel
        if label == "erythroblast":
            assert ref.nucleus_known[nuc_w].max() == 0  # its nucleus: unknown
        else:
            assert ref.nucleus_known[nuc_w].all()


def test_taleqani_rule():
    nuc = np.zeros((224, 224), bool)
    nuc[100:120, 100:120] = True
    nuc[10, 10] = True  # a speck
    ref = cr.taleqani_reference(np.zeros((224, 224, 3), np.uint8), nuc)
    assert ref.cell[110, 110] == 1 and ref.cell_known[110, 110] == 1
    assert ref.cell_known[110, 135] == 0  # near a nucleus: unknown
    assert ref.cell_known[200, 200] == 1 and ref.cell[200, 200] == 0  # far: negative
    assert ref.nucleus_known[10, 10] == 0 and ref.nucleus_known[110, 110] == 1


def test_missing_label_file_is_named(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"b\.txt"):
        sources.read_raabin_fields(tmp_path)
    fields, skipped = sources.read_raabin_fields(tmp_path, missing="skip")
    assert [f.path for f in fields] == ["images/a.jpg"] and skipped == ["images/b.jpg"]
    assert fields[0].boxes.shape == (2, 5)
    with pytest.raises(DatasetError, match=r"nope\.txt"):
        sources.read_yolo_labels(tmp_path / "labels" / "nope.txt", (64, 64))


def test_split_is_deterministic_and_near_70_15_15():
    rows = [(f"x/{k}.jpg", "c") for k in range(2000)]
    a, b = sources.source_split(rows), sources.source_split(rows)
    assert a == b
    frac = {s: sum(r["split"] == s for r in a) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["val"] - 0.15) < 0.03


def test_dataset_shapes_and_masks_on_synthetic():
    ds = cell_data.CellDataset(cell_data.synthetic_items(3), augment=True)
    for i in range(len(ds)):
        x, t, k = ds[i]
        assert x.shape == (3, 224, 224) and t.shape == (2, 224, 224) and k.shape == (2, 224, 224)
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 255
        assert set(t.unique().tolist()) <= {0.0, 1.0} and set(k.unique().tolist()) <= {0.0, 1.0}
        assert float(k[1].max()) == 0  # synthetic nucleus: unknown
    # a small image is mirror-padded and the padding is unknown
    img = np.zeros((50, 60, 3), np.uint8)
    stack = np.ones((50, 60, 4), np.uint8)
    im2, st2 = cell_data._crop_or_pad(img, stack, 224, np.random.default_rng(0), random=False)
    assert im2.shape == (224, 224, 3) and st2.shape == (224, 224, 4)
    assert int(st2[..., 2].sum()) == 50 * 60 and int(st2[..., 0].sum()) == 224 * 224


def test_cut_cell_fills_its_window_and_is_padded_as_the_analysis_pads():
    # one 40-px leukocyte (known) in a 200-px field, a 10-px speck too small to be chosen
    img = np.full((200, 200, 3), 230, np.uint8)
    stack = np.zeros((200, 200, 4), np.uint8)
    stack[..., 2:] = 1
    stack[100:140, 60:100, 0] = 1
    stack[10:13, 10:13, 0] = 1
    img[stack[..., 0] > 0] = (90, 40, 140)
    for seed in range(20):
        im2, st2, cut = cell_data._cut_cell(img, stack, np.random.default_rng(seed))
        assert cut and im2.shape[0] == im2.shape[1] and 28 <= im2.shape[0] <= 56
        assert st2[..., 0].mean() > 0.45  # the cell fills most of the window
        pad_img, pad_st = cell_data._crop_or_pad(im2, st2, 224, np.random.default_rng(seed), as_analysis=True)
        side = im2.shape[0]
        assert int(pad_st[..., 2].sum()) == side * side and pad_st[:side, :side, 2].all()  # only the window known
        from leukodx.inference.tiling import prepare
        assert np.array_equal(pad_img, prepare(im2, 1.0, window=224).work[:224, :224])
    # negative windows: centred on a pixel known to be no leukocyte, 1-2.2 red cells wide, no cell in most of them
    negs = [cell_data._cut_cell(img, stack, np.random.default_rng(s), negative=1.0) for s in range(20)]
    assert all(c and 17 <= i.shape[0] <= 38 for i, _, c in negs)
    assert np.mean([st[..., 0].mean() < 0.5 for _, st, _ in negs]) > 0.8
    # no cell of 30 px known: unchanged
    none = stack.copy()
    none[..., 0] = 0
    assert cell_data._cut_cell(img, none, np.random.default_rng(0))[2] is False
    # the dataset draws cut and low-magnification crops with targets in 0/1 and unknown padding
    ds = cell_data.CellDataset(cell_data.synthetic_items(2), augment=True, cut_cells=1.0, low_magnification=1.0)
    for _ in range(10):  # random draws: the window is small and known, a good part of it the cell
        x, t, k = ds[0]
        assert x.shape == (3, 224, 224) and 0 < float(k[0].mean()) < 0.2 and float(t[0][k[0] > 0].mean()) > 0.1


def test_masked_loss_ignores_unknown_pixels():
    logits = torch.randn(2, 2, 16, 16)
    target = (torch.rand(2, 2, 16, 16) > 0.5).float()
    known = torch.zeros(2, 2, 16, 16)
    known[..., :8] = 1
    a = masked_bce_dice(logits, target, known)
    logits2 = logits.clone()
    logits2[..., 8:] = 100.0  # change only unknown pixels
    assert torch.allclose(a, masked_bce_dice(logits2, target, known))
    assert float(masked_bce_dice(logits, target, torch.zeros_like(known))) == 0.0


def test_real_sources_when_present():
    if not (DATA / "raabin-fields" / "labels").is_dir() or not (DATA / "pbc").is_dir():
        pytest.skip("the real data (/work/shared/data) is absent")
    fields, skipped = sources.read_raabin_fields(DATA / "raabin-fields")
    assert len(fields) == 500 and not skipped
    assert 100 < fields[0].rbc_diameter < 170
    ref = sources.raabin_field_reference(DATA / "raabin-fields", fields[0])
    assert ref.cell.any() and (ref.nucleus <= ref.cell).all()
    pbc = sources.read_pbc(DATA / "pbc")
    assert len(pbc) == 3200
    p, c = next(r for r in pbc if r[1] == "neutrophil")
    ref = sources.pbc_crop_reference(DATA / "pbc", p, c)
    h, w = ref.cell.shape
    assert ref.cell[h // 2 - 3:h // 2 + 4, w // 2 - 3:w // 2 + 4].any()


def test_the_source_registry_holds_each_sources_facts_and_one_checker(tmp_path, monkeypatch):
    from leukodx.data.split import read_split, write_split

    assert set(sources.SOURCES) == {"pbc", "raabin", "taleqani", "chula"}
    for s in sources.SOURCES.values():
        assert s.citation and s.classes and s.flag.startswith("--") and s.folder
    assert sources.SOURCES["taleqani"].rbc_diameter == cell_data.TARGET_RBC_DIAMETER == 17.0
    assert sources.split_path("pbc", tmp_path) == tmp_path / "pbc-seed0.csv"
    assert sources.split_path("chula", tmp_path) == tmp_path / "chula-wbc-seed0.csv"
    monkeypatch.setitem(sources.SOURCES, "chula", dataclasses.replace(sources.SOURCES["chula"], split_file=None))
    with pytest.raises(DatasetError, match="no split file"):
        sources.split_path("chula", tmp_path)
    (tmp_path / "chula" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no labels/ folder") as e:
        sources.check("chula", tmp_path / "chula")
    assert "--chula" in e.value.hint
    with pytest.raises(DatasetError, match=r"--data: no such folder"):
        sources.check_all({"taleqani": tmp_path / "nope", "pbc": None}, flags={"taleqani": "--data"})
    rows = sources.source_split([("a/x.jpg", "leukocyte"), ("a/y.jpg", "none")])
    write_split(rows, None, tmp_path / "s.csv")
    assert [r["path"] for r in read_split(tmp_path / "s.csv")] == ["a/x.jpg", "a/y.jpg"]
    assert not (tmp_path / "s.json").exists()  # no summary given, none written
