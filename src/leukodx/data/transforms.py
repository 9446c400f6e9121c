"""Training augmentation and evaluation transforms (torchvision.transforms.v2).

Images come in as HxWx3 uint8 arrays and leave as float32 3xHxW tensors in 0..255 (normalisation lives inside
the model); for segmentation, image and mask move together and the mask leaves as float 1xHxW in {0, 1}.

The augmentation targets what changes from one laboratory to another, because on the Taleqani data colour
alone separates the classes (a colour shortcut that collapses on another lab's smears): magnification +-20 %,
flips and 90 degree rotations; stain hue and strength (HED optical density); white balance, brightness,
contrast, saturation, hue; focus blur and greyscale. Strengths: `AUGMENTATIONS` (``none`` only resizes).
``robust`` (the bundled classifier's recipe, `_robust_list`) covers a broader family of lab-to-lab changes
than the evaluation's synthetic ``--shift lab`` (leukodx.evaluation.shift), on purpose: a model tuned to one
simulator can still fail on another lab's real smears. It adds per-channel gamma (camera response curves,
which per-image standardisation does not remove), sharpening (camera firmware), sensor noise and JPEG
re-encoding, with wider ranges; zooming out mirror-pads, as a wider field of view looks.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from leukodx.errors import LeukodxError

AUGMENTATIONS = ("none", "light", "strong", "robust", "moderate")

# Ruifrok & Johnston H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as skimage's
# rgb2hed, each of unit length
_HED_FROM_RGB_INV = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_MATRIX = _HED_FROM_RGB_INV / _HED_FROM_RGB_INV.norm(dim=1, keepdim=True)


class _ImageOnly(v2.Transform):
    """A random transform applied to tv_tensors.Image (float 0..1) only; masks pass through unchanged."""

    def __init__(self, p: float = 1.0):
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": torch.rand(()) < self.p}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or not isinstance(inpt, tv_tensors.Image):
            return inpt
        return tv_tensors.wrap(self.apply_image(inpt.as_subclass(torch.Tensor), params), like=inpt)

    def apply_image(self, img: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class StainJitter(_ImageOnly):
    """Perturb stain strength and hue in optical-density (HED) space: RGB -> OD = -log(I) -> stain
    concentrations via the H&E(-DAB) matrix; each concentration is scaled by U(1 - strength, 1 + strength) and
    shifted by U(-shift, shift); the stain vectors themselves are rotated a little (`hue`: the std of the
    noise added to each unit stain vector); then back to RGB."""

    def __init__(self, strength: float = 0.2, shift: float = 0.03, hue: float = 0.05, p: float = 0.8):
        super().__init__(p)
        self.strength, self.shift, self.hue = strength, shift, hue

    def make_params(self, flat_inputs):
        return super().make_params(flat_inputs) | {
            "alpha": 1 + (torch.rand(3) * 2 - 1) * self.strength,
            "beta": (torch.rand(3) * 2 - 1) * self.shift,
            "noise": torch.randn(3, 3) * self.hue,
        }

    def apply_image(self, img, params):
        m2 = (_STAIN_MATRIX + params["noise"]).clamp_min(1e-3)
        m2 = m2 / m2.norm(dim=1, keepdim=True)
        od = -torch.log(img.clamp(1 / 255, 1.0))  # 3 x H x W
        conc = torch.einsum("chw,cs->shw", od, torch.linalg.inv(_STAIN_MATRIX))
        conc = conc * params["alpha"].view(3, 1, 1) + params["beta"].view(3, 1, 1)
        od2 = torch.einsum("shw,sc->chw", conc, m2)
        return torch.exp(-od2).clamp(0, 1)


class WhiteBalance(_ImageOnly):
    """Per-channel gains U(1 - amount, 1 + amount): a camera's white balance."""

    def __init__(self, amount: float = 0.1, p: float = 0.8):
        super().__init__(p)
        self.amount = amount

    def make_params(self, flat_inputs):
        return super().make_params(flat_inputs) | {"gain": 1 + (torch.rand(3) * 2 - 1) * self.amount}

    def apply_image(self, img, params):
        return (img * params["gain"].view(3, 1, 1)).clamp(0, 1)


