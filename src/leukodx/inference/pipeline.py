"""The analysis pipeline, the only route from an image to a result (its steps: docs/architecture.md, "The one
path an image takes"). `predict`, `evaluate`, `bench`, `calibrate` and the web application all call it::

    >>> from leukodx.inference.pipeline import load_analyzer
    >>> analysis = load_analyzer()                       # bundled models, ONNX Runtime, all CPU threads
    >>> r = analysis.analyze("field.jpg", heatmap=True)  # FieldResult
    >>> r.label, r.confidence, r.malignant_probability, r.cell_count, r.flag
    >>> case = analysis.summarize([r, ...])              # CaseSummary

Either model may be left out (``Analysis(classifier_dir, None)``): `evaluate` scores one model that way. One
flag per field, the first that applies: ``unreadable`` (a batch goes on), ``out_of_distribution``,
``low_confidence``, else ``ok``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukodx.assets import default_model_dir
from leukodx.cpus import usable_cores
from leukodx.data.images import ImageInput, image_reason, read_field
from leukodx.errors import ImageError, ModelError
from leukodx.inference import tiling
from leukodx.inference.agreement import CROP_BLAST_DOUBT, cells_disagree, crop_call
from leukodx.inference.cell_classes import NOT_LEUKOCYTE
from leukodx.inference.cell_classifier import CellClassifier
from leukodx.inference.engines import EagerLoader, load_engine, softmax
from leukodx.inference.instances import cells_from_labels, field_cells, keep_nucleated
from leukodx.inference.ood import OODScorer
from leukodx.inference.scale import MEASURED, calibration_doubt
from leukodx.inference.smear_check import SmearCheck, check_smear
from leukodx.inference.stain import normalize
from leukodx.inference.summary import malignant_probability, summarize_case
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.models.model_config import WEIGHTS, ModelConfig, ScaleRule, read_model_config

# smear-check kinds that get no class call: not a smear field (a thumbnail too small to judge keeps its call, flagged)
NOT_A_SMEAR = ("blank", "greyscale", "screenshot", "no_cells")
# a field call rests on cells: a smear field in which no leukocyte is found gets no call, and no flag for it
NO_LEUKOCYTE = "No leukocyte found in this field: no class call, and the field is left out of the case call."

__all__ = ["Analysis", "ClassifierStage", "SegmenterStage", "load_analyzer"]


def _open_model(model_dir: str | Path, task: str) -> tuple[Path, ModelConfig]:
    d = Path(model_dir)
    cfg = read_model_config(d)
    if cfg.task != task:
        raise ModelError(f"{d} holds a {cfg.task!r} model, not a {task!r} one.",
                         f"Give a {'classifier' if task == 'classify' else 'segmenter'} model directory.")
    if not (d / WEIGHTS).is_file() and not (d / "model.onnx").is_file():
        raise ModelError(f"{d} has neither {WEIGHTS} nor model.onnx.", "Copy the whole model directory, or retrain.")
    return d, cfg


@dataclass
class _Field:
    """One readable field on its way through the steps (private to the pipeline)."""

    result: FieldResult
    original: np.ndarray  # the field as read
    prep: tiling.Prepared  # resampled to the training scale (`work`: what the models see), windows planned
    smear: SmearCheck
    tiles: list[np.ndarray] = field(default_factory=list)  # classifier inputs
    features: np.ndarray | None = None  # classifier penultimate features, one row per tile
    cams: np.ndarray | None = None  # class activation maps, tiles x classes x h x w (when the model exports them)
    crop: bool = False  # a single-cell crop, outlined by the crop segmenter: its call rests on its cell (crop_call)
    called_from_cell: bool = False  # the crop's call was made from its cell


class ClassifierStage:
    """A classifier model directory behind its engine: fields in, calibrated probabilities per field out."""

    def __init__(self, model_dir: str | Path, engine: str = "onnx", threads: int | None = None,
                 eager: EagerLoader | None = None):
        self.dir, self.config = _open_model(model_dir, "classify")
        self.classes = list(self.config.classes)
        self.engine = load_engine(self.dir, self.config, engine, threads, eager)
        self.temperature = float(self.config.temperature)
        self.low_confidence = float(self.config.thresholds.low_confidence)
        self.size = self.config.input_size

    def field_logits(self, rgbs: Sequence[np.ndarray]) -> np.ndarray:
        """Uncalibrated logits per field (the mean over a tiled field's tiles), for fitting the temperature; each
        field resampled to the training scale as the analysis does."""
        preps = [prepare_field(rgb, self.config.scale)[0] for rgb in rgbs]
        tiles, owner, _ = tiling.cut_tiles([p.work for p in preps], self.size, [p.boxes for p in preps])
        logits = self._run(tiling.to_batch(tiles))["logits"].astype(np.float64)
        return np.stack([logits[owner == i].mean(0) for i in range(len(rgbs))])

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's outputs; with test-time views (config `tta`), the logits averaged over the tile and its
        flipped copies (features and heat map are the unflipped tile's). With `tta_margin`, only the tiles whose
        top two logits are closer than it get the views (the sure ones keep their one pass: speed)."""
        out = self.engine.run(batch)
        if not self.config.tta:
            return out
        top2 = np.sort(out["logits"], axis=1)[:, -2:]
        sel = np.flatnonzero(top2[:, 1] - top2[:, 0] < (self.config.tta_margin or np.inf))
        if len(sel):
            flip = {"hflip": (-1,), "vflip": (-2,), "rot180": (-2, -1)}
            views = np.concatenate([np.flip(batch[sel], axis=flip[v]) for v in self.config.tta])
            more = self.engine.run(np.ascontiguousarray(views))["logits"].reshape(len(self.config.tta), len(sel), -1)
            logits = out["logits"].astype(np.float64)
            logits[sel] = (logits[sel] + more.sum(0)) / (1 + len(self.config.tta))
            out = dict(out) | {"logits": logits}
        return out

    def run(self, fields: Sequence[_Field]) -> None:
        t0 = time.perf_counter()
        preps = [f.prep for f in fields]
        tiles, owner, _ = tiling.cut_tiles([p.work for p in preps], self.size, [p.boxes for p in preps])
        out = self._run(tiling.to_batch(tiles))
        probs = softmax(out["logits"].astype(np.float64) / self.temperature)
        feats = out.get("features")
        cams = out.get("cam")
        dt = (time.perf_counter() - t0) * 1000 / len(fields)
        for fi, f in enumerate(fields):
            sel = owner == fi
            p = probs[sel].mean(0)
            k = int(p.argmax())
            r = f.result
            r.probabilities = {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)}
            r.label = self.classes[k]
            r.confidence = round(float(p[k]), 6)
            r.malignant_probability = round(malignant_probability(dict(zip(self.classes, p, strict=True)),
                                                                  self.config.case_rule.benign), 6)
            f.tiles = [tiles[i] for i in np.flatnonzero(sel)]
            f.features = feats[sel] if feats is not None else None
            f.cams = cams[sel] if cams is not None else None
            r.timings_ms["classify"] = dt


