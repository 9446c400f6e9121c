"""Segmentation training through the CLI on tiny synthetic smears, its loss and metric, and its bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from leukodx.cli import main
from leukodx.data.images import read_reference_mask
from leukodx.data.layout import load_dataset
from leukodx.data.synthetic import make_synthetic_dataset
from leukodx.errors import DatasetError
from leukodx.training.losses import DiceBCELoss, DiceScore

TINY = ["--base-channels", "4", "--depth", "2", "--image-size", "48", "--epochs", "1", "--batch-size", "8",
        "--quiet"]
CONTRACT = ("n_images", "dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy",
            "n_reference_failed", "count_mae")


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("seg"), per_class=6, size=64, seed=3)


def _blank_masks(root, names):
    for p in names:
        m = root / "Segmented" / p
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(m)


def test_train_segment_cli_writes_a_model_directory(smears, tmp_path):
    from leukodx.models.checkpoint import load_model

    run = tmp_path / "run"
    assert cli("train", "segment", "--data", str(smears), "--arch", "unet-fpn-gelu", "--out", str(run),
               "--eval-lab-shift", *TINY) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == "segment" and cfg["arch"] == "unet-fpn-gelu"
    assert cfg["arch_kwargs"]["base_channels"] == 4 and cfg["input_size"] == [48, 48]
    assert cfg["thresholds"]["mask"] == 0.5 and "min_area" in cfg["thresholds"]["instances"]
    assert cfg["reference_mask_level"] == 128
    assert cfg["training"]["masks"]["train"]["n_used"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    seg = metrics["segmentation"]
    assert all(k in seg for k in CONTRACT)
    assert seg["n_images"] > 0 and 0 <= seg["dice_global"] <= 1
    shifted = metrics["segmentation_lab_shift"]
    assert shifted["n_images"] == seg["n_images"]
    assert (shifted["dice_global"], shifted["pixel_accuracy"]) != (seg["dice_global"], seg["pixel_accuracy"])
    model, _ = load_model(run)
    assert model(torch.rand(1, 3, 48, 48) * 255).shape == (1, 1, 48, 48)


def test_near_empty_and_missing_masks_are_left_out_and_counted(smears, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smears, data)
    pro = sorted((data / "Segmented" / "Pro").iterdir())
    _blank_masks(data, [f"Pro/{p.name}" for p in pro[:3]])  # failed references
    for p in sorted((data / "Segmented" / "Early").iterdir())[:2]:  # missing references
        p.unlink()
    split = tmp_path / "split.csv"
    # everything in train, so the counts are known exactly
    rows = ["path,label,split,group"]
    for i, f in enumerate(sorted((data / "Original").rglob("*.jpg"))):
        rel = f.relative_to(data).as_posix()
        rows.append(f"{rel},{f.parent.name},{'val' if i % 8 == 0 else 'train'},g{i}")
    split.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert cli("train", "segment", "--data", str(data), "--split", str(split), "--out", str(run), *TINY) == 0
    masks = json.loads((run / "config.json").read_text())["training"]["masks"]
    assert masks["train"]["n_near_empty"] + masks["val"]["n_near_empty"] == 3
    assert masks["train"]["n_missing_masks"] + masks["val"]["n_missing_masks"] == 2
    assert masks["train"]["near_empty_left_out"] is True
    used = masks["train"]["n_used"] + masks["val"]["n_used"]
    assert used == 24 - 3 - 2

    run2 = tmp_path / "run2"
    assert cli("train", "segment", "--data", str(data), "--split", str(split), "--out", str(run2),
               "--include-near-empty", *TINY) == 0
    masks2 = json.loads((run2 / "config.json").read_text())["training"]["masks"]
    assert masks2["train"]["n_used"] + masks2["val"]["n_used"] == 24 - 2


def test_flat_layout_has_no_masks_one_clear_error(tmp_path, capsys):
    flat = make_synthetic_dataset(tmp_path / "flat", per_class=3, size=64, layout="flat")
    code = cli("train", "segment", "--data", str(flat), "--out", str(tmp_path / "run"), *TINY)
    err = capsys.readouterr().err
    assert code == 2
    assert "no reference masks" in err and "Segmented" in err and "Traceback" not in err


def test_all_masks_near_empty_is_one_clear_error(smears, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(smears, data)
    _blank_masks(data, [p.relative_to(data / "Segmented").as_posix()
                        for p in (data / "Segmented").rglob("*.png")])
    code = cli("train", "segment", "--data", str(data), "--out", str(tmp_path / "run"), *TINY)
    err = capsys.readouterr().err
    assert code == 2
    assert "No usable reference mask" in err and "near-empty" in err


def test_unknown_arch_is_one_clear_error(smears, tmp_path, capsys):
    code = cli("train", "segment", "--data", str(smears), "--arch", "unet-xl", "--out", str(tmp_path / "r"), *TINY)
    assert code == 2
    assert "Valid names" in capsys.readouterr().err


def test_dice_bce_loss_and_score():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    good = (target * 2 - 1) * 20  # confident and right
    bad = -good
    loss = DiceBCELoss()
    assert float(loss(good, target)) < 0.01
    assert float(loss(bad, target)) > 1.5
    d = DiceScore()
    d.update(good, target)
    assert d.compute() == 1.0
    d.reset()
    half = good.clone()
    half[:, :, 4:8] = -20  # predicts half of the square
    d.update(half, target)
    assert d.compute() == pytest.approx(2 * 32 / (32 + 64))
    empty = DiceScore()
    empty.update(-torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert empty.compute() == 1.0


def test_require_masks_message(tmp_path):
    from leukodx.data.layout import load_dataset
    from leukodx.training.segment import require_masks

    flat = make_synthetic_dataset(tmp_path / "flat", per_class=2, size=64, layout="flat")
    with pytest.raises(DatasetError, match="no reference masks"):
        require_masks(load_dataset(flat), flat)


def test_study_summary_mean_std_and_table():
    from leukodx.training.study import study_table, summarize_study

    def run(arch, seed, dice):
        test = {"dice_global": dice, "dice_global_all": dice, "dice_mean": dice, "iou_global": dice / 2,
                "pixel_accuracy": 0.99, "count_mae": 1.0}
        return {"arch": arch, "seed": seed, "test": test, "test_lab_shift": None, "train_seconds": 10.0,
                "epochs_run": 3, "n_parameters": 1000}

    runs = [run("unet", 0, 0.8), run("unet", 1, 0.9), run("unet-fpn-gelu", 0, 0.7)]
    s = summarize_study(runs, ["unet", "unet-fpn-gelu"])
    assert s["unet"]["test"]["dice_global"]["mean"] == pytest.approx(0.85)
    assert s["unet"]["test"]["dice_global"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert s["unet-fpn-gelu"]["test"]["dice_global"]["std"] == 0.0 and s["unet-fpn-gelu"]["n_runs"] == 1
    table = study_table(s)
    assert "| unet | " in table and "0.8500 ± 0.0707" in table and "99.00 ± 0.00" in table


def test_min_mask_fraction_and_pretrained(smears, tmp_path, capsys):
    code = cli("train", "segment", "--data", str(smears), "--out", str(tmp_path / "r1"), "--min-mask-fraction", "0.9",
               *TINY)
    assert code == 2 and "Lower --min-mask-fraction" in capsys.readouterr().err
    code = cli("train", "segment", "--data", str(smears), "--out", str(tmp_path / "r2"), "--pretrained",
               str(tmp_path / "nowhere"), *TINY)
    assert code == 2 and "no model.safetensors" in capsys.readouterr().err
    run = tmp_path / "r3"
    assert cli("train", "segment", "--data", str(smears), "--out", str(run), "--min-mask-fraction", "0.02",
               *TINY) == 0
    masks = json.loads((run / "config.json").read_text())["training"]["masks"]["train"]
    train_rows = [r for r in csv.DictReader(open(run / "split.csv")) if r["split"] == "train"]
    by_path = load_dataset(smears).by_path()
    low = sum(read_reference_mask(by_path[r["path"]].mask).mean() < 0.02 for r in train_rows)
    assert masks["min_mask_fraction"] == 0.02 and masks["n_low_foreground"] == low
    run4 = tmp_path / "r4"
    assert cli("train", "segment", "--data", str(smears), "--out", str(run4), "--pretrained", str(run), *TINY) == 0
    assert json.loads((run4 / "config.json").read_text())["training"]["pretrained"] == {
        "file": str(run / "model.safetensors"), "fine_tuned": True}  # the start is recorded
    # --pretrained really loads the weights: a fresh model given them holds exactly the run's tensors
    from safetensors.torch import load_file

    from leukodx.models.checkpoint import load_model
    from leukodx.training.segment import load_initial_weights

    fresh, _ = load_model(run4)
    load_initial_weights(fresh, run, print)
    want = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())


def test_help_shows_the_defaults_written_in_brackets():
    """`[default: 128]` in a help text is rich markup unless escaped: it vanished from `--help`."""
    from clitools import run_cli

    for args, shown in ((["train", "segment", "--help"], "Input size in px. [default: 128]"),
                        (["serve", "--help"], "Segmenter model directory [default: bundled]")):
        code, out = run_cli(args)
        assert code == 0
        assert shown in " ".join(out.replace("│", " ").split())