class ChannelGamma(_ImageOnly):
    """Per-channel gamma: I_c ** g_c with log g_c ~ U(-log(1 + amount), log(1 + amount)), e.g. 0.7..1.4."""

    def __init__(self, amount: float = 0.4, p: float = 0.6):
        super().__init__(p)
        self.amount = amount

    def make_params(self, flat_inputs):
        lim = float(np.log1p(self.amount))
        return super().make_params(flat_inputs) | {"gamma": torch.exp((torch.rand(3) * 2 - 1) * lim)}

    def apply_image(self, img, params):
        return img.clamp(1e-4, 1).pow(params["gamma"].view(3, 1, 1))


class HueRotate(_ImageOnly):
    """Rotate colours about the grey axis by U(-degrees, degrees): a cheap hue shift (no HSV round trip)."""

    def __init__(self, degrees: float = 12.0, p: float = 0.4):
        super().__init__(p)
        self.degrees = degrees

    def make_params(self, flat_inputs):
        return super().make_params(flat_inputs) | {
            "angle": float((torch.rand(()) * 2 - 1) * self.degrees * np.pi / 180)}

    def apply_image(self, img, params):
        a = params["angle"]
        c, s = float(np.cos(a)), float(np.sin(a))
        k = 1 / 3
        r = float(np.sqrt(k))
        # Rodrigues' rotation about the unit vector (1, 1, 1) / sqrt(3)
        m = torch.tensor([[c + k * (1 - c), k * (1 - c) - r * s, k * (1 - c) + r * s],
                          [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
                          [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)]], dtype=img.dtype)
        return torch.einsum("ij,jhw->ihw", m, img).clamp(0, 1)


class SensorNoise(_ImageOnly):
    """Additive Gaussian noise of std U(0, sigma) (0..1 units)."""

    def __init__(self, sigma: float = 0.02, p: float = 0.2):
        super().__init__(p)
        self.sigma = sigma

    def make_params(self, flat_inputs):
        return super().make_params(flat_inputs) | {"std": float(torch.rand(())) * self.sigma}

    def apply_image(self, img, params):
        return (img + torch.randn_like(img) * params["std"]).clamp(0, 1)


class JpegReencode(_ImageOnly):
    """Encode and decode as JPEG at a random quality in [lo, hi] (a camera's or a lab system's compression)."""

    def __init__(self, quality: tuple[int, int] = (25, 95), p: float = 0.4):
        super().__init__(p)
        self.quality = quality

    def make_params(self, flat_inputs):
        return super().make_params(flat_inputs) | {
            "quality": int(torch.randint(self.quality[0], self.quality[1] + 1, ()))}

    def apply_image(self, img, params):
        u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=params["quality"])
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB"))
        return torch.from_numpy(out.copy()).permute(2, 0, 1).to(img.dtype) / 255.0


