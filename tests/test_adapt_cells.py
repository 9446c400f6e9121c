"""`leukodx adapt --cells`: a lab's commissioning of the cell-type model (leukodx.deploy.commission) and
`predict --cells` with its head."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from leukodx.deploy.commission import commission_cells, folds
from leukodx.errors import DatasetError
from leukodx.inference.cell_classifier import CellClassifier

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _cell(kind: str, seed: int, size: int = 96) -> Image.Image:
    """A cell-centred crop: pink background, a few red discs, a pale cell whose nucleus is round and fills most of it
    (blast) or is small and lobed (others)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(215, 240, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x, y = rng.uniform(0, size, 2)
        if abs(x - size / 2) + abs(y - size / 2) > 40:
            d.ellipse((x - 9, y - 9, x + 9, y + 9), fill=(205, 125, 135))
    c = size / 2 + rng.uniform(-2, 2, 2)
    r = rng.uniform(15, 19)
    d.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=(205, 185, 225))
    purple = tuple(int(v) for v in (rng.integers(70, 110), rng.integers(30, 55), rng.integers(120, 150)))
    if kind == "blast":
        q = r * rng.uniform(0.75, 0.85)
        d.ellipse((c[0] - q, c[1] - q, c[0] + q, c[1] + q), fill=purple)
    else:
        for a in rng.uniform(0, 2 * np.pi) + np.arange(3) * 2.1:
            x, y = c + 7 * np.array([np.cos(a), np.sin(a)])
            d.ellipse((x - 4.5, y - 4.5, x + 4.5, y + 4.5), fill=purple)
    return im


def _lab(root: Path, counts: dict[str, int], cases: int = 0) -> Path:
    rows = []
    for k, (kind, n) in enumerate(counts.items()):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            _cell("blast" if kind == "blast" else "other", 1000 * k + i).save(root / kind / f"{i}.png")
            rows.append((f"{kind}/{i}.png", f"p{i % cases}" if cases else ""))
    if cases:
        with (root / "cases.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([("file", "case"), *rows])
    return root


def test_adapt_cells_writes_the_model_and_the_report_and_predict_uses_the_head(tmp_path):
    lab = _lab(tmp_path / "lab", {"blast": 14, "neutrophil": 12, "non_blast": 6}, cases=4)
    rep = commission_cells(lab, tmp_path / "A")
    out = tmp_path / "A"
    assert sorted(p.name for p in out.iterdir()) == ["cells", "commissioning.html", "commissioning.json"]
    assert not (tmp_path / ".A.tmp").exists()
    saved = json.loads((out / "commissioning.json").read_text())
    for key in ("per_class", "adapted_cv", "bundled", "recommendation", "data_sha256", "date", "leukodx_version",
                "seconds", "use_adapted"):
        assert key in saved
    assert saved["per_class"] == {"blast": 14, "neutrophil": 12, "non_blast": 6}
    b = saved["adapted_cv"]["blast"]
    assert all(np.isfinite(b[k]).all() and 0 <= min(b[k]) <= max(b[k]) <= 1 for k in ("sensitivity_ci95",
                                                                                       "specificity_ci95"))
    assert b["sensitivity"] >= 0.8 and b["specificity"] >= 0.8  # the synthetic kinds are easy to tell apart
    assert rep["grouped_by_case"] and rep["n_folds"] == 4
    assert "<script" not in (out / "commissioning.html").read_text() and "http" not in (
        out / "commissioning.html").read_text()
    cfg = json.loads((out / "cells" / "config.json").read_text())
    assert cfg["head"]["classes"] == ["blast", "neutrophil", "non_blast"] and "commissioning" in cfg
    assert cfg["cells"]["blast_threshold"] == 0.0  # its commissioned blast call applies, not the bundled threshold
    assert not (out / "cells" / "model.int8.onnx").exists()

    clf, plain = CellClassifier.load(out / "cells"), CellClassifier.load()
    crops = np.stack([np.asarray(_cell(k, 99 + i).resize((64, 64))) for i, k in enumerate(("blast", "other") * 3)])
    p, q = clf.predict_crops(crops), plain.predict_crops(crops)
    assert np.allclose(p.sum(1), 1) and not np.allclose(p, q)
    assert (p[:, clf.classes.index("smudge")] > 0).all()  # the non_blast share spread over unlabelled kinds

    from leukodx.data.synthetic import synthetic_field
    from leukodx.inference.predict import run_predict

    (tmp_path / "f").mkdir()
    for i in range(2):
        Image.fromarray(synthetic_field("Pro", 224, seed=i)[0]).save(tmp_path / "f" / f"{i}.png")
    run_predict([str(tmp_path / "f")], tmp_path / "R", heatmap=False, overlays=False, cells_dir=out / "cells")
    res = json.loads((tmp_path / "R" / "predictions.json").read_text())
    assert res["models"]["cell_commissioning"]["data_sha256"] == saved["data_sha256"]
    with pytest.raises(DatasetError, match="not an earlier commissioning"):  # never replaces another folder
        commission_cells(lab, tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["0.png", "1.png"]
    assert {f["cell_model"] for f in res["fields"]} == {clf.version}  # each field names the model that typed it
    with open(tmp_path / "R" / "predictions.csv", newline="") as fh:  # the CSV names it too (appended column)
        assert {r["cell_model"] for r in csv.DictReader(fh)} == {clf.version}
    assert clf.version.startswith("adapted-") and plain.version != clf.version
    # the version is the files' content: the same files elsewhere, the same version; a change, another
    shutil.copytree(out / "cells", tmp_path / "copy")
    assert CellClassifier.load(tmp_path / "copy").version == clf.version
    np.savez(tmp_path / "copy" / "head.npz", **{k: v * 1.01 for k, v in np.load(out / "cells" / "head.npz").items()})
    assert CellClassifier.load(tmp_path / "copy").version != clf.version
    cells = [c for f in res["fields"] for c in f.get("cells") or []]
    assert cells and all(abs(sum(c["ai_probabilities"].values()) - 1) < 1e-2 for c in cells)


@pytest.mark.parametrize("case", ["few", "unknown", "unreadable", "no_cell"])
def test_bad_labelled_cells_are_refused_in_one_line_and_nothing_is_written(tmp_path, case):
    counts = {"blast": 4, "lymphocyte": 12} if case == "few" else {"blast": 10, "lymphocyte": 10}
    lab = _lab(tmp_path / "lab", counts)
    if case == "unknown":
        (lab / "blasts").mkdir()
    elif case == "unreadable":
        (lab / "blast" / "bad.jpg").write_bytes(b"not an image")
    elif case == "no_cell":
        Image.new("RGB", (96, 96), (230, 210, 220)).save(lab / "lymphocyte" / "empty.png")
    with pytest.raises(DatasetError) as e:
        commission_cells(lab, tmp_path / "A")
    msg = str(e.value)
    assert "\n" not in msg
    assert {"few": "6 more blast", "unknown": "blasts", "unreadable": "bad.jpg", "no_cell": "empty.png"}[case] in msg
    if case == "unknown":
        assert "non_blast" in msg and "neutrophil" in msg
    assert not (tmp_path / "A").exists() and not (tmp_path / ".A.tmp").exists()


def test_folds_never_split_a_case_and_keep_every_class_in_each_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), rng.integers(2, 9, 12)).astype(str)
    y = rng.integers(0, 3, len(groups))
    f = folds(y, groups)
    assert f.max() + 1 == 5
    for g in np.unique(groups):
        assert len(set(f[groups == g])) == 1
    assert folds(np.array([0] * 3 + [1] * 20), np.arange(23).astype(str)).max() + 1 == 3  # a class of 3: 3 folds


