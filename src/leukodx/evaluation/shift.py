"""Synthetic lab-to-lab variation: what changes when the same kind of smear is stained, photographed and saved
in another laboratory.

`lab_shift(rgb, rng)` draws one random variation and applies it, in this order: magnification (rescale, then
centre-crop or mirror-pad back to the original size), stain strength, offset and hue (each stain's amount
scaled and shifted, its colour vector tilted, in optical-density (HED) space), white balance (per-channel
gains), brightness and contrast, focus blur (Gaussian) and JPEG re-encoding. RANGES holds the ranges at
severity 1; `describe(severity)` gives those used, as reports show them.

`severity` scales every range linearly (0 = no change; 2 = twice as wide; JPEG quality never below 10,
magnification never below x0.5). The stain decomposition uses the haematoxylin / eosin / residual optical-density
vectors of Ruifrok & Johnston (as in scikit-image's `rgb2hed`): Wright-Giemsa smears are not H&E, but the OD
model still moves the colours of nuclei and cytoplasm the way a different stain batch or staining time does.

Geometry is applied to the mask too (nearest neighbour), so a reference mask stays aligned with its field.
Draws are deterministic: `rng_for(seed, key)` gives one generator per (seed, field), e.g. the field's path.
`other_camera` imitates another lab's 4:3 camera (a window of the field enlarged to the sensor's size).

    >>> from leukodx.data.synthetic import synthetic_field
    >>> rgb, mask = synthetic_field("Pre", 96, seed=0)
    >>> shifted, shifted_mask = lab_shift(rgb, rng_for(0, "Original/Pre/a.jpg"), mask=mask)
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, residual/DAB), as in skimage.color.rgb_from_hed
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)


@dataclass(frozen=True)
class _Ranges:
    """The ranges at severity 1, as `describe(1.0)` reports them."""

    magnification: float = 0.20
    stain_strength: float = 0.30
    stain_offset: float = 0.03
    stain_hue: float = 0.10
    white_balance: float = 0.10
    brightness: float = 20.0
    contrast: float = 0.20
    blur_sigma: float = 1.5
    jpeg_quality: tuple[int, int] = (40, 90)


RANGES = _Ranges()


@dataclass(frozen=True)
class LabShiftParams:
    """One drawn variation (all the numbers needed to reproduce it)."""

    scale: float
    stain_strength: tuple[float, float, float]
    stain_offset: tuple[float, float, float]
    stain_vectors: tuple[tuple[float, float, float], ...]
    channel_gains: tuple[float, float, float]
    brightness: float
    contrast: float
    blur_sigma: float
    jpeg_quality: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def rng_for(seed: int, key: int | str) -> np.random.Generator:
    """A generator for one field: the same (seed, key) always gives the same variation."""
    k = zlib.crc32(key.encode()) if isinstance(key, str) else int(key)
    return np.random.default_rng([int(seed), k])


def describe(severity: float = 1.0) -> dict:
    """The ranges used at `severity`, for reports and metrics.json."""
    s = float(severity)
    m, st, so, sh = RANGES.magnification, RANGES.stain_strength, RANGES.stain_offset, RANGES.stain_hue
    q_lo, q_hi = _jpeg_range(s)
    return {
        "name": "lab",
        "severity": s,
        "order": ["magnification", "stain (OD/HED space)", "white balance", "brightness/contrast", "focus blur",
                  "JPEG"],
        "magnification": [max(0.5, 1 - m * s), 1 + m * s],
        "stain_strength": [max(0.0, 1 - st * s), 1 + st * s],
        "stain_offset_od": [-so * s, so * s],
        "stain_hue_od_tilt": sh * s,
        "white_balance_gain": [max(0.0, 1 - RANGES.white_balance * s), 1 + RANGES.white_balance * s],
        "brightness": [-RANGES.brightness * s, RANGES.brightness * s],
        "contrast": [max(0.0, 1 - RANGES.contrast * s), 1 + RANGES.contrast * s],
        "blur_sigma_px": [0.0, RANGES.blur_sigma * s],
        "jpeg_quality": None if s <= 0 else [q_lo, q_hi],
    }


def _jpeg_range(s: float) -> tuple[int, int]:
    lo, hi = RANGES.jpeg_quality
    return max(10, round(hi - (hi - lo) * s)), hi


def _triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Exactly three floats (raises ValueError for any other count)."""
    a, b, c = (float(v) for v in values)
    return a, b, c


