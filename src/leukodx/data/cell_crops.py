"""The cell model's crops: the source readers that find the cells of each image, and the crop store.

    samples = iter_pbc("PBC", "benchmarks/splits/pbc-seed0.csv", parts=("test",))   # one Sample per image

A `Sample` holds an image's cell centres, one label per centre (a cell class, `NOT_LEUKOCYTE`, or a key of the
trainer's label sets such as `ANY_LEUKOCYTE`) and what each crop is (``kind``). `CropData` is the store: the
crops cut at `STORE_RBC` red-cell diameters (`STORE_SIZE` px; the trainer cuts them with the clinic's crop rule)
and one row of columns per crop. Each reader (`iter_pbc`, `iter_taleqani`, `iter_raabin`, `iter_chula`) says
which cells of its source it yields and how they are labelled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukodx.data import sources
from leukodx.data.split import read_split
from leukodx.errors import DatasetError

NOT_LEUKOCYTE = "not_leukocyte"  # the cell model's class (inference.cell_classes.NOT_LEUKOCYTE; a test holds them equal)
# the classes the crops are labelled with and the cell trainer gives its model (its config's `classes`, in the
# order of its logits)
MODEL_CLASSES = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig", "erythroblast",
                 "smudge", NOT_LEUKOCYTE)
ANY_LEUKOCYTE = "set:leukocyte"  # a set label: one of the leukocyte types
STORE_RBC = 5.0  # stored crops: 5 red-cell diameters wide ...
STORE_SIZE = 80  # ... at 16 px per diameter, like the 64-px, 4-diameter input
TALEQANI_RBC = sources.TALEQANI_RBC_DIAMETER
TALEQANI_MIN_NUCLEUS_PX = 40
NUCLEUS_OVER_RBC = 0.22  # a nucleus's mean stain score over the field's red cells' (OD units)
SCALE_BAR = (0.9, 0.84)  # the bottom-right corner (fractions of height, width) holding the scale bar
NEGATIVE_DISTANCE_RBC = 1.5
RAABIN_RBC_PER_FIELD = 3
COLUMNS = ("crops", "labels", "split", "source", "kind", "path", "field_label")


@dataclass
class Sample:
    """One image's crops: centres (row, col) in its pixels, its red-cell diameter, one label per centre (a
    cell class, NOT_LEUKOCYTE or a set label) and what each crop is (``kind``)."""

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


def _split_rows(split_csv: str | Path | None, rows: list[tuple[str, str]], what: str) -> dict[str, str]:
    """path -> split part: from the split file when given, else the sources' own rule (sources.source_split,
    which made the project's PBC and Raabin split files)."""
    if split_csv is not None:
        part = {r["path"]: r["split"] for r in read_split(split_csv)}
        unknown = [p for p, _ in rows if p not in part]
        if len(unknown) == len(rows) and rows:
            raise DatasetError(f"The {what} split file {split_csv} lists none of the {len(rows)} images "
                               f"(e.g. {rows[0][0]}).", f"Give the {what} split file made for that folder.")
        return part
    return {r["path"]: r["split"] for r in sources.source_split(rows)}


def iter_pbc(root: str | Path, split_csv: str | Path | None = None, parts: Iterable[str] = ("train", "val", "test"),
             limit_per_class: int | None = None) -> Iterator[Sample]:
    """Each PBC crop's centred cell (class from the folder; platelet -> not_leukocyte)."""
    from leukodx.data.images import read_rgb

    root = sources.check("pbc", root)
    rows = sources.read_pbc(root)
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
        yield Sample("pbc", rel, part, Path(rel).stem, rgb, sources.PBC_RBC_DIAMETER, [(h / 2 - 0.5, w / 2 - 0.5)],
                     [label], [f"pbc:{cls}"], cls)


