"""The cell model's augmentation (torch, whole batches) and its validation input, from the stored crops
(`leukodx.data.cell_crops`, `STORE_RBC` red-cell diameters wide) to the model's input (`CROP_RBC` wide)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from leukodx.data.cell_crops import STORE_RBC
from leukodx.inference.cell_classifier import CROP_RBC, CROP_SIZE


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Each crop (3 x H x W float 0..255) through JPEG at its quality (Pillow)."""
    out = []
    for im, q in zip(x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy(), quality.tolist(), strict=True):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=int(q))
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2).float()


def augment(batch: torch.Tensor, gen: torch.Generator, out_size: int = CROP_SIZE) -> torch.Tensor:
    """Stored crops (B x S x S x 3 uint8, 5 diameters wide) -> augmented inputs (B x 3 x out x out float 0..255,
    4 diameters wide x 1/1.35 to x 1.35): stain and colour in optical density, white balance, uneven light, gamma,
    any rotation, flips, scale, translation, blur, JPEG and noise: a clinic camera's look (issue 29)."""
    b = batch.shape[0]
    x = batch.permute(0, 3, 1, 2).float()

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    def n(*shape, s=1.0):
        return s * torch.randn(*shape, generator=gen)

    # stain: optical density per channel, mixed (hue) and scaled (strength) per crop
    od = -torch.log((x + 1.0) / 256.0)
    mix = torch.eye(3).expand(b, 3, 3) + n(b, 3, 3, s=0.1)
    mix = mix * torch.exp(n(b, 3, 1, s=0.25)) * torch.exp(n(b, 1, 1, s=0.2))
    od = torch.einsum("bij,bjhw->bihw", mix, od).clamp(min=0)
    x = 256.0 * torch.exp(-od) - 1.0
    # white balance / exposure, light falling off across the crop (up to 25 %), then gamma
    x = x * torch.exp(n(b, 3, 1, 1, s=0.15)) * torch.exp(n(b, 1, 1, 1, s=0.1))
    ramp, phi = torch.linspace(-1, 1, x.shape[-1]), u(b, 1, 1, hi=2 * math.pi)
    light = 1 + u(b, 1, 1, hi=0.25) * (torch.cos(phi) * ramp.view(1, 1, -1) + torch.sin(phi) * ramp.view(1, -1, 1))
    x = (x * light.unsqueeze(1)).clamp(0, 255)
    x = 255.0 * (x / 255.0) ** torch.exp(n(b, 1, 1, 1, s=0.2))
    # geometry: any rotation, a flip, scale, translation +-0.1 red-cell diameters
    angle = u(b, hi=2 * math.pi)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    # the output covers CROP_RBC diameters x scale: in the stored crop's normalised coordinates (-1..1 over
    # STORE_RBC diameters) a half-width of CROP_RBC / STORE_RBC x scale
    scale = torch.exp(u(b, lo=-math.log(1.35), hi=math.log(1.35))) * (CROP_RBC / STORE_RBC)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = u(b, 2, lo=-1.0, hi=1.0) * (0.1 / STORE_RBC * 2)
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # blur (half the crops), JPEG (a third), noise
    pick = torch.rand(b, generator=gen) < 0.5
    if pick.any():
        x[pick] = _gaussian_blur(x[pick], float(u(1, lo=0.4, hi=2.0)))
    pick = torch.rand(b, generator=gen) < 0.33
    if pick.any():
        x[pick] = _jpeg(x[pick], u(int(pick.sum()), lo=20, hi=90))
    x = x + n(b, 1, 1, 1, s=1.0).abs() * 2.0 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 255)


def centre_input(batch: np.ndarray | torch.Tensor, out_size: int = CROP_SIZE) -> torch.Tensor:
    """Stored crops (B x S x S x 3) -> the exact 4-diameter centre (no augmentation), B x 3 x out x out float
    0..255."""
    s = batch.shape[1]
    side = s * CROP_RBC / STORE_RBC
    x = torch.as_tensor(batch).permute(0, 3, 1, 2).float()
    if abs(side - out_size) < 1e-6:
        a = int(round((s - side) / 2))
        return x[..., a:a + out_size, a:a + out_size].contiguous()
    b = int((s - side) / 2)
    x = x[..., b:b + int(round(side)), b:b + int(round(side))]
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