class SegmenterStage:
    """A segmenter model directory behind its engine: fields in, per-pixel probability maps at field size out.

    Its config's `outputs` name the channels: "cell" (the whole leukocyte; it defines the instances) and, for a
    two-output segmenter, "nucleus" (each cell's nucleus area and N:C ratio; the reference study's metric). A
    one-output segmenter from before has one channel, the leukocyte as its references drew it."""

    def __init__(self, model_dir: str | Path, engine: str = "onnx", threads: int | None = None,
                 eager: EagerLoader | None = None):
        self.dir, self.config = _open_model(model_dir, "segment")
        self.engine = load_engine(self.dir, self.config, engine, threads, eager)
        self.size = self.config.input_size
        self.outputs = list(self.config.outputs) or ["cell"]
        self.mask_threshold = float(self.config.thresholds.mask)
        self.instance_params = self.config.thresholds.instances.as_base()
        self.min_nucleus_fraction = float(self.config.thresholds.instances.min_nucleus_fraction)
        self.crop_rule = crop = self.config.crop_segmenter  # the model for images a leukocyte fills, up to which side
        try:
            self.crops = SegmenterStage(self.dir / crop.dir, engine, threads, eager) if crop else None
        except ModelError as exc:
            raise ModelError(f"{self.dir}'s crop segmenter (config.json crop_segmenter.dir) cannot be used: "
                             f"{exc.problem}", "Copy the whole model directory with its subfolder, or remove "
                             "crop_segmenter from its config.json.") from None
        self.crop_side = crop.max_side_rbc * self.config.scale.rbc_diameter_224 if crop else 0.0
        self.crop_side_px = (crop.max_side_px or float("inf")) if crop else 0.0

    def maps(self, rgbs: Sequence[np.ndarray], boxes: Sequence[list[tiling.Box]] | None = None,
             tiles: Sequence[Sequence[np.ndarray]] | None = None) -> list[np.ndarray]:
        """Probabilities C x H x W per image (channels as `outputs`) at its own size, overlaps averaged.
        `boxes`: the windows per image (default: tiles of each image's short side, no red-cell scale);
        `tiles`: those windows already cut and resized to this model's input (the classifier's)."""
        if tiles is not None and boxes is not None:
            flat = [t for ts in tiles for t in ts]
            owner = np.repeat(np.arange(len(tiles)), [len(ts) for ts in tiles])
            boxes = list(boxes)
        else:
            flat, owner, boxes = tiling.cut_tiles(rgbs, self.size, boxes)
        logits = self.engine.run(tiling.to_batch(flat))["logits"]
        prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
        return [np.stack([tiling.stitch(prob[owner == fi, c], boxes[fi], *rgb.shape[:2])
                          for c in range(prob.shape[1])]) for fi, rgb in enumerate(rgbs)]

    def probabilities(self, rgbs: Sequence[np.ndarray], boxes: Sequence[list[tiling.Box]] | None = None
                      ) -> list[np.ndarray]:
        """The cell (leukocyte) probability per image, H x W (see `maps`)."""
        return [m[0] for m in self.maps(rgbs, boxes)]

    def run(self, fields: Sequence[_Field]) -> None:
        if self.crops is not None and self.crop_rule is not None:  # small, few red cells across: the crop model's
            small = [max(f.prep.valid) <= self.crop_side and max(f.original.shape[:2]) <= self.crop_side_px
                     for f in fields]
            crops = [f for f, s in zip(fields, small, strict=True) if s]
            fields = [f for f, s in zip(fields, small, strict=True) if not s]
            if crops:
                self.crops.run(crops)
                for f in crops:
                    f.crop = True
                    f.result.size_note += (f"; outlined as a single-cell crop (at most "
                                           f"{self.crop_rule.max_side_rbc:g} red cells across)")
            if not fields:
                return
        t0 = time.perf_counter()
        same = all(f.tiles and len(f.tiles) == len(f.prep.boxes) and f.tiles[0].shape[:2] == tuple(self.size)
                   for f in fields)  # the classifier's inputs are this model's inputs too
        maps = self.maps([f.prep.work for f in fields], [f.prep.boxes for f in fields],
                         [f.tiles for f in fields] if same else None)
        dt = (time.perf_counter() - t0) * 1000 / len(fields)
        for f, m in zip(fields, maps, strict=True):
            p = m[0]
            r = f.result
            r.timings_ms["segment"] = dt
            t1 = time.perf_counter()
            vh, vw = f.prep.valid
            work_mask = p[:vh, :vw] > self.mask_threshold
            # cells are found at the training scale, where the instance parameters hold as they are
            work_labels, work_cells = field_cells(work_mask, self.instance_params, at_reference=f.prep.known)
            nucleus = m[self.outputs.index("nucleus")] if "nucleus" in self.outputs else None
            work_nucleus = None if nucleus is None else nucleus[:vh, :vw] > self.mask_threshold
            if work_nucleus is not None:
                work_labels, work_cells = keep_nucleated(work_labels, work_nucleus, self.min_nucleus_fraction,
                                                         work_cells)
                work_mask = work_labels > 0
            if f.prep.factor == 1.0:
                r.mask, r.instances, r.cells = work_mask, work_labels, work_cells
                if work_nucleus is not None:
                    r.nucleus_mask = work_nucleus & work_mask
            else:
                labels = tiling.labels_to_original(work_labels, f.prep)
                r.mask = (labels > 0) if nucleus is not None else (
                    tiling.to_original(p, f.prep) > self.mask_threshold)
                r.instances = labels * r.mask
                r.cells = cells_from_labels(r.instances)
                if len(r.cells) != len(work_cells):  # a cell lost to rounding at the original size: keep its count
                    r.instances = labels
                    r.cells = cells_from_labels(labels)
                if nucleus is not None:
                    nucleus_mask = tiling.to_original(nucleus, f.prep) > self.mask_threshold
                    r.nucleus_mask = nucleus_mask & (r.instances > 0)
            um = r.um_per_px
            h, w = r.instances.shape
            nuc_area = (np.bincount(r.instances[r.nucleus_mask], minlength=len(r.cells) + 1)
                        if r.nucleus_mask is not None else None)
            for c in r.cells:
                c.touches_border = c.bbox[0] == 0 or c.bbox[1] == 0 or c.bbox[2] == h or c.bbox[3] == w
                if um:
                    c.area_um2 = round(c.area_px * um * um, 1)
                if nuc_area is not None:
                    c.nucleus_area_px = int(nuc_area[c.id])
                    c.nc_ratio = round(c.nucleus_area_px / max(c.area_px, 1), 3)
            r.cell_count = len(r.cells)
            r.timings_ms["instances"] = (time.perf_counter() - t1) * 1000


