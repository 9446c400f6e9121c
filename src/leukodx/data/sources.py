"""The data sets the project trains and scores on: one registry (`SOURCES`) and the readers of their folders.

`SOURCES` holds, for every source, what the code needs to know about it in one place: its folder's name under
the shared data root, the option that points a training command to it, what its folder holds (`check` tests
that and says what is missing in one line), its classes, its red-cell diameter in px, its split file's name (in
the folder the caller gives, e.g. ``benchmarks/splits``) and its citation. How the red-cell diameters were
measured and how the splits were made: docs/results/cell-references/README.md ("Scale", "Splits").

A Raabin field whose label file is missing is an **error** naming it (`read_raabin_fields`), not a silent
skip: every leukocyte of a field is boxed, so a field read without its boxes would teach "no leukocyte here"
on its leukocytes.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from leukodx.data.cell_references import CellReference
from leukodx.data.images import is_image_name
from leukodx.data.layout import TALEQANI_CLASSES
from leukodx.errors import DatasetError

RAABIN_CLASSES = {0: "leukocyte", 1: "rbc", 2: "platelet"}
PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
PBC_RBC_DIAMETER = 68.0  # px: one camera, one magnification (benchmarks/pbc_rbc_diameter.py measures it)
RAABIN_FALLBACK_RBC_DIAMETER = 78.0  # px, only for a field with no whole red-cell box
TALEQANI_RBC_DIAMETER = 17.0  # px: the training fields' red cells, the scale the analysis brings every field to
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
CHULA_MIN_NUCLEUS_FRACTION = 0.2  # of a cell's area: a smaller found nucleus is the rule missing it (pale fields)


@dataclass(frozen=True)
class Source:
    """One public data set: what every trainer, evaluation and benchmark needs to know about it."""

    name: str  # the key in configs, metrics and model cards
    title: str
    folder: str  # its folder's name under the shared data root
    flag: str  # the training commands' option for its folder
    layout: str  # what its folder holds, as the checker's advice says it
    parts: tuple[str, ...]  # sub-folders it must hold
    classes: tuple[str, ...]
    class_folders: tuple[str, ...]  # of `parts` (or the root when `parts` is empty) each holding one folder per class
    rbc_diameter: float | None  # px; None: measured per field (see its reader)
    split_file: str | None  # in the caller's split folder; None: none made
    citation: str
    benign: str | None = None  # the class whose fields hold no blasts


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("pbc", "PBC", "pbc", "--pbc", "one folder of crops per class: <class>/*.jpg", (), PBC_CLASSES, ("",),
           PBC_RBC_DIAMETER, "pbc-seed0.csv",
           "Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J., \"A dataset of microscopic "
           "peripheral blood cell images for development of automatic recognition systems\", Data in Brief 30 "
           "(2020) 105474, doi:10.1016/j.dib.2020.105474; Mendeley Data doi:10.17632/snkd93bnjr.1 (CC BY 4.0)."),
    Source("raabin", "Raabin", "raabin-fields", "--raabin", "images/*.jpg with YOLO boxes in labels/*.txt",
           ("images", "labels"), tuple(RAABIN_CLASSES.values()), (), None, "raabin-fields-seed0.csv",
           "Kouzehkanan Z. M. et al., \"A large dataset of white blood cells containing cell locations and "
           "types, along with segmented nuclei and cytoplasm\", Scientific Reports 12, 1123 (2022), "
           "doi:10.1038/s41598-021-04426-x (Raabin-WBC); boxes: the TXL-PBC data set "
           "(lugan113/TXL-PBC_Dataset, MIT licence)."),
    Source("taleqani", "Taleqani", "all-taleqani", "--taleqani", "the public layout: Original/<class>/ and "
           "Segmented/<class>/", ("Original", "Segmented"), TALEQANI_CLASSES, ("Original", "Segmented"),
           TALEQANI_RBC_DIAMETER,
           "taleqani-sgdc-seed0.csv",
           "Aria M., Ghaderzadeh M., Bashash D., Abolghasemi H., Asadi F., Hosseini A., \"Acute Lymphoblastic "
           "Leukemia (ALL) image dataset\", Kaggle (mehradaria/leukemia), 2021; Ghaderzadeh et al., "
           "International Journal of Intelligent Systems 37(8), 2022, doi:10.1002/int.22753. Research use only.",
           benign="Benign"),
    Source("chula", "Chula", "chula-wbc", "--chula", "images/*.jpg with typed YOLO boxes in labels/*.txt and "
           "fields.csv", ("images", "labels"), ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte"),
           (), 40.0, "chula-wbc-seed0.csv",  # classes in the order of its label files' class numbers; red cells as its README says
           "singgihbekti/WBC_Dataset (GitHub, commit 45759ab), Chulalongkorn University, Bangkok (MIT licence, "
           "Copyright (c) 2022 singgihbekti)."),
)}


def source(name: str) -> Source:
    """The registry's entry for `name`; an unknown name lists the known ones."""
    if name not in SOURCES:
        raise DatasetError(f"Unknown data source {name!r}.", f"Use one of: {', '.join(SOURCES)}.")
    return SOURCES[name]


