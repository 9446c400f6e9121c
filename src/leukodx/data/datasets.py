"""Torch data sets that decode every image once into memory (uint8), splits and class balancing.

Example::

    split = load_split("DATA", "split.csv")            # or load_split("DATA") for a fresh group-aware split
    train = ClassificationDataset(samples_for_split("DATA", split, "train"), classes, transform)
"""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from leukodx.data.images import MaskSizeWarning, read_reference_mask, read_rgb
from leukodx.data.inspect import NEAR_EMPTY_FRACTION
from leukodx.data.layout import Sample, load_dataset
from leukodx.errors import DatasetError, ImageError

BALANCING = ("oversample", "weights", "none")


def _decode_all(samples: list[Sample], skipped: list[str]) -> list[tuple[Sample, np.ndarray]]:
    """(sample, pixels) of the readable samples, in order; each unreadable one is named in `skipped`."""
    def one(p):
        try:
            return read_rgb(p)
        except ImageError as exc:
            return exc

    if len(samples) < 32:
        decoded = [one(s.image) for s in samples]
    else:
        with ThreadPoolExecutor(max_workers=4) as pool:
            decoded = list(pool.map(one, [s.image for s in samples]))
    skipped += [f"{s.path} ({img.reason})" for s, img in zip(samples, decoded, strict=True)
                if isinstance(img, ImageError)]
    return [(s, img) for s, img in zip(samples, decoded, strict=True) if not isinstance(img, ImageError)]


class ClassificationDataset(torch.utils.data.Dataset):
    """Smear fields and class indices. Items: (float 3xHxW in 0..255, int class index). Unreadable images are
    left out, named in `skipped`, with a warning."""

    def __init__(self, samples: list[Sample], classes: list[str], transform=None):
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({s.label for s in samples} - set(index))
        if unknown:
            raise DatasetError(f"Samples carry class(es) {unknown} that the model does not know ({self.classes}).",
                               "Use a split made from this data folder.")
        self.skipped: list[str] = []
        decoded = _decode_all(samples, self.skipped)
        self.samples = [s for s, _ in decoded]
        self.images = [img for _, img in decoded]
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} unreadable image(s) left out, e.g. {self.skipped[0]}", stacklevel=2)
        self.labels = [index[s.label] for s in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        x = self.transform(img) if self.transform is not None else torch.from_numpy(img).permute(2, 0, 1).float()
        return x, self.labels[i]


class SegmentationDataset(torch.utils.data.Dataset):
    """Smear fields and reference masks (grayscale(Segmented) > threshold). Items: (float 3xHxW, float 1xHxW).
    Left out and counted: fields without a mask (`missing_masks`), near-empty masks (< 0.1 % foreground; the
    colour thresholding failed) unless `skip_near_empty=False`, unreadable files. Masks of another size than
    their image are resized (nearest) with a warning and counted in `resized_masks`."""

    def __init__(self, samples: list[Sample], transform=None, mask_threshold: int = 128, skip_near_empty: bool = True,
                 references: str = "original"):
        from leukodx.data.reference_masks import repaired_reference

        self.transform = transform
        self.references = references
        self.sources: Counter = Counter()  # reference source per field: hsv / stain_rule
        self.skip_near_empty = skip_near_empty
        self.samples: list[Sample] = []
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.near_empty: list[str] = []
        self.skipped: list[str] = []
        self.resized_masks: list[str] = []
        self.missing_masks = [s.path for s in samples if s.mask is None]
        for s, img in _decode_all([s for s in samples if s.mask is not None], self.skipped):
            mask_path = s.mask
            assert mask_path is not None  # only samples with a mask were decoded
            h, w = img.shape[:2]
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", MaskSizeWarning)
                    mask = read_reference_mask(mask_path, mask_threshold, size=(w, h))
            except ImageError as exc:
                self.skipped.append(f"{mask_path} ({exc.reason})")
                continue
            if any(issubclass(c.category, MaskSizeWarning) for c in caught):
                self.resized_masks.append(s.path)
            if references == "repaired":
                mask, source = repaired_reference(img, mask)
                self.sources[source] += 1
            elif mask.mean() < NEAR_EMPTY_FRACTION:
                self.near_empty.append(s.path)
                if skip_near_empty:
                    continue
            else:
                self.sources["hsv"] += 1
            self.samples.append(s)
            self.images.append(img)
            self.masks.append(mask)
        if self.resized_masks:
            warnings.warn(f"{len(self.resized_masks)} mask(s) differ in size from their image and were resized "
                          f"(nearest), e.g. {self.resized_masks[0]}", MaskSizeWarning, stacklevel=2)

    def summary(self) -> dict:
        return {"n_used": len(self.images), "n_missing_masks": len(self.missing_masks),
                "n_near_empty": len(self.near_empty), "near_empty_left_out": self.skip_near_empty,
                "n_unreadable": len(self.skipped),
                "n_resized_masks": len(self.resized_masks), "references": self.references,
                "reference_sources": dict(self.sources)}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img, mask = self.images[i], self.masks[i]
        if self.transform is not None:
            return self.transform(img, mask)
        return torch.from_numpy(img).permute(2, 0, 1).float(), torch.from_numpy(mask)[None].float()


# ---------------------------------------------------------------------------------------------------------------
# splits


@dataclass
class SplitInfo:
    """Rows of a split (path,label,split,group) and a summary (source file or strategy and seeds, counts)."""

    rows: list[dict]
    summary: dict = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r["split"], Counter())[r["label"]] += 1
        return {k: dict(v) for k, v in out.items()}


