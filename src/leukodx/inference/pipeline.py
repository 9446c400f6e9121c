"""The analysis pipeline: one smear field in, classification + segmentation + cell count + flags out.

Shared by `leukodx predict`, `leukodx bench` and the web application::

    >>> from leukodx.inference.pipeline import load_analyzer
    >>> analysis = load_analyzer()                       # bundled models, ONNX Runtime, all CPU threads
    >>> r = analysis.analyze("field.jpg", heatmap=True)  # FieldResult
    >>> r.label, r.confidence, r.malignant_probability, r.cell_count, r.flag
    >>> case = analysis.summarize([r, ...])              # CaseSummary

**Image sizes.** The models see fields at their config's input size (224 x 224 for the bundled ones). A
field is resized as a whole when it is square-ish (aspect ratio <= 1.25): its whole width and height map to
the model input, as the training fields were prepared. A longer field (e.g. 640 x 480 from another camera) is
**tiled** along its long side into the fewest square tiles of side = its short side that cover it (overlapping
evenly), each resized to the model input; the class probabilities are the mean over tiles, the segmentation
probabilities are stitched back (averaged where tiles overlap) **at the original resolution**. So a field's
short side always corresponds to one model field, whatever its pixel count. `FieldResult.size_note` says
what was done. Cells are split with the instance parameters scaled to the field's short side (one reference
field); fields with a short side over 1024 px are counted on a downscaled mask and the labels mapped back to
the original pixels. Greyscale, RGBA and 16-bit images are converted to
8-bit RGB when read (leukodx.data.images).

**Flags** (one per field, the first that applies): ``unreadable`` (the image could not be read; the reason is
kept and a batch goes on), ``out_of_distribution`` (the field is unlike the training fields: feature distance
or image statistics, see leukodx.inference.ood), ``low_confidence`` (calibrated confidence below the model's
``thresholds.low_confidence``), else ``ok``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx import MALIGNANT_CLASSES
from leukodx.errors import ImageError, LeukodxError, ModelError
from leukodx.inference.types import CaseSummary, CellInstance, FieldResult

SQUARE_ASPECT = 1.25
MAX_INSTANCE_SIDE = 1024  # px: larger fields are counted on a downscaled mask
DEFAULT_LOW_CONFIDENCE = 0.5
UNDECIDED = (0.25, 0.75)  # case malignant probability in this range -> needs review
STAGES = ("decode", "classify", "segment", "instances", "quality", "heatmap")
ImageInput = np.ndarray | bytes | str | Path


# ---------------------------------------------------------------------------------------------------------------
# reading


def array_to_rgb(arr: np.ndarray, name: str = "array") -> Image.Image:
    """An in-memory image (HxW, HxWx3 or HxWx4; uint8, uint16 or float) as an 8-bit RGB PIL image."""
    from leukodx.data.images import MAX_PIXELS, MIN_SIDE, _to_rgb

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(name, f"array of shape {a.shape} is not an image", "Give HxW, HxWx3 or HxWx4 pixels.")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(name, f"image is {w}x{h}, smaller than the {MIN_SIDE} px minimum side",
                         "Use the full microscope field, not a thumbnail.")
    if h * w > MAX_PIXELS:
        raise ImageError(name, f"image is {w}x{h}, over the {MAX_PIXELS / 1e6:.0f} MP limit", "Downscale it first.")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        if a.ndim == 2:
            return _to_rgb(Image.fromarray(a))
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        af = a.astype(np.float32)
        if not np.isfinite(af).all():
            raise ImageError(name, "array holds NaN or infinite values", "Give pixel values.")
        scale = 255.0 if np.issubdtype(a.dtype, np.floating) and af.max(initial=0) <= 1.0 else 1.0
        a = np.clip(af * scale, 0, 255).round().astype(np.uint8)
    else:
        raise ImageError(name, f"array of type {a.dtype} is not an image", "Give uint8, uint16 or float pixels.")
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a), mode=mode))


def _reason(exc: ImageError) -> str:
    """What is wrong with an image and what to do, without the file name (the row already has it)."""
    return f"{exc.reason}. {exc.hint}".strip() if exc.hint else exc.reason


def read_field(image: ImageInput, name: str | None = None) -> np.ndarray:
    """Any accepted input as HxWx3 uint8 RGB; raises ImageError with the reason."""
    from leukodx.data.images import open_image

    if isinstance(image, np.ndarray):
        return np.asarray(array_to_rgb(image, name or "array"))
    if isinstance(image, Image.Image):
        return np.asarray(array_to_rgb(np.asarray(image), name or "image"))
    if isinstance(image, bytes | bytearray):
        return np.asarray(open_image(bytes(image), name or "upload"))
    return np.asarray(open_image(Path(image), name))


# ---------------------------------------------------------------------------------------------------------------
# geometry


def plan_tiles(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, x0, y1, x1) that cover an h x w field: the whole field when square-ish, else square tiles of
    side min(h, w) spread evenly along the long side."""
    if max(h, w) / min(h, w) <= SQUARE_ASPECT:
        return [(0, 0, h, w)]
    side, long = min(h, w), max(h, w)
    n = math.ceil(long / side)
    starts = [round(i * (long - side) / (n - 1)) for i in range(n)]
    if w >= h:
        return [(0, s, h, s + side) for s in starts]
    return [(s, 0, s + side, w) for s in starts]