def sample_params(rng: np.random.Generator, severity: float = 1.0) -> LabShiftParams:
    """Draw one variation. The number of draws is fixed, so the parameters depend only on the generator."""
    s = float(severity)
    if s < 0:
        raise ValueError("severity must be >= 0")
    u = rng.uniform(-1.0, 1.0, size=17)  # every part draws from its own slots
    vectors = RGB_FROM_HED.copy()
    vectors[:2] = np.clip(vectors[:2] + RANGES.stain_hue * s * u[7:13].reshape(2, 3), 0.01, None)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q_lo, q_hi = _jpeg_range(s)
    quality = None if s <= 0 else int(round(q_lo + (u[16] + 1) / 2 * (q_hi - q_lo)))
    return LabShiftParams(
        scale=float(max(0.5, 1 + RANGES.magnification * s * u[0])),
        stain_strength=(float(max(0.0, 1 + RANGES.stain_strength * s * u[1])),
                        float(max(0.0, 1 + RANGES.stain_strength * s * u[2])), 1.0),
        stain_offset=(float(RANGES.stain_offset * s * u[3]), float(RANGES.stain_offset * s * u[4]), 0.0),
        stain_vectors=tuple(_triple(row) for row in vectors),
        channel_gains=_triple(max(0.0, 1 + RANGES.white_balance * s * g) for g in u[13:16]),
        brightness=float(RANGES.brightness * s * u[5]),
        contrast=float(max(0.0, 1 + RANGES.contrast * s * u[6])),
        blur_sigma=float(RANGES.blur_sigma * s * (rng.uniform(0.0, 1.0))),
        jpeg_quality=quality,
    )


def _fit_axis(arr: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Centre-crop or mirror-pad `arr` along `axis` to `size`."""
    n = arr.shape[axis]
    if n == size:
        return arr
    if n > size:
        start = (n - size) // 2
        return np.take(arr, np.arange(start, start + size), axis=axis)
    before = (size - n) // 2
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (before, size - n - before)
    return np.pad(arr, pad, mode="symmetric")


def magnify(rgb: np.ndarray, scale: float, mask: np.ndarray | None = None):
    """Rescale by `scale` (bilinear; nearest for the mask) and bring back to the original size."""
    h, w = rgb.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return rgb, mask
    img = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    img = _fit_axis(_fit_axis(img, 0, h), 1, w)
    if mask is not None:
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.NEAREST)) > 127
        mask = _fit_axis(_fit_axis(m, 0, h), 1, w)
    return np.ascontiguousarray(img), None if mask is None else np.ascontiguousarray(mask)


def restain(rgb: np.ndarray, strength, offset, vectors) -> np.ndarray:
    """Change stain amounts and colours in optical-density space; the identity when nothing changes."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)  # >= 0
    conc = od.reshape(-1, 3) @ np.linalg.inv(RGB_FROM_HED)
    conc = conc * np.asarray(strength) + np.asarray(offset)
    od2 = conc @ np.asarray(vectors)
    out = 256.0 * np.exp(-od2) - 1.0
    return np.clip(np.rint(out), 0, 255).reshape(rgb.shape).astype(np.uint8)


def photometric(rgb: np.ndarray, gains, brightness: float, contrast: float) -> np.ndarray:
    x = rgb.astype(np.float32) * np.asarray(gains, dtype=np.float32)
    mean = x.mean()
    x = (x - mean) * contrast + mean + brightness
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.2:
        return rgb
    x = ndi.gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int | None) -> np.ndarray:
    if quality is None:
        return rgb
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def apply_params(rgb: np.ndarray, p: LabShiftParams, mask: np.ndarray | None = None):
    """Apply a drawn variation. Returns the image, or (image, mask) when a mask is given."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.dtype} {rgb.shape}")
    if mask is not None and np.asarray(mask).shape != rgb.shape[:2]:
        raise ValueError(f"mask {np.asarray(mask).shape} and image {rgb.shape[:2]} differ in size")
    out, m = magnify(rgb, p.scale, None if mask is None else np.asarray(mask).astype(bool))
    out = restain(out, p.stain_strength, p.stain_offset, p.stain_vectors)
    out = photometric(out, p.channel_gains, p.brightness, p.contrast)
    out = blur(out, p.blur_sigma)
    out = jpeg(out, p.jpeg_quality)
    return out if mask is None else (out, m)


def other_camera(rgb: np.ndarray, rng: np.random.Generator | None = None, size: tuple[int, int] = (640, 480),
                 window: float = 1.0, mask: np.ndarray | None = None):
    """The field as another lab's camera shows it: a window `window` x the field's width, with the aspect of
    `size` (W, H), centred (or placed at random by `rng`), enlarged to `size` (bicubic; the mask bilinear, > 0.5;
    pixels next to the window take part, as on a sensor). Returns the image, or (image, mask) with a mask."""
    h, w = rgb.shape[:2]
    ww = round(w * window)
    wh = round(ww * size[1] / size[0])
    pick = (lambda n: n // 2) if rng is None else (lambda n: int(rng.integers(0, n + 1)))
    y0, x0 = pick(h - wh), pick(w - ww)
    box = (x0, y0, x0 + ww, y0 + wh)
    out = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC, box=box))
    if mask is None:
        return out
    m = Image.fromarray(np.asarray(mask).astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR, box=box)
    return out, np.asarray(m) > 127


def lab_shift(rgb: np.ndarray, rng: np.random.Generator | int, mask: np.ndarray | None = None,
              severity: float = 1.0):
    """One random lab-to-lab variation of an HxWx3 uint8 field; `rng` is a numpy Generator (see `rng_for`) or
    an int seed. Returns the shifted image, or (image, mask) when a mask is given."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(int(rng))
    return apply_params(rgb, sample_params(rng, severity), mask)