def _stain(rgb: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear-stain score OD green - OD blue, stained matter) of a field (`cell_references`' measures)."""
    from leukodx.data.cell_references import foreground, optical_density

    od = optical_density(rgb)
    return od[..., 1] - od[..., 2], foreground(od, d)


def taleqani_cells(nucleus: np.ndarray, stain: tuple[np.ndarray, np.ndarray]) -> list[tuple[float, float]]:
    """Centres (row, col) of the cells of a nucleus reference (`stain`: the field's `_stain`, red cells 17 px
    across): components of at least 40 px whose nuclear-stain score (OD green - OD blue) is at least
    `NUCLEUS_OVER_RBC` above the field's red cells' (the median over its stained pixels; some HSV references
    took the red cells too), not in the scale bar's corner; lobes within 0.3 red-cell diameters grouped as one
    cell; the centroid of each group."""
    from scipy import ndimage as ndi

    m = np.asarray(nucleus, bool)
    lab, n = ndi.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    s, fg = stain
    rbc_level = float(np.median(s[fg])) if fg.sum() > 100 else float(np.median(s))
    idx = np.arange(1, n + 1)
    mean_s = np.concatenate([[0.0], ndi.mean(s, lab, idx)])
    centre = ndi.center_of_mass(m, lab, idx)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = (sizes >= TALEQANI_MIN_NUCLEUS_PX) & (mean_s >= rbc_level + NUCLEUS_OVER_RBC)
    h, w = m.shape
    keep[1:] &= np.array([not (a >= h * SCALE_BAR[0] and b >= w * SCALE_BAR[1]) for a, b in centre], bool)
    keep[0] = False
    big = keep[lab]
    if not big.any():
        return []
    r = max(1, round(0.15 * TALEQANI_RBC))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    grouped, k = ndi.label(ndi.binary_dilation(big, yy**2 + xx**2 <= r * r))
    idx = np.arange(1, k + 1)
    cm = ndi.center_of_mass(big, grouped * big, idx)
    return [(float(a), float(b)) for a, b in cm if np.isfinite(a)]


def taleqani_negatives(nucleus: np.ndarray, stain: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
                       background: bool) -> list[tuple[tuple[float, float], str]]:
    """Up to two centres far (> 1.5 red-cell diameters) from every nucleus: one on a red cell (the most interior
    pixel of a stained blob there) and, when `background`, one on unstained background; with their kind."""
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(~np.asarray(nucleus, bool)) > NEGATIVE_DISTANCE_RBC * TALEQANI_RBC
    h, w = far.shape
    inner = np.zeros_like(far)
    m = int(0.5 * TALEQANI_RBC)
    inner[m:h - m, m:w - m] = True
    far &= inner
    far[int(h * SCALE_BAR[0]) - m:, int(w * SCALE_BAR[1]) - m:] = False
    out: list[tuple[tuple[float, float], str]] = []
    if not far.any():
        return out
    fg = stain[1]
    places = [(far & fg & (ndi.distance_transform_edt(fg) >= 0.3 * TALEQANI_RBC), "red_cell")]
    if background:
        places.append((far & ~ndi.binary_dilation(fg, iterations=2), "background"))
    for where, kind in places:
        ys, xs = np.nonzero(where)
        if len(ys):
            i = int(rng.integers(len(ys)))
            out.append(((float(ys[i]), float(xs[i])), kind))
    return out


def iter_taleqani(root: str | Path, split_csv: str | Path, parts: Iterable[str] = ("train", "val", "test"),
                  negatives: bool = True, seed: int = 0, limit_per_class: int | None = None, every: int = 1
                  ) -> Iterator[Sample]:
    """Each Taleqani field's cells (`taleqani_cells` of its repaired nucleus reference) with weak labels from
    the field: a Benign field's cells 'lymphocyte' (hematogones), another field's 'blast'; and its negatives
    (`taleqani_negatives`, not_leukocyte; the background one on every third field). `every`: only every
    `every`-th row of `parts` (the others cost nothing)."""
    from leukodx.data.images import read_reference_mask, read_rgb
    from leukodx.data.reference_masks import repaired_reference

    root = sources.check("taleqani", root)
    rows = read_split(split_csv)
    if not rows:
        raise DatasetError(f"The Taleqani split file {split_csv} has no rows.",
                           "Give the Taleqani split file, or one made with `leukodx data split`.")
    parts = set(parts)
    chosen = set([k for k, r in enumerate(rows) if r["split"] in parts][::every])
    taken: Counter = Counter()
    for k, r in enumerate(rows):
        if k not in chosen:
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
        label = "lymphocyte" if r["label"] == sources.SOURCES["taleqani"].benign else "blast"
        stain = _stain(rgb, TALEQANI_RBC)
        for c in taleqani_cells(nucleus, stain):
            s.centres.append(c)
            s.labels.append(label)
            s.kinds.append(f"taleqani:{r['label']}:cell")
        if negatives:
            rng = np.random.default_rng([seed, k])
            for c, kind in taleqani_negatives(nucleus, stain, rng, background=k % 3 == 0):
                s.centres.append(c)
                s.labels.append(NOT_LEUKOCYTE)
                s.kinds.append(f"taleqani:{r['label']}:{kind}")
        yield s


def iter_raabin(root: str | Path, split_csv: str | Path | None = None, parts: Iterable[str] = ("train", "val", "test"),
                rbc_per_field: int = RAABIN_RBC_PER_FIELD, seed: int = 0, limit: int | None = None) -> Iterator[Sample]:
    """Each Raabin field's boxes: red cells (up to `rbc_per_field`, whole ones) and platelets -> not_leukocyte,
    leukocytes -> `ANY_LEUKOCYTE`, "one of the leukocyte types" (the boxes have no types)."""
    from leukodx.data.images import read_rgb

    root = sources.check("raabin", root)
    fields, _ = sources.read_raabin_fields(root, missing="skip")
    part_of = _split_rows(split_csv, sources.raabin_rows(fields), "Raabin")
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
        centre = np.stack([(b[:, 2] + b[:, 4]) / 2 - 0.5, (b[:, 1] + b[:, 3]) / 2 - 0.5], 1)
        whole = (b[:, 1] > 1) & (b[:, 2] > 1) & (b[:, 3] < w - 1) & (b[:, 4] < h - 1)
        rng = np.random.default_rng([seed, k])
        rbc = rng.permutation(np.flatnonzero((b[:, 0] == 1) & whole))[:rbc_per_field]
        for i in range(len(b)):
            cls = int(b[i, 0])
            if cls == 0:
                label, kind = ANY_LEUKOCYTE, "raabin:leukocyte"
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


def iter_chula(root: str | Path, split_csv: str | Path | None = None, parts: Iterable[str] = ("train", "val", "test"),
               limit_per_class: int | None = None) -> Iterator[Sample]:
    """Each labelled Chula field's typed leukocyte boxes, labelled with their type (only leukocytes are boxed:
    no negatives; split: the file, else `sources.chula_split`)."""
    from leukodx.data.images import read_rgb

    root, src = sources.check("chula", root), sources.SOURCES["chula"]
    rows = read_split(split_csv) if split_csv is not None else sources.chula_split(root)
    parts, taken = set(parts), Counter[tuple[str, str]]()
    for r in rows:
        lp = root / "labels" / f"{Path(r['path']).stem}.txt"
        if r["split"] not in parts or not lp.is_file() or taken[(r["label"], r["split"])] >= (limit_per_class or 1e9):
            continue
        taken[(r["label"], r["split"])] += 1
        rgb = read_rgb(root / r["path"])
        b = sources.read_yolo_labels(lp, rgb.shape[:2], len(src.classes))
        b = b[np.minimum(b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]) >= 8]  # a box of a few px (L-8_0730) is no cell
        kinds = [src.classes[int(c)] for c in b[:, 0]]
        yield Sample("chula", r["path"], r["split"], r["group"], rgb, float(src.rbc_diameter or 40.0),
                     [((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5) for _, x0, y0, x1, y1 in b], kinds,
                     [f"chula:{k}" for k in kinds], r["label"])


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

    def allowed(self, classes: list[str] | tuple[str, ...], label_sets: dict[str, tuple[str, ...]]) -> np.ndarray:
        """N x classes bool: the classes each crop's label allows (a set label: every class of its set)."""
        out = np.zeros((len(self.labels), len(classes)), bool)
        for i, lab in enumerate(self.labels):
            for c in label_sets.get(str(lab), (str(lab),)):
                out[i, list(classes).index(c)] = True
        return out

    def single(self, classes: list[str] | tuple[str, ...]) -> np.ndarray:
        """Class index of single-labelled crops, -1 for set labels."""
        return np.array([list(classes).index(lab) if lab in classes else -1 for lab in self.labels], np.int64)

    def take(self, idx: np.ndarray) -> CropData:
        return CropData(*(getattr(self, k)[idx] for k in COLUMNS))

    @staticmethod
    def concat(parts: list[CropData]) -> CropData:
        return CropData(*(np.concatenate([getattr(p, k) for p in parts]) for k in COLUMNS))

    def counts(self) -> dict:
        """{part: {kind or label: n}} for the summary."""
        out: dict = {}
        for part in ("train", "val", "test"):
            sel = self.split == part
            out[part] = {"by_label": dict(sorted(Counter(self.labels[sel].tolist()).items())),
                         "by_kind": dict(sorted(Counter(self.kind[sel].tolist()).items()))}
        return out


