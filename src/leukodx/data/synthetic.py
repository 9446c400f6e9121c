"""Synthetic smear fields with exact masks, for tests and the first-run demo (no download needed).

A field shows pale red-cell discs and one to four stained leukocytes, sometimes touching. The four classes
differ in morphology, as a hematologist tells them apart, and not in colour: every class draws its stain
from the same distribution.

| class  | cell radius | nucleus / cell | chromatin      | nucleoli | outline          |
|--------|-------------|----------------|----------------|----------|------------------|
| Benign | 10-13 px    | 0.90           | dense, smooth  | none     | round            |
| Early  | 14-17 px    | 0.80           | fine           | 0-1 small| round            |
| Pre    | 16-20 px    | 0.65           | coarse clumps  | none     | indented nucleus |
| Pro    | 19-24 px    | 0.85           | very fine      | 2-3 large| irregular        |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Morphology:
    radius: tuple[float, float]
    nc_ratio: float
    chromatin_scale: float  # sigma of the texture noise, px
    chromatin_contrast: float
    nucleoli: tuple[int, int]
    nucleolus_radius: float
    indent: float  # depth of a kidney-shaped notch, fraction of nucleus radius
    irregularity: float  # amplitude of outline wobble, fraction of radius


MORPHOLOGY = {
    "Benign": Morphology((10, 13), 0.90, 0.8, 0.10, (0, 0), 0.0, 0.0, 0.02),
    "Early": Morphology((14, 17), 0.80, 0.7, 0.22, (0, 1), 1.6, 0.0, 0.04),
    "Pre": Morphology((16, 20), 0.65, 2.2, 0.45, (0, 0), 0.0, 0.45, 0.05),
    "Pro": Morphology((19, 24), 0.85, 0.5, 0.15, (2, 3), 3.0, 0.0, 0.12),
}


def _stain(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One field's stain colours, drawn identically for every class."""
    jitter = rng.normal(0, 10, 3)
    return {
        "background": np.clip(np.array([238, 232, 240]) + rng.normal(0, 6, 3), 200, 255),
        "rbc": np.clip(np.array([214, 176, 196]) + jitter, 120, 250),
        "cytoplasm": np.clip(np.array([170, 160, 215]) + jitter, 80, 250),
        "nucleus": np.clip(np.array([118, 66, 160]) + jitter, 30, 220),
        "nucleolus": np.clip(np.array([165, 130, 205]) + jitter, 60, 240),
    }


def _wobbly_disc(yy, xx, cy, cx, r, amp, rng, angle_freqs=(3, 5)) -> np.ndarray:
    theta = np.arctan2(yy - cy, xx - cx)
    rr = np.full_like(theta, r)
    for f in angle_freqs:
        rr = rr + amp * r * rng.uniform(0.3, 1.0) * np.sin(f * theta + rng.uniform(0, 2 * np.pi))
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= rr**2