class Analysis:
    """The analysis pipeline (implements leukodx.inference.types.Analyzer). Create it with `load_analyzer`."""

    def __init__(self, classifier_dir: str | Path | None, segmenter_dir: str | Path | None, engine: str = "onnx",
                 threads: int | None = None, cell_classifier: str | Path | bool | None = None,
                 eager: EagerLoader | None = None):
        """engine: "onnx", "onnx-int8" or "torch" (leukodx.inference.engines.load_engine); `eager` runs PyTorch
        (leukodx.models.eager.load_eager; the training install passes it, the clinic runtime has no torch)."""
        if classifier_dir is None and segmenter_dir is None:
            raise ModelError("The analysis needs a classifier, a segmenter or both.", "Give a model directory.")
        self.threads = threads or usable_cores()
        self.engine = engine
        self.classifier = ClassifierStage(classifier_dir, engine, self.threads, eager) if classifier_dir else None
        self.segmenter = SegmenterStage(segmenter_dir, engine, self.threads, eager) if segmenter_dir else None
        self.cell_classifier: CellClassifier | None = None
        if self.segmenter is not None and cell_classifier is not False:
            self.cell_classifier = CellClassifier.load(
                cell_classifier if isinstance(cell_classifier, str | Path) else None, self.threads, engine)
        self.classes = self.classifier.classes if self.classifier else []
        self.ood = OODScorer(self.classifier.config.ood, self.classifier.dir) if self.classifier else OODScorer(None)
        self.low_confidence = self.classifier.low_confidence if self.classifier else 0.0
        # the red-cell scale every field is brought to: the classifier's, else the segmenter's
        stage = self.classifier or self.segmenter
        assert stage is not None
        self.scale_rule = stage.config.scale
        self.stain = stage.config.stain
        self.heatmap_note = ""  # why there are no heat maps, when there cannot be any

    @property
    def classifier_dir(self) -> Path | None:
        return self.classifier.dir if self.classifier else None

    @property
    def segmenter_dir(self) -> Path | None:
        return self.segmenter.dir if self.segmenter else None

    # -- description ------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """What runs: model directories, engines, thresholds (for reports and the web app)."""
        out: dict = {"classes": self.classes, "low_confidence": self.low_confidence, "threads": self.threads,
                     "ood": True, "ood_notes": self.ood.notes, "heatmap_note": self.heatmap_note,
                     "ood_checks": ["smear check"] + (["feature distance"] if self.ood.features else []),
                     "rbc_diameter_224": self.scale_rule.rbc_diameter_224}
        for key, stage in (("classifier", self.classifier), ("segmenter", self.segmenter)):
            if stage is not None:
                out[key] = {"dir": str(stage.dir), "arch": stage.config.arch, "engine": stage.engine.source,
                            "input_size": list(stage.size)}
        if self.classifier:
            out["temperature"] = self.classifier.temperature
        seg = self.segmenter
        if seg:
            out["mask_threshold"] = seg.mask_threshold
            if seg.crops is not None and seg.crop_rule is not None:
                out["crop_segmenter"] = {"dir": str(seg.crops.dir)} | seg.crop_rule.model_dump(exclude={"dir"})
        clf = self.cell_classifier
        if clf is not None:
            out["cell_classifier"], out["cell_model"] = clf.source, clf.version
            if clf.head is not None:
                out["cell_commissioning"] = (clf.config.model_extra or {}).get("commissioning")
        return out

    # -- public API -------------------------------------------------------------------------------------------
    def analyze(self, image: ImageInput, *, name: str | None = None, heatmap: bool = False,
                um_per_px: float | None = None) -> FieldResult:
        """Analyse one field (bytes of an upload, a path or an array). Never raises for a bad image: the result
        then has flag `unreadable` and the reason. `um_per_px`: the lab's calibration, used instead of any
        estimate of the scale (check it with leukodx.inference.scale.check_um_per_px)."""
        return self.analyze_many([image], names=[name], heatmap=heatmap, batch_size=1, um_per_px=um_per_px)[0]

    def analyze_many(self, images: Iterable[ImageInput], *, names: Sequence[str | None] | None = None,
                     batch_size: int = 16, heatmap: bool = False, keep_images: bool = False,
                     um_per_px: float | None = None) -> list[FieldResult]:
        """Analyse many fields, `batch_size` at a time through each model (faster than one by one). Each image is
        read and validated here, once; `keep_images` keeps the field as read in `FieldResult.image` (for
        overlays)."""
        images = list(images)
        names = list(names) if names is not None else [None] * len(images)
        out: list[FieldResult] = []
        step = max(1, batch_size)
        for i in range(0, len(images), step):
            out += self._analyze_chunk(images[i:i + step], names[i:i + step], heatmap, keep_images, um_per_px)
        return out

    def summarize(self, results: list[FieldResult]) -> CaseSummary:
        """One smear's fields summarised (leukodx.inference.summary.summarize_case)."""
        rule = self.classifier.config.case_rule if self.classifier else None
        return summarize_case(results, self.classes, self.low_confidence, rule)

    # -- the steps --------------------------------------------------------------------------------------------
    def _read(self, image: ImageInput, name: str | None, um_per_px: float | None = None) -> FieldResult | _Field:
        label = name or (str(image) if isinstance(image, str | Path) else None)
        t0 = time.perf_counter()
        try:
            rgb = read_field(image, label)
        except ImageError as exc:  # the only error read_field raises (an OSError, even a lazy PIL image's, becomes
            # one there)
            r = FieldResult(path=label, label=None, flag="unreadable", flag_reason=image_reason(exc))
            r.timings_ms["decode"] = (time.perf_counter() - t0) * 1000
            return r
        r = FieldResult(path=label, label=None)
        r.timings_ms["decode"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        prep, smear = prepare_field(rgb, self.scale_rule, um_per_px)
        if self.stain is not None:  # a lab's stain mapped onto the training fields' (leukodx adapt)
            prep.work = normalize(prep.work, self.stain)
        sc = smear.scale
        if sc is not None:
            r.rbc_diameter_px = None if sc.diameter_px is None else round(float(sc.diameter_px), 2)
            r.rbc_confidence = round(float(sc.confidence), 3)
            r.scale_factor = round(prep.factor, 5) if sc.known else None
            r.um_per_px = None if sc.um_per_px is None else round(sc.um_per_px, 5)
            r.scale_source = sc.source if sc.known else ""
        sizes = [s.size for s in (self.classifier, self.segmenter) if s is not None]
        r.size_note = tiling.size_note(prep, *sizes[:2])
        if not prep.known:
            r.size_note += " (scale unknown: the field was used at its own size)"
        elif r.scale_source and r.scale_source != MEASURED:
            r.scale_warning = calibration_doubt(um_per_px, smear.features.get("rbc_diameter_px"),
                                                smear.features.get("rbc_confidence") or 0.0)
            r.size_note += f" (scale {r.scale_source}" + (f"; {r.scale_warning}" if r.scale_warning else "") + ")"
        r.timings_ms["scale"] = (time.perf_counter() - t1) * 1000
        return _Field(result=r, original=rgb, prep=prep, smear=smear)

    def _analyze_chunk(self, images, names, heatmap: bool, keep_images: bool = False,
                       um_per_px: float | None = None) -> list[FieldResult]:
        read = [self._read(image, name, um_per_px) for image, name in zip(images, names, strict=True)]
        if keep_images:
            for f in read:
                if isinstance(f, _Field):
                    f.result.image = f.original
        fields = [f for f in read if isinstance(f, _Field)]
        if fields:
            if self.classifier:
                self.classifier.run(fields)
            if self.segmenter:
                self.segmenter.run(fields)
                if self.cell_classifier is not None:
                    self._classify_cells(fields)
                    if self.classifier:  # at a known scale: an image too small to measure is no crop to type
                        self._crop_calls([f for f in fields if f.crop and f.prep.known])
            if self.classifier:
                self._quality(fields)
                if heatmap:
                    self._heatmap(fields)
        results = [f.result if isinstance(f, _Field) else f for f in read]
        for r in results:
            r.timings_ms = {k: round(v, 3) for k, v in r.timings_ms.items()}
            r.timings_ms["total"] = round(sum(v for k, v in r.timings_ms.items() if k != "total"), 3)
        return results

    def _classify_cells(self, fields: Sequence[_Field]) -> None:
        """Each cell's AI suggestion (a cell type, not a leukocyte, or unidentified) from the cell-level model;
        the field's `cell_count` is then its leukocytes (cells the model calls no leukocyte are kept, not counted).
        The cells of all the fields go through the model in one batch."""
        clf = self.cell_classifier  # read once: the web app may swap in another (an adapted) cell model
        assert clf is not None
        t0 = time.perf_counter()
        todo = [f for f in fields if f.result.cells and f.result.instances is not None]
        clf.classify_many(
            [(f.original, f.result.instances, f.result.cells, f.result.rbc_diameter_px if f.prep.known else None)
             for f in todo])
        for f in todo:
            f.result.cell_count = sum(c.ai_label != NOT_LEUKOCYTE for c in f.result.cells)
        dt = (time.perf_counter() - t0) * 1000 / max(len(fields), 1)
        for f in fields:
            f.result.timings_ms["cells"] = dt
            f.result.cell_model = clf.version

    def _crop_calls(self, crops: Sequence[_Field]) -> None:
        """A single-cell crop's call from its cell (agreement.crop_call): the field classifier's subtype, the cell
        model's P(blast)."""
        assert self.classifier is not None
        benign = self.classifier.config.case_rule.benign
        for f in crops:
            r = f.result
            p = crop_call(r.probabilities, r.cells, benign)
            if p is None:
                continue
            blast = sum(v for k, v in p.items() if k not in benign)
            side = [k for k in p if (k in benign) == (blast < 0.5)]
            r.label = max(side, key=lambda k: p[k])
            r.probabilities = {k: round(v, 6) for k, v in p.items()}
            r.confidence, r.malignant_probability = r.probabilities[r.label], round(blast, 6)
            f.called_from_cell = True
            shown = "< 0.01" if blast < 0.01 else "> 0.99" if blast > 0.99 else f"{blast:.2f}"
            r.size_note += (f"; called from its cell (P(blast) {shown}" +
                            (", the subtype from the field model)" if blast >= 0.5 else ")"))

    def _quality(self, fields: Sequence[_Field]) -> None:
        benign = self.classifier.config.case_rule.benign if self.classifier else ()
        for f in fields:
            r = f.result
            t0 = time.perf_counter()
            flagged, reason, score = self.ood.check(f.features, f.tiles, smear=f.smear)
            r.ood_score = None if score is None else round(float(score), 4)
            if flagged and f.called_from_cell and f.smear.usable:
                # the field model's features are far from its training fields because one cell is no field: a
                # crop called from its cell is flagged by the rules below (docs/results/crop-flags)
                flagged = False
            disagree = self._cells_disagree(r, f.crop) if not flagged else ""
            if flagged:
                r.flag, r.flag_reason = "out_of_distribution", reason
                if f.smear.kind in NOT_A_SMEAR and f.smear.features.get("rbc_checked", True):
                    # no smear field (an image big enough to judge): no class call and no cells, only the flag
                    r.label, r.confidence, r.malignant_probability = None, 0.0, 0.0
                    r.no_call_reason = f.smear.reason
                    r.cells, r.cell_count, r.nucleus_mask = [], 0, None
                    r.mask = np.zeros(f.original.shape[:2], bool)
                    r.instances = np.zeros(f.original.shape[:2], np.int32)
            elif r.confidence < self.low_confidence:
                r.flag = "low_confidence"
                r.flag_reason = (f"The model is not sure (confidence {r.confidence:.2f} below "
                                 f"{self.low_confidence:.2f}); it is often wrong on such fields. Read the field "
                                 "yourself.")
            elif disagree:
                r.flag, r.flag_reason = "low_confidence", disagree
            elif f.called_from_cell and r.label not in benign:
                # the blast is the cell model's; the subtype is the field model's reading of one cell (right on 71 %
                # of the Taleqani val cell crops called leukaemic: docs/results/issue28-purple-nuclei)
                r.flag, r.flag_reason = "low_confidence", (
                    f"This single-cell crop is called {r.label} from its one cell: the cell model sees a blast, but "
                    "the subtype is the field model's reading of a single cell, which is often wrong. Read the "
                    "subtype from whole smear fields.")
            elif f.called_from_cell and r.malignant_probability >= CROP_BLAST_DOUBT:
                r.flag, r.flag_reason = "low_confidence", (
                    f"This single-cell crop is called {r.label} from its one cell, but the cell model still gives a "
                    f"blast a probability of {r.malignant_probability:.2f}. Read the cell yourself.")
            else:
                r.flag, r.flag_reason = "ok", ""
            if r.label is not None and self.segmenter is not None and r.cell_count == 0:
                r.label, r.confidence, r.malignant_probability = None, 0.0, 0.0
                r.no_call_reason = NO_LEUKOCYTE
                if r.flag == "low_confidence":  # about a call there no longer is
                    r.flag, r.flag_reason = "ok", ""
            r.timings_ms["quality"] = (time.perf_counter() - t0) * 1000

    def _cells_disagree(self, r: FieldResult, crop: bool = False) -> str:
        """Why the field's call is not supported by its cells (config `cell_agreement`; one blast is enough in a
        single-cell crop), or "" when it is."""
        if self.cell_classifier is None or self.classifier is None or r.label is None or self.segmenter is None:
            return ""
        cfg = self.classifier.config
        rule = cfg.cell_agreement.model_copy(update={"min_blasts": min(cfg.cell_agreement.min_blasts, 1)}) if crop \
            else cfg.cell_agreement
        return cells_disagree(r.label, r.cells, cfg.case_rule.benign, rule, self.cell_classifier.blast_threshold)

    def _heatmap(self, fields: Sequence[_Field]) -> None:
        """The heat map of the called class: its class activation map from the classifier's own outputs (ONNX
        or PyTorch, no gradients). A model exported without one has no heat maps (describe() says why)."""
        assert self.classifier is not None
        for f in fields:
            r = f.result
            t0 = time.perf_counter()
            if r.label is None:  # no class call (not a smear field): no heat map
                continue
            k = self.classes.index(r.label)
            if f.cams is None:
                self.heatmap_note = (f"{self.classifier.engine.source} has no class activation map output: "
                                     f"re-export it (leukodx export onnx --model {self.classifier.dir} --out "
                                     f"{self.classifier.dir / 'model.onnx'}) for heat maps.")
                continue
            cams = [_unit(np.maximum(c[k], 0.0)) for c in f.cams]
            heat = tiling.to_original(tiling.stitch(cams, f.prep.boxes, *f.prep.work.shape[:2]), f.prep)
            r.heatmap = np.clip(heat / max(float(heat.max()), 1e-6), 0, 1)
            r.timings_ms["heatmap"] = (time.perf_counter() - t0) * 1000


def prepare_field(rgb: np.ndarray, rule: ScaleRule | None = None, um_per_px: float | None = None
                  ) -> tuple[tiling.Prepared, SmearCheck]:
    """The smear check of a field (with its red-cell scale, or the lab's `um_per_px`) and the field resampled to
    the training scale."""
    smear = check_smear(rgb, rule, um_per_px)
    factor = smear.scale.factor if smear.scale is not None and smear.scale.known else None
    return tiling.prepare(rgb, factor, (rule or ScaleRule()).window), smear


def _unit(a: np.ndarray) -> np.ndarray:
    hi = float(a.max())
    return (a / hi if hi > 0 else np.zeros_like(a)).astype(np.float32)


def load_analyzer(classifier_dir: str | Path | None = None, segmenter_dir: str | Path | None = None,
                  engine: str = "onnx", threads: int | None = None, eager: EagerLoader | None = None,
                  cell_classifier: str | Path | None = None) -> Analysis:
    """The analysis pipeline over two model directories (default: the bundled models). engine and eager: as
    `Analysis`; threads: CPU threads per inference (default: all this process may use); cell_classifier: a
    cell-type model directory (default: bundled; `leukodx adapt --cells` writes one with a lab's head)."""
    cdir = Path(classifier_dir) if classifier_dir else default_model_dir("classify")
    sdir = Path(segmenter_dir) if segmenter_dir else default_model_dir("segment")
    return Analysis(cdir, sdir, engine=engine, threads=threads, eager=eager, cell_classifier=cell_classifier)
