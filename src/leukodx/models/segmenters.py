"""Segmenters: the reference study's U-Net and its U-Net with an FPN+GELU on the skip features.

Every segmenter is normalisation -> encoder -> decoder -> head, with `forward` written once in
`SmearSegmenter`. Input: float32 N x 3 x H x W RGB in 0..255 (not normalised); output: logits N x 1 x H x W
(foreground = leukocyte). `predict()` returns probabilities under `torch.inference_mode()`.

- ``unet``: the study's classic U-Net: `depth` (4) levels of double 3x3 conv (+BN+ReLU) blocks, max-pool down,
  transposed-conv up, a 1x1 head; filters `base_channels` (64) doubling to 16x at the bottleneck (64->1024).
- ``unet-fpn-gelu``: the same U-Net, but the encoder's skip features first pass through a Feature Pyramid
  Network with GELU (1x1 lateral conv, top-down upsample-and-add, 3x3 smoothing conv + BN + GELU). The
  decoder sees skips of the same channel counts, so the comparison isolates the FPN+GELU change.

Both decoders also run on any timm ``features_only`` encoder (no download; `pretrained=False`): pass
``encoder="resnet18"`` (or name the architecture ``unet:resnet18`` / ``unet-fpn-gelu:resnet18`` on the command
line). Channels and strides are read from timm's `feature_info`.

Example::

    from leukodx.models.registry import create_model
    model = create_model("segment", "unet", base_channels=16)
    logits = model(torch.rand(2, 3, 128, 128) * 255)          # 2 x 1 x 128 x 128
    prob = model.predict(torch.rand(1, 3, 224, 224) * 255)    # probabilities, eval mode, no autograd
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from leukodx.errors import ModelError
from leukodx.models.classifiers import NORMALIZATIONS, make_normalization
from leukodx.models.registry import register

if TYPE_CHECKING:
    from timm.models import FeatureInfo

__all__ = ["SmearSegmenter", "UNetEncoder", "TimmEncoder", "UNetDecoder", "FPNGelu", "build_segmenter",
           "parse_arch"]

ARCHS = ("unet", "unet-fpn-gelu")


class DoubleConv(nn.Sequential):
    """The U-Net block: (3x3 conv, BN, ReLU) twice."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


# ---------------------------------------------------------------------------------------------------------------
# encoders: forward(x) -> [features], shallow to deep; attributes out_channels and reductions (strides)


class Encoder(nn.Module):
    """What the decoders need of an encoder: its features' channel counts and strides, shallow to deep."""

    out_channels: list[int]
    reductions: list[int]


