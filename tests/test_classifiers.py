"""Classifier battery: every registered classifier and a tiny timm one; pretrained files; image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leukodx.errors import ModelError
from leukodx.models.registry import available, create_model

torch.set_num_threads(1)
TINY_TIMM = "test_resnet"
ARCHS = [*available("classify"), TINY_TIMM]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_and_round_trip(arch, tmp_path):
    from leukodx.models.checkpoint import load_model, save_model

    model = create_model("classify", arch, num_classes=4)
    x = torch.rand(2, 3, 64, 64) * 255
    out = model(x)
    assert out.shape == (2, 4)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad[:5]}"
    if arch != TINY_TIMM:  # timm zero-initialises each residual block's last BN, which zeroes some first gradients
        zero = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum()]
        assert not zero, f"parameters with zero gradient: {zero[:5]}"

    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_model(tmp_path / "m", model, {"task": "classify", "arch": arch, "arch_kwargs": {"num_classes": 4},
                                       "classes": ["a", "b", "c", "d"], "input_size": [64, 64]})
    loaded, cfg = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref, atol=1e-5)
    assert cfg["arch"] == arch


def test_project_nets_are_cpu_friendly():
    from leukodx.models.registry import spec

    for name in ("smearnet", "smearnet-wide"):
        s = spec("classify", name)
        assert s is not None and s.cpu_friendly
        n = sum(p.numel() for p in create_model("classify", name).parameters())
        assert 2e5 < n < 2.5e6, (name, n)


def test_per_image_normalisation_removes_white_balance_and_brightness():
    model = create_model("classify", "smearnet", num_classes=4).eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(40, 200, (1, 3, 64, 64)).astype(np.float32))
    shifted = x * torch.tensor([1.15, 0.9, 1.05]).view(1, 3, 1, 1) + torch.tensor([12.0, -8.0, 5.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(shifted), atol=1e-3)


def test_imagenet_normalisation_reads_colour():
    model = create_model("classify", "smearnet", num_classes=4, normalization="imagenet").eval()
    x = torch.rand(1, 3, 64, 64) * 200
    a, b = model.normalize(x), model.normalize(x * 1.2)
    assert (b - a).abs().mean() > 0.1
    assert torch.allclose(model.normalize(torch.full((1, 3, 2, 2), 255 * 0.485))[0, 0], torch.zeros(2, 2), atol=1e-5)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ModelError) as exc:
        create_model("classify", "smeernet")
    msg = exc.value.message
    assert "smearnet" in msg and "inception_resnet_v2" in msg


def test_unknown_normalization():
    with pytest.raises(ModelError, match="per_image"):
        create_model("classify", "smearnet", normalization="zscore")


def test_image_size_check_lists_sizes_that_work():
    from leukodx.models.classifiers import check_image_size

    check_image_size("smearnet", 64)
    model = create_model("classify", "smearnet", num_classes=4)

    class NeedsAtLeast48(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[-1] < 48:
                raise RuntimeError("Kernel size can't be greater than actual input size")
            return self.inner(x)

    with pytest.raises(ModelError) as exc:
        check_image_size("fake-net", 32, model=NeedsAtLeast48(model))
    msg = exc.value.message
    assert "32x32" in msg
    listed = msg.split("): ")[1].split(";")[0]
    assert listed.startswith("48, 64"), msg


@pytest.mark.slow
def test_inception_resnet_v2_rejects_64px():
    from leukodx.models.classifiers import check_image_size

    with pytest.raises(ModelError, match="75"):
        check_image_size("inception_resnet_v2", 64)


def _save_state(path, state):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_loads_and_drops_mismatched_head(tmp_path, suffix):
    from leukodx.models.classifiers import PretrainedNote, build_timm_classifier

    src = create_model("classify", TINY_TIMM, num_classes=1000).backbone
    f = tmp_path / f"w{suffix}"
    _save_state(f, src.state_dict())
    with pytest.warns(PretrainedNote, match="head"):
        model = build_timm_classifier(TINY_TIMM, num_classes=4, pretrained_file=f)
    a = model.backbone.state_dict()
    conv = next(k for k in a if k.endswith("conv1.weight") or k.startswith("stem"))
    assert torch.equal(a[conv], src.state_dict()[conv])
    assert model.backbone.fc.weight.shape[0] == 4


def test_pretrained_file_that_does_not_fit(tmp_path):
    from leukodx.models.classifiers import build_timm_classifier

    other = create_model("classify", "smearnet", num_classes=4).backbone
    f = tmp_path / "other.pth"
    torch.save(other.state_dict(), f)
    with pytest.raises(ModelError, match="does not fit"):
        build_timm_classifier(TINY_TIMM, num_classes=4, pretrained_file=f)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read"):
        build_timm_classifier(TINY_TIMM, num_classes=4, pretrained_file=bad)
    with pytest.raises(ModelError, match="does not exist"):
        build_timm_classifier(TINY_TIMM, num_classes=4, pretrained_file=tmp_path / "missing.pth")
