"""Data set layouts: the public `Original/<class>/` (+ optional `Segmented/<class>/`) and a flat `<class>/`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leukodx.data.images import is_image_name
from leukodx.errors import DatasetError

LAYOUTS_HELP = (
    "Expected either DATA/Original/<class>/<image> (optionally with DATA/Segmented/<class>/<image> masks) "
    "or DATA/<class>/<image>, with one subfolder per class such as Benign, Early, Pre, Pro."
)

TALEQANI_CLASSES = ("Benign", "Early", "Pre", "Pro")
"""The Taleqani data set's classes in their usual order: hematogones (benign), early pre-B, pre-B and pro-B ALL.
A model's own classes are its config's (leukodx.models.model_config.ModelConfig.classes)."""


@dataclass(frozen=True)
class Sample:
    """One smear field: its path relative to the data folder, its class and its reference mask, if any."""

    path: str
    label: str
    image: Path
    mask: Path | None = None


@dataclass
class Dataset:
    root: Path
    layout: str  # "public" or "flat"
    classes: list[str]
    samples: list[Sample]
    empty_classes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that are not named as images
    has_masks: bool = False

    def by_path(self) -> dict[str, Sample]:
        return {s.path: s for s in self.samples}

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for s in self.samples:
            out[s.label] += 1
        return out

    def require_nonempty(self) -> None:
        """Raise when a class is empty: training and splitting need every class."""
        if self.empty_classes:
            raise DatasetError(f"Class folder(s) {', '.join(self.empty_classes)} in {self.root} hold no images.",
                               "Add images to them, or remove the empty folders.")


def _order_classes(names: list[str]) -> list[str]:
    known = [c for c in TALEQANI_CLASSES if c in names]
    return known + sorted(n for n in names if n not in known)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_dataset(root: str | Path) -> Dataset:
    """Read a data folder's layout (no pixels are decoded here)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"Data folder {root} does not exist.", "Check the path. " + LAYOUTS_HELP)
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a data folder.", LAYOUTS_HELP)

    original = root / "Original"
    if original.is_dir():
        layout, image_root = "public", original
        seg_root = root / "Segmented" if (root / "Segmented").is_dir() else None
    else:
        layout, image_root, seg_root = "flat", root, None

    class_dirs = _class_dirs(image_root)
    if layout == "flat":
        # a flat layout must have class folders holding images, not just any folder
        class_dirs = [d for d in class_dirs if d.name not in ("Segmented",)]
        if not class_dirs or not any(any(is_image_name(f) for f in _files(d)) for d in class_dirs):
            found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(root.iterdir())[:8]) or "nothing"
            raise DatasetError(f"{root} is in no known layout (found: {found}).", LAYOUTS_HELP)
    elif not class_dirs:
        raise DatasetError(f"{original} has no class subfolders.", LAYOUTS_HELP)

    classes = _order_classes([d.name for d in class_dirs])
    samples: list[Sample] = []
    empty: list[str] = []
    ignored: list[str] = []
    for name in classes:
        masks: dict[str, Path] = {}
        if seg_root is not None and (seg_root / name).is_dir():
            masks = {p.stem: p for p in _files(seg_root / name) if is_image_name(p)}
        files = _files(image_root / name)
        images = [f for f in files if is_image_name(f)]
        ignored += [f.relative_to(root).as_posix() for f in files if not is_image_name(f)]
        samples += [Sample(f.relative_to(root).as_posix(), name, f, masks.get(f.stem)) for f in images]
        if not images:
            empty.append(name)
    return Dataset(root=root, layout=layout, classes=classes, samples=samples, empty_classes=empty, ignored=ignored,
                   has_masks=seg_root is not None)