class UNetEncoder(Encoder):
    """The classic U-Net contracting path: DoubleConv, then `depth` times (max-pool, DoubleConv, filters x2)."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 4):
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, chans[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(chans[i], chans[i + 1])) for i in range(depth)
        )
        self.out_channels = chans
        self.reductions = [2**i for i in range(depth + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class TimmEncoder(Encoder):
    """Any timm backbone as a `features_only` encoder (random init: nothing is downloaded)."""

    def __init__(self, name: str, in_channels: int = 3, depth: int = 4, freeze_stages: int = 0):
        super().__init__()
        import timm

        if name not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ModelError(f"Unknown timm encoder {name!r}.",
                             "Give a timm model name such as resnet18, mobilenetv3_large_100 or "
                             f"efficientnet_b0.{hint}")
        try:
            probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_channels)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ModelError(f"timm model {name!r} cannot serve as a segmentation encoder ({exc}).",
                             "Choose a convolutional backbone such as resnet18 or efficientnet_b0.") from None
        n = len(_feature_info(probe, name))
        indices = tuple(range(max(0, n - depth - 1), n))  # the deepest depth + 1 features
        self.body = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_channels,
                                      out_indices=indices)
        self.name = name
        info = _feature_info(self.body, name)
        self.out_channels = list(info.channels())
        self.reductions = list(info.reduction())
        self.frozen: list[nn.Module] = []
        if freeze_stages:
            self._freeze(freeze_stages)

    def _freeze(self, n: int) -> None:
        """Keep the stem and the first `n` block stages as initialised (pretrained): no gradients, and their batch
        norms stay in eval mode (ImageNet statistics) while the rest trains. Training is ~1.5x faster on CPU."""
        names = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(n)]
        mods = dict(self.body.named_children())
        blocks = mods.get("blocks")
        if "conv_stem" not in mods or not isinstance(blocks, nn.Sequential) or n > len(blocks):
            raise ModelError(f"freeze_stages={n} needs an EfficientNet-style encoder (conv_stem, bn1, blocks) with at "
                             f"least {n} block stages; {self.name!r} is not one.",
                             "Leave freeze_stages at 0, or use encoder tf_efficientnet_lite0.")
        for name in names:
            m = self.body.get_submodule(name)
            for p in m.parameters():
                p.requires_grad = False
            self.frozen.append(m)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def _feature_info(net: nn.Module, name: str) -> FeatureInfo:
    """The timm.models.FeatureInfo of a `features_only` model (nn.Module's attribute typing cannot know it)."""
    from timm.models import FeatureInfo

    info = getattr(net, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise ModelError(f"timm model {name!r} reports no feature_info as a features_only model.",
                         "Choose a convolutional backbone such as resnet18 or efficientnet_b0.")
    return info


# ---------------------------------------------------------------------------------------------------------------
# the FPN with GELU on the skip features


class FPNGelu(nn.Module):
    """Feature Pyramid Network over the encoder features, GELU in its blocks.

    lateral_i = 1x1 conv(f_i) to `fpn_channels`; top-down: p_deepest = lateral, p_i = lateral_i + upsample(p_i+1);
    each p_i (except the deepest, which the decoder takes raw as its bottleneck) is smoothed by a 3x3 conv back to
    f_i's channel count, + BN + GELU, so the decoder's skip inputs keep the U-Net's shapes.
    """

    def __init__(self, in_channels: list[int], fpn_channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, fpn_channels, 1), nn.GELU()) for c in in_channels
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(fpn_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.GELU())
            for c in in_channels[:-1]
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.lateral[-1](feats[-1])
        out = [feats[-1]]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            p = lat + F.interpolate(p, size=lat.shape[-2:], mode="nearest")
            out.append(self.smooth[i](p))
        return out[::-1]


# ---------------------------------------------------------------------------------------------------------------
# the U-Net decoder (transposed-conv up, concatenate skip, double conv)


class UpBlock(nn.Module):
    """Upsample x2 (transposed conv; `up=False`: none, between two encoder features of the same stride, as
    some timm encoders have), concatenate the skip, double conv."""

    def __init__(self, cin: int, skip: int, cout: int, up: bool = True):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2) if up else nn.Identity()
        self.conv = DoubleConv((cout if up else cin) + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else _with_skip(x, skip))


