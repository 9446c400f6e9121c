"""Training engine, configs, transforms, data sets and the `train classify` command, on synthetic smears."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clitools import run_cli
from leukodx.errors import LeukodxError
from leukodx.training.config import TrainConfig, resolve_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> Path:
    from leukodx.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("smears"), per_class=16, size=64, seed=5)


def _cfg(data, out, **kw) -> TrainConfig:
    base = {"data": str(data), "out": str(out), "image_size": 48, "epochs": 3, "batch_size": 8, "lr": 3e-3,
            "augment": "none", "quiet": True, "patience": 0, "warmup_epochs": 0}
    return resolve_config("classify", overrides={**base, **kw})


# --- configs --------------------------------------------------------------------------------------------------


def test_config_layers_defaults_preset_yaml_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.01\nimage-size: 96\n")
    cfg = resolve_config("classify", preset="paper", yaml_path=y, overrides={"lr": 0.5, "seed": None})
    assert cfg.arch == "inception_resnet_v2" and cfg.optimizer == "adam" and cfg.batch_size == 32  # preset
    assert cfg.epochs == 7 and cfg.image_size == 96  # YAML over preset
    assert cfg.lr == 0.5 and cfg.seed == 0  # flags over YAML; a flag not given (None) changes nothing
    paper = resolve_config("classify", preset="paper")
    assert (paper.image_size, paper.lr, paper.batch_size, paper.epochs) == (224, 1e-4, 32, 60)
    seg = resolve_config("segment", preset="paper")
    assert (seg.image_size, seg.batch_size, seg.epochs, seg.lr) == (224, 32, 35, 1e-3)


def test_config_errors(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("epochz: 3\n")
    with pytest.raises(LeukodxError, match="epochz") as exc:
        resolve_config("classify", yaml_path=y)
    assert "image_size" in exc.value.message  # lists the valid settings
    with pytest.raises(LeukodxError, match="adamw"):
        resolve_config("classify", overrides={"optimizer": "sgd"})
    with pytest.raises(LeukodxError, match="paper"):
        resolve_config("classify", preset="gpu")
    with pytest.raises(LeukodxError, match="does not exist"):
        resolve_config("classify", yaml_path=tmp_path / "none.yaml")


def test_training_path_needs_no_web_dependencies():
    import subprocess
    import sys

    code = ("import sys; import leukodx.training.classify, leukodx.cli.train_classify, leukodx.training.config; "
            "bad = [m for m in ('pydantic', 'fastapi', 'starlette', 'uvicorn', 'sqlalchemy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --- transforms and data sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["none", "light", "strong", "robust", "moderate"])
def test_transforms_keep_image_and_mask_aligned(augment):
    from leukodx.data.transforms import ClassificationTransform, SegmentationTransform

    img = np.full((80, 80, 3), 235, np.uint8)
    mask = np.zeros((80, 80), bool)
    img[10:35, 40:70] = 40
    mask[10:35, 40:70] = True
    torch.manual_seed(0)
    seg = SegmentationTransform(64, augment)
    for _ in range(25):
        x, m = seg(img, mask)
        assert x.shape == (3, 64, 64) and m.shape == (1, 64, 64) and x.dtype == torch.float32
        assert 0 <= float(x.min()) and float(x.max()) <= 255.0
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        g = x.mean(0)
        thr = (g.min() + g.max()) / 2
        assert ((g < thr) == (m[0] > 0.5)).float().mean() > 0.95
    y = ClassificationTransform(64, augment)(img)
    assert y.shape == (3, 64, 64) and float(y.max()) > 100  # 0..255, not 0..1


def test_stain_jitter_changes_colour_not_geometry():
    from leukodx.data.transforms import StainJitter

    torch.manual_seed(1)
    t = StainJitter(strength=0.3, shift=0.05, hue=0.08, p=1.0)
    params = t.make_params([])
    x = torch.rand(3, 16, 16) * 0.6 + 0.2
    y = t.apply_image(x, params)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert (y - x).abs().mean() > 0.005
    # white stays (nearly) white: no stain, no optical density
    w = t.apply_image(torch.ones(3, 4, 4), {**params, "beta": torch.zeros(3)})
    assert torch.allclose(w, torch.ones(3, 4, 4), atol=1e-4)


def test_robust_colour_parts_are_not_just_affine():
    """Per-image standardisation removes per-channel gains and offsets; gamma, hue rotation and stain jitter
    must change what is left (the standardised image), or they teach nothing."""
    from leukodx.data.transforms import ChannelGamma, HueRotate, JpegReencode, SensorNoise, WhiteBalance

    torch.manual_seed(2)
    x = torch.rand(3, 32, 32) * 0.8 + 0.1

    def std(img):
        m = img.mean(dim=(1, 2), keepdim=True)
        return (img - m) / img.std(dim=(1, 2), keepdim=True)

    wb = WhiteBalance(0.1, p=1.0)
    assert (std(wb.apply_image(x, {"gain": torch.tensor([0.95, 1.0, 1.05])})) - std(x)).abs().max() < 1e-4
    g = ChannelGamma(0.4, p=1.0)
    y = g.apply_image(x, {"gamma": torch.tensor([0.7, 1.0, 1.4])})
    assert (std(y) - std(x)).abs().mean() > 0.01 and torch.allclose(y[1], x[1])
    h = HueRotate(12, p=1.0)
    y = h.apply_image(x, {"angle": 0.2})
    assert (std(y) - std(x)).abs().mean() > 0.01
    grey = torch.full((3, 4, 4), 0.5)
    assert torch.allclose(h.apply_image(grey, {"angle": 0.2}), grey, atol=1e-5)  # grey stays grey
    j = JpegReencode((25, 25), p=1.0).apply_image(x, {"quality": 25})
    assert j.shape == x.shape and 0.005 < (j - x).abs().mean() < 0.3
    n = SensorNoise(0.02, p=1.0).apply_image(x, {"std": 0.02})
    assert 0.005 < (n - x).abs().mean() < 0.03


def test_random_zoom_covers_plus_minus_30_percent():
    from torchvision import tv_tensors

    from leukodx.data.transforms import RandomZoom

    img = torch.zeros(3, 100, 100)
    img[:, 40:60, 40:60] = 1.0  # a 20 px square: its size after the zoom measures the magnification
    t = RandomZoom(100, amount=0.3, aspect=1.0)
    torch.manual_seed(0)
    sides = []
    for _ in range(200):
        out = t(tv_tensors.Image(img))
        assert out.shape == (3, 100, 100)
        sides.append(float((out[0] > 0.5).float().sum().sqrt()))
    sides = np.array([s for s in sides if s > 0])
    assert sides.min() < 20 * 0.8 and sides.max() > 20 * 1.2  # both ways
    assert sides.min() > 20 * 0.65 and sides.max() < 20 * 1.4  # within +-30 % (+ resampling)


def test_datasets_decode_once_split_and_balance(smears):
    from leukodx.data.datasets import (
        ClassificationDataset,
        EpochSampler,
        SegmentationDataset,
        class_weights,
        load_split,
        samples_for_split,
        subset,
    )
    from leukodx.data.transforms import ClassificationTransform, SegmentationTransform

    split = load_split(smears, strategy="sgdc", seed=0)
    train = samples_for_split(smears, split, "train")
    test = samples_for_split(smears, split, "test")
    assert train and test and not {s.path for s in train} & {s.path for s in test}
    ds = ClassificationDataset(train, ["Benign", "Early", "Pre", "Pro"], ClassificationTransform(32))
    assert len(ds.images) == len(train) and ds.images[0].dtype == np.uint8
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    seg = SegmentationDataset(train, SegmentationTransform(32))
    xi, mi = seg[0]
    assert mi.shape == (1, 32, 32) and seg.summary()["n_used"] == len(train)

    small = subset(train, 8, seed=0)
    assert len(small) == 8 and {s.label for s in small} == {"Benign", "Early", "Pre", "Pro"}

    labels = [0] * 12 + [1] * 3 + [2] * 6
    w = class_weights(labels, 4)
    assert w[1] > w[2] > w[0] and w[3] == 0
    sampler = EpochSampler(len(labels), labels=labels, seed=0)  # oversampling
    drawn = [labels[i] for i in sampler]
    assert len(drawn) == 36 and drawn.count(0) == drawn.count(1) == drawn.count(2) == 12
    sampler.set_epoch(1)
    assert list(sampler) != drawn  # a new order each epoch


def test_segmentation_dataset_counts_near_empty_and_missing(tmp_path):
    from PIL import Image

    from leukodx.data.datasets import SegmentationDataset
    from leukodx.data.layout import load_dataset

    for c in ("Benign", "Pro"):
        (tmp_path / "Original" / c).mkdir(parents=True)
        (tmp_path / "Segmented" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(tmp_path / "Original" / c / f"{i}.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(tmp_path / "Segmented" / "Pro" / "0.png")  # empty
    m = np.zeros((80, 80), np.uint8)
    m[5:40, 5:40] = 255
    Image.fromarray(m).save(tmp_path / "Segmented" / "Pro" / "1.png")
    Image.fromarray(m[:40, :40]).save(tmp_path / "Segmented" / "Benign" / "0.png")  # other size: resized
    ds = load_dataset(tmp_path)
    with pytest.warns(UserWarning, match="resized"):
        seg = SegmentationDataset(ds.samples)
    s = seg.summary()
    assert s["n_used"] == 2 and s["n_near_empty"] == 1 and s["n_missing_masks"] == 1 and s["n_resized_masks"] == 1
    assert len(SegmentationDataset(ds.samples, skip_near_empty=False)) == 3


# --- the engine -----------------------------------------------------------------------------------------------


def test_train_classifier_learns_and_writes_a_model_directory(smears, tmp_path):
    from leukodx.models.checkpoint import load_model
    from leukodx.training.classify import train_classifier

    out = tmp_path / "run"
    result = train_classifier(_cfg(smears, out, epochs=5), fit_ood=False)
    hist = result["history"]
    assert len(hist) == 5 and all(r["epoch_seconds"] > 0 for r in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert max(r["train_acc"] for r in hist[-2:]) > 0.45  # chance is 0.25
    metrics = json.loads((out / "metrics.json").read_text())["classification"]
    for key in ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece", "confusion_matrix",
                "classes", "per_class"):
        assert key in metrics
    assert set(metrics["per_class"]["Pro"]) >= {"precision", "recall", "specificity", "f1", "support"}
    model, cfg = load_model(out)
    assert cfg["temperature"] > 0 and 0.5 <= cfg["thresholds"]["low_confidence"] < 1
    assert cfg["input_size"] == [48, 48] and cfg["training"]["counts"]["train"]
    assert cfg["training"]["split_strategy"] == "sgdc" and cfg["training"]["split_seed"] == 0
    assert (out / "run_config.yaml").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 48, 48) * 255).shape == (1, 4)


def _toy_loaders(n=64, seed=0):
    from leukodx.data.datasets import EpochSampler

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(ds, batch_size=16, sampler=EpochSampler(n, seed=seed)),
            torch.utils.data.DataLoader(ds, batch_size=32))


def _toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))


def _toy_cfg(**kw) -> TrainConfig:
    return resolve_config("classify", overrides={"epochs": 4, "lr": 0.05, "quiet": True, "patience": 0,
                                                 "warmup_epochs": 0, **kw})


def test_resume_continues_from_checkpoint(tmp_path):
    from leukodx.training.engine import Trainer

    ce = torch.nn.CrossEntropyLoss()
    full = Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(schedule="none"), tmp_path / "a").fit()

    Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(epochs=2, schedule="none"), tmp_path / "b").fit()
    # everything rebuilt, as in a new process: weights, optimizer state and epoch come from the checkpoint
    t = Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(schedule="none", resume=True), tmp_path / "b")
    resumed = t.fit()
    assert t.resumed_from == 2 and len(resumed) == 4
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed, strict=True):  # the same run as one without interruption
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_resume_without_checkpoint_says_so(tmp_path):
    from leukodx.training.engine import Trainer, TrainingError

    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(_toy_model(), torch.nn.CrossEntropyLoss(), *_toy_loaders(), _toy_cfg(resume=True), tmp_path).fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from leukodx.training.engine import Trainer, TrainingError

    calls = {"n": 0}
    ce = torch.nn.CrossEntropyLoss()
    steps_per_epoch = len(_toy_loaders()[0])

    def loss_fn(out, y):
        if out.requires_grad:
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 2:  # second step of epoch 2
                return ce(out, y) * float("nan")
        return ce(out, y)

    t = Trainer(_toy_model(), loss_fn, *_toy_loaders(), _toy_cfg(), tmp_path)
    with pytest.raises(TrainingError) as exc:
        t.fit()
    msg = exc.value.message
    assert "nan" in msg and "epoch 2" in msg and "last good checkpoint" in msg and "--lr" in msg
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path):
    from leukodx.training.engine import Trainer, TrainingInterrupted

    calls = {"n": 0}
    ce = torch.nn.CrossEntropyLoss()

    def loss_fn(out, y):
        if out.requires_grad:
            calls["n"] += 1
            if calls["n"] == 10:  # during epoch 3
                raise KeyboardInterrupt
        return ce(out, y)

    with pytest.raises(TrainingInterrupted) as exc:
        Trainer(_toy_model(), loss_fn, *_toy_loaders(), _toy_cfg(), tmp_path).fit()
    assert "--resume" in exc.value.message and "checkpoint" in exc.value.message
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["interrupted"] and ck["epoch"] == 2
    t = Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(resume=True), tmp_path)
    hist = t.fit()
    assert t.resumed_from == 2 and len(hist) == 4


def test_early_stopping_and_best_weights(tmp_path):
    from leukodx.training.engine import Trainer

    scores = iter([0.5, 0.9, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    t = Trainer(_toy_model(), torch.nn.CrossEntropyLoss(), *_toy_loaders(), _toy_cfg(epochs=8, patience=2),
                tmp_path, metric_fn=lambda o, y: next(scores))
    hist = t.fit()
    assert len(hist) == 4 and t.stopped_early and t.best_epoch == 2
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert all(torch.equal(best["model"][k], v) for k, v in t.model.state_dict().items())


def test_converged_stop_once_the_validation_loss_is_flat(tmp_path):
    from leukodx.training.config import loss_flat
    from leukodx.training.engine import Trainer

    flat = [{"val_loss": v} for v in (1.0, 0.8, 0.6, 0.598, 0.61, 0.605)]
    assert loss_flat(flat, 3) and not loss_flat(flat[:5], 3) and not loss_flat(flat, 0)
    assert not loss_flat(flat + [{"val_loss": 0.5}], 3)  # a fall of more than 1 % in the last 3 epochs
    losses = iter([1.0, 0.7, 0.5, 0.499, 0.52, 0.51, 0.4, 0.3])

    class Fixed(Trainer):
        def validate(self):
            return next(losses), 0.5, {}

    t = Fixed(_toy_model(), torch.nn.CrossEntropyLoss(), *_toy_loaders(),
              _toy_cfg(epochs=8, patience=0, converge_patience=3), tmp_path)
    hist = t.fit()
    assert len(hist) == 6 and t.stopped_by == "converged"
    with pytest.raises(LeukodxError, match="converge"):
        _toy_cfg(converge_patience=-1).validate()


def test_time_limit_starts_no_epoch_that_would_end_past_it(tmp_path):
    import time

    from leukodx.training.engine import Trainer

    def slow(o, y):  # each validation takes ~0.3 s, so an epoch takes at least that
        time.sleep(0.3)
        return 0.5

    t = Trainer(_toy_model(), torch.nn.CrossEntropyLoss(), *_toy_loaders(),
                _toy_cfg(epochs=50, patience=0, time_limit_s=1.0), tmp_path, metric_fn=slow)
    hist = t.fit()
    assert 1 <= len(hist) < 4 and t.stopped_early and t.stopped_by == "time limit"
    assert sum(r["epoch_seconds"] for r in hist) <= 1.0 + 0.5
    t2 = Trainer(_toy_model(), torch.nn.CrossEntropyLoss(), *_toy_loaders(), _toy_cfg(epochs=2), tmp_path / "b")
    t2.fit()
    assert t2.stopped_by == "epochs" and not t2.channels_last  # channels_last is for CUDA unless asked for


def test_channels_last_on_cpu_when_asked_for_trains_the_same(tmp_path):
    from leukodx.training.engine import Trainer

    ce = torch.nn.CrossEntropyLoss()
    a = Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(schedule="none", channels_last="off"), tmp_path / "a").fit()
    t = Trainer(_toy_model(), ce, *_toy_loaders(), _toy_cfg(schedule="none", channels_last="on"), tmp_path / "b")
    b = t.fit()
    assert t.channels_last
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)


def test_temperature_and_low_confidence():
    from leukodx.deploy.calibrate import fit_low_confidence, fit_temperature

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    logits = torch.randn(400, 4, generator=g)
    logits[torch.arange(400), y] += 2.0
    overconfident = logits * 5
    t = fit_temperature(overconfident.numpy(), y.numpy())
    assert 2.2 < t < 3.0  # the Bayes posterior here is softmax(2 * logits) = softmax(overconfident / 2.5)
    probs = torch.softmax(logits, 1).numpy()
    correct = probs.argmax(1) == y.numpy()
    low = fit_low_confidence(probs, y.numpy(), target_accuracy=0.95, max_flagged=1.0)
    keep = probs.max(1) >= low["threshold"]
    assert low["reached"] and correct[keep].mean() >= 0.95 and low["val_coverage"] == keep.mean()
    # the smallest such threshold: one step lower misses the target
    lower = np.unique(probs.max(1))
    below = lower[lower < low["threshold"]]
    assert below.size == 0 or correct[probs.max(1) >= below[-1]].mean() < 0.95
    # capped: at most max_flagged of the fields fall under it, and then the target is not reached
    capped = fit_low_confidence(probs, y.numpy(), target_accuracy=0.95, max_flagged=0.04, floor=0.0)
    assert (probs.max(1) < capped["threshold"]).mean() <= 0.04 + 1 / len(y) and not capped["reached"]


# --- the command ----------------------------------------------------------------------------------------------


def _cli(args):
    return run_cli(args)


def test_cli_trains_a_classifier(smears, tmp_path):
    code, out = _cli(["train", "classify", "--data", str(smears), "--out", str(tmp_path / "r"), "--epochs", "1",
                      "--image-size", "32", "--quiet", "--max-train-images", "20"])
    assert code == 0, out
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["training"]["counts"]["train"] and sum(cfg["training"]["counts"]["train"].values()) == 20


def test_cli_errors(smears, tmp_path):
    code, msg = _cli(["train", "classify", "--data", str(smears), "--out", str(tmp_path / "a"), "--arch", "smeernet"])
    assert code == 2 and "smearnet" in msg and "Valid names" in msg

    bad = tmp_path / "split.csv"
    bad.write_text("path,label,split,group\nOriginal/Pro/nope.jpg,Pro,train,g1\nOriginal/Pre/gone.jpg,Pre,test,g2\n")
    code, msg = _cli(["train", "classify", "--data", str(smears), "--split", str(bad), "--out", str(tmp_path / "b")])
    assert code == 2 and "nope.jpg" in msg and "gone.jpg" in msg

    from leukodx.models.registry import create_model

    w = tmp_path / "resnet.pth"
    torch.save(create_model("classify", "test_resnet").backbone.state_dict(), w)
    code, msg = _cli(["train", "classify", "--data", str(smears), "--out", str(tmp_path / "c"), "--pretrained", str(w),
                      "--image-size", "32"])
    assert code == 2 and "does not fit" in msg and "smearnet" in msg

    code, msg = _cli(["train", "classify", "--data", str(smears), "--out", str(tmp_path / "d"), "--optimizer", "sgd"])
    assert code == 2 and "adamw" in msg


@pytest.mark.slow
def test_cli_rejects_an_image_size_the_backbone_cannot_take(smears, tmp_path):
    code, msg = _cli(["train", "classify", "--data", str(smears), "--out", str(tmp_path / "a"),
                      "--arch", "inception_resnet_v2", "--image-size", "64"])
    assert code == 2 and "64x64" in msg and "75" in msg


def test_engine_takes_several_targets_a_prepare_hook_and_a_validation_of_its_own(tmp_path):
    """The cell models' needs: a masked loss over two targets, a batch transform on the device, a validation per
    source and a time-annealed learning rate; the best epoch's weights are kept and `on_best` sees each one."""
    from leukodx.training.engine import Trainer

    x = torch.randn(32, 3, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    mask = torch.ones(32, 2, dtype=torch.bool)
    mask[::4] = False  # every fourth item teaches nothing
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, mask), batch_size=8)
    seen: dict = {"prepared": 0, "best": []}

    def prepare(batch, training):
        seen["prepared"] += 1
        xb, yb, mb = batch
        return xb * 2, yb, mb

    def masked_ce(out, yb, mb):
        keep = mb.all(1)
        return torch.nn.functional.cross_entropy(out[keep], yb[keep]) if keep.any() else out.sum() * 0

    def validate_fn(tr):
        outs, ys, ms = tr.predict(loader)
        acc = float((outs.argmax(1) == ys).float().mean())
        return float(masked_ce(outs, ys, ms)), acc, {"per_source": {"toy": acc}}

    cfg = _toy_cfg(epochs=3, schedule="cosine_time", warmup_steps=2, time_limit_s=3600.0)
    t = Trainer(_toy_model(), masked_ce, loader, None, cfg, tmp_path, validate_fn=validate_fn, checkpoints=False,
                prepare=prepare, on_best=lambda tr: seen["best"].append(tr.best_epoch))
    hist = t.fit()
    assert len(hist) == 3 and all(h["per_source"]["toy"] == h["val_accuracy"] for h in hist)
    assert seen["prepared"] == 3 * 4 * 2  # every training and validation batch, each epoch
    assert seen["best"] == [h["epoch"] for h in hist if h["best"]] and t.best_epoch == seen["best"][-1]
    assert hist[0]["lr"] > hist[-1]["lr"] and hist[-1]["lr"] < 0.05 * 0.1  # annealed to near 0 over the steps
    assert all(h["first_batches_loss"] is not None and h["samples_per_second"] > 0 for h in hist)
