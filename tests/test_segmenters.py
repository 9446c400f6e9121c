"""One battery over every registered segmenter (tiny sizes), plus the FPN+GELU's structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leukodx.errors import ModelError
from leukodx.models.checkpoint import load_model, save_model
from leukodx.models.registry import available, create_model
from leukodx.models.segmenters import FPNGelu, parse_arch

# every registered segmenter (tests' own stand-ins, named test-*, aside), at a tiny size, on its own encoder and on
# a timm features_only encoder
SMALL = {"base_channels": 4, "depth": 3}
TIMM = {"encoder": "mobilenetv3_small_050", "depth": 4}
REGISTERED = [a for a in available("segment") if not a.startswith("test-")]
TINY = [(a, SMALL) for a in REGISTERED] + [(a, TIMM) for a in REGISTERED]


def test_both_study_architectures_are_registered():
    assert {"unet", "unet-fpn-gelu"} <= set(available("segment"))


@pytest.mark.parametrize("arch,kwargs", TINY, ids=lambda v: str(v))
def test_battery(arch, kwargs, tmp_path):
    torch.manual_seed(0)
    model = create_model("segment", arch, **kwargs)
    x = torch.rand(2, 3, 64, 64) * 255
    out = model(x)
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()

    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    # odd sizes are padded inside and cropped back
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 50, 70) * 255).shape == (1, 1, 50, 70)

    save_model(tmp_path / "m", model, {"task": "segment", "arch": arch, "arch_kwargs": kwargs, "input_size": [64, 64]})
    loaded, cfg = load_model(tmp_path / "m")
    assert cfg["task"] == "segment"
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))

    prob = loaded.predict(x)
    assert prob.shape == (2, 1, 64, 64) and not prob.requires_grad
    assert float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_classic_unet_has_the_study_filters():
    model = create_model("segment", "unet")  # defaults: base 64, depth 4
    assert model.encoder.out_channels == [64, 128, 256, 512, 1024]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 4 and all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in ups)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 1
    assert isinstance(model.neck, nn.Identity)


def test_fpn_uses_gelu_lateral_1x1_and_smoothing_3x3():
    model = create_model("segment", "unet-fpn-gelu", base_channels=8, depth=4)
    fpn = model.neck
    assert isinstance(fpn, FPNGelu)
    assert any(isinstance(m, nn.GELU) for m in fpn.modules())
    assert not any(isinstance(m, nn.ReLU) for m in fpn.modules())
    laterals = [blk[0] for blk in fpn.lateral]
    smooths = [blk[0] for blk in fpn.smooth]
    assert len(laterals) == 5 and all(c.kernel_size == (1, 1) for c in laterals)
    assert len(smooths) == 4 and all(c.kernel_size == (3, 3) for c in smooths)
    # the FPN changes the skips; the decoder sees the same shapes as the plain U-Net's
    x = torch.rand(1, 3, 32, 32) * 255
    feats = model.encoder(model.normalize(x))
    skips = fpn(feats)
    assert [s.shape for s in skips] == [f.shape for f in feats]
    assert not torch.equal(skips[0], feats[0])
    # the top-down path really carries deep information into the shallowest skip
    feats2 = [f.clone() for f in feats]
    feats2[-1] = feats2[-1] + 1.0
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(fpn(feats)[0], fpn(feats2)[0])


def test_same_decoder_with_and_without_fpn():
    a = create_model("segment", "unet", base_channels=8)
    b = create_model("segment", "unet-fpn-gelu", base_channels=8)
    sa = {k: v.shape for k, v in a.state_dict().items()}
    sb = {k: v.shape for k, v in b.state_dict().items() if not k.startswith("neck.")}
    assert sa == sb


def test_normalisation_is_inside_and_per_image_by_default():
    model = create_model("segment", "unet", base_channels=4, depth=2).eval()
    x = torch.rand(1, 3, 32, 32) * 200
    with torch.no_grad():
        # per-image standardisation: a global brightness/contrast change gives the same logits
        assert torch.allclose(model(x), model(x * 0.8 + 20), atol=1e-3)
    inet = create_model("segment", "unet", base_channels=4, depth=2, normalization="imagenet")
    assert inet.normalization == "imagenet"


def test_bad_arguments_are_model_errors():
    with pytest.raises(ModelError, match="segmentation architecture"):
        create_model("segment", "unet-nope")
    with pytest.raises(ModelError, match="timm encoder"):
        create_model("segment", "unet", encoder="resnet_nope")
    with pytest.raises(ModelError, match="normalization"):
        create_model("segment", "unet", normalization="zscore")
    with pytest.raises(ModelError, match="base_channels"):
        create_model("segment", "unet", base_channels=0)


def test_parse_arch():
    assert parse_arch("unet") == ("unet", {})
    assert parse_arch("unet-fpn-gelu:resnet18") == ("unet-fpn-gelu", {"encoder": "resnet18"})