def split_path(name: str, splits_dir: str | Path) -> Path:
    """The source's split file in `splits_dir` (e.g. benchmarks/splits/pbc-seed0.csv)."""
    f = source(name).split_file
    if f is None:
        raise DatasetError(f"The {source(name).title} source has no split file yet.",
                           "Make one (by group) before training or scoring on it.")
    return Path(splits_dir) / f


def check(name: str, root: str | Path, flag: str | None = None) -> Path:
    """`root` as a folder of source `name`, or one DatasetError that says what is missing (the option `flag`,
    default the source's, named in it). Raabin's label files are read: a missing one is named."""
    s, p = source(name), Path(root)
    flag = flag or s.flag
    advice = f"Point {flag} to the {s.title} folder: {s.layout}."
    if not p.is_dir():
        raise DatasetError(f"{s.title} folder {root} does not exist ({flag}: no such folder).", advice)
    for part in s.parts:
        if not (p / part).is_dir():
            raise DatasetError(f"{s.title} folder {root} has no {part}/ folder.", advice)
    for part in s.class_folders:
        folder = p / part
        found = sorted(q.name for q in folder.iterdir() if q.is_dir())
        lacking = [c for c in s.classes if c not in found]
        if lacking:
            raise DatasetError(f"{s.title} folder {folder} lacks the class folder(s) {', '.join(lacking)}: it "
                               f"holds {', '.join(found) or 'no class folders'}; expected {', '.join(s.classes)}.",
                               advice)
    if name == "raabin":
        read_raabin_fields(p)  # a missing label file is named
    return p


def check_all(given: dict[str, str | Path | None], flags: dict[str, str] | None = None) -> None:
    """`check` every source given (None: left out), in the registry's order."""
    for name in SOURCES:
        root = given.get(name)
        if root is not None:
            check(name, root, (flags or {}).get(name))


@dataclass(frozen=True)
class RaabinField:
    """One Raabin field: paths relative to the source root, and its boxes (N x 5: class, x0, y0, x1, y1 in px)."""

    path: str
    label_path: str
    boxes: np.ndarray
    size: tuple[int, int]  # (H, W)

    @property
    def rbc_diameter(self) -> float:
        return raabin_rbc_diameter(self.boxes, self.size)


def read_yolo_labels(path: str | Path, size: tuple[int, int], n_classes: int = len(RAABIN_CLASSES)) -> np.ndarray:
    """YOLO label file -> N x 5 float64 (class, x0, y0, x1, y1) in pixels of an image of ``size`` (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Label file {path} is missing.",
                           "Every Raabin field needs labels/<name>.txt next to images/<name>.jpg; restore it, "
                           "or read with missing='skip' to leave such fields out.")
    h, w = size
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, xc, yc, bw, bh = (float(p) for p in parts[:5])
            if len(parts) != 5 or not 0 <= int(c) < n_classes:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{path}, line {k}: {line!r} is not a YOLO box 'class xc yc w h' "
                               f"(class 0 to {n_classes - 1}).", "Fix or restore the label file.") from None
        rows.append((int(c), (xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h))
    return np.asarray(rows, np.float64).reshape(-1, 5)


def raabin_rbc_diameter(boxes: np.ndarray, size: tuple[int, int]) -> float:
    """Median red-cell box side ((w + h) / 2, px) of the boxes not cut at the field's edge."""
    h, w = size
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    b = b[b[:, 0] == 1]
    inside = (b[:, 1] > 1) & (b[:, 2] > 1) & (b[:, 3] < w - 1) & (b[:, 4] < h - 1)
    b = b[inside]
    if len(b) == 0:
        return RAABIN_FALLBACK_RBC_DIAMETER
    return float(np.median(((b[:, 3] - b[:, 1]) + (b[:, 4] - b[:, 2])) / 2))


