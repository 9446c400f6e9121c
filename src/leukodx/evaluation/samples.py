"""Which fields an evaluation scores, and whether a model may have seen them in training.

    >>> samples, desc = select_samples("data/all-taleqani", "split.csv", "test")
    >>> notes = leakage_notes([("clf", Path("runs/clf"), config)], "data/all-taleqani", "split.csv", "test", samples)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leukodx.data.layout import Sample, load_dataset
from leukodx.errors import DatasetError, LeukodxError

ModelRef = tuple[str, Path, dict]  # (name, model directory, config.json as a dict)


def select_samples(data: str | Path, split_csv: str | Path | None = None, split: str = "test",
                   max_images: int | None = None, seed: int = 0) -> tuple[list[Sample], dict]:
    """The fields to evaluate: every image of DATA, or the rows of `split` in a split CSV; at most
    `max_images` of them (a seeded random subset). Returns (samples sorted by path, a description)."""
    from leukodx.data.split import SPLITS, read_split

    ds = load_dataset(data)
    samples = list(ds.samples)
    desc: dict = {"csv": None, "subset": "all", "n_available": len(samples)}
    if split_csv is not None:
        if split not in SPLITS:
            raise LeukodxError(f"Unknown split name {split!r}.", f"Use one of: {', '.join(SPLITS)}.")
        rows = read_split(split_csv, data)
        wanted = {r["path"] for r in rows if r["split"] == split}
        if not wanted:
            raise DatasetError(f"{split_csv} has no {split!r} rows.", f"Choose one of the splits it has: "
                               f"{', '.join(sorted({r['split'] for r in rows}))}.")
        by_path = ds.by_path()
        samples = [by_path[p] for p in sorted(wanted) if p in by_path]
        desc.update(csv=str(split_csv), subset=split, n_available=len(samples))
    if not samples:
        raise DatasetError(f"{data} holds no images to evaluate.", "Give a data folder with class subfolders of images.")
    if max_images is not None:
        if max_images < 1:
            raise LeukodxError(f"--max-images {max_images} must be at least 1.", "Give a positive number.")
        if max_images < len(samples):
            rng = np.random.default_rng(seed)
            keep = sorted(rng.choice(len(samples), size=max_images, replace=False).tolist())
            samples = [samples[i] for i in keep]
            desc["max_images"] = max_images
    samples.sort(key=lambda s: s.path)
    what = f"the {split!r} rows of {split_csv}" if split_csv is not None else f"every image of {data}"
    sub = f", a random subset of {len(samples)} (seed {seed})" if "max_images" in desc else ""
    desc["description"] = f"{len(samples)} fields: {what}{sub}"
    desc["n_images"] = len(samples)
    return samples, desc


def _same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError, ValueError):
        return False


def _model_split_overlap(model_dir: Path, tr: dict, samples: list[Sample]) -> tuple[int, str] | None:
    """(number of evaluated fields that are train/val rows of the model's own split, that file), when the split
    it was trained with can be found (DIR/split.csv, or its config's training.split_file, `tr`)."""
    candidates = [model_dir / "split.csv"]
    if isinstance(tr.get("split_file"), str) and tr["split_file"]:
        candidates += [Path(tr["split_file"]), model_dir / tr["split_file"]]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        return None
    try:
        with open(path, newline="") as f:
            seen = {r["path"] for r in csv.DictReader(f) if r.get("split") in ("train", "val")}
    except (OSError, KeyError, csv.Error):
        return None
    return sum(s.path in seen for s in samples), str(path)


def leakage_notes(models: Sequence[ModelRef], data, split_csv, split: str, samples: list[Sample]) -> list[str]:
    """Say so when the evaluated fields may include a model's training fields."""
    notes = []
    for name, model_dir, config in models:
        tr = config.get("training") or {}
        if not isinstance(tr, dict) or not tr.get("data") or not _same_path(tr["data"], data):
            continue
        overlap = _model_split_overlap(model_dir, tr, samples)
        if overlap is not None:
            n, path = overlap
            if n:
                notes.append(f"{n} of the {len(samples)} evaluated fields are training or validation rows of model "
                             f"{name} ({path}): its numbers here overstate it. Evaluate with --split {path} "
                             "to score only its held-out fields.")
        elif split_csv is None:
            notes.append(f"Model {name} was trained on {data}, and every image of it was evaluated, training "
                         "fields included: these numbers overstate it. Pass --split SPLIT.csv (the split it was "
                         "trained with) to score only its held-out fields.")
        elif split != "test":
            notes.append(f"The {split!r} rows were evaluated: model {name} saw them in training "
                         "(train) or for model selection (val), so they overstate it.")
    return notes
