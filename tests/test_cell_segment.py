"""The two-output segmenter's training (training/cell_segment, through the one engine) and its command: a tiny U-Net, one short epoch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clitools import run_cli

DATA = Path("/work/shared/data")


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def _train(out: Path, export: bool = True, **kw):
    from leukodx.training.cell_segment import train_cell_segmenter
    from leukodx.training.config import resolve_config

    args = {"arch": "unet", "arch_kwargs": {"base_channels": 4, "depth": 2}, "image_size": 96, "epochs": 1,
            "samples_per_epoch": 16, "batch_size": 8, "lr": 3e-3, "seed": 0, "out": str(out),
            "splits": "benchmarks/splits", **{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}}
    return train_cell_segmenter(resolve_config("cell_segment", overrides=args), export=export)


def test_trains_a_two_output_model_the_analysis_reads(tmp_path):
    from leukodx.data.synthetic import synthetic_field
    from leukodx.inference.pipeline import Analysis
    from leukodx.models.eager import load_eager

    run = tmp_path / "run"
    res = _train(run, synthetic=8, time_limit_s=300.0)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["outputs"] == ["cell", "nucleus"] and cfg["arch_kwargs"]["out_channels"] == 2
    assert cfg["input_size"] == [96, 96] and cfg["thresholds"]["mask"] == 0.5
    assert "min_nucleus_fraction" in cfg["thresholds"]["instances"]
    tr = cfg["training"]
    assert tr["sources"]["synthetic"]["counts"]["train"] == 8 and tr["sources"]["synthetic"]["label_rule"]
    assert tr["best_epoch"] == 1 and tr["wall_seconds"] > 0 and tr["machine"]
    assert cfg["onnx"]["outputs"] == ["logits"] and (run / "model.onnx").is_file()
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 1 and hist == res["history"]
    h = hist[0]
    assert math.isfinite(h["train_loss"])
    assert h["last_batches_loss"] <= h["first_batches_loss"] or math.isfinite(h["last_batches_loss"])
    assert h["val"]["synthetic"]["dice_nucleus"] is None  # synthetic smears supervise no nucleus
    assert h["val"]["synthetic"]["dice_cell"] is not None
    assert (run / "train.log").read_text().count("epoch 1/1") == 1

    rgb, _ = synthetic_field("Pre", 224, seed=3)
    for engine in ("torch", "onnx"):
        # the per-cell classifier is not what this test is about
        r = Analysis(None, run, engine=engine, eager=load_eager, cell_classifier=False).analyze(rgb)
        assert r.instances is not None and r.instances.shape == rgb.shape[:2]
        assert r.nucleus_mask is not None
        for c in r.cells:
            assert c.nucleus_area_px is not None and c.nc_ratio is not None and 0 <= c.nc_ratio <= 1


def test_tiny_real_sources_when_present(tmp_path):
    if not (DATA / "raabin-fields" / "labels").is_dir() or not (DATA / "pbc").is_dir():
        pytest.skip("the real data (/work/shared/data) is absent")
    res = _train(tmp_path / "run", raabin=DATA / "raabin-fields", pbc=DATA / "pbc", max_train_images=6,
                 max_val_images=4, export=False)
    val = res["history"][0]["val"]
    assert set(val) == {"raabin", "pbc"} and all(v["n"] == 4 for v in val.values())
    assert all(v["known_px_cell"] > 0 for v in val.values())
    cfg = res["config"]["training"]
    assert cfg["sources"]["raabin"]["citation"] and "pbc-seed0.csv" in cfg["sources"]["pbc"]["split"]


def _cli(args):
    return run_cli(args)


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "tal" / "Original").mkdir(parents=True)
    (tmp_path / "tal" / "Segmented").mkdir()
    base = ["train", "segment", "--data", str(tmp_path / "tal"), "--out", str(tmp_path / "r")]
    code, msg = _cli(base + ["--raabin", str(tmp_path / "nope")])
    assert code == 2 and "--raabin" in msg and "no such folder" in msg and "\n" not in msg.strip()
    (tmp_path / "rb" / "images").mkdir(parents=True)
    (tmp_path / "rb" / "labels").mkdir()
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "rb" / "images" / "a.jpg")
    code, msg = _cli(base + ["--raabin", str(tmp_path / "rb")])
    assert code == 2 and "a.txt" in msg
    code, msg = _cli(base + ["--pbc", str(tmp_path / "tal"), "--preset", "paper"])
    assert code == 2 and "--preset" in msg
    code, msg = _cli(base + ["--synthetic", "5"])
    assert code == 2 and "--raabin" in msg
    code, msg = _cli(base + ["--cut-cells", "0.3"])
    assert code == 2 and "--cut-cells" in msg and "--raabin" in msg
    code, msg = _cli(base + ["--pbc", str(tmp_path / "tal"), "--low-magnification", "1.5"])
    assert code == 2 and "--low-magnification" in msg
