"""Training data for the two-channel (whole leukocyte, nucleus) segmenter.

A `CellDataset` mixes Taleqani fields, Raabin fields, PBC crops, Chula fields and synthetic smears
(`source_items`, `synthetic_items`). Every image is resampled once so its red cells are `TARGET_RBC_DIAMETER`
px across (the Taleqani fields' size), the scale the analysis brings every field to, and its references
(`leukodx.data.cell_references`) are made once and cached in memory (and, with ``cache_dir``, as .npz files
keyed by source, path and rule version). What each draw does to it, and why:
docs/results/cell-segmentation/README.md, "data/cell_dataset.py: a training draw".

Items: (image float32 3 x 224 x 224 RGB 0..255, target float32 2 x 224 x 224 {0, 1}, known float32 2 x 224 x 224
{0, 1}); channel 0 = whole cell, 1 = nucleus. The loss on known pixels is `training.losses.masked_bce_dice`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from leukodx.data import sources
from leukodx.data.cell_references import CellReference
from leukodx.data.transforms import ChannelGamma, StainJitter, WhiteBalance

TARGET_RBC_DIAMETER = sources.TALEQANI_RBC_DIAMETER
CROP = 224
SCALE_JITTER = 0.2
SYNTHETIC_RBC_DIAMETER = 19.0  # synthetic.py draws red-cell radii U(8, 11)
RULES_VERSION = "cell-references-1"
SOURCES = ("taleqani", "raabin", "pbc", "chula", "synthetic")


@dataclass(frozen=True)
class CellItem:
    """One image to draw from: its source, its root folder, its path in it, and its class (PBC) or seed."""

    source: str
    root: str
    path: str
    label: str = ""


def load_reference(item: CellItem) -> CellReference:
    """The item's references at its own (rule's working) scale."""
    if item.source == "taleqani":
        return sources.taleqani_field_reference(item.root, item.path)
    if item.source == "raabin":
        from leukodx.data.cell_references import raabin_reference
        from leukodx.data.images import read_rgb

        rgb = read_rgb(Path(item.root) / item.path)
        lp = Path(item.root) / "labels" / f"{Path(item.path).stem}.txt"
        boxes = sources.read_yolo_labels(lp, rgb.shape[:2])
        return raabin_reference(rgb, boxes, sources.raabin_rbc_diameter(boxes, rgb.shape[:2]))
    if item.source == "pbc":
        return sources.pbc_crop_reference(item.root, item.path, item.label)
    if item.source == "chula":
        return sources.chula_field_reference(item.root, item.path)
    if item.source == "synthetic":
        from leukodx.data.synthetic import synthetic_instances

        img, lab = synthetic_instances(item.label, 224, int(item.path))  # path: the seed
        cell = (lab > 0).astype(np.uint8)
        zeros = np.zeros_like(cell)
        # exact whole cells; synthetic_instances returns no nucleus mask, so the nucleus channel is unknown
        return CellReference(img, cell, zeros, np.ones_like(cell), zeros, SYNTHETIC_RBC_DIAMETER)
    raise ValueError(f"unknown source {item.source!r}; choose from {', '.join(SOURCES)}")


def _resize(a: np.ndarray, h: int, w: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((w, h), resample))


def working_scale(ref: CellReference) -> dict[str, np.ndarray]:
    """The references resampled so red cells are TARGET_RBC_DIAMETER px: image (bilinear/box), masks (nearest);
    'stack' is uint8 H x W x 4 (cell, nucleus, cell_known, nucleus_known)."""
    f = TARGET_RBC_DIAMETER / float(ref.rbc_diameter_px)
    h, w = ref.image.shape[:2]
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    img = _resize(ref.image, nh, nw, Image.Resampling.BOX if f < 1 else Image.Resampling.BILINEAR)
    stack = np.stack([ref.cell, ref.nucleus, ref.cell_known, ref.nucleus_known], -1).astype(np.uint8)
    out = np.stack([_resize(stack[..., k], nh, nw, Image.Resampling.NEAREST) for k in range(4)], -1)
    return {"image": img, "stack": out}


class CellDataset(torch.utils.data.Dataset):
    """Random 224-px training crops of `items` at 17-px red cells (each draw: the page the module docstring
    names). ``augment=False`` gives the centre crop, no augmentation (validation). References are made on
    first use and kept in memory (and in ``cache_dir`` as .npz when given)."""

    def __init__(self, items: list[CellItem], augment: bool = True, cache_dir: str | Path | None = None,
                 seed: int = 0, cut_cells: float = 0.0, low_magnification: float = 0.0, cut_negatives: float = 0.0):
        self.items = list(items)
        self.augment = augment
        self.cut_cells, self.low_magnification = float(cut_cells), float(low_magnification)
        self.cut_negatives = float(cut_negatives)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = seed
        self._mem: dict[int, dict[str, np.ndarray]] = {}
        self._colour = v2.Compose([StainJitter(0.3, 0.04, 0.08, p=0.8), WhiteBalance(0.12, p=0.8),
                                   ChannelGamma(0.35, p=0.6),
                                   v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3)])

    def __len__(self) -> int:
        return len(self.items)

    def _cache_path(self, item: CellItem) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{RULES_VERSION}|{item.source}|{item.root}|{item.path}|{item.label}".encode())
        return self.cache_dir / f"{item.source}-{key.hexdigest()[:16]}.npz"

    def prepared(self, i: int) -> dict[str, np.ndarray]:
        """Item i at the working scale (cached)."""
        if i in self._mem:
            return self._mem[i]
        item = self.items[i]
        cp = self._cache_path(item)
        if cp is not None and cp.is_file():
            with np.load(cp) as z:
                data = {"image": z["image"], "stack": z["stack"]}
        else:
            data = working_scale(load_reference(item))
            if cp is not None:
                cp.parent.mkdir(parents=True, exist_ok=True)
                tmp = cp.with_name(cp.name + ".tmp.npz")
                np.savez_compressed(tmp, image=data["image"], stack=data["stack"])
                tmp.replace(cp)
        self._mem[i] = data
        return data

    def sample_weights(self, source_weights: dict[str, float] | None = None) -> list[float]:
        """Per-item weights for a WeightedRandomSampler that draws each source with ``source_weights`` (default
        equal per source), whatever its size."""
        sw = source_weights or dict.fromkeys(SOURCES, 1.0)
        counts = Counter(it.source for it in self.items)
        return [sw.get(it.source, 0.0) / counts[it.source] for it in self.items]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data = self.prepared(i)
        rng = np.random.default_rng() if self.augment else np.random.default_rng(self.seed + i)
        img, stack = data["image"], data["stack"]
        cut = False
        if self.augment:
            h, w = img.shape[:2]
            if rng.random() < self.low_magnification:
                m = float(rng.uniform(0.35, 0.9))
                low = _resize(img, max(1, round(h * m)), max(1, round(w * m)), Image.Resampling.BOX)
                img = _resize(low, h, w, Image.Resampling.BILINEAR)
            s = float(rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER))
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            img = _resize(img, nh, nw, Image.Resampling.BILINEAR)
            stack = np.stack([_resize(stack[..., k], nh, nw, Image.Resampling.NEAREST) for k in range(4)], -1)
            if rng.random() < self.cut_cells:
                img, stack, cut = _cut_cell(img, stack, rng, self.cut_negatives)
        img, stack = _crop_or_pad(img, stack, CROP, rng, random=self.augment, as_analysis=cut)
        if self.augment:
            k = int(rng.integers(0, 4))
            img, stack = np.rot90(img, k), np.rot90(stack, k)
            if rng.random() < 0.5:
                img, stack = img[:, ::-1], stack[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
        if self.augment:
            x = self._colour(tv_tensors.Image(x)).as_subclass(torch.Tensor)
        t = torch.from_numpy(np.ascontiguousarray(stack)).permute(2, 0, 1).float()
        return (x * 255.0).clamp(0, 255), t[:2].clone(), t[2:].clone()


def _cut_cell(img: np.ndarray, stack: np.ndarray, rng: np.random.Generator, negative: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, bool]:
    """A square window of U(0.7, 1.4) times one leukocyte's larger side around it (its centre moved by up to 15 %
    of the window), so the cell fills it; (img, stack, False) unchanged where no whole-cell reference of 30 px or
    more is known. With probability `negative`, a window of U(1, 2.2) red cells centred on a pixel known to be no
    leukocyte instead (a red cell, a platelet, plasma), so that what fills a crop is not always a cell."""
    from scipy import ndimage as ndi

    h, w = img.shape[:2]
    if rng.random() < negative:
        ys0, xs0 = np.nonzero((stack[..., 0] == 0) & (stack[..., 2] > 0))
        if len(ys0):
            k = int(rng.integers(len(ys0)))
            side = min(h, w, max(12, round(TARGET_RBC_DIAMETER * rng.uniform(1.0, 2.2))))
            y0 = int(np.clip(ys0[k] - side // 2, 0, h - side))
            x0 = int(np.clip(xs0[k] - side // 2, 0, w - side))
            return img[y0:y0 + side, x0:x0 + side], stack[y0:y0 + side, x0:x0 + side], True
    lab, _ = ndi.label((stack[..., 0] > 0) & (stack[..., 2] > 0))
    big = np.flatnonzero(np.bincount(lab.ravel())[1:] >= 30)
    if not len(big):
        return img, stack, False
    ys, xs = ndi.find_objects(lab)[int(rng.choice(big))]
    side = min(h, w, max(12, round(max(ys.stop - ys.start, xs.stop - xs.start) * rng.uniform(0.7, 1.4))))
    cy = (ys.start + ys.stop) / 2 + rng.uniform(-0.15, 0.15) * side
    cx = (xs.start + xs.stop) / 2 + rng.uniform(-0.15, 0.15) * side
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return img[y0:y0 + side, x0:x0 + side], stack[y0:y0 + side, x0:x0 + side], True


def _crop_or_pad(img: np.ndarray, stack: np.ndarray, size: int, rng: np.random.Generator, random: bool = True,
                 as_analysis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window: mirror-padded where the image is smaller (padded pixels unknown: known = 0), at a
    random place (``random``) or centred; ``as_analysis``: padded at its bottom and right with its edge pixels
    repeated, as the analysis pads a small image (`inference.tiling.prepare`)."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        top = 0 if as_analysis else int(rng.integers(0, ph + 1)) if random else ph // 2
        left = 0 if as_analysis else int(rng.integers(0, pw + 1)) if random else pw // 2
        pad = ((top, ph - top), (left, pw - left), (0, 0))
        mode = "symmetric" if as_analysis else "reflect" if h > 1 and w > 1 else "edge"
        img = _pad(img, pad, mode)
        stack = _pad(stack, pad, mode)
        padded = np.ones(stack.shape[:2], bool)
        padded[top:top + h, left:left + w] = False
        stack[padded, 2:] = 0
        h, w = img.shape[:2]
    y = int(rng.integers(0, h - size + 1)) if random else (h - size) // 2
    x = int(rng.integers(0, w - size + 1)) if random else (w - size) // 2
    return img[y:y + size, x:x + size], stack[y:y + size, x:x + size]


def _pad(a: np.ndarray, pad: tuple, mode: str) -> np.ndarray:
    if mode == "symmetric":  # as tiling.prepare pads
        return np.pad(a, pad, mode="symmetric")
    if mode == "edge":  # an image one pixel high or wide
        return np.pad(a, pad, mode="edge")
    # np.pad's reflect needs pad < side; repeat it until the target is reached
    (t, b), (lft, r), _ = pad
    while t or b or lft or r:
        h, w = a.shape[:2]
        st, sb, sl, sr = min(t, h - 1), min(b, h - 1), min(lft, w - 1), min(r, w - 1)
        a = np.pad(a, ((st, sb), (sl, sr), (0, 0)), mode="reflect")
        t, b, lft, r = t - st, b - sb, lft - sl, r - sr
    return a


def source_items(source: str, root: str | Path, split_csv: str | Path | None, split: str | None) -> list[CellItem]:
    """The items of one source for one split (None: all), as its split CSV says (`data.split.read_split`);
    without a CSV (Raabin, PBC and Chula) the split is made by `sources.split_of` (Chula: `sources.chula_split`)."""
    from leukodx.data.split import read_split

    root = str(root)
    if split_csv is not None:
        rows = read_split(split_csv)
    elif source == "raabin":
        rows = sources.source_split(sources.raabin_rows(sources.read_raabin_fields(root)[0]))
    elif source == "pbc":
        rows = sources.source_split(sources.read_pbc(root))
    elif source == "chula":
        rows = sources.chula_split(root)
    else:
        raise ValueError(f"{source} needs a split CSV")
    return [CellItem(source, root, r["path"], r["label"] if source == "pbc" else "") for r in rows
            if split is None or r["split"] == split]


def synthetic_items(n: int, seed: int = 0) -> list[CellItem]:
    """n synthetic smears (classes in turn, seeds from ``seed``)."""
    from leukodx.data.synthetic import MORPHOLOGY

    classes = list(MORPHOLOGY)
    return [CellItem("synthetic", "", str(seed + k), classes[k % len(classes)]) for k in range(n)]