def size_note(h: int, w: int, boxes, size: Sequence[int], seg_size: Sequence[int] | None = None) -> str:
    """How a field was fed to the models, e.g. "resized from 640x480 to 128x128 (classifier), 160x160
    (segmenter); segmentation returned at 640x480"."""
    mh, mw = int(size[0]), int(size[1])
    sizes = [(mh, mw)] if seg_size is None else [(mh, mw), (int(seg_size[0]), int(seg_size[1]))]
    if all((h, w) == s for s in sizes):
        return f"used as is ({w}x{h})"
    to = f"{mw}x{mh}" if len(sizes) == 1 or sizes[0] == sizes[1] else \
        f"{mw}x{mh} (classifier), {sizes[1][1]}x{sizes[1][0]} (segmenter)"
    if len(boxes) == 1:
        return f"resized from {w}x{h} to {to}; segmentation returned at {w}x{h}"
    side = min(h, w)
    return (f"tiled {w}x{h} into {len(boxes)} overlapping {side}x{side} tiles along the long side, "
            f"each resized to {to}; segmentation stitched at {w}x{h}")


def _resize_rgb(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def _resize_float(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape == (h, w):
        return a.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def _resize_labels(lab: np.ndarray, h: int, w: int) -> np.ndarray:
    if lab.shape == (h, w):
        return lab.astype(np.int32, copy=False)
    return np.asarray(Image.fromarray(lab.astype(np.int32), mode="I").resize((w, h), Image.NEAREST)).astype(np.int32)


def _to_batch(tiles: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mask_threshold(config: dict) -> float:
    th = config.get("thresholds") or {}
    for key in ("mask", "probability", "foreground", "segmentation"):
        if isinstance(th.get(key), int | float):
            return float(th[key])
    return 0.5


# ---------------------------------------------------------------------------------------------------------------
# cell instances


def _split_instances(mask: np.ndarray):
    """leukodx.inference.instances.split_instances with its parameters scaled to the mask's short side, run on
    each connected component's bounding box (padded) rather than the whole field: the same cells (the split is
    local to a component), several times faster because most of a field is background."""
    from scipy import ndimage as ndi

    try:
        from leukodx.inference.instances import scaled_params, split_instances
    except ModuleNotFoundError as exc:
        if exc.name != "leukodx.inference.instances":
            raise
        return _label_components(mask)
    params = scaled_params(mask.shape)
    comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    out = np.zeros(mask.shape, np.int32)
    if n == 0:
        return out, []
    h, w = mask.shape
    pad = 2
    next_id = 0
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None or (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < params["min_area"]:
            continue  # even with its holes filled it stays under the minimum cell area
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        sub = comp[y0:y1, x0:x1] == k
        lab, _ = split_instances(sub, **params)
        if lab.max() == 0:
            continue
        view = out[y0:y1, x0:x1]
        fg = lab > 0
        view[fg] = lab[fg] + next_id
        next_id += int(lab.max())
    return out, cells_from_labels(out)


def _label_components(mask: np.ndarray, min_area: int = 20):
    """Fallback when leukodx.inference.instances is absent: connected components above a minimum area."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n:
        areas = np.bincount(lab.ravel())
        keep = np.zeros(n + 1, np.int32)
        ids = [i for i in range(1, n + 1) if areas[i] >= min_area]
        keep[ids] = np.arange(1, len(ids) + 1)
        lab = keep[lab]
    return lab.astype(np.int32), cells_from_labels(lab)


def cells_from_labels(lab: np.ndarray) -> list[CellInstance]:
    """CellInstance per label 1..K of an instance image (area, centroid (row, col), bbox (r0, c0, r1, c1))."""
    from scipy import ndimage as ndi

    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    cents = ndi.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, idx)
    objs = ndi.find_objects(lab)
    cells = []
    for k in range(n):
        if areas[k] == 0 or objs[k] is None:
            continue
        sl = objs[k]
        cells.append(CellInstance(id=len(cells) + 1, area_px=int(areas[k]),
                                  centroid=(round(float(cents[k][0]), 2), round(float(cents[k][1]), 2)),
                                  bbox=(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    return cells


def _renumber(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if len(ids) == 0 or (ids[-1] == len(ids)):
        return lab
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[lab]


# ---------------------------------------------------------------------------------------------------------------
# the analysis


class Analysis:
    """The analysis pipeline (implements leukodx.inference.types.Analyzer). Create it with `load_analyzer`."""

    def __init__(self, classifier_dir: str | Path, segmenter_dir: str | Path, engine: str = "onnx",
                 threads: int | None = None):
        from leukodx.inference.engines import default_threads, load_engine
        from leukodx.inference.ood import OODScorer
        from leukodx.models.checkpoint import WEIGHTS, read_config

        self.classifier_dir = Path(classifier_dir)
        self.segmenter_dir = Path(segmenter_dir)
        self.classifier_config = read_config(self.classifier_dir)
        self.segmenter_config = read_config(self.segmenter_dir)
        for d, cfg, task in ((self.classifier_dir, self.classifier_config, "classify"),
                             (self.segmenter_dir, self.segmenter_config, "segment")):
            if cfg.get("task") != task:
                raise ModelError(f"{d} holds a {cfg.get('task')!r} model, not a {task!r} one.",
                                 f"Give a {'classifier' if task == 'classify' else 'segmenter'} model directory.")
            if "input_size" not in cfg:
                raise ModelError(f"{d / 'config.json'} lacks input_size.", "Retrain it with this version of leukodx.")
            if not (d / WEIGHTS).is_file():
                raise ModelError(f"{d} has no {WEIGHTS}.", "Copy the whole model directory, or retrain.")
        self.classes = list(self.classifier_config.get("classes") or [])
        if not self.classes:
            raise ModelError(f"{self.classifier_dir / 'config.json'} lists no classes.", "Retrain the classifier.")
        self.threads = threads or default_threads()
        self.engine = engine
        self._torch_classifier = None
        self.classifier = load_engine(self.classifier_dir, self.classifier_config, engine, self.threads)
        if getattr(self.classifier, "model", None) is not None:
            self._torch_classifier = self.classifier.model
        self.segmenter = load_engine(self.segmenter_dir, self.segmenter_config, engine, self.threads)
        self.temperature = float(self.classifier_config.get("temperature") or 1.0)
        th = self.classifier_config.get("thresholds") or {}
        self.low_confidence = float(th.get("low_confidence", DEFAULT_LOW_CONFIDENCE))
        self.mask_threshold = mask_threshold(self.segmenter_config)
        self.ood = OODScorer(self.classifier_config.get("ood"))
        self._cam = None
        self._cam_lock = threading.Lock()
        self.benign_index = self.classes.index("Benign") if "Benign" in self.classes else None

    # -- description ------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """What runs: model directories, engines, thresholds (for reports and the web app)."""
        return {
            "classifier": {"dir": str(self.classifier_dir), "arch": self.classifier_config.get("arch"),
                           "engine": self.classifier.source, "input_size": self.classifier_config["input_size"]},
            "segmenter": {"dir": str(self.segmenter_dir), "arch": self.segmenter_config.get("arch"),
                          "engine": self.segmenter.source, "input_size": self.segmenter_config["input_size"]},
            "classes": self.classes, "temperature": self.temperature, "low_confidence": self.low_confidence,
            "mask_threshold": self.mask_threshold, "ood": self.ood.enabled,
            "ood_checks": [k for k, v in (("feature distance", self.ood.features), ("image statistics", self.ood.stats))
                           if v],
            "ood_notes": self.ood.notes, "threads": self.threads,
        }

    # -- public API -------------------------------------------------------------------------------------------
    def analyze(self, image: ImageInput, *, name: str | None = None, heatmap: bool = False) -> FieldResult:
        """Analyse one field (bytes of an upload, a path or an array). Never raises for a bad image: the result
        then has flag `unreadable` and the reason."""
        return self.analyze_many([image], names=[name], heatmap=heatmap, batch_size=1)[0]

    def analyze_many(self, images: Iterable[ImageInput], *, names: Sequence[str | None] | None = None,
                     batch_size: int = 16, heatmap: bool = False, keep_rgb: bool = False) -> list[FieldResult]:
        """Analyse many fields, `batch_size` at a time through each model (faster than one by one).
        With keep_rgb, each result gets the decoded field as attribute `rgb` (for overlays)."""
        images = list(images)
        names = list(names) if names is not None else [None] * len(images)
        out: list[FieldResult] = []
        for i in range(0, len(images), max(1, batch_size)):
            out += self._analyze_chunk(images[i:i + batch_size], names[i:i + batch_size], heatmap, keep_rgb)
        return out

    def iter_analyze(self, images: Iterable[ImageInput], *, names: Iterable[str | None] | None = None,
                     batch_size: int = 16, heatmap: bool = False, keep_rgb: bool = False):
        """Like analyze_many, but a generator over an iterable of any length (results in input order)."""
        chunk, chunk_names = [], []
        names_it = iter(names) if names is not None else None
        for img in images:
            chunk.append(img)
            chunk_names.append(next(names_it, None) if names_it is not None else None)
            if len(chunk) >= batch_size:
                yield from self._analyze_chunk(chunk, chunk_names, heatmap, keep_rgb)
                chunk, chunk_names = [], []
        if chunk:
            yield from self._analyze_chunk(chunk, chunk_names, heatmap, keep_rgb)

    # -- internals --------------------------------------------------------------------------------------------
    def _label_for(self, image, name):
        if name:
            return name
        return str(image) if isinstance(image, str | Path) else None

    def _analyze_chunk(self, images, names, heatmap, keep_rgb) -> list[FieldResult]:
        results: list[FieldResult] = []
        fields = []  # (result, rgb, boxes)
        for image, name in zip(images, names, strict=True):
            label = self._label_for(image, name)
            t0 = time.perf_counter()
            try:
                rgb = read_field(image, label)
            except ImageError as exc:
                r = FieldResult(path=label, label=None, flag="unreadable", flag_reason=_reason(exc))
                r.timings_ms["decode"] = (time.perf_counter() - t0) * 1000
                results.append(r)
                continue
            except LeukodxError as exc:
                r = FieldResult(path=label, label=None, flag="unreadable", flag_reason=exc.message)
                results.append(r)
                continue
            h, w = rgb.shape[:2]
            boxes = plan_tiles(h, w)
            r = FieldResult(path=label, label=None,
                            size_note=size_note(h, w, boxes, self.classifier_config["input_size"],
                                                self.segmenter_config["input_size"]))
            r.timings_ms["decode"] = (time.perf_counter() - t0) * 1000
            if keep_rgb:
                r.rgb = rgb
            results.append(r)
            fields.append((r, rgb, boxes))
        if fields:
            self._classify(fields)
            self._segment(fields)
            self._instances(fields)
            self._quality(fields)
            if heatmap:
                self._heatmap(fields)
            for r, _, _ in fields:
                r.__dict__.pop("_cls_tiles", None)
        for r in results:
            r.timings_ms = {k: round(v, 3) for k, v in r.timings_ms.items()}
            r.timings_ms["total"] = round(sum(v for k, v in r.timings_ms.items() if k != "total"), 3)
        return results

    def _tiles(self, fields, size):
        mh, mw = int(size[0]), int(size[1])
        tiles, owner = [], []
        for fi, (_, rgb, boxes) in enumerate(fields):
            for (y0, x0, y1, x1) in boxes:
                tiles.append(_resize_rgb(rgb[y0:y1, x0:x1], mh, mw))
                owner.append(fi)
        return tiles, np.array(owner)

    def _classify(self, fields) -> None:
        t0 = time.perf_counter()
        tiles, owner = self._tiles(fields, self.classifier_config["input_size"])
        out = self.classifier.run(_to_batch(tiles))
        probs = softmax(out["logits"].astype(np.float64) / self.temperature)
        feats = out.get("features")
        for fi, (r, _, _) in enumerate(fields):
            sel = owner == fi
            p = probs[sel].mean(0)
            k = int(p.argmax())
            r.probabilities = {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)}
            r.label = self.classes[k]
            r.confidence = round(float(p[k]), 6)
            if self.benign_index is not None:
                r.malignant_probability = round(float(1.0 - p[self.benign_index]), 6)
            else:
                r.malignant_probability = round(float(sum(p[i] for i, c in enumerate(self.classes)
                                                          if c in MALIGNANT_CLASSES)), 6)
            r._tiles = [tiles[i] for i in np.nonzero(sel)[0]]
            r._feats = feats[sel] if feats is not None else None
        dt = (time.perf_counter() - t0) * 1000 / len(fields)
        for r, _, _ in fields:
            r.timings_ms["classify"] = dt

    def _segment(self, fields) -> None:
        t0 = time.perf_counter()
        size = self.segmenter_config["input_size"]
        tiles, owner = self._tiles(fields, size)
        logits = self.segmenter.run(_to_batch(tiles))["logits"]
        prob = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float32)))
        for fi, (r, rgb, boxes) in enumerate(fields):
            h, w = rgb.shape[:2]
            ps = prob[owner == fi]
            if len(boxes) == 1:
                full = _resize_float(ps[0], h, w)
            else:
                acc = np.zeros((h, w), np.float32)
                cnt = np.zeros((h, w), np.float32)
                for p, (y0, x0, y1, x1) in zip(ps, boxes, strict=True):
                    acc[y0:y1, x0:x1] += _resize_float(p, y1 - y0, x1 - x0)
                    cnt[y0:y1, x0:x1] += 1
                full = acc / np.maximum(cnt, 1)
            r.mask = full > self.mask_threshold
        dt = (time.perf_counter() - t0) * 1000 / len(fields)
        for r, _, _ in fields:
            r.timings_ms["segment"] = dt

    def _instances(self, fields) -> None:
        """Cells are split with parameters scaled to the field (its short side = one 224-px reference field);
        fields with a short side over MAX_INSTANCE_SIDE are counted on a downscaled mask, labels mapped back."""
        for r, rgb, _ in fields:
            t0 = time.perf_counter()
            h, w = rgb.shape[:2]
            scale = min(1.0, MAX_INSTANCE_SIDE / min(h, w))
            if scale == 1.0:
                lab, cells = _split_instances(r.mask)
                lab = np.asarray(lab, dtype=np.int32)
            else:
                wh, ww = max(1, round(h * scale)), max(1, round(w * scale))
                small = _resize_float(r.mask.astype(np.float32), wh, ww) > 0.5
                lab_small, _ = _split_instances(small)
                lab = _renumber(_resize_labels(np.asarray(lab_small), h, w) * r.mask)
                cells = cells_from_labels(lab)
            r.instances = lab
            r.cells = list(cells)
            r.cell_count = len(r.cells)
            r.timings_ms["instances"] = (time.perf_counter() - t0) * 1000

    def _quality(self, fields) -> None:
        for r, _, _ in fields:
            t0 = time.perf_counter()
            flagged, reason, score = self.ood.check(r._feats, r._tiles) if self.ood.enabled else (False, "", None)
            r.ood_score = None if score is None else round(float(score), 4)
            if flagged:
                r.flag, r.flag_reason = "out_of_distribution", reason
            elif r.confidence < self.low_confidence:
                r.flag = "low_confidence"
                r.flag_reason = f"confidence {r.confidence:.2f} below {self.low_confidence:.2f}"
            else:
                r.flag, r.flag_reason = "ok", ""
            r.timings_ms["quality"] = (time.perf_counter() - t0) * 1000
            del r._feats
            r._cls_tiles = r._tiles
            del r._tiles

    def torch_classifier(self):
        """The classifier as a PyTorch module (loaded on first use; Grad-CAM needs gradients)."""
        if self._torch_classifier is None:
            from leukodx.models.checkpoint import load_model

            self._torch_classifier, _ = load_model(self.classifier_dir)
        return self._torch_classifier

    def _heatmap(self, fields) -> None:
        import torch

        from leukodx.inference.gradcam import GradCAM

        for r, rgb, boxes in fields:
            t0 = time.perf_counter()
            h, w = rgb.shape[:2]
            k = self.classes.index(r.label)
            with self._cam_lock:  # Grad-CAM keeps activations between forward and backward: one at a time
                if self._cam is None:
                    self._cam = GradCAM(self.torch_classifier())
                cams = self._cam(torch.from_numpy(_to_batch(r._cls_tiles)), [k] * len(r._cls_tiles))
            heat = np.zeros((h, w), np.float32)
            cnt = np.zeros((h, w), np.float32)
            for c, (y0, x0, y1, x1) in zip(cams, boxes, strict=True):
                heat[y0:y1, x0:x1] += _resize_float(c, y1 - y0, x1 - x0)
                cnt[y0:y1, x0:x1] += 1
            heat /= np.maximum(cnt, 1)
            r.heatmap = np.clip(heat / max(float(heat.max()), 1e-6), 0, 1)
            r.timings_ms["heatmap"] = (time.perf_counter() - t0) * 1000

    # -- the case ---------------------------------------------------------------------------------------------
    def summarize(self, results: list[FieldResult]) -> CaseSummary:
        """One smear's fields summarised: mean calibrated probabilities over the analysed (readable) fields,
        total cell count, the case call and its confidence; needs_review when any field is flagged, the fields
        disagree on benign vs malignant, or the call itself is uncertain."""
        flags = {f: 0 for f in ("ok", "low_confidence", "out_of_distribution", "unreadable")}
        for r in results:
            flags[r.flag] = flags.get(r.flag, 0) + 1
        done = [r for r in results if r.label is not None]
        reasons: list[str] = []
        if not done:
            return CaseSummary(n_fields=len(results), n_analysed=0, label=None, confidence=0.0,
                               malignant_probability=0.0, mean_probabilities={c: 0.0 for c in self.classes},
                               total_cell_count=0, flags=flags, needs_review=True,
                               reasons=["no field could be analysed" if results else "no fields given"])
        mean = np.mean([[r.probabilities.get(c, 0.0) for c in self.classes] for r in done], axis=0)
        k = int(mean.argmax())
        conf = float(mean[k])
        mal = float(1 - mean[self.benign_index]) if self.benign_index is not None else float(
            sum(mean[i] for i, c in enumerate(self.classes) if c in MALIGNANT_CLASSES))
        flagged = {f: n for f, n in flags.items() if f != "ok" and n}
        if flagged:
            reasons.append(f"{sum(flagged.values())} of {len(results)} fields flagged ("
                           + ", ".join(f"{n} {f.replace('_', ' ')}" for f, n in flagged.items()) + ")")
        if conf < self.low_confidence:
            reasons.append(f"case confidence {conf:.2f} below {self.low_confidence:.2f}")
        if UNDECIDED[0] <= mal <= UNDECIDED[1]:
            reasons.append(f"malignant probability {mal:.2f} is undecided (between {UNDECIDED[0]} and {UNDECIDED[1]})")
        calls = {("malignant" if r.label in MALIGNANT_CLASSES else "benign") for r in done}
        if len(calls) > 1:
            n_mal = sum(r.label in MALIGNANT_CLASSES for r in done)
            reasons.append(f"fields disagree: {n_mal} malignant, {len(done) - n_mal} benign")
        return CaseSummary(
            n_fields=len(results), n_analysed=len(done), label=self.classes[k], confidence=round(conf, 6),
            malignant_probability=round(mal, 6),
            mean_probabilities={c: round(float(v), 6) for c, v in zip(self.classes, mean, strict=True)},
            total_cell_count=int(sum(r.cell_count for r in done)), flags=flags, needs_review=bool(reasons),
            reasons=reasons,
        )


def load_analyzer(classifier_dir: str | Path | None = None, segmenter_dir: str | Path | None = None,
                  engine: str = "onnx", threads: int | None = None) -> Analysis:
    """The analysis pipeline over two model directories (default: the bundled models).

    engine: "onnx" (ONNX Runtime, the model directory's model.onnx; PyTorch when a directory has none),
    "onnx-int8" (model.int8.onnx where it exists) or "torch" (PyTorch eager). threads: CPU threads per
    inference (default: all this process may use)."""
    from leukodx.assets import default_model_dir

    cdir = Path(classifier_dir) if classifier_dir else default_model_dir("classify")
    sdir = Path(segmenter_dir) if segmenter_dir else default_model_dir("segment")
    return Analysis(cdir, sdir, engine=engine, threads=threads)
