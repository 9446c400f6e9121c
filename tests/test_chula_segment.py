"""Chula fields as the segmenter's fourth source (issue 28): items from the slide-grouped split, references by
Raabin's rule inside the typed boxes, negatives outside them, a field without a label file unknown everywhere,
and a training run that validates on Chula's val part."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from clitools import run_cli
from leukodx.data import cell_dataset as cell_data
from leukodx.data import sources
from test_cell_references import _dice, _drawn
from test_cell_segment import _train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
F = 40.0 / 60.0  # _drawn's red cells are 60 px; Chula's are 40 px (its README)


def _small(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    im = Image.fromarray(a if a.dtype == np.uint8 else a.astype(np.uint8) * 255)
    out = np.asarray(im.resize((round(w * F), round(h * F)),
                               Image.Resampling.LANCZOS if a.ndim == 3 else Image.Resampling.NEAREST))
    return out if a.ndim == 3 else out > 127


def _chula_folder(root: Path) -> dict:
    """Four drawn fields: f0, f1 and f3 with their leukocyte boxed (typed 3 = lymphocyte, 4 = monocyte, 0 =
    neutrophil), f2 without a label file, f3's nucleus unstained; a split file in root/splits (f1 val, others
    train)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    truth = {}
    for k, (kind, part) in enumerate([(3, "train"), (4, "val"), (None, "train"), (0, "train")]):
        rgb, cell, nucleus, rbc, boxes = _drawn(seed=k)
        if k == 3:  # a nucleus the stain rule cannot see (a pale field)
            rgb[nucleus] = rgb[cell & ~nucleus].mean(0).astype(np.uint8)
        rgb, cell, nucleus, rbc = _small(rgb), _small(cell), _small(nucleus), _small(rbc)
        h, w = cell.shape
        Image.fromarray(rgb).save(root / "images" / f"f{k}.png")
        if kind is not None:
            _, x0, y0, x1, y1 = boxes[0] * F
            (root / "labels" / f"f{k}.txt").write_text(
                f"{kind} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n")
        truth[f"f{k}"] = (cell, nucleus, rbc, part)
    (root / "splits").mkdir()
    with open(root / "splits" / "chula-wbc-seed0.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "label", "split", "group"])
        for name, (*_, part) in truth.items():
            wr.writerow([f"images/{name}.png", "lymphocyte", part, name])
    return truth


def test_chula_items_and_references(tmp_path):
    root = tmp_path / "chula"
    truth = _chula_folder(root)
    split = root / "splits" / "chula-wbc-seed0.csv"
    train = cell_data.source_items("chula", root, split, "train")
    val = cell_data.source_items("chula", root, split, "val")
    assert [it.path for it in train] == ["images/f0.png", "images/f2.png", "images/f3.png"]
    assert all(it.source == "chula" for it in train)
    assert [it.path for it in val] == ["images/f1.png"]
    for it in train + val:
        ref = cell_data.load_reference(it)
        cell, nucleus, rbc, _ = truth[Path(it.path).stem]
        assert ref.rbc_diameter_px == 40.0 and ref.cell.shape == cell.shape
        if it.path.endswith("f2.png"):  # no label file: unknown everywhere, not "no leukocyte"
            assert ref.cell_known.max() == 0 and ref.nucleus_known.max() == 0
            continue
        assert _dice(ref.cell, cell) > 0.85
        if it.path.endswith("f3.png"):  # no nucleus found: its nucleus channel unknown inside the cell
            assert ref.nucleus_known[cell].max() == 0 and ref.cell_known[cell].mean() > 0.8
            continue
        assert _dice(ref.nucleus, nucleus) > 0.85
        assert (ref.nucleus <= ref.cell).all()
        far = ndi.binary_erosion(rbc, iterations=2) & (ref.cell_known > 0)  # red cells outside the box: negatives
        assert far.sum() > 0.5 * rbc.sum() and ref.cell[far].max() == 0 and ref.nucleus[far].max() == 0
    ds = cell_data.CellDataset(train, augment=False)
    x, t, k = ds[1]  # the unlabelled field teaches nothing
    assert x.shape == (3, 224, 224) and float(k.sum()) == 0.0
    x, t, k = ds[0]
    assert float(t[0].sum()) > 0 and float((k[0] * (1 - t[0])).sum()) > 0


def test_training_validates_on_chula(tmp_path):
    root = tmp_path / "chula"
    _chula_folder(root)
    res = _train(tmp_path / "run", chula=root, splits=root / "splits", export=False)
    val = res["history"][0]["val"]
    assert set(val) == {"chula"} and val["chula"]["n"] == 1 and val["chula"]["known_px_cell"] > 0
    src = res["config"]["training"]["sources"]["chula"]
    assert src["counts"] == {"train": 3, "val": 1} and "MIT" in src["citation"] and src["label_rule"]
    assert "chula-wbc-seed0.csv" in src["split"]


def test_cli_names_a_missing_chula_folder(tmp_path):
    for part in ("Original", "Segmented"):
        for c in ("Benign", "Early", "Pre", "Pro"):
            (tmp_path / "tal" / part / c).mkdir(parents=True)
    code, msg = run_cli(["train", "segment", "--data", str(tmp_path / "tal"), "--out", str(tmp_path / "r"),
                         "--chula", str(tmp_path / "nope")])
    assert code == 2 and "--chula" in msg and "no such folder" in msg and "\n" not in msg.strip()


def test_real_chula_when_present():
    root, split = DATA / "chula-wbc", Path(__file__).resolve().parents[1] / "benchmarks/splits/chula-wbc-seed0.csv"
    if not (root / "labels").is_dir():
        pytest.skip("the shared data (../shared/data) is absent")
    val = cell_data.source_items("chula", root, split, "val")
    assert len(val) == 62 and len({it.path for it in val}) == 62
    ref = cell_data.load_reference(val[0])
    boxes = sources.chula_boxes(root / "labels" / f"{Path(val[0].path).stem}.txt", ref.cell.shape)
    inside = np.zeros(ref.cell.shape, bool)
    for _, x0, y0, x1, y1 in boxes:
        inside[int(y0 * 0.9):int(np.ceil(y1 * 1.1)), int(x0 * 0.9):int(np.ceil(x1 * 1.1))] = True
    assert ref.cell.any() and not (ref.cell.astype(bool) & ~inside).any()
    assert ref.cell_known[~inside].mean() > 0.95  # outside the boxes: known negatives


def test_chula_parts_are_scored_as_boxed_fields(tmp_path):
    from types import SimpleNamespace

    from leukodx.evaluation.cells import headline, load_parts, score_parts

    _chula_folder(tmp_path / "chula-wbc")
    parts = load_parts(tmp_path, tmp_path / "chula-wbc" / "splits", "train")
    assert parts.paths["chula"] == ["images/f0.png", "images/f3.png"]  # f2 has no label file: not scored
    assert parts.describe()["n_chula"] == 2 and not parts.raabin

    class OneCellPerBox:  # a segmenter that answers the reference, one centre in each box
        def analyze_many(self, images, batch_size=16):
            return [SimpleNamespace(cells=[SimpleNamespace(centroid=((y0 + y1) / 2, (x0 + x1) / 2))
                                           for _, x0, y0, x1, y1 in b], cell_count=len(b), flag="ok",
                                    mask=ref.cell, nucleus_mask=ref.nucleus) for _, b, ref in parts.chula]

    per_image: dict = {}
    scores = score_parts(OneCellPerBox(), parts, per_image=per_image)
    c = scores["chula"]
    assert c["n_boxes"] == 2 and c["one_centre_per_box"] == 1.0 and c["count_exact"] == 1.0
    assert c["cell_dice_global"] == 1.0 and len(per_image["chula"]) == 2
    h = headline(scores)
    assert h["chula_one_centre"] == 1.0 and h["chula_cell_dice"] == 1.0 and "raabin_one_centre" in h
