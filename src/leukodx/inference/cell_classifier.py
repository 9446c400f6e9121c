"""The per-cell AI suggestion: each segmented leukocyte called 'blast' or 'lymphocyte' (hematogone), with a
calibrated probability, by a small logistic model over handcrafted, stain-robust features. numpy/scipy only.

    >>> clf = CellClassifier.load()                       # the bundled model (src/leukodx/assets/cells)
    >>> clf.classify(rgb, labels, cells, rbc_diameter_px)  # fills cells[i].ai_label / ai_confidence in place
    >>> score = clf.field_score(cells)                    # mean blast probability of the field's cells
    >>> malignant = score is not None and score >= clf.field_threshold

**Features** (one vector per cell, `FEATURES`), all dimensionless so that they do not move with the field's
magnification, white balance or brightness:

- *size and shape in red-cell units*: log(area / red-cell area), with the red-cell area pi/4 * d^2 from the
  field's red-cell diameter d; solidity (area / convex-hull area of the pixel squares); elongation
  (1 - minor/major axis of the second moments); whether the cell touches the field's edge.
- *colour relative to the same field*: optical density OD = log(background / pixel) per channel, with the
  background the mean colour of the brightest tenth of the field's non-leukocyte pixels (a per-channel gain,
  i.e. a white balance or exposure change, cancels exactly), then divided by the field's own red-cell OD (the
  median OD of the non-leukocyte pixels darker than the background by Otsu's rule), so a stain that is
  stronger or weaker all over cancels too. From it: the nucleus's and the cytoplasm's OD relative to the red
  cells (log), and the nucleus's OD colour relative to the red cells' OD colour (two centred log-ratios).
- *nucleus*: the cell's pixels above Otsu's threshold of its (lightly smoothed) OD; its fraction of the cell,
  its solidity, its number of pieces (lobes), the cytoplasm rim ((cell - nucleus equivalent diameter) / d).
- *texture*: the nucleus's OD coefficient of variation; chromatin granularity (std of a difference of
  Gaussians, sigmas 0.6 and 1.8 px per 17 px of red-cell diameter, over the nucleus's mean OD); nucleolus-like
  pale spots (the fraction of the nucleus interior, eroded by a 3-px square per 17 px, whose smoothed OD is
  under 0.8 x the nucleus median).

Every length (smoothing sigmas, the erosion) is in units of the red-cell diameter, so a field rescaled
together with `rbc_diameter_px` gives (nearly) the same features.

**Model**: the features standardised (training mean and std), clipped to +-6 std, optionally with their
squares (`quadratic` in the model file), into a logistic regression; its logit through Platt scaling
(a * logit + b) fitted on the validation cells. The probabilities are calibrated against the *weak* labels it
was trained on: every cell of a Benign field is 'lymphocyte' (hematogones: a benign field holds no blasts),
every cell of an Early / Pre / Pro field 'blast' (with a multiple-instance refinement when the model file says
so: cells of a malignant training field that look like the benign ones were relabelled 'lymphocyte', the most
blast-like cell of every malignant field kept 'blast'). A malignant field also holds normal lymphocytes, so
'blast' is a noisy label there: read the probability as "how much this cell looks like the cells of leukaemic
fields of the training data", not as a cytologist's call. How it was fitted and how well it does:
src/leukodx/assets/cells/MODEL_CARD.md and docs/results/cell-classifier/ (benchmarks/train_cell_classifier.py
rebuilds both).

**Field aggregate**: `field_score` is the mean blast probability over the field's cells; `field_threshold`
(chosen on validation fields) turns it into malignant vs benign. A field with no cells has no score (None).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from leukodx.errors import ModelError
from leukodx.inference.cell_classes import AI_CELL_CLASSES
from leukodx.inference.types import CellInstance
from leukodx.models.model_config import DEFAULT_RBC_DIAMETER_224

FORMAT = "leukodx-cell-classifier"
FORMAT_VERSION = 1
MODEL_FILE = "cell_classifier.json"
DEFAULT_RBC_DIAMETER = DEFAULT_RBC_DIAMETER_224  # px: the Taleqani training fields at 224 px
FEATURES = (
    "log_area_rbc",
    "solidity",
    "elongation",
    "touches_border",
    "nucleus_fraction",
    "nucleus_solidity",
    "nucleus_pieces",
    "cytoplasm_rim",
    "log_nucleus_od",
    "log_cytoplasm_od",
    "nucleus_hue_r",
    "nucleus_hue_b",
    "nucleus_od_cv",
    "granularity",
    "pale_spots",
)
COLOUR_FEATURES = ("log_nucleus_od", "log_cytoplasm_od", "nucleus_hue_r", "nucleus_hue_b")
_SECTORS = 16  # directions of the star envelope (the solidity's outline)
_REFERENCE_PIXELS = 16_000  # the field's background / red-cell colours are measured on about this many pixels (a grid)
_BLAST, _LYMPH = AI_CELL_CLASSES.index("blast"), AI_CELL_CLASSES.index("lymphocyte")


def _bundled_path() -> Path:
    from leukodx.assets import ASSETS

    return ASSETS / "cells" / MODEL_FILE


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of a 1-D sample (its minimum when it is constant)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return lo
    width = (hi - lo) / bins
    hist = np.bincount(np.minimum(((values - lo) / width).astype(np.int64), bins - 1), minlength=bins)
    centres = lo + (np.arange(bins) + 0.5) * width
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(lo + (int(np.argmax(between[:-1])) + 1) * width)


def field_reference(rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The field's background colour (RGB, 0..255) and its red cells' median optical density (3 channels),
    both measured on the non-leukocyte pixels of the field itself (an even grid of about _REFERENCE_PIXELS)."""
    step = max(1, int(np.ceil(np.sqrt(labels.size / _REFERENCE_PIXELS))))
    x = np.asarray(rgb[::step, ::step, :3]).reshape(-1, 3)
    free = (np.asarray(labels)[::step, ::step] == 0).ravel()
    if free.sum() >= 64:
        x = x[free]
    x = x.astype(np.float32)
    grey = x.sum(1)
    k = int(0.9 * (grey.size - 1))
    bright = grey >= np.partition(grey, k)[k]
    bg = x[bright].mean(0)
    od = np.log((bg + 1.0) / (x + 1.0)).clip(0.0, None)
    total = od.sum(1)
    rbc = total > _otsu(total)
    if rbc.sum() < 16:
        rbc = total >= np.partition(total, int(0.7 * (total.size - 1)))[int(0.7 * (total.size - 1))]
    rbc_od = np.median(od[rbc], axis=0).clip(1e-3, None)
    return bg.astype(np.float64), rbc_od.astype(np.float64)