class RandomZoom(v2.Transform):
    """Magnification x U(1 - amount, 1 + amount) (log-uniform) and aspect U(1/aspect, aspect), then resize to
    `size`. Zooming in crops a random window; zooming out mirror-pads (a wider field of view of the same smear,
    not a flat border). Image and mask move together."""

    def __init__(self, size: int, amount: float = 0.3, aspect: float = 1.1):
        super().__init__()
        self.size, self.amount, self.aspect = size, amount, aspect

    def make_params(self, flat_inputs):
        lo, hi = np.log(1 - self.amount), np.log(1 + self.amount)
        zoom = float(np.exp(lo + float(torch.rand(())) * (hi - lo)))
        ar = float(np.exp((float(torch.rand(())) * 2 - 1) * np.log(self.aspect)))
        h, w = v2.functional.get_size(next(i for i in flat_inputs if isinstance(i, tv_tensors.Image)))
        ch = max(2, round(h / (zoom * np.sqrt(ar))))  # window on the original, in its pixels
        cw = max(2, round(w / (zoom / np.sqrt(ar))))
        return {"h": h, "w": w, "ch": ch, "cw": cw, "ty": float(torch.rand(())), "tx": float(torch.rand(()))}

    def transform(self, inpt, params):
        if not isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return inpt
        x = inpt.as_subclass(torch.Tensor)
        h, w, ch, cw = params["h"], params["w"], params["ch"], params["cw"]
        xf = x.float()
        pad_y, pad_x = max(0, ch - h), max(0, cw - w)
        while pad_y or pad_x:  # zoom out: mirror-pad (reflect needs pad < size: repeat if it is larger)
            py, px = min(pad_y, xf.shape[-2] - 1), min(pad_x, xf.shape[-1] - 1)
            xf = torch.nn.functional.pad(xf[None], (px // 2, px - px // 2, py // 2, py - py // 2),
                                         mode="reflect")[0]
            pad_y, pad_x = pad_y - py, pad_x - px
        hh, ww = xf.shape[-2:]
        y0 = int(params["ty"] * (hh - ch + 1)) if hh > ch else 0
        x0 = int(params["tx"] * (ww - cw + 1)) if ww > cw else 0
        crop = xf[..., y0:y0 + min(ch, hh), x0:x0 + min(cw, ww)]
        if isinstance(inpt, tv_tensors.Mask):
            out = torch.nn.functional.interpolate(crop[None], size=(self.size, self.size), mode="nearest")[0]
        else:
            out = v2.functional.resize(crop, [self.size, self.size], antialias=True)
        return tv_tensors.wrap(out.to(x.dtype), like=inpt)


class RandomRot90(v2.Transform):
    """Rotate image and mask together by a random multiple of 90 degrees (square inputs keep their size)."""

    def make_params(self, flat_inputs):
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params):
        if params["k"] == 0 or not isinstance(inpt, torch.Tensor):
            return inpt
        out = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class To255(v2.Transform):
    """Image float 0..1 -> float 0..255; mask -> float {0, 1}."""

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(inpt.as_subclass(torch.Tensor).float().clamp(0, 1) * 255.0, like=inpt)
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap((inpt.as_subclass(torch.Tensor) > 0).float(), like=inpt)
        return inpt