def read_raabin_fields(root: str | Path, missing: str = "error") -> tuple[list[RaabinField], list[str]]:
    """(fields, skipped names) of a Raabin folder. ``missing``: "error" (default) raises a DatasetError naming
    the fields whose label file is missing; "skip" leaves them out and returns their image paths."""
    from PIL import Image

    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise DatasetError(f"{images} does not exist.",
                           "Point to the raabin-fields folder holding images/ and labels/.")
    names = sorted(p for p in images.iterdir() if is_image_name(p))
    if not names:
        raise DatasetError(f"{images} holds no images.", "Point to the raabin-fields folder holding images/*.jpg.")
    lost = [p for p in names if not (root / "labels" / f"{p.stem}.txt").is_file()]
    if lost and missing != "skip":
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise DatasetError(
            f"{len(lost)} Raabin field(s) have no label file: "
            f"{', '.join(str(root / 'labels' / (p.stem + '.txt')) for p in lost[:5])}{more}.",
            "Restore labels/<name>.txt for each (every leukocyte must be boxed), or pass missing='skip'.")
    fields = []
    for p in sorted(set(names) - set(lost)):
        lp = root / "labels" / f"{p.stem}.txt"
        with Image.open(p) as im:
            size = im.size[1], im.size[0]  # (H, W) from the header
        fields.append(RaabinField(str(p.relative_to(root)), str(lp.relative_to(root)), read_yolo_labels(lp, size),
                                  size))
    return fields, [str(p.relative_to(root)) for p in lost]


def read_pbc(root: str | Path) -> list[tuple[str, str]]:
    """(path relative to root, class) of every PBC crop, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist.", "Point to the pbc folder holding <class>/*.jpg.")
    out = []
    for c in PBC_CLASSES:
        folder = root / c
        if folder.is_dir():
            out += [(str(p.relative_to(root)), c) for p in sorted(folder.iterdir()) if is_image_name(p)]
    if not out:
        raise DatasetError(f"{root} holds no PBC crops (expected <class>/*.jpg for {', '.join(PBC_CLASSES)}).",
                           "Point to the pbc folder.")
    return out


def split_of(name: str, seed: int = 0) -> str:
    """train / val / test of a file name, 70/15/15 by sha256 of ``seed:name``."""
    u = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12
    a, b, _ = SPLIT_FRACTIONS
    return "train" if u < a else "val" if u < a + b else "test"


def source_split(rows: list[tuple[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Split rows (path, label) by file, each its own group: PBC crops are independent cells and Raabin fields
    independent fields (neither publishes patient ids)."""
    return [{"path": p, "label": lab, "split": split_of(Path(p).name, seed), "group": Path(p).stem}
            for p, lab in rows]


def chula_split(root: str | Path, seed: int = 0) -> list[dict[str, str]]:
    """Split rows of the Chula fields by slide (a group <kind letter>-<slide>; L-8 and M-8 are frames of one
    sequence, interleaved): slides, most frames first (ties by sha256 of ``seed:slide``), each go to the part whose
    frames of the slide's kinds fall furthest under its share of each kind's frames (ties: test, val, train)."""
    rows = list(csv.DictReader((Path(root) / "fields.csv").open(newline="")))
    kinds = {k[0].upper(): k for k in SOURCES["chula"].classes}
    kind, slide = {}, {}
    for r in rows:
        letter, _, slide[r["file"]] = r["group"].partition("-")
        kind[r["file"]] = kinds.get(letter, "unknown")
    frames = Counter((slide[f], kind[f]) for f in kind)
    total = Counter(k for s, k in frames.elements())
    share = dict(zip(("train", "val", "test"), SPLIT_FRACTIONS, strict=True))
    have: dict[str, Counter] = {p: Counter() for p in share}
    part_of = {}
    for s in sorted({s for s, _ in frames}, key=lambda s: (-sum(n for (t, _), n in frames.items() if t == s),
                                                         hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())):
        mine = {k: n for (t, k), n in frames.items() if t == s}
        part_of[s] = max(("test", "val", "train"), key=lambda p: sum(
            n * (share[p] * total[k] - have[p][k]) / total[k] for k, n in mine.items()))
        have[part_of[s]].update(mine)
    return [{"path": f"images/{f}", "label": kind[f], "split": part_of[slide[f]], "group": slide[f]} for f in kind]