def _envelope_area(kk: np.ndarray, dr: np.ndarray, dc: np.ndarray, n: int) -> np.ndarray:
    """Area of each object's star envelope: the polygon through its farthest pixel edge in each of
    `_SECTORS` directions from its centroid (a convex-hull-like outline, computed for all objects at once).
    kk: object index 0..n-1 of each pixel; dr, dc: the pixel's offset from its object's centroid."""
    sector = ((np.arctan2(dr, dc) + np.pi) * (_SECTORS / (2 * np.pi))).astype(np.int64) % _SECTORS
    flat = np.zeros(n * _SECTORS)
    np.maximum.at(flat, kk * _SECTORS + sector, np.hypot(dr, dc) + 0.5)
    env = flat.reshape(n, _SECTORS)
    return 0.5 * np.sin(2 * np.pi / _SECTORS) * (env * np.roll(env, -1, axis=1)).sum(1)


def cell_features(rgb: np.ndarray, labels: np.ndarray, cells: Sequence[CellInstance],
                  rbc_diameter_px: float | None) -> np.ndarray:
    """The FEATURES of every cell (n_cells x len(FEATURES), NaN where a cell is too small to measure), all
    cells of the field at once (per-pixel work on the window around the cells, per-cell sums by bincount)."""
    n = len(cells)
    out = np.full((n, len(FEATURES)), np.nan)
    if n == 0:
        return out
    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or labels.shape != rgb.shape[:2]:
        raise ValueError(f"rgb must be HxWx3 and labels HxW of the same size, got {rgb.shape} and {labels.shape}")
    d = float(rbc_diameter_px) if rbc_diameter_px and rbc_diameter_px > 0 else DEFAULT_RBC_DIAMETER
    u = d / DEFAULT_RBC_DIAMETER  # pixels per pixel of a 17-px-red-cell field
    rbc_area = np.pi / 4 * d * d
    bg, rbc_od = field_reference(rgb, labels)
    h, w = labels.shape
    boxes = np.array([c.bbox for c in cells], dtype=np.int64).reshape(n, 4)
    touches = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= h) | (boxes[:, 3] >= w)
    margin = int(np.ceil(4 * u)) + 1  # room for the smoothing around the cells
    y0, x0 = max(int(boxes[:, 0].min()) - margin, 0), max(int(boxes[:, 1].min()) - margin, 0)
    y1, x1 = min(int(boxes[:, 2].max()) + margin, h), min(int(boxes[:, 3].max()) + margin, w)
    if y1 <= y0 or x1 <= x0:
        return out
    lab = labels[y0:y1, x0:x1]
    ids = np.array([c.id for c in cells], dtype=np.int64)
    top = int(max(int(lab.max()), int(ids.max())))
    lut = np.zeros(top + 2, np.int64)  # label -> 1 + index in `cells`; 0: background or a cell not listed
    lut[np.clip(ids, 0, top + 1)] = np.arange(1, n + 1)
    lut[0] = 0
    k = lut[np.clip(lab, 0, top + 1)]
    fg = np.flatnonzero(k)
    if fg.size == 0:
        return out
    kk = k.ravel()[fg] - 1
    rr, cc = np.divmod(fg, k.shape[1])
    rr, cc = rr.astype(np.float64), cc.astype(np.float64)

    def per_cell(v: np.ndarray | None = None, sel: np.ndarray | None = None) -> np.ndarray:
        if sel is None:
            return np.bincount(kk, v, n)
        return np.bincount(kk[sel], None if v is None else v[sel], n)

    crop = rgb[y0:y1, x0:x1, :3]
    if crop.dtype != np.uint8:
        crop = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    # OD per channel from a 256-entry table per channel (the same as log((bg + 1) / (x + 1)), clipped at 0)
    table = (np.log(bg + 1.0)[:, None] - np.log(np.arange(256.0) + 1.0)[None, :]).clip(0.0, None).astype(np.float32)
    od_ch = [table[ch][crop[..., ch]] for ch in range(3)]
    total = (od_ch[0] + od_ch[1] + od_ch[2]) / np.float32(rbc_od.sum())  # OD in red-cell units
    fine = ndi.gaussian_filter(total, 0.6 * u)
    coarse = ndi.gaussian_filter(total, 1.8 * u)
    v = fine.ravel()[fg]
    raw = total.ravel()[fg]
    dog = v - coarse.ravel()[fg]

    area = per_cell()
    ok = area >= 3
    a = np.maximum(area, 1)
    mr, mc = per_cell(rr) / a, per_cell(cc) / a
    dr, dc = rr - mr[kk], cc - mc[kk]
    vrr, vcc, vrc = per_cell(dr * dr) / a + 1 / 12, per_cell(dc * dc) / a + 1 / 12, per_cell(dr * dc) / a
    half_tr, det = (vrr + vcc) / 2, vrr * vcc - vrc * vrc
    disc = np.sqrt(np.maximum(half_tr ** 2 - det, 0))
    l_major, l_minor = half_tr + disc, np.maximum(half_tr - disc, 1e-9)
    solidity = area / np.maximum(_envelope_area(kk, dr, dc, n), a)

    # nucleus: the cell's pixels above its own isodata threshold of the smoothed OD
    t = per_cell(v) / a
    for _ in range(4):
        above = v > t[kk]
        n_hi, n_lo = per_cell(sel=above), per_cell(sel=~above)
        hi = np.where(n_hi > 0, per_cell(v, above) / np.maximum(n_hi, 1), t)
        lo = np.where(n_lo > 0, per_cell(v, ~above) / np.maximum(n_lo, 1), t)
        t = (hi + lo) / 2
    nuc = v > t[kk]
    n_area = per_cell(sel=nuc)
    nuc = nuc | (n_area < 2)[kk]  # no nucleus found: the whole cell
    n_area = per_cell(sel=nuc)
    na = np.maximum(n_area, 1)
    cyto = ~nuc
    c_area = per_cell(sel=cyto)
    nmr, nmc = per_cell(rr, nuc) / na, per_cell(cc, nuc) / na
    n_env = _envelope_area(kk[nuc], rr[nuc] - nmr[kk[nuc]], cc[nuc] - nmc[kk[nuc]], n)
    n_solidity = n_area / np.maximum(n_env, na)

    nuc_img = np.zeros(k.shape, bool)
    nuc_img.ravel()[fg[nuc]] = True
    pieces, _ = ndi.label(nuc_img, structure=np.ones((3, 3), bool))
    key = kk[nuc] * (int(pieces.max()) + 1) + pieces.ravel()[fg[nuc]]
    keys, sizes = np.unique(key, return_counts=True)
    big = sizes >= 0.05 * rbc_area
    n_pieces = np.maximum(np.bincount(keys[big] // (int(pieces.max()) + 1), minlength=n), 1)

    nuc_mean = np.maximum(per_cell(raw, nuc) / na, 1e-3)
    nuc_var = np.maximum(per_cell(raw * raw, nuc) / na - nuc_mean ** 2, 0)
    dog_mean = per_cell(dog, nuc) / na
    dog_var = np.maximum(per_cell(dog * dog, nuc) / na - dog_mean ** 2, 0)
    cyto_mean = np.where(c_area > 0, per_cell(raw, cyto) / np.maximum(c_area, 1), nuc_mean)
    colour = np.stack([per_cell(od_ch[ch].ravel()[fg], nuc) / na for ch in range(3)], 1)
    q = np.log(np.maximum(colour, 1e-4) / rbc_od)
    side = max(3, round(3 * u))  # the nucleus eroded by a square of 3 px per 17 px of red-cell diameter
    interior = nuc & ndi.minimum_filter(nuc_img, size=side).ravel()[fg]
    n_int = per_cell(sel=interior)
    pale_hits = per_cell(sel=interior & (v < 0.8 * per_cell(v, nuc)[kk] / na[kk]))
    pale = np.where(n_int >= 4, pale_hits / np.maximum(n_int, 1), 0.0)

    f = np.stack([
        np.log(a / rbc_area),
        solidity,
        1.0 - np.sqrt(l_minor / l_major),
        touches.astype(np.float64),
        n_area / a,
        n_solidity,
        np.log(n_pieces),
        (np.sqrt(a) - np.sqrt(na)) * 2 / np.sqrt(np.pi) / d,
        np.log(nuc_mean),
        np.log(np.maximum(cyto_mean, 1e-3)),
        q[:, 0] - q.mean(1),
        q[:, 2] - q.mean(1),
        np.sqrt(nuc_var) / nuc_mean,
        np.sqrt(dog_var) / nuc_mean,
        pale,
    ], 1)
    out[ok] = f[ok]
    return out


class CellClassifier:
    """A fitted cell-level model (see the module docstring). Create it with `CellClassifier.load`."""

    def __init__(self, spec: dict, source: str = "<dict>"):
        try:
            if spec.get("format") != FORMAT or int(spec.get("format_version", -1)) != FORMAT_VERSION:
                raise ValueError(f"not a {FORMAT} version {FORMAT_VERSION} file")
            names = tuple(spec["features"])
            if names != FEATURES:
                raise ValueError(f"its features {list(names)} are not this version's {list(FEATURES)}")
            self.mean = np.asarray(spec["mean"], dtype=np.float64)
            self.scale = np.asarray(spec["scale"], dtype=np.float64)
            self.quadratic = bool(spec.get("quadratic", False))
            self.coef = np.asarray(spec["coef"], dtype=np.float64)
            self.intercept = float(spec["intercept"])
            self.platt_a = float(spec["platt"]["a"])
            self.platt_b = float(spec["platt"]["b"])
            self.field_threshold = float(spec["field_threshold"])
            n = len(FEATURES)
            if self.mean.shape != (n,) or self.scale.shape != (n,) or self.coef.shape != (n * (2 if self.quadratic else 1),):
                raise ValueError("its coefficient arrays do not match its feature list")
            if not (np.all(np.isfinite(self.mean)) and np.all(self.scale > 0) and np.all(np.isfinite(self.coef))):
                raise ValueError("it holds non-finite numbers or a zero scale")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"The cell classifier {source} is not usable: {e}.",
                             "Rebuild it with `python benchmarks/train_cell_classifier.py` or reinstall leukodx.") from e
        self.spec = spec
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> CellClassifier:
        """The model file at `path` (a cell_classifier.json, or a folder holding one); default the bundled one."""
        p = Path(path) if path is not None else _bundled_path()
        if p.is_dir():
            p = p / MODEL_FILE
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ModelError(f"The cell classifier {p} is missing.",
                             "Reinstall leukodx, or rebuild it with `python benchmarks/train_cell_classifier.py`.") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"The cell classifier {p} cannot be read ({e}).",
                             "Rebuild it with `python benchmarks/train_cell_classifier.py` or reinstall leukodx.") from e
        if not isinstance(spec, dict):
            raise ModelError(f"The cell classifier {p} is not usable: not a JSON object.",
                             "Rebuild it with `python benchmarks/train_cell_classifier.py` or reinstall leukodx.")
        return cls(spec, str(p))

    def design(self, features: np.ndarray) -> np.ndarray:
        """Standardised (and clipped, NaN -> the training mean) features, with squares when quadratic."""
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale)
        z = np.nan_to_num(z, nan=0.0).clip(-6.0, 6.0)
        return np.concatenate([z, z * z], axis=1) if self.quadratic else z

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Uncalibrated logit of 'blast' per row of features."""
        return self.design(features) @ self.coef + self.intercept

    def blast_probability(self, features: np.ndarray) -> np.ndarray:
        """Calibrated P(blast) per row of features."""
        t = self.platt_a * self.logits(features) + self.platt_b
        return 1.0 / (1.0 + np.exp(-np.clip(t, -40, 40)))

    def probabilities(self, rgb: np.ndarray, labels: np.ndarray, cells: Sequence[CellInstance],
                      rbc_diameter_px: float | None) -> np.ndarray:
        """Calibrated P(blast) of every cell of a field."""
        if not cells:
            return np.zeros(0)
        return self.blast_probability(cell_features(rgb, labels, cells, rbc_diameter_px))

    def classify(self, rgb: np.ndarray, labels: np.ndarray, cells: list[CellInstance],
                 rbc_diameter_px: float | None) -> None:
        """Fill cells[i].ai_label (one of leukodx.inference.cell_classes.AI_CELL_CLASSES: 'blast' or 'lymphocyte')
        and cells[i].ai_confidence (calibrated probability of that label) in place. rgb: HxWx3 uint8 field;
        labels: HxW int32 instance image at the same resolution (0 = background, cell k has label ==
        cells[k].id); rbc_diameter_px: the red-cell diameter in those pixels (None: assume 17 px, the Taleqani
        training fields at 224 px)."""
        p = self.probabilities(rgb, labels, cells, rbc_diameter_px)
        for c, pb in zip(cells, p, strict=True):
            blast = bool(pb >= 0.5)
            c.ai_label = AI_CELL_CLASSES[_BLAST if blast else _LYMPH]
            c.ai_confidence = round(float(pb if blast else 1.0 - pb), 4)

    @staticmethod
    def blast_probabilities_of(cells: Sequence[CellInstance]) -> np.ndarray:
        """P(blast) of classified cells, read back from their ai_label / ai_confidence."""
        return np.array([(c.ai_confidence if c.ai_label == "blast" else 1.0 - c.ai_confidence)
                         for c in cells if c.ai_label is not None and c.ai_confidence is not None], dtype=float)

    def field_score(self, cells: Sequence[CellInstance]) -> float | None:
        """The field-level aggregate: mean P(blast) of its classified cells; None when it has none."""
        p = self.blast_probabilities_of(cells)
        return float(p.mean()) if p.size else None