def _with_skip(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """[skip, x] along the channels, x resized (bilinear) to the skip's size when they differ."""
    if x.shape[-2:] != skip.shape[-2:]:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([skip, x], dim=1)


class UNetDecoder(nn.Module):
    """U-Net expanding path over encoder features (shallow -> deep); ends at stride 1.

    Each stage upsamples by 2 (transposed conv) to the next shallower skip's channel count, concatenates the
    skip and applies a double conv. When the shallowest skip is at stride > 1 (timm encoders start at stride
    2), further skip-less stages bring the map up to the input's resolution.
    """

    def __init__(self, channels: list[int], reductions: list[int], min_channels: int = 16, out_stride: int = 1):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = channels[-1]
        for i in range(len(channels) - 2, -1, -1):
            scale = reductions[i + 1] // reductions[i]
            if scale not in (1, 2):
                raise ModelError(f"Encoder strides {reductions} are not a halving pyramid.",
                                 "Choose another encoder (e.g. resnet18, efficientnet_b0).")
            self.stages.append(UpBlock(cin, channels[i], channels[i], up=scale == 2))
            cin = channels[i]
        self.extra = nn.ModuleList()
        r = reductions[0]
        while r > out_stride:
            cout = max(min_channels, cin // 2)
            self.extra.append(UpBlock(cin, 0, cout))
            cin, r = cout, r // 2
        self.out_channels = cin

    def forward(self, feats: list[torch.Tensor], skips: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for stage, skip in zip(self.stages, skips[-2::-1], strict=True):
            x = stage(x, skip)
        for stage in self.extra:
            x = stage(x)
        return x


# ---------------------------------------------------------------------------------------------------------------
# the model: normalisation -> encoder -> (skip neck) -> decoder -> head


class SmearSegmenter(nn.Module):
    """normalise -> encoder -> neck on the skips (identity or FPN+GELU) -> U-Net decoder -> 1x1 head.

    Inputs whose sides are not multiples of the encoder's total stride are reflect-padded and the logits cropped
    back, so the output always has the input's H x W.
    """

    def __init__(self, encoder: Encoder, neck: nn.Module | None, decoder: UNetDecoder,
                 normalization: str = "per_image", out_channels: int = 1):
        super().__init__()
        self.normalization = normalization
        self.normalize = make_normalization(normalization)
        self.encoder = encoder
        self.neck = neck if neck is not None else nn.Identity()
        self.decoder = decoder
        self.head = nn.Conv2d(decoder.out_channels, out_channels, 1)
        self.stride = max(encoder.reductions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = self.normalize(x)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        feats = self.encoder(x)
        skips = self.neck(feats)
        logits = self.head(self.decoder(feats, skips))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel probabilities N x out_channels x H x W (switches the model to eval mode)."""
        if self.training:
            self.eval()
        return torch.sigmoid(self(x))


def parse_arch(arch: str) -> tuple[str, dict]:
    """``"unet-fpn-gelu:resnet18"`` -> ``("unet-fpn-gelu", {"encoder": "resnet18"})``; plain names pass through."""
    name, _, enc = arch.partition(":")
    return name, ({"encoder": enc} if enc else {})


def build_segmenter(fpn: bool, base_channels: int = 64, depth: int = 4, encoder: str | None = None,
                    normalization: str = "per_image", fpn_channels: int | None = None,
                    in_channels: int = 3, out_stride: int = 1, freeze_stages: int = 0,
                    out_channels: int = 1) -> SmearSegmenter:
    if normalization not in NORMALIZATIONS:
        raise ModelError(f"Unknown normalization {normalization!r}.", f"Use one of: {', '.join(NORMALIZATIONS)}.")
    if not (isinstance(base_channels, int) and base_channels >= 1):
        raise ModelError(f"base_channels must be a positive integer, not {base_channels!r}.",
                         "For example --base-channels 16 (CPU) or 64 (the study's U-Net).")
    if not (isinstance(depth, int) and 1 <= depth <= 6):
        raise ModelError(f"depth must be an integer from 1 to 6, not {depth!r}.", "The study's U-Net has depth 4.")
    if freeze_stages and not encoder:
        raise ModelError("freeze_stages needs a pretrained timm encoder; the classic U-Net encoder starts from random "
                         "weights.", "Give encoder tf_efficientnet_lite0 (with --pretrained efficientnet_lite0), or "
                         "leave freeze_stages at 0.")
    enc: Encoder = UNetEncoder(in_channels, base_channels, depth) if not encoder else \
        TimmEncoder(encoder, in_channels, depth, freeze_stages)
    neck = None
    if fpn:
        # a timm encoder's first features are narrow (EfficientNet-Lite0: 16-320): 64 FPN channels, not 4 x base
        neck = FPNGelu(enc.out_channels, fpn_channels or (64 if encoder else max(16, 4 * base_channels)))
    if out_stride not in (1, 2, 4):
        raise ModelError(f"out_stride must be 1, 2 or 4, not {out_stride!r}.",
                         "1 predicts every pixel; 2 predicts at half resolution and upsamples (faster).")
    dec = UNetDecoder(enc.out_channels, enc.reductions, min_channels=max(8, base_channels), out_stride=out_stride)
    if out_channels not in (1, 2):
        raise ModelError(f"out_channels must be 1 or 2, not {out_channels!r}.",
                         "1: leukocyte; 2: whole leukocyte and nucleus (the config's `outputs`).")
    return SmearSegmenter(enc, neck, dec, normalization, out_channels)


@register("segment", "unet", "The study's classic U-Net (4 levels, 64->1024 filters; --base-channels 16 on CPU); "
          "encoder=<timm name> for a timm encoder.", cpu_friendly=True)
def build_unet(base_channels: int = 64, depth: int = 4, encoder: str | None = None,
               normalization: str = "per_image", in_channels: int = 3, out_stride: int = 1,
               freeze_stages: int = 0, out_channels: int = 1) -> SmearSegmenter:
    return build_segmenter(False, base_channels, depth, encoder, normalization, None, in_channels, out_stride,
                           freeze_stages, out_channels)


@register("segment", "unet-fpn-gelu", "The study's hybrid: U-Net whose skip features pass through an FPN with "
          "GELU; encoder=<timm name> for a timm encoder.", cpu_friendly=True)
def build_unet_fpn_gelu(base_channels: int = 64, depth: int = 4, encoder: str | None = None,
                        normalization: str = "per_image", fpn_channels: int | None = None,
                        in_channels: int = 3, out_stride: int = 1, freeze_stages: int = 0,
                        out_channels: int = 1) -> SmearSegmenter:
    return build_segmenter(True, base_channels, depth, encoder, normalization, fpn_channels, in_channels, out_stride,
                           freeze_stages, out_channels)