def load_split(data: str | Path, split_csv: str | Path | None = None, *, strategy: str = "sgdc", seed: int = 0,
               val: float = 0.15, test: float = 0.15, common_test: bool = False, test_seed: int = 0) -> SplitInfo:
    """A split CSV (checked: every file it names must exist in `data`) or, without one, a fresh group-aware split."""
    from leukodx.data.split import make_split, read_split

    if split_csv is not None:
        rows = read_split(split_csv, data)
        summary = {"split_file": str(split_csv), "strategy": None, "seed": None}
        meta = Path(split_csv).with_suffix(".json")
        if meta.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                meta_summary = json.loads(meta.read_text())
                summary.update({k: v for k, v in meta_summary.items() if k not in ("counts", "split_file")})
        return SplitInfo(rows, summary)
    rows, summary = make_split(data, strategy=strategy, val=val, test=test, seed=seed, common_test=common_test,
                               test_seed=test_seed)
    return SplitInfo(rows, {**{k: v for k, v in summary.items() if k != "counts"}, "split_file": None})


def samples_for_split(data: str | Path, split: SplitInfo | str | Path | None, split_name: str,
                      dataset=None) -> list[Sample]:
    """The samples of one split ("train", "val" or "test"), in the split's order."""
    if not isinstance(split, SplitInfo):
        split = load_split(data, split)
    ds = dataset if dataset is not None else load_dataset(data)
    by_path = ds.by_path()
    rows = [r for r in split.rows if r["split"] == split_name]
    missing = [r["path"] for r in rows if r["path"] not in by_path]
    if missing:
        raise DatasetError(f"The split names {len(missing)} file(s) not found in {data}'s layout, "
                           f"e.g. {', '.join(missing[:5])}.", "Use the data folder the split was made from.")
    return [by_path[r["path"]] for r in rows]


def subset(samples: list[Sample], n: int | None, seed: int = 0) -> list[Sample]:
    """At most `n` samples, stratified by class (proportional, at least one per class), deterministic by seed."""
    if n is None or n >= len(samples):
        return list(samples)
    if n <= 0:
        raise DatasetError(f"A subset of {n} images was asked for.", "Give a positive number of images.")
    rng = random.Random(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    quota = {c: n * len(v) / len(samples) for c, v in by_class.items()}
    take: dict[str, int] = {c: max(1, int(q)) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: quota[c] - int(quota[c]), reverse=True):  # largest remainders first
        if sum(take.values()) >= n:
            break
        if take[c] < len(by_class[c]):
            take[c] += 1
    while sum(take.values()) > n and max(take.values()) > 1:
        c = max(take, key=lambda k: take[k])
        take[c] -= 1
    out: list[Sample] = []
    for c, v in by_class.items():
        v = v[:]
        rng.shuffle(v)
        out += v[: take[c]]
    keep = {id(s) for s in out}
    return [s for s in samples if id(s) in keep]


# ---------------------------------------------------------------------------------------------------------------
# balancing


def class_weights(labels: list[int], num_classes: int | None = None) -> torch.Tensor:
    """Inverse class frequency, scaled to mean 1 over the classes present (absent classes get weight 0)."""
    k = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=k).float()
    w = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    present = counts > 0
    return w / w[present].mean() if present.any() else w


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles (or, with `labels`, oversamples every class to the largest class's count) anew each epoch from
    (seed, epoch), then shards across `num_replicas` ranks like DistributedSampler (padded to equal length).
    Call `set_epoch(e)` before each epoch."""

    def __init__(self, n: int, labels: list[int] | None = None, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        self.n, self.labels, self.seed, self.shuffle = n, labels, seed, shuffle
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        counts = Counter(labels or ())
        # oversampling draws every class as often as the largest
        total = n if labels is None else max(counts.values(), default=0) * len(counts)
        self.per_rank = -(-total // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.labels is None:
            return torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(self.labels):
            by_class.setdefault(y, []).append(i)
        top = max(len(v) for v in by_class.values())
        idx: list[int] = []
        for y in sorted(by_class):
            v = torch.tensor(by_class[y])
            reps = -(-top // len(v))
            pool = torch.cat([v[torch.randperm(len(v), generator=g)] for _ in range(reps)])[:top]
            idx += pool.tolist()
        perm = torch.randperm(len(idx), generator=g)
        return [idx[i] for i in perm]

    def __iter__(self):
        idx = self._indices()
        pad = self.per_rank * self.num_replicas - len(idx)
        idx = idx + idx[:pad]
        return iter(idx[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank
