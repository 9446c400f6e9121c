"""The per-cell AI suggestion: each segmented leukocyte's type from a small CNN, run on ONNX Runtime (no torch).

    >>> clf = CellClassifier.load()                       # the bundled model directory (src/leukodx/assets/cells)
    >>> clf.classify(rgb, labels, cells, rbc_diameter_px)  # fills cells[i].ai_label / ai_confidence in place
    >>> score = clf.field_score(cells)                    # the share of blasts among the counted leukocytes
    >>> blast_field = score is not None and score >= clf.field_threshold

Each cell is cut at the red-cell scale (`crop_cells`: config `cells.crop_rbc` red-cell diameters wide, resized
to `cells.crop_size`), so a field at another magnification gives the same crops once its red-cell diameter is
known. The answer is softmax(logits / temperature) over the config's `classes`: the top class, or
`UNIDENTIFIED` below `thresholds.low_confidence` (chosen on validation cells); config `cells.field_threshold`
(chosen on validation fields) turns `field_score` into "blasts seen". How the model was trained and how well
it does: src/leukodx/assets/cells/MODEL_CARD.md and docs/results/cell-types/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.assets import ASSETS
from leukodx.errors import ModelError
from leukodx.inference.cell_classes import BLAST, NOT_COUNTED, UNIDENTIFIED
from leukodx.inference.engines import load_engine, softmax
from leukodx.inference.types import CellInstance
from leukodx.models.model_config import DEFAULT_RBC_DIAMETER_224, CellRule, ModelConfig, read_model_config

CROP_RBC, CROP_SIZE = CellRule().crop_rbc, CellRule().crop_size  # a config's `cells` defaults (4 diameters, 64 px)
DEFAULT_RBC_DIAMETER = DEFAULT_RBC_DIAMETER_224  # px: the Taleqani fields at 224 px, when a field's is unknown
REBUILD = "Retrain it with `leukodx train cells ... --out RUN`, or reinstall leukodx for the bundled one."
NON_BLAST = "non_blast"  # a commissioning label: any cell type but a blast
HEAD_FILE = "head.npz"


class CellHead:
    """A lab's fitted head (`leukodx adapt --cells`, leukodx.deploy.commission): multinomial logistic regression on
    the model's standardised `features`, over the lab's labelled classes (`non_blast` may be one). Adapted
    probabilities over the model's classes: a labelled class gets the head's; the head's `non_blast` share is spread
    over the unlabelled non-blast classes in proportion to the bundled model's probabilities; without a `blast`
    class (a kinds-only commissioning) P(blast) stays the bundled model's and the head shares the rest."""

    def __init__(self, classes: Sequence[str], mean: np.ndarray, std: np.ndarray, weights: np.ndarray,
                 bias: np.ndarray):
        self.classes = list(classes)
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.weights, self.bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)

    @classmethod
    def load(cls, model_dir: Path, head: dict) -> CellHead:
        with np.load(model_dir / str(head.get("file", HEAD_FILE))) as z:
            return cls(head["classes"], z["mean"], z["std"], z["weights"], z["bias"])

    def apply(self, features: np.ndarray, bundled: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
        """Adapted probabilities (N x len(vocab)) from the features and the bundled model's probabilities."""
        q = softmax(((np.asarray(features, np.float64) - self.mean) / self.std) @ self.weights + self.bias)
        b = np.asarray(bundled, np.float64)
        out = np.zeros_like(b)
        col = {k: i for i, k in enumerate(vocab)}
        for j, k in enumerate(self.classes):
            if k in col:
                out[:, col[k]] = q[:, j]
        rest = [col[k] for k in vocab if k not in self.classes and k != BLAST]
        if NON_BLAST in self.classes and rest:
            share = b[:, rest] + 1e-12
            out[:, rest] = q[:, [self.classes.index(NON_BLAST)]] * share / share.sum(1, keepdims=True)
        if BLAST not in self.classes:  # kinds only: the bundled model's P(blast), the head shares the rest
            out *= (1 - b[:, [col[BLAST]]]) / np.maximum(out.sum(1, keepdims=True), 1e-12)
            out[:, col[BLAST]] = b[:, col[BLAST]]
        return out / out.sum(1, keepdims=True)


def _bundled_dir() -> Path:
    return ASSETS / "cells"


def crop_cells(rgb: np.ndarray, centres: Sequence[tuple[float, float]] | np.ndarray, rbc_diameter_px: float | None,
               size: int = CROP_SIZE, width_rbc: float = CROP_RBC, pad: str = "auto") -> np.ndarray:
    """N x size x size x 3 uint8: one crop per centre (row, col) in `rgb`'s pixels, `width_rbc` red-cell
    diameters wide, resized (antialiased bilinear) to size x size. Beyond the image's edge the image is
    mirrored (`pad` "symmetric"; "constant": black; "background": the colour of its brightest quarter, the
    plasma between cells; "auto", the default: "background" on an image narrower than 3/4 of a crop (3 red
    cells: a leukocyte all but fills it: mirrored, its cut cell would come back as a ring of copies; chosen on
    PBC val crops, docs/results/issue28-cut-cells/), else "symmetric"); a crop is never dropped."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb must be H x W x 3, got {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((len(c), size, size, 3), np.uint8)
    if len(c) == 0:
        return out
    d = float(rbc_diameter_px) if rbc_diameter_px and rbc_diameter_px > 0 else DEFAULT_RBC_DIAMETER
    side = width_rbc * d
    half = side / 2
    h, w = rgb.shape[:2]
    if pad == "auto":
        pad = "background" if min(h, w) < 0.75 * side else "symmetric"
    # one padded copy of the field, wide enough for every crop (the mirror repeats when a crop is wider than it)
    r0, c0 = float((c[:, 0] + 0.5 - half).min()), float((c[:, 1] + 0.5 - half).min())
    r1, c1 = float((c[:, 0] + 0.5 + half).max()), float((c[:, 1] + 0.5 + half).max())
    top, left = max(0, int(np.ceil(-r0)) + 1), max(0, int(np.ceil(-c0)) + 1)
    bottom, right = max(0, int(np.ceil(r1 - h)) + 1), max(0, int(np.ceil(c1 - w)) + 1)
    if top or left or bottom or right:
        widths = ((top, bottom), (left, right), (0, 0))
        if pad == "background":
            grey = rgb.mean(axis=2)
            colour = np.median(rgb[grey >= np.percentile(grey, 75)], axis=0).astype(np.uint8)
            field = np.stack([np.pad(rgb[..., k], widths[:2], mode="constant", constant_values=colour[k])
                              for k in range(3)], axis=-1)
        else:
            field = np.pad(rgb, widths, mode="constant" if pad == "constant" else "symmetric")
    else:
        field = rgb
    for i, (r, col) in enumerate(c):
        # box in the padded field's pixel coordinates (pixel k spans k..k+1; a centroid sits at k + 0.5)
        y0, x0 = r + 0.5 - half + top, col + 0.5 - half + left
        iy0, ix0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
        iy1, ix1 = int(np.ceil(y0 + side)), int(np.ceil(x0 + side))
        patch = Image.fromarray(np.ascontiguousarray(field[iy0:iy1, ix0:ix1]))
        box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
        out[i] = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return out


def to_input(crops: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 crops -> the model's input, float32 N x 3 x H x W in 0..255 (normalised inside)."""
    return np.ascontiguousarray(np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2))


class CellClassifier:
    """A cell-type model directory on ONNX Runtime (see the module docstring). Create it with `load`."""

    def __init__(self, model_dir: str | Path, config: ModelConfig, threads: int | None = None, engine: str = "onnx"):
        self.dir = Path(model_dir)
        self.config = config
        rule = config.cells
        if config.task != "classify" or rule is None:
            raise ModelError(f"{self.dir} is not a cell-type model: its config.json has no `cells` section (a "
                             f"{config.task!r} model of the classes {list(config.classes)}).", REBUILD)
        self.classes = tuple(config.classes)
        self.size = (rule.crop_size, rule.crop_size)
        self.temperature = float(config.temperature or 1.0)
        self.low_confidence = float(config.thresholds.low_confidence)
        self.width_rbc = float(rule.crop_rbc)
        self.field_threshold = float(rule.field_threshold)
        self.blast_threshold = rule.blast_threshold  # None: the classifier's cell_agreement.min_blast_probability
        # "onnx-int8": model.int8.onnx where the directory has one (kept only when it loses <= 0.3 points)
        self.engine = load_engine(self.dir, config, engine if engine in ("onnx", "onnx-int8") else "onnx", threads)
        self.source = str(self.dir)
        head = (config.model_extra or {}).get("head")  # a lab's commissioning head (leukodx adapt --cells)
        self.head = CellHead.load(self.dir, head) if isinstance(head, dict) else None
        # the version each field records: a content hash of the model's files (config, ONNX, a lab's head)
        digest = hashlib.sha256()
        for p in sorted(p for p in self.dir.iterdir() if p.name == "config.json" or p.suffix in (".onnx", ".npz")):
            digest.update(p.name.encode() + hashlib.sha256(p.read_bytes()).digest())
        self.version = ("adapted-" if self.head else "") + digest.hexdigest()[:12]

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None, engine: str = "onnx"
             ) -> CellClassifier:
        """The model directory at `path` (config.json + model.onnx); default the bundled one. engine "onnx" or
        "onnx-int8" (model.int8.onnx where it exists); any other (the PyTorch engine of the field models) runs
        the ONNX file."""
        d = Path(path) if path is not None else _bundled_dir()
        if d.is_file():  # a file of the directory (config.json, model.onnx) names the directory
            d = d.parent
        if not d.is_dir() or not (d / "config.json").is_file():
            raise ModelError(f"The cell classifier {d} is missing (no model directory with config.json there).",
                             REBUILD)
        return cls(d, read_model_config(d), threads, engine)

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N x classes) of N x H x W x 3 uint8 crops: one engine call."""
        features, probs = self.run_crops(crops)
        return probs if self.head is None or len(crops) == 0 else self.head.apply(features, probs, self.classes)

    def run_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features N x D, the model's own calibrated probabilities N x classes) of crops: one engine call."""
        if len(crops) == 0:
            return np.zeros((0, 0)), np.zeros((0, len(self.classes)))
        out = self.engine.run(to_input(crops))
        feats = np.asarray(out.get("features", np.zeros((len(crops), 0))), dtype=np.float64)
        return feats, softmax(np.asarray(out["logits"], dtype=np.float64) / self.temperature)

    def crops(self, rgb: np.ndarray, cells: Sequence[CellInstance], rbc_diameter_px: float | None) -> np.ndarray:
        """The model's input crops of a field's cells (centred on each cell's centroid)."""
        return crop_cells(rgb, [c.centroid for c in cells], rbc_diameter_px, self.size[0], self.width_rbc)

    def probabilities(self, rgb: np.ndarray, labels: np.ndarray | None, cells: Sequence[CellInstance],
                      rbc_diameter_px: float | None) -> np.ndarray:
        """Calibrated class probabilities (n_cells x classes) of a field's cells, in one batched call."""
        return self._probabilities([(rgb, labels, cells, rbc_diameter_px)])

    def _probabilities(self, fields: Sequence[tuple[np.ndarray, np.ndarray | None, Sequence[CellInstance],
                                                    float | None]]) -> np.ndarray:
        crops = []
        for rgb, labels, cells, d in fields:
            if labels is not None and np.asarray(labels).shape != np.asarray(rgb).shape[:2]:
                raise ValueError(f"rgb must be HxWx3 and labels HxW of the same size, got {np.asarray(rgb).shape} "
                                 f"and {np.asarray(labels).shape}")
            crops += [self.crops(rgb, cells, d)] if cells else []
        return self.predict_crops(np.concatenate(crops)) if crops else np.zeros((0, len(self.classes)))

    def answer(self, probs: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(labels, confidences) of probability rows: the top class, or 'unidentified' below the threshold."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.classes))
        top = p.argmax(1)
        conf = p[np.arange(len(p)), top]
        labels = [self.classes[k] if q >= self.low_confidence else UNIDENTIFIED
                  for k, q in zip(top, conf, strict=True)]
        return labels, conf

    def classify(self, rgb: np.ndarray, labels: np.ndarray | None, cells: list[CellInstance],
                 rbc_diameter_px: float | None) -> np.ndarray:
        """Fill each cell's ai_label (a class or UNIDENTIFIED), ai_confidence (the top class's calibrated
        probability) and ai_probabilities in place; returns the probabilities (n_cells x classes). labels: the
        field's instance image (only its size is checked); rbc_diameter_px: None for DEFAULT_RBC_DIAMETER."""
        return self.classify_many([(rgb, labels, cells, rbc_diameter_px)])[0]

    def classify_many(self, fields: Sequence[tuple[np.ndarray, np.ndarray | None, list[CellInstance], float | None]]
                      ) -> list[np.ndarray]:
        """`classify` for several fields (rgb, labels, cells, rbc_diameter_px) with one engine call for all their
        cells; returns the probabilities per field."""
        if not fields:
            return []
        out = np.split(self._probabilities(fields), np.cumsum([len(f[2]) for f in fields])[:-1])
        for (_, _, cells, _), q in zip(fields, out, strict=True):
            names, conf = self.answer(q)
            for c, name, v, row in zip(cells, names, conf, q, strict=True):
                c.ai_label = name
                c.ai_confidence = round(float(v), 4)
                c.ai_probabilities = {k: round(float(p), 4) for k, p in zip(self.classes, row, strict=True)}
        return out

    @staticmethod
    def field_score(cells: Sequence[CellInstance]) -> float | None:
        """The share of blasts among the field's counted leukocytes (classified cells not in NOT_COUNTED);
        None when it has none."""
        counted = [c.ai_label for c in cells if c.ai_label is not None and c.ai_label not in NOT_COUNTED]
        return sum(1 for a in counted if a == BLAST) / len(counted) if counted else None
