"""Synthetic smear fields with exact masks, for tests and the first-run demo (no download needed).

A field shows pale red-cell discs and one to four stained leukocytes, sometimes touching. The four classes
differ in morphology (`MORPHOLOGY`), as a hematologist tells them apart, and not in colour: every class draws
its stain from the same distribution.

Images that are no usable smear field, deterministic in `seed` (the smear check's tests and
benchmarks/non_smear.py): `NON_SMEAR` {kind: picture(seed)} (screenshots of a login page and of other app pages,
text, blank, gradients, noise, natural-like pictures), and `greyscale` and `blurred` copies of a smear field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage as ndi

from leukodx.data.images import font


@dataclass(frozen=True)
class Morphology:
    radius: tuple[float, float]  # the cell's, px
    nc_ratio: float  # nucleus radius / cell radius
    chromatin_scale: float  # sigma of the texture noise, px
    chromatin_contrast: float
    nucleoli: tuple[int, int]
    nucleolus_radius: float
    indent: float  # depth of a kidney-shaped notch, fraction of nucleus radius
    irregularity: float  # amplitude of outline wobble, fraction of radius


MORPHOLOGY = {
    "Benign": Morphology((10, 13), 0.90, 0.8, 0.10, (0, 0), 0.0, 0.0, 0.02),  # dense, smooth chromatin
    "Early": Morphology((14, 17), 0.80, 0.7, 0.22, (0, 1), 1.6, 0.0, 0.04),  # fine chromatin
    "Pre": Morphology((16, 20), 0.65, 2.2, 0.45, (0, 0), 0.0, 0.45, 0.05),  # coarse clumps, indented nucleus
    "Pro": Morphology((19, 24), 0.85, 0.5, 0.15, (2, 3), 3.0, 0.0, 0.12),  # very fine chromatin, irregular
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


# ---------------------------------------------------------------------------------------------------------------
# no smear fields
WORDS = ("patient smear field report blood cell count review sign off case result confidence model lab sample "
         "date user password login submit cancel settings export print summary differential blast percent").split()


def _text_line(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words)).capitalize()


def login_page(seed: int, size: int = 224) -> np.ndarray:
    """A login form like the web app's: header bar, two input boxes, a button, small print."""
    rng = np.random.default_rng(seed)
    w = h = size * int(rng.integers(1, 4))  # screenshots come at any size
    bg = tuple(int(v) for v in rng.integers(235, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    accent = tuple(int(v) for v in rng.integers(20, 200, 3))
    d.rectangle([0, 0, w, h // 8], fill=accent)
    d.text((w // 20, h // 40), "leukodx", fill=(255, 255, 255), font=font(max(10, h // 16)))
    box_w = int(w * rng.uniform(0.5, 0.8))
    x0 = (w - box_w) // 2
    for k, label in enumerate(("Username", "Password")):
        y = int(h * (0.3 + 0.2 * k))
        d.text((x0, y - h // 18), label, fill=(40, 40, 40), font=font(max(8, h // 22)))
        d.rectangle([x0, y, x0 + box_w, y + h // 12], outline=(150, 150, 150), fill=(255, 255, 255), width=2)
    y = int(h * 0.72)
    d.rounded_rectangle([x0, y, x0 + box_w, y + h // 10], radius=h // 40, fill=accent)
    d.text((x0 + box_w // 3, y + h // 40), "Log in", fill=(255, 255, 255), font=font(max(8, h // 20)))
    d.text((x0, int(h * 0.9)), "Research use only", fill=(120, 120, 120), font=font(max(8, h // 28)))
    return np.asarray(img)


def app_page(seed: int, size: int = 224) -> np.ndarray:
    """A case list / dashboard: a sidebar, a table of rows, coloured badges and a chart."""
    rng = np.random.default_rng(seed)
    w, h = size * int(rng.integers(1, 4)), size * int(rng.integers(1, 3))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(240, 256, 3)))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w // 5, h], fill=tuple(int(v) for v in rng.integers(30, 90, 3)))
    f = font(max(8, h // 24))
    for i in range(8):
        y = h // 10 + i * h // 10
        d.text((w // 50, y), _text_line(rng, 1), fill=(230, 230, 230), font=f)
        d.line([w // 5 + 5, y + h // 14, w - 5, y + h // 14], fill=(210, 210, 210))
        d.text((w // 5 + 10, y), _text_line(rng, 3), fill=(30, 30, 30), font=f)
        colour = [(200, 40, 40), (20, 140, 60), (230, 150, 0)][int(rng.integers(0, 3))]
        d.rounded_rectangle([w - w // 6, y, w - w // 40, y + h // 16], radius=4, fill=colour)
    if rng.random() < 0.5:  # a bar chart
        for i in range(6):
            bh = int(rng.uniform(0.1, 0.4) * h)
            d.rectangle([w // 2 + i * w // 16, h - bh, w // 2 + i * w // 16 + w // 24, h], fill=(60, 110, 200))
    return np.asarray(img)


def text_page(seed: int, size: int = 224) -> np.ndarray:
    """A page of text (a report, a letter); sometimes coloured paper or ink, sometimes a photo of it (blurred)."""
    rng = np.random.default_rng(seed)
    w, h = size * int(rng.integers(1, 3)), size * int(rng.integers(1, 4))
    paper = tuple(int(v) for v in (rng.integers(235, 256, 3) if rng.random() < 0.6 else rng.integers(200, 256, 3)))
    ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if rng.random() < 0.6 else rng.integers(0, 160, 3)))
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    fs = int(rng.integers(9, 18))
    f = font(fs)
    y = fs
    while y < h - fs:
        d.text((fs, y), _text_line(rng, int(rng.integers(3, 9))), fill=ink, font=f)
        y += int(fs * 1.5)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img)


def blank(seed: int, size: int = 224) -> np.ndarray:
    """Uniform or nearly uniform: white, black, grey, a pale pink background, with at most faint noise."""
    rng = np.random.default_rng(seed)
    base = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (240, 225, 235), (230, 230, 200)][seed % 5]
    img = np.ones((size, size, 3), np.float32) * np.array(base, np.float32)
    img += rng.normal(0, [0.0, 1.0, 2.0, 3.0, 1.5][int(rng.integers(0, 5))], img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def gradient(seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if seed % 2:
        t = np.hypot(yy - rng.uniform(0, 1), xx - rng.uniform(0, 1))
    else:
        a = rng.uniform(0, np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def noise(seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = seed % 3
    if kind == 0:
        img = rng.uniform(0, 255, (size, size, 3))
    elif kind == 1:
        img = rng.normal(rng.uniform(60, 200), rng.uniform(20, 60), (size, size, 3))
    else:  # smoothed colour noise (blobs of one size: the hardest for a blob detector)
        img = ndi.gaussian_filter(rng.normal(0, 1, (size, size, 3)), (rng.uniform(1, 4),) * 2 + (0,))
        img = 128 + 60 * img / (img.std() + 1e-6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _fractal(rng, size: int, beta: float) -> np.ndarray:
    f = np.fft.fftfreq(size)
    r = np.hypot(f[:, None], f[None, :])
    r[0, 0] = 1.0
    spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / r ** (beta / 2)
    spec[0, 0] = 0
    x = np.fft.ifft2(spec).real
    return (x - x.mean()) / (x.std() + 1e-9)


def natural(seed: int, size: int = 224) -> np.ndarray:
    """Natural-like pictures: clouds, a landscape, wood grain, foliage, pebbles (no microscope)."""
    rng = np.random.default_rng(seed)
    kind = seed % 5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # clouds
        c = _fractal(rng, size, 3.0)[..., None]
        img = np.array([90, 150, 230]) + (np.array([250, 250, 250]) - np.array([90, 150, 230])) * (
            1 / (1 + np.exp(-2 * c)))
    elif kind == 1:  # landscape: sky, horizon, textured ground
        horizon = 0.4 + 0.1 * _fractal(rng, size, 3.5)[0][None, :] * 0.3
        sky = np.array([120, 170, 235]) * (1 - 0.3 * yy[..., None])
        ground = np.array([70, 120, 40]) * (1 + 0.25 * _fractal(rng, size, 2.0)[..., None])
        img = np.where((yy < horizon)[..., None], sky, ground)
    elif kind == 2:  # wood grain
        t = xx * rng.uniform(8, 20) + 2 * _fractal(rng, size, 3.0)
        g = 0.5 + 0.5 * np.sin(2 * np.pi * t)
        img = np.array([120, 70, 30]) + np.array([80, 60, 40]) * g[..., None]
    elif kind == 3:  # foliage
        g = _fractal(rng, size, 1.6)
        img = np.stack([40 + 30 * g, 110 + 60 * g, 30 + 20 * g], axis=2)
    else:  # pebbles: a Voronoi mosaic of stones of many sizes and colours
        n = int(rng.integers(20, 60))
        pts = rng.uniform(0, size, (n, 2))
        d = (np.mgrid[0:size, 0:size].reshape(2, -1).T[:, None, :] - pts[None]) ** 2
        lab = d.sum(2).argmin(1).reshape(size, size)
        cols = rng.uniform(60, 200, (n, 3)) * np.array([1.0, 0.9, 0.8])
        img = cols[lab]
        edge = ndi.morphological_gradient(lab, size=3) > 0
        img[edge] *= 0.4
        img = ndi.gaussian_filter(img, (1, 1, 0))
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


NON_SMEAR = {"login": login_page, "app_page": app_page, "text": text_page, "blank": blank, "gradient": gradient,
             "noise": noise, "natural": natural}


def greyscale(rgb: np.ndarray, seed: int) -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)


def blurred(rgb: np.ndarray, seed: int) -> np.ndarray:
    sigma = 5.0 + 3.0 * np.random.default_rng(seed).random()  # 5-8 px on a 224-px field
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))