@pytest.mark.skipif(not (DATA / "chula-wbc" / "labels").is_dir(), reason="needs ../shared/data/chula-wbc")
def test_kinds_only_commissioning_on_real_chula_cells(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from commission_chula import cut_crops

    lab = cut_crops(DATA / "chula-wbc", tmp_path / "lab", per_kind=12)
    rep = commission_cells(lab, tmp_path / "A", kinds_only=True)
    assert rep["adapted_cv"]["blast"].startswith("not measured") and not rep["use_adapted"]
    assert set(rep["adapted_cv"]["recall"]) == set(rep["per_class"]) and len(rep["per_class"]) >= 4


def test_adapt_cells_and_predict_cells_run_in_the_clinic_install(tmp_path):
    from leukodx.data.synthetic import synthetic_field
    from test_clinic_install import cli_without_torch

    lab = _lab(tmp_path / "lab", {"blast": 10, "lymphocyte": 10})
    res = cli_without_torch(["adapt", "--cells", str(lab), "--out", str(tmp_path / "A")], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "A" / "commissioning.json").is_file() and (tmp_path / "A" / "cells" / "head.npz").is_file()
    Image.fromarray(synthetic_field("Pre", 224, seed=0)[0]).save(tmp_path / "field.png")
    res = cli_without_torch(["predict", str(tmp_path / "field.png"), "--out", str(tmp_path / "p"), "--cells",
                             str(tmp_path / "A" / "cells")], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli_without_torch(["adapt", "--cells", str(lab / "blast"), "--out", str(tmp_path / "B")], tmp_path)
    assert res.returncode != 0 and not (tmp_path / "B").exists()


def test_wilson_intervals_never_leave_0_to_1():
    from leukodx.deploy.commission import _wilson

    assert [str(v) for v in _wilson(0, 14)][0] == "0.0" and _wilson(14, 14)[1] == 1.0  # never "-0.0 %" on a page
    lo, hi = _wilson(3, 10)
    assert 0 < lo < 0.3 < hi < 1
