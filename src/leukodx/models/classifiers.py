"""Classifiers: any timm backbone, plus small CPU-friendly project networks.

Every classifier takes float32 N x 3 x H x W RGB in 0..255 and returns logits N x C. Normalisation is a module
inside the model (so ONNX carries it):

- ``per_image`` (default): each image's channels are standardised by that image's own mean and std. This removes
  white balance, brightness and contrast shifts: on the Taleqani data colour alone separates the classes and
  collapses on another lab's smears, so a model should not be able to read absolute colour.
- ``imagenet``: the usual ImageNet mean/std, for backbones with ImageNet weights (``--pretrained FILE``).
- ``tflite``: (x/255 - 0.5) / 0.5, the EfficientNet-Lite weights' own preprocessing (``--pretrained NAME``,
  see leukodx.models.pretrained). The bundled classifier uses ``per_image`` on those weights instead: it also
  removes a global colour cast, and fine-tuning adapts the first layers to it.

Example::

    from leukodx.models.registry import create_model
    model = create_model("classify", "smearnet", num_classes=4)
    logits = model(torch.rand(2, 3, 128, 128) * 255)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leukodx.errors import ModelError
from leukodx.models.registry import create_model, register, register_fallback

NORMALIZATIONS = ("per_image", "imagenet", "tflite")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedNote(UserWarning):
    """Something about a --pretrained file worth saying but not fatal (e.g. the ImageNet head was dropped)."""


class PerImageStandardize(nn.Module):
    """Per-image, per-channel standardisation: (x - mean_c) / sqrt(var_c + eps), statistics over H x W."""

    def __init__(self, eps: float = 1.0):
        super().__init__()
        self.eps = eps  # in 0..255 units: a flat image is not blown up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)


class MeanStdNormalize(nn.Module):
    """(x / 255 - mean) / std with fixed per-channel mean and std (ImageNet by default)."""

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale - self.shift


def make_normalization(kind: str) -> nn.Module:
    if kind == "per_image":
        return PerImageStandardize()
    if kind == "imagenet":
        return MeanStdNormalize()
    if kind == "tflite":
        return MeanStdNormalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    raise ModelError(f"Unknown normalization {kind!r}.", f"Use one of: {', '.join(NORMALIZATIONS)}.")


class SmearClassifier(nn.Module):
    """normalisation -> backbone -> logits. `backbone` is any nn.Module mapping normalised images to logits."""

    def __init__(self, backbone: nn.Module, normalization: str = "per_image"):
        super().__init__()
        self.normalization = normalization
        self.normalize = make_normalization(normalization)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


# ---------------------------------------------------------------------------------------------------------------
# pretrained weights from a local file


def load_pretrained(backbone: nn.Module, path: str | Path, arch: str) -> list[str]:
    """Load --pretrained NAME|FILE into `backbone` strictly (leukodx.models.pretrained.apply_pretrained); returns
    the classifier-head keys that were left to their fresh initialisation (another number of classes)."""
    from leukodx.models.pretrained import apply_pretrained

    record = apply_pretrained(backbone, str(path), arch)
    dropped = record["head_replaced"]
    if dropped:
        warnings.warn(f"{Path(str(path)).name}: the classifier head ({', '.join(sorted({k.split('.')[0] for k in dropped}))}) "
                      "does not match the number of classes and was replaced; it starts from random weights.",
                      PretrainedNote, stacklevel=3)
    return dropped


# ---------------------------------------------------------------------------------------------------------------
# timm backbones


def _create_timm(name: str, num_classes: int, image_size: int | None, drop_rate: float) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "drop_rate": drop_rate}
    if image_size is not None:
        try:  # transformers and a few others need the size at construction; CNNs do not take it
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, **kwargs)


@register_fallback("classify")
def build_timm_classifier(
    name: str,
    num_classes: int = 4,
    pretrained_file: str | Path | None = None,
    image_size: int | None = None,
    normalization: str = "per_image",
    drop_rate: float = 0.0,
) -> SmearClassifier:
    """A timm backbone (never downloaded: weights only from `pretrained_file`) behind the normalisation module."""
    backbone = _create_timm(name, num_classes, image_size, drop_rate)
    if pretrained_file:
        load_pretrained(backbone, pretrained_file, name)
    return SmearClassifier(backbone, normalization)


# ---------------------------------------------------------------------------------------------------------------
# project networks: small and fast on a CPU


class _ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class _ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip; plain convolutions are fast on CPUs at small channel counts."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(_ConvBN(c, c), _ConvBN(c, c, act=False))
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


class _InvertedResidual(nn.Module):
    """MobileNetV2-style block: 1x1 expand, 3x3 depthwise, 1x1 project, skip when shapes agree."""

    def __init__(self, cin, cout, stride=1, expand=3):
        super().__init__()
        mid = cin * expand
        self.skip = stride == 1 and cin == cout
        self.body = nn.Sequential(_ConvBN(cin, mid, 1), _ConvBN(mid, mid, 3, stride, groups=mid),
                                  _ConvBN(mid, cout, 1, act=False))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.skip else y


class SmearNet(nn.Module):
    """A small CNN for smear fields: plain residual stages at high resolution, inverted residuals deeper,
    global average + max pooling (a few blasts in a field should be able to drive the call)."""

    def __init__(self, num_classes=4, widths=(24, 48, 96, 160), depths=(1, 1, 2, 2), drop_rate=0.1):
        super().__init__()
        w0 = widths[0]
        layers: list[nn.Module] = [_ConvBN(3, w0, 3, 2)]
        cin = w0
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            if i < 2:
                layers += [_ConvBN(cin, w, 3, 2)] + [_ResBlock(w) for _ in range(d)]
            else:
                layers += [_InvertedResidual(cin, w, 2)] + [_InvertedResidual(w, w) for _ in range(d)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.num_features = cin * 2
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x):
        f = self.features(x)
        f = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.fc(self.drop(f))


@register("classify", "smearnet", "Small fast CNN (~0.5 M parameters), for CPU training at 96-224 px.",
          cpu_friendly=True)
def build_smearnet(num_classes: int = 4, normalization: str = "per_image", drop_rate: float = 0.1,
                   image_size: int | None = None, pretrained_file: str | Path | None = None) -> SmearClassifier:
    return _own(SmearNet(num_classes, drop_rate=drop_rate), "smearnet", normalization, pretrained_file)


@register("classify", "smearnet-wide", "Wider SmearNet (~1.6 M parameters), a little slower, more capacity.",
          cpu_friendly=True)
def build_smearnet_wide(num_classes: int = 4, normalization: str = "per_image", drop_rate: float = 0.2,
                        image_size: int | None = None, pretrained_file: str | Path | None = None) -> SmearClassifier:
    net = SmearNet(num_classes, widths=(32, 64, 128, 256), depths=(1, 2, 2, 3), drop_rate=drop_rate)
    return _own(net, "smearnet-wide", normalization, pretrained_file)


def _own(net: nn.Module, arch: str, normalization: str, pretrained_file: str | Path | None) -> SmearClassifier:
    """A project network behind the normalisation module, with --pretrained weights when given."""
    if pretrained_file:
        # the project networks have a head named fc (torch's stubs type Module attributes as Tensor/Module only)
        net.pretrained_cfg = {"classifier": "fc"}  # type: ignore[assignment]
        load_pretrained(net, pretrained_file, arch)
    return SmearClassifier(net, normalization)


# ---------------------------------------------------------------------------------------------------------------
# input sizes

SIZE_CANDIDATES = (32, 48, 64, 75, 96, 112, 128, 160, 192, 224, 256, 299, 331)
_size_cache: dict[tuple[str, int], bool] = {}


def _forward_ok(model: nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            out = model(torch.full((1, 3, size, size), 128.0))
        return bool(torch.isfinite(out).all())
    except (RuntimeError, ValueError, AssertionError):
        return False


def check_image_size(arch: str, size: int, model: nn.Module | None = None) -> None:
    """Raise ModelError, listing the sizes that work, when `arch` cannot take `size` x `size` inputs."""
    if not isinstance(size, int) or size < 16 or size > 1024:
        raise ModelError(f"Image size {size!r} is out of range.", "Give an --image-size between 16 and 1024 px.")
    if _size_cache.get((arch, size)):
        return
    if model is None:
        model = create_model("classify", arch, num_classes=2, image_size=size)
    was_training = model.training
    model.eval()
    try:
        if _forward_ok(model, size):
            _size_cache[(arch, size)] = True
            return
        works = [s for s in SIZE_CANDIDATES if _forward_ok(model, s)]
    finally:
        model.train(was_training)
    if works:
        hint = (f"Sizes that work (checked {', '.join(map(str, SIZE_CANDIDATES))}): {', '.join(map(str, works))}; "
                f"use e.g. --image-size {min(works, key=lambda s: abs(s - size))}.")
    else:
        hint = "None of the usual sizes worked either; this backbone may need a fixed input size (see timm)."
    raise ModelError(f"Architecture {arch!r} cannot take {size}x{size} px images.", hint)
