"""`leukodx data inspect`: what a data folder holds and what is wrong with it."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from leukodx.data.duplicates import (
    NEAR_DUPLICATE_MAX_DISTANCE,
    find_duplicate_groups,
    perceptual_hash,
    pixel_digest,
)
from leukodx.data.images import read_reference_mask, read_rgb
from leukodx.data.layout import Dataset, Sample, load_dataset
from leukodx.errors import ImageError

NEAR_EMPTY_FRACTION = 0.001
"""A reference mask with less than 0.1 % foreground is near-empty: the colour thresholding failed."""


@dataclass(frozen=True)
class _Pixels:
    """What a readable field gives: its size (W, H), pixel digest and perceptual hash."""

    size: tuple[int, int]
    digest: str
    phash: int


@dataclass
class _Scan:
    sample: Sample
    pixels: _Pixels | None = None  # None when the image is unreadable (`error` says why)
    error: str | None = None
    mask_fraction: float | None = None
    mask_error: str | None = None
    mask_resized: bool = False


def _scan(sample: Sample, mask_threshold: int) -> _Scan:
    out = _Scan(sample)
    try:
        rgb = read_rgb(sample.image, sample.path)
    except ImageError as exc:
        out.error = exc.reason
        return out
    size = (rgb.shape[1], rgb.shape[0])
    out.pixels = _Pixels(size, pixel_digest(rgb), perceptual_hash(rgb))
    if sample.mask is not None:
        try:
            mask = read_reference_mask(sample.mask, mask_threshold, size=size, warn=False)
            with Image.open(sample.mask) as m:  # readable (just read); header only: was it the image's size?
                out.mask_resized = m.size != size
            out.mask_fraction = float(mask.mean())
        except ImageError as exc:
            out.mask_error = exc.reason
    return out


def scan_dataset(ds: Dataset, mask_threshold: int = 128, workers: int = 4) -> list[_Scan]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _scan(s, mask_threshold), ds.samples))


def inspect_dataset(data: str, mask_threshold: int = 128) -> dict:
    """Counts, sizes, unreadable files, duplicate groups and mask problems, as the JSON contract says."""
    ds = load_dataset(data)
    scans = scan_dataset(ds, mask_threshold)
    read = [(s, s.pixels) for s in scans if s.pixels is not None]
    ok = [s for s, _ in read]
    pixels = [px for _, px in read]
    sizes = Counter(f"{px.size[0]}x{px.size[1]}" for px in pixels)
    exact, near, _ = find_duplicate_groups([px.digest for px in pixels], [px.phash for px in pixels])
    paths = [s.sample.path for s in ok]
    near_empty = {c: 0 for c in ds.classes}
    mask_fraction_median = {}
    if ds.has_masks:
        for c in ds.classes:
            fr = [s.mask_fraction for s in ok if s.sample.label == c and s.mask_fraction is not None]
            near_empty[c] = sum(f < NEAR_EMPTY_FRACTION for f in fr)
            mask_fraction_median[c] = round(float(np.median(fr)), 4) if fr else None
    return {
        "data": str(ds.root),
        "layout": ds.layout,
        "n_images": len(ds.samples),
        "n_readable": len(ok),
        "classes": ds.counts(),
        "empty_classes": ds.empty_classes,
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "unreadable": [{"path": s.sample.path, "reason": s.error} for s in scans if s.error],
        "ignored_files": ds.ignored,
        "exact_duplicate_groups": [sorted(paths[i] for i in g) for g in exact],
        "near_duplicate_groups": [sorted(paths[i] for i in g) for g in near],
        "near_duplicate_rule": "64-bit DCT perceptual hash, Hamming distance <= "
                               f"{NEAR_DUPLICATE_MAX_DISTANCE}",
        "masks": {
            "present": ds.has_masks,
            "missing": sum(1 for s in ds.samples if s.mask is None) if ds.has_masks else len(ds.samples),
            "near_empty": near_empty,
            "near_empty_rule": f"grayscale(Segmented) > {mask_threshold} covers < {NEAR_EMPTY_FRACTION:.1%} of the field",
            "median_foreground": mask_fraction_median,
            "unreadable": [{"path": s.sample.mask.relative_to(ds.root).as_posix(), "reason": s.mask_error}
                           for s in scans if s.mask_error and s.sample.mask is not None],
            "size_mismatch_resized": [s.sample.path for s in scans if s.mask_resized],
        },
    }