def _robust_list(size: int, scale: float = 1.0) -> list[v2.Transform]:
    """`robust` (scale 1) or `moderate` (scale 0.5: every range halved, no greyscale; a milder lab shift that keeps
    more of the in-distribution accuracy): the same family of lab-to-lab changes."""
    k = scale
    return [
        RandomZoom(size, amount=0.3 * k, aspect=1 + 0.1 * k),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        StainJitter(strength=0.4 * k, shift=0.05 * k, hue=0.12 * k, p=0.9),
        ChannelGamma(0.4 * k, p=0.6),
        WhiteBalance(0.15 * k, p=0.8),
        HueRotate(12.0 * k, p=0.4),
        v2.RandomApply([v2.ColorJitter(brightness=0.3 * k, contrast=0.3 * k, saturation=0.3 * k)], p=0.8),
        v2.RandomChoice([
            v2.GaussianBlur(kernel_size=max(3, (size // 24) | 1), sigma=(0.1, 2.0 * k)),
            v2.RandomAdjustSharpness(sharpness_factor=1 + k, p=1.0),
            v2.Identity(),
        ], p=[0.35 * k, 0.1 * k, 1 - 0.45 * k]),
        SensorNoise(0.02 * k, p=0.2),
        JpegReencode((round(95 - 70 * k), 95), p=0.4),
        v2.RandomGrayscale(p=0.05 if k >= 1 else 0.0),
    ]


def _augment_list(size: int, strength: str) -> list[v2.Transform]:
    if strength in ("robust", "moderate"):
        return _robust_list(size, 1.0 if strength == "robust" else 0.5)
    if strength == "light":
        mag, stain, wb, jitter, blur_p, grey_p = 0.2, (0.15, 0.02, 0.03), 0.08, 0.15, 0.1, 0.05
    else:  # strong
        mag, stain, wb, jitter, blur_p, grey_p = 0.2, (0.3, 0.05, 0.08), 0.15, 0.3, 0.25, 0.1
    lo = 1 / (1 + mag) ** 2  # crop area for up to +mag magnification
    fill = {tv_tensors.Image: 0.93, tv_tensors.Mask: 0}  # zoom-out fills with pale smear background
    return [
        v2.RandomChoice([
            v2.RandomResizedCrop(size, scale=(lo, 1.0), ratio=(0.85, 1.18), antialias=True),
            v2.Compose([v2.Resize((size, size), antialias=True),
                        v2.RandomAffine(degrees=0, scale=(1 - mag, 1.0), interpolation=v2.InterpolationMode.BILINEAR,
                                        fill=fill)]),
        ], p=[0.7, 0.3]),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        StainJitter(*stain),
        WhiteBalance(wb),
        # no ColorJitter hue: torchvision's HSV round trip cost 20 ms a field; StainJitter already moves stain hue
        v2.RandomApply([v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(kernel_size=max(3, (size // 32) | 1), sigma=(0.3, 1.5))], p=blur_p),
        v2.RandomGrayscale(p=grey_p),
    ]


def build_transform(size: int | tuple[int, int], augment: str = "none") -> v2.Compose:
    """The v2 pipeline on tv_tensors (Image uint8 [+ Mask]) -> float 0..255 image [+ {0,1} mask]."""
    if augment not in AUGMENTATIONS:
        raise LeukodxError(f"Unknown augmentation strength {augment!r}.", f"Use one of: {', '.join(AUGMENTATIONS)}.")
    side = size if isinstance(size, int) else size[0]
    ops: list[v2.Transform] = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    if augment == "none" or (not isinstance(size, int) and size[0] != size[1]):
        ops.append(v2.Resize(size if not isinstance(size, int) else (size, size), antialias=True))
    else:
        ops += _augment_list(side, augment)
    ops.append(To255())
    return v2.Compose(ops)


def _as_image(rgb: np.ndarray | torch.Tensor) -> tv_tensors.Image:
    if isinstance(rgb, np.ndarray):
        rgb = np.ascontiguousarray(rgb)
        t = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())
    else:
        t = rgb
    if t.ndim == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    return tv_tensors.Image(t)


class _Transform:
    """The `build_transform` pipeline of one size and augmentation strength."""

    def __init__(self, size: int | tuple[int, int], augment: str = "none"):
        self.size, self.augment = size, augment
        self.pipeline = build_transform(size, augment)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, augment={self.augment!r})"


class ClassificationTransform(_Transform):
    """Callable: HxWx3 uint8 array -> float32 3xHxW tensor in 0..255 (augmented when `augment` != none)."""

    def __call__(self, rgb) -> torch.Tensor:
        return self.pipeline(_as_image(rgb)).as_subclass(torch.Tensor).contiguous()


class SegmentationTransform(_Transform):
    """Callable: (HxWx3 uint8, HxW bool/uint8 mask) -> (float32 3xHxW in 0..255, float32 1xHxW in {0, 1})."""

    def __call__(self, rgb, mask) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.from_numpy(np.array(mask, dtype=np.uint8, copy=True))
        if m.ndim == 2:
            m = m[None]
        img, msk = self.pipeline(_as_image(rgb), tv_tensors.Mask(m))
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor).contiguous()


def classification_transforms(size: int, augment: str = "light") -> tuple[ClassificationTransform,
                                                                           ClassificationTransform]:
    """(train transform, eval transform) for classification."""
    return ClassificationTransform(size, augment), ClassificationTransform(size, "none")


def segmentation_transforms(size: int, augment: str = "light") -> tuple[SegmentationTransform, SegmentationTransform]:
    """(train transform, eval transform) for segmentation: image and mask move together."""
    return SegmentationTransform(size, augment), SegmentationTransform(size, "none")