def raabin_rows(fields: list[RaabinField]) -> list[tuple[str, str]]:
    """(path, label) rows for a split: label = "leukocyte" when the field has a leukocyte box, else "none"."""
    return [(f.path, "leukocyte" if (f.boxes[:, 0] == 0).any() else "none") for f in fields]


def raabin_field_reference(root: str | Path, field: RaabinField) -> CellReference:
    """The Raabin rule's references for one field (`cell_references.raabin_reference`)."""
    from leukodx.data.cell_references import raabin_reference
    from leukodx.data.images import read_rgb

    return raabin_reference(read_rgb(Path(root) / field.path), field.boxes, field.rbc_diameter)


def chula_boxes(label_path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A Chula label file's typed boxes as leukocyte boxes (class 0, as Raabin's), N x 5 in px of ``size`` (H, W);
    a box under 8 px a side (L-8_0730) is no cell and is dropped."""
    b = read_yolo_labels(label_path, size, len(SOURCES["chula"].classes))
    b = b[np.minimum(b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]) >= 8]
    b[:, 0] = 0
    return b


def chula_field_reference(root: str | Path, path: str) -> CellReference:
    """The references of one Chula field: Raabin's rule (`cell_references.raabin_reference`) on its leukocyte
    boxes (`chula_boxes`; no red cells are boxed) at the source's red-cell diameter. On its pale fields the rule
    often misses the nucleus: a cell whose found nucleus covers under CHULA_MIN_NUCLEUS_FRACTION of it has its
    nucleus channel unknown (not "no nucleus"). A field without a label file is unknown everywhere (its
    leukocytes are not boxed, not absent)."""
    from leukodx.data.cell_references import raabin_reference
    from leukodx.data.images import read_rgb

    rgb, d = read_rgb(Path(root) / path), float(SOURCES["chula"].rbc_diameter or 40.0)
    lp = Path(root) / "labels" / f"{Path(path).stem}.txt"
    if not lp.is_file():
        zero = np.zeros(rgb.shape[:2], np.uint8)
        return CellReference(rgb, zero, zero, zero, zero, d)
    ref = raabin_reference(rgb, chula_boxes(lp, rgb.shape[:2]), d)
    lab, n = ndi.label(ref.cell)
    if n:
        idx = np.arange(1, n + 1)
        frac = np.asarray(ndi.sum(ref.nucleus, lab, idx)) / np.maximum(np.asarray(ndi.sum(ref.cell, lab, idx)), 1)
        weak = ndi.binary_dilation(np.isin(lab, idx[frac < CHULA_MIN_NUCLEUS_FRACTION]), iterations=2)
        ref.nucleus_known = (ref.nucleus_known.astype(bool) & ~weak).astype(np.uint8)
    return ref


def pbc_crop_reference(root: str | Path, path: str, label: str) -> CellReference:
    """The PBC rule's references for one crop (`cell_references.pbc_reference`) at `PBC_RBC_DIAMETER`."""
    from leukodx.data.cell_references import pbc_reference
    from leukodx.data.images import read_rgb

    return pbc_reference(read_rgb(Path(root) / path), label, PBC_RBC_DIAMETER)


def taleqani_field_reference(root: str | Path, path: str) -> CellReference:
    """The Taleqani rule's references for one field ``Original/<class>/<name>``: its nucleus reference is the
    repaired reference (`reference_masks.repaired_reference`) of ``Segmented/<class>/<name>``."""
    from leukodx.data.cell_references import taleqani_reference
    from leukodx.data.images import read_reference_mask, read_rgb
    from leukodx.data.reference_masks import repaired_reference

    root = Path(root)
    rgb = read_rgb(root / path)
    parts = Path(path).parts
    seg = root / "Segmented" / Path(*parts[1:]) if parts and parts[0] == "Original" else None
    if seg is None or not seg.is_file():
        raise DatasetError(f"No reference mask for {root / path} (looked for {seg}).",
                           "Use the public layout Original/<class>/<name> with Segmented/<class>/<name>.")
    hsv = read_reference_mask(seg, size=(rgb.shape[1], rgb.shape[0]), warn=False)
    mask, _ = repaired_reference(rgb, hsv)
    return taleqani_reference(rgb, mask, TALEQANI_RBC_DIAMETER)