def synthetic_field(label: str, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic field of class `label`: (HxWx3 uint8 image, HxW bool leukocyte mask)."""
    img, labels = synthetic_instances(label, size, seed)
    return img, labels > 0


def synthetic_instances(label: str, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`synthetic_field` with its exact instances: (image, HxW int32 labels, 0 = background, k = leukocyte k;
    a later-drawn cell covers an earlier one where they touch)."""
    if label not in MORPHOLOGY:
        raise ValueError(f"unknown class {label!r}; choose from {', '.join(MORPHOLOGY)}")
    rng = np.random.default_rng(seed)
    m = MORPHOLOGY[label]
    stain = _stain(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.ones((size, size, 3), np.float32) * stain["background"]

    # red cells: pale discs with a paler centre, some overlapping
    n_rbc = int(rng.integers(40, 70) * (size / 224) ** 2)
    for _ in range(n_rbc):
        cy, cx = rng.uniform(-5, size + 5, 2)
        r = rng.uniform(8, 11) * size / 224 if size < 224 else rng.uniform(8, 11)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disc = d2 <= r**2
        pallor = np.exp(-d2 / (2 * (0.45 * r) ** 2))[..., None]
        colour = stain["rbc"] * (1 - 0.25 * pallor) + stain["background"] * 0.25 * pallor
        img[disc] = 0.85 * colour[disc] + 0.15 * img[disc]

    # leukocytes
    labels = np.zeros((size, size), np.int32)
    n_cells = int(rng.integers(1, 4))
    centres: list[tuple[float, float, float]] = []
    touching = rng.random() < 0.4
    for k in range(n_cells):
        r = rng.uniform(*m.radius)
        if touching and k == 1:
            py, px, pr = centres[0]
            a = rng.uniform(0, 2 * np.pi)
            cy, cx = py + np.sin(a) * (pr + r) * 0.92, px + np.cos(a) * (pr + r) * 0.92
        else:
            for _ in range(30):
                cy, cx = rng.uniform(r + 4, size - r - 4, 2)
                if all(np.hypot(cy - y, cx - x) > r + rr + 6 for y, x, rr in centres):
                    break
        cy = float(np.clip(cy, r + 2, size - r - 2))
        cx = float(np.clip(cx, r + 2, size - r - 2))
        centres.append((cy, cx, r))
        cell = _wobbly_disc(yy, xx, cy, cx, r, m.irregularity * 0.5, rng)
        nr = r * m.nc_ratio
        ny, nx = cy + rng.normal(0, 0.08 * r), cx + rng.normal(0, 0.08 * r)
        nucleus = _wobbly_disc(yy, xx, ny, nx, nr, m.irregularity, rng) & cell
        if m.indent > 0:
            a = rng.uniform(0, 2 * np.pi)
            iy, ix = ny + np.sin(a) * nr * 1.05, nx + np.cos(a) * nr * 1.05
            nucleus &= (yy - iy) ** 2 + (xx - ix) ** 2 > (m.indent * nr * 1.3) ** 2
        texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), m.chromatin_scale)
        texture = texture / (texture.std() + 1e-6)
        shade = 1 + m.chromatin_contrast * texture[..., None] * 0.5
        img[cell] = stain["cytoplasm"]
        img[nucleus] = (stain["nucleus"] * shade)[nucleus]
        for _ in range(int(rng.integers(m.nucleoli[0], m.nucleoli[1] + 1))):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5) * nr
            oy, ox = ny + np.sin(a) * d, nx + np.cos(a) * d
            nucleolus = ((yy - oy) ** 2 + (xx - ox) ** 2 <= m.nucleolus_radius**2) & nucleus
            img[nucleolus] = stain["nucleolus"]
        labels[cell] = k + 1

    img = ndi.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += rng.normal(0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def segmented_view(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The public layout's `Segmented/` image: leukocytes kept (bright enough that grey > 128), rest black."""
    out = np.zeros_like(img)
    bright = np.clip(img.astype(np.float32) * 0.4 + np.array([150, 110, 120]), 0, 255).astype(np.uint8)
    out[mask] = bright[mask]
    return out


def make_synthetic_dataset(
    out: str | Path, per_class: int = 12, size: int = 224, seed: int = 0, layout: str = "public",
    classes: tuple[str, ...] = tuple(MORPHOLOGY),
) -> Path:
    """Write a small data folder of synthetic fields (JPEG images, PNG masks) in the public or flat layout."""
    out = Path(out)
    for ci, label in enumerate(classes):
        img_dir = out / ("Original" if layout == "public" else "") / label
        img_dir.mkdir(parents=True, exist_ok=True)
        if layout == "public":
            (out / "Segmented" / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = synthetic_field(label, size, seed=seed * 100_003 + ci * 10_007 + i)
            name = f"syn-{label}-{i:03d}"
            Image.fromarray(img).save(img_dir / f"{name}.jpg", quality=92)
            if layout == "public":
                Image.fromarray(segmented_view(img, mask)).save(out / "Segmented" / label / f"{name}.png")
    return out
