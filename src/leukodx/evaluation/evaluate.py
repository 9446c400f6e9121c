"""`leukodx evaluate`: score model directories on a data folder, write metrics.json, plots and report.html.

    >>> from leukodx.evaluation.evaluate import evaluate
    >>> m = evaluate("data/all-taleqani", "runs/eval", ["runs/clf"], split_csv="split.csv", shift="lab")
    >>> m["classification"]["accuracy"], m["classification_lab_shift"]["accuracy"]

With no model directories, the bundled default classifier and segmenter are evaluated (whichever exist).
Fields are cut into model inputs as the analysis pipeline (`leukodx predict`) does: a square-ish field is
resized whole to the model's input size, a long one is tiled into square tiles along its long side.
Classification: softmax(logits / temperature), averaged over a field's tiles, is scored.
Segmentation: only fields with a reference mask (grayscale(Segmented) > mask_threshold) are scored; the
predicted probability is resized back to the field's size and thresholded; cells are counted by splitting the
predicted mask into instances and compared with the reference mask's connected components.
"""

from __future__ import annotations

import csv
import datetime as _dt
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukodx import __version__
from leukodx.data.layout import Sample, load_dataset
from leukodx.errors import DatasetError, ImageError, LeukodxError, ModelError
from leukodx.evaluation import metrics as M
from leukodx.evaluation.report import SPLIT_NOTE

SHIFTS = ("lab",)
TASK_SECTION = {"classify": "classification", "segment": "segmentation"}
CLASSIFICATION_KEYS = ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                       "confusion_matrix", "classes", "per_class")
SEGMENTATION_KEYS = ("n_images", "dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy",
                     "n_reference_failed", "count_mae")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class LoadedModel:
    dir: Path
    name: str
    task: str
    model: object
    config: dict
    device: str = "cpu"

    def logits(self, batch):
        """Forward a float32 N x 3 x H x W batch (0..255, on the CPU); returns float32 CPU logits."""
        return self.model(batch.to(self.device)).float().cpu()


# ---------------------------------------------------------------------------------------------------------------
# inputs


def resolve_models(model_dirs: list[str | Path] | None, device: str = "cpu") -> tuple[list[LoadedModel], list[str]]:
    """Load the given model directories, or the bundled defaults. Returns (models, notes)."""
    from leukodx.assets import default_model_dir
    from leukodx.models import load_model, read_config

    notes: list[str] = []
    dirs: list[Path] = []
    if model_dirs:
        dirs = [Path(d) for d in model_dirs]
        for d in dirs:
            read_config(d)  # a clear error for a missing or foreign folder, before anything slow
    else:
        missing = []
        for task in ("classify", "segment"):
            try:
                dirs.append(default_model_dir(task))
            except ModelError:
                missing.append(task)
        if len(missing) == 2:
            raise ModelError("No --model was given and no bundled models are installed.",
                             "Pass --model RUN with a model directory written by `leukodx train`.")
        for task in missing:
            notes.append(f"No bundled {task} model is installed; its part was skipped (pass --model RUN).")
    loaded: list[LoadedModel] = []
    used: set[str] = set()
    for d in dirs:
        model, cfg = load_model(d, device=device)
        task = cfg["task"]
        if task not in TASK_SECTION:
            raise ModelError(f"{d}: unknown task {task!r} in config.json.", "Use a classify or segment model.")
        for key in ("input_size",) + (("classes",) if task == "classify" else ()):
            if key not in cfg:
                raise ModelError(f"{d}/config.json lacks {key!r}.", "Restore it from the training run.")
        name = str(cfg.get("name") or d.resolve().name)
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        loaded.append(LoadedModel(d, name, task, model, cfg, device))
    return loaded, notes


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is available, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LeukodxError(f"--device {device}: no CUDA GPU is available here.", "Use --device cpu (or auto).")
    if device != "cpu" and not device.startswith("cuda"):
        raise LeukodxError(f"Unknown --device {device!r}.", "Use auto, cpu or cuda.")
    return device


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


def _resize_batch(rgbs: list[np.ndarray], size: tuple[int, int]):
    """uint8 HxWx3 arrays -> float32 N x 3 x h x w tensor in 0..255 (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    out = []
    for rgb in rgbs:
        t = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float()[None]
        if tuple(t.shape[-2:]) != tuple(size):
            t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        out.append(t)
    return torch.cat(out).clamp_(0, 255)


def _read(sample: Sample, unreadable: list[dict]) -> np.ndarray | None:
    from leukodx.data.images import read_rgb

    try:
        return read_rgb(sample.image)
    except ImageError as exc:
        unreadable.append({"path": sample.path, "reason": exc.reason})
        return None


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _shift_fn(shift: str | None, seed: int, severity: float):
    if shift is None:
        return None
    if shift not in SHIFTS:
        raise LeukodxError(f"Unknown --shift {shift!r}.", f"Use one of: {', '.join(SHIFTS)}.")
    from leukodx.evaluation.shift import lab_shift, rng_for

    def fn(rgb: np.ndarray, key: str, mask: np.ndarray | None = None):
        return lab_shift(rgb, rng_for(seed, key), mask=mask, severity=severity)

    return fn


# ---------------------------------------------------------------------------------------------------------------
# classification


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / max(float(temperature), 1e-6)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_classifier(lm: LoadedModel, samples: list[Sample], batch_size: int = 32, shift_fn=None,
                        progress: Progress | None = None) -> dict:
    """Returns {"metrics", "metrics_shift" (or None), "y", "probs", "probs_shift", "paths"}."""
    import torch

    classes = list(lm.config["classes"])
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise ModelError(
            f"Model {lm.dir} knows the classes {', '.join(classes)}, but the data has {', '.join(unknown)}.",
            "Evaluate a model trained on these classes, or leave those class folders out of the data.")
    temperature = lm.config.get("temperature") or 1.0
    unreadable: list[dict] = []
    ys, probs, probs_s, paths = [], [], [], []
    done = 0
    with torch.inference_mode():
        for batch in _batches(samples, batch_size):
            rgbs, kept = [], []
            for s in batch:
                rgb = _read(s, unreadable)
                if rgb is not None:
                    rgbs.append(rgb)
                    kept.append(s)
            if rgbs:
                probs.append(_class_probs(lm, rgbs, temperature))
                if shift_fn is not None:
                    shifted = [shift_fn(rgb, s.path) for rgb, s in zip(rgbs, kept, strict=True)]
                    probs_s.append(_class_probs(lm, shifted, temperature))
                ys += [classes.index(s.label) for s in kept]
                paths += [s.path for s in kept]
            done += len(batch)
            if progress:
                progress(f"classify {lm.name}", done, len(samples))
    if not ys:
        raise DatasetError("None of the selected images could be read.",
                           f"Check the files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']}.")
    y = np.asarray(ys)
    p = np.concatenate(probs)
    out = {"y": y, "probs": p, "paths": paths, "classes": classes,
           "metrics": M.classification_metrics(y, p, classes), "metrics_shift": None, "probs_shift": None}
    if shift_fn is not None:
        ps = np.concatenate(probs_s)
        out["probs_shift"] = ps
        out["metrics_shift"] = M.classification_metrics(y, ps, classes)
    for key in ("metrics", "metrics_shift"):
        if out[key] is not None:
            out[key].update(_model_info(lm))
            out[key]["temperature"] = float(temperature)
            out[key]["unreadable"] = unreadable
            if unreadable:
                out[key]["unreadable_note"] = f"{len(unreadable)} image(s) could not be read and were left out."
    return out


def _model_info(lm: LoadedModel) -> dict:
    return {"model": str(lm.dir), "model_name": lm.name, "arch": lm.config.get("arch")}


def _confident_errors(res: dict, samples: list[Sample], n: int = 6) -> list[tuple[str, np.ndarray]]:
    """The `n` wrong calls made with the highest confidence: (caption, image)."""
    p, y, classes = res["probs"], res["y"], res["classes"]
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-p[wrong, pred[wrong]])][:n]
    by_path = {s.path: s for s in samples}
    out = []
    for i in order:
        rgb = _read(by_path[res["paths"][i]], [])
        if rgb is not None:
            out.append((f"{Path(res['paths'][i]).name}\ntrue {classes[y[i]]}, called {classes[pred[i]]} "
                        f"({p[i, pred[i]]:.0%})", rgb))
    return out


def write_classification_predictions(res: dict, path: Path) -> Path:
    classes = res["classes"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["path", "label", "predicted", "confidence"] + [f"p_{c}" for c in classes]
        if res["probs_shift"] is not None:
            head += ["predicted_lab_shift", "confidence_lab_shift"]
        w.writerow(head)
        for i, path_ in enumerate(res["paths"]):
            p = res["probs"][i]
            row = [path_, classes[res["y"][i]], classes[int(p.argmax())], f"{p.max():.6f}"]
            row += [f"{v:.6f}" for v in p]
            if res["probs_shift"] is not None:
                ps = res["probs_shift"][i]
                row += [classes[int(ps.argmax())], f"{ps.max():.6f}"]
            w.writerow(row)
    return path


# ---------------------------------------------------------------------------------------------------------------
# segmentation


def _counter():
    """(predicted count fn, reference count fn, note). Cells are split by leukodx.inference.instances with its
    parameters scaled to the field's size, as the analysis pipeline does; the reference is counted as its
    connected components after the same speck rule."""
    try:
        from leukodx.inference.instances import reference_components, scaled_params, split_instances
    except ModuleNotFoundError as exc:
        if exc.name != "leukodx.inference.instances":
            raise
        from scipy import ndimage as ndi

        def components(mask: np.ndarray) -> int:
            return int(ndi.label(mask)[1])

        return components, components, ("cell instances module not available: predicted cells counted as "
                                        "connected components")

    def predicted(mask: np.ndarray) -> int:
        return len(split_instances(mask, **scaled_params(mask.shape))[1])

    def reference(mask: np.ndarray) -> int:
        sp = scaled_params(mask.shape)
        return int(reference_components(mask, min_area=sp["min_area"], max_hole=sp["max_hole"]))

    return predicted, reference, None


def probability_threshold(config: dict) -> float:
    """The segmenter's foreground threshold (config thresholds, as the analysis pipeline reads them)."""
    th = config.get("thresholds") or {}
    for key in ("mask", "probability", "foreground", "segmentation"):  # the order leukodx.inference.pipeline uses
        if isinstance(th.get(key), int | float) and not isinstance(th.get(key), bool):
            return float(th[key])
    return 0.5


def _tiles(rgbs: list[np.ndarray]) -> tuple[list[np.ndarray], list[list[tuple[int, int, int, int]]], np.ndarray]:
    """Fields -> model tiles as the analysis pipeline cuts them (leukodx.inference.pipeline.plan_tiles): the
    whole field when square-ish, else overlapping square tiles along the long side. Returns (tiles, boxes per
    field, owner field of each tile)."""
    from leukodx.inference.pipeline import plan_tiles

    tiles, boxes, owner = [], [], []
    for k, rgb in enumerate(rgbs):
        b = plan_tiles(*rgb.shape[:2])
        boxes.append(b)
        for y0, x0, y1, x1 in b:
            tiles.append(rgb[y0:y1, x0:x1])
            owner.append(k)
    return tiles, boxes, np.asarray(owner)


def _class_probs(lm: LoadedModel, rgbs: list[np.ndarray], temperature: float) -> np.ndarray:
    """softmax(logits / T) per field; a tiled field gets the mean over its tiles (as the analysis pipeline)."""
    size = tuple(int(v) for v in lm.config["input_size"])
    tiles, _, owner = _tiles(rgbs)
    p = _softmax(lm.logits(_resize_batch(tiles, size)).numpy().astype(np.float64), temperature)
    if len(tiles) == len(rgbs):
        return p
    return np.stack([p[owner == k].mean(axis=0) for k in range(len(rgbs))])


def _segment_probs(lm: LoadedModel, rgbs: list[np.ndarray]) -> list[np.ndarray]:
    """Foreground probability per field, at the field's own size (tiles stitched back, overlaps averaged)."""
    import torch
    import torch.nn.functional as F

    size = tuple(int(v) for v in lm.config["input_size"])
    tiles, boxes, owner = _tiles(rgbs)
    logits = lm.logits(_resize_batch(tiles, size))
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ModelError(f"Segmenter {lm.dir} returned shape {tuple(logits.shape)}, not N x 1 x H x W.",
                         "Check the architecture in config.json.")
    prob = torch.sigmoid(logits)

    def at(p, h, w):
        if tuple(p.shape[-2:]) != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        return p[0, 0].numpy()

    out = []
    for k, rgb in enumerate(rgbs):
        idx = np.flatnonzero(owner == k)
        h, w = rgb.shape[:2]
        if len(idx) == 1:
            out.append(at(prob[idx[0]:idx[0] + 1], h, w))
            continue
        acc = np.zeros((h, w), np.float32)
        cnt = np.zeros((h, w), np.float32)
        for i, (y0, x0, y1, x1) in zip(idx, boxes[k], strict=True):
            acc[y0:y1, x0:x1] += at(prob[i:i + 1], y1 - y0, x1 - x0)
            cnt[y0:y1, x0:x1] += 1
        out.append(acc / np.maximum(cnt, 1))
    return out


def evaluate_segmenter(lm: LoadedModel, samples: list[Sample], batch_size: int = 32, shift_fn=None,
                       progress: Progress | None = None, n_examples: int = 3) -> dict:
    """Returns {"metrics", "metrics_shift" (or None), "examples": {"best": [...], "worst": [...]}}."""
    import torch

    from leukodx.data.images import MaskSizeWarning, read_reference_mask

    with_mask = [s for s in samples if s.mask is not None]
    n_missing = len(samples) - len(with_mask)
    if not with_mask:
        return {"metrics": _skipped_section(
            "segmentation", f"none of the {len(samples)} evaluated fields has a reference mask "
            "(DATA/Segmented/<class>/<same name>)", lm), "metrics_shift": None, "examples": {}}
    thr_mask = int(lm.config.get("mask_threshold", 128))
    thr_prob = probability_threshold(lm.config)
    count_pred, count_ref, count_note = _counter()
    acc = M.SegmentationAccumulator()
    acc_s = M.SegmentationAccumulator() if shift_fn is not None else None
    unreadable: list[dict] = []
    resized: list[str] = []
    done = 0
    with torch.inference_mode():
        for batch in _batches(with_mask, batch_size):
            rgbs, refs, kept = [], [], []
            for s in batch:
                rgb = _read(s, unreadable)
                if rgb is None:
                    continue
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", MaskSizeWarning)
                        ref = read_reference_mask(s.mask, threshold=thr_mask, size=(rgb.shape[1], rgb.shape[0]))
                except ImageError as exc:
                    unreadable.append({"path": str(s.mask), "reason": exc.reason})
                    continue
                if any(issubclass(w.category, MaskSizeWarning) for w in caught):
                    resized.append(s.path)
                rgbs.append(rgb)
                refs.append(ref)
                kept.append(s)
            if rgbs:
                for s, ref, p in zip(kept, refs, _segment_probs(lm, rgbs), strict=True):
                    pred = p > thr_prob
                    acc.add(pred, ref, count_pred(pred), count_ref(ref), name=s.path)
                if acc_s is not None:
                    pairs = [shift_fn(rgb, s.path, ref) for rgb, s, ref in zip(rgbs, kept, refs, strict=True)]
                    probs_s = _segment_probs(lm, [a for a, _ in pairs])
                    for s, (_, ref_s), p in zip(kept, pairs, probs_s, strict=True):
                        pred = p > thr_prob
                        acc_s.add(pred, ref_s, count_pred(pred), count_ref(ref_s), name=s.path)
            done += len(batch)
            if progress:
                progress(f"segment {lm.name}", done, len(with_mask))
    if not acc.per_image:
        raise DatasetError("None of the fields with masks could be read.",
                           f"Check the files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']}.")

    def finish(a: M.SegmentationAccumulator) -> dict:
        m = a.result()
        m.update(_model_info(lm))
        m.update({"probability_threshold": thr_prob, "mask_threshold": thr_mask, "n_missing_masks": n_missing,
                  "n_masks_resized": len(resized), "unreadable": unreadable})
        if n_missing:
            m["missing_masks_note"] = (f"{n_missing} of {len(samples)} evaluated fields have no reference mask "
                                       "and were left out of the segmentation metrics.")
        if resized:
            m["mask_size_note"] = (f"{len(resized)} reference mask(s) differed in size from their image and were "
                                   f"resized (nearest), e.g. {resized[0]}.")
        if count_note:
            m["count_note"] = (m.get("count_note", "") + "; " if m.get("count_note") else "") + count_note
        if unreadable:
            m["unreadable_note"] = f"{len(unreadable)} image(s) or mask(s) could not be read and were left out."
        return m

    # pictures of the best and worst fields (re-run on those few), and the worst under the lab shift
    best, worst = acc.best_worst(n_examples)
    groups = [("best", best, False), ("worst", worst, False)]
    if acc_s is not None:
        groups.append(("worst, lab-shifted", acc_s.best_worst(n_examples)[1], True))
    by_path = {s.path: s for s in with_mask}
    examples: dict[str, list[dict]] = {}
    with torch.inference_mode():
        for group, recs, shifted in groups:
            items = []
            for r in recs:
                s = by_path[r["name"]]
                rgb = _read(s, [])
                ref = read_reference_mask(s.mask, threshold=thr_mask, size=(rgb.shape[1], rgb.shape[0]))
                if shifted:
                    rgb, ref = shift_fn(rgb, s.path, ref)
                pred = _segment_probs(lm, [rgb])[0] > thr_prob
                items.append({"rgb": rgb, "pred": pred, "ref": ref,
                              "title": f"Dice {r['dice']:.3f}\n{Path(s.path).name}"})
            examples[group] = items
    return {"metrics": finish(acc), "metrics_shift": finish(acc_s) if acc_s is not None else None,
            "examples": examples}


def _shift_examples(samples: list[Sample], shift_fn, path: Path, n: int = 6) -> Path | None:
    """Up to `n` fields, spread over the classes, before and after their lab shift."""
    from leukodx.evaluation.report import plot_shift_examples

    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    picked: list[Sample] = []
    while len(picked) < n and any(by_class.values()):
        for label in list(by_class):
            if by_class[label] and len(picked) < n:
                picked.append(by_class[label].pop(0))
    pairs = []
    for s in picked:
        rgb = _read(s, [])
        if rgb is not None:
            pairs.append((f"{s.label}: {Path(s.path).name}", rgb, shift_fn(rgb, s.path)))
    return plot_shift_examples(pairs, path) if pairs else None


def _same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError, ValueError):
        return False


def _model_split_overlap(lm: LoadedModel, data, samples: list[Sample]) -> tuple[int, str] | None:
    """(number of evaluated fields that are train/val rows of the model's own split, that file), when the split
    it was trained with can be found (DIR/split.csv, or config training.split_file) and it was made from this
    data folder."""
    tr = lm.config.get("training") or {}
    if not isinstance(tr, dict) or not tr.get("data") or not _same_path(tr["data"], data):
        return None
    candidates = [lm.dir / "split.csv"]
    if isinstance(tr.get("split_file"), str) and tr["split_file"]:
        candidates += [Path(tr["split_file"]), lm.dir / tr["split_file"]]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        return None
    try:
        with open(path, newline="") as f:
            seen = {r["path"] for r in csv.DictReader(f) if r.get("split") in ("train", "val")}
    except (OSError, KeyError, csv.Error):
        return None
    return sum(s.path in seen for s in samples), str(path)


def _leakage_notes(models: list[LoadedModel], data, split_csv, split: str, samples: list[Sample]) -> list[str]:
    """Say so when the evaluated fields may include a model's training fields."""
    notes = []
    for lm in models:
        tr = lm.config.get("training") or {}
        if not isinstance(tr, dict) or not tr.get("data") or not _same_path(tr["data"], data):
            continue
        overlap = _model_split_overlap(lm, data, samples)
        if overlap is not None:
            n, path = overlap
            if n:
                notes.append(f"{n} of the {len(samples)} evaluated fields are training or validation rows of model "
                             f"{lm.name} ({path}): its numbers here overstate it. Evaluate with --split {path} "
                             "to score only its held-out fields.")
        elif split_csv is None:
            notes.append(f"Model {lm.name} was trained on {data}, and every image of it was evaluated, training "
                         "fields included: these numbers overstate it. Pass --split SPLIT.csv (the split it was "
                         "trained with) to score only its held-out fields.")
        elif split != "test":
            notes.append(f"The {split!r} rows were evaluated: model {lm.name} saw them in training "
                         "(train) or for model selection (val), so they overstate it.")
    return notes


def _skipped_section(section: str, reason: str, lm: LoadedModel | None = None) -> dict:
    keys = CLASSIFICATION_KEYS if section == "classification" else SEGMENTATION_KEYS
    out: dict = dict.fromkeys(keys)
    out["n_images"] = 0
    out["skipped"] = reason
    if lm is not None:
        out.update(_model_info(lm))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the whole evaluation


def evaluate(data: str | Path, out_dir: str | Path, model_dirs: list[str | Path] | None = None,
             split_csv: str | Path | None = None, split: str = "test", shift: str | None = None,
             batch_size: int = 32, max_images: int | None = None, seed: int = 0, severity: float = 1.0,
             progress: Progress | None = None, plots: bool = True, device: str = "auto") -> dict:
    """Evaluate models on DATA; write out_dir/metrics.json, report.html and plots/*.png. Returns the metrics.

    metrics.json: {"classification": {...}, "segmentation": {...}} with the DESIGN.md contract keys for the
    first model of each task; with several models of a task, "<section>_models" {name: {...}} holds them all;
    with shift="lab", "<section>_lab_shift" (and "<section>_lab_shift_models") hold the same metrics on the
    lab-shifted fields, and "lab_shift" describes the variation and its seed.
    """
    from leukodx.cli._common import write_json
    from leukodx.evaluation import report as R

    if batch_size < 1:
        raise LeukodxError(f"--batch-size {batch_size} must be at least 1.", "Give a positive number.")
    shift_fn = _shift_fn(shift, seed, severity)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LeukodxError(f"--out {out_dir} is a file.", "Give a folder for metrics.json and report.html.")
    models, notes = resolve_models(model_dirs, resolve_device(device))
    samples, split_desc = select_samples(data, split_csv, split, max_images, seed)
    notes += _leakage_notes(models, data, split_csv, split, samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir = out_dir / "plots"

    result: dict = {
        "data": str(data),
        "split": split_desc,
        "models": {TASK_SECTION[t]: [str(lm.dir) for lm in models if lm.task == t] for t in TASK_SECTION},
        "leukodx_version": __version__,
        "device": models[0].device if models else "cpu",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "note": SPLIT_NOTE,
    }
    if shift:
        from leukodx.evaluation.shift import describe

        result["lab_shift"] = {**describe(severity), "seed": seed,
                               "per_field": "one variation per field, drawn from (seed, the field's path)"}
    figures: dict[str, dict[str, Path]] = {}
    per_task: dict[str, dict[str, dict]] = {"classification": {}, "segmentation": {}}
    per_task_shift: dict[str, dict[str, dict]] = {"classification": {}, "segmentation": {}}

    for lm in models:
        section = TASK_SECTION[lm.task]
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", lm.name)  # for file names
        if lm.task == "classify":
            res = evaluate_classifier(lm, samples, batch_size, shift_fn, progress)
            write_classification_predictions(res, out_dir / f"classification_predictions_{tag}.csv")
            figs: dict[str, Path] = {}
            if plots:
                m, ms = res["metrics"], res["metrics_shift"]
                figs["confusion matrix"] = R.plot_confusion(m["confusion_matrix"], m["classes"],
                                                            plot_dir / f"{tag}_confusion.png")
                figs["ROC curves"] = R.plot_roc(M.roc_curves(res["y"], res["probs"], m["classes"]),
                                                plot_dir / f"{tag}_roc.png")
                figs["reliability diagram"] = R.plot_reliability(m["reliability"], plot_dir / f"{tag}_reliability.png",
                                                                 m["ece"])
                errors = _confident_errors(res, samples)
                if errors:
                    figs["most confident errors"] = R.plot_fields(errors, plot_dir / f"{tag}_errors.png")
                if ms is not None:
                    figs["confusion matrix, lab-shifted"] = R.plot_confusion(
                        ms["confusion_matrix"], ms["classes"], plot_dir / f"{tag}_confusion_lab_shift.png",
                        "Confusion matrix (lab-shifted)")
                    figs["ROC curves, lab-shifted"] = R.plot_roc(
                        M.roc_curves(res["y"], res["probs_shift"], ms["classes"]),
                        plot_dir / f"{tag}_roc_lab_shift.png", "ROC curves (lab-shifted)")
                    figs["reliability diagram, lab-shifted"] = R.plot_reliability(
                        ms["reliability"], plot_dir / f"{tag}_reliability_lab_shift.png", ms["ece"],
                        "Reliability (lab-shifted)")
        else:
            res = evaluate_segmenter(lm, samples, batch_size, shift_fn, progress)
            m, ms = res["metrics"], res["metrics_shift"]
            figs = {}
            if plots and not m.get("skipped"):
                rows = list(res["examples"].items())
                figs["best and worst fields"] = R.plot_overlays(rows, plot_dir / f"{tag}_overlays.png")
                series = {"in distribution": [r["dice"] for r in m["per_image"] if not r["reference_failed"]]}
                if ms is not None:
                    series["lab-shifted"] = [r["dice"] for r in ms["per_image"] if not r["reference_failed"]]
                figs["Dice per field"] = R.plot_dice_histogram(series, plot_dir / f"{tag}_dice.png")
        figures[f"{section}:{lm.name}"] = figs
        per_task[section][lm.name] = res["metrics"]
        if res["metrics_shift"] is not None:
            per_task_shift[section][lm.name] = res["metrics_shift"]

    for section in ("classification", "segmentation"):
        found = per_task[section]
        if found:
            result[section] = next(iter(found.values()))
            if len(found) > 1:
                result[f"{section}_models"] = found
        else:
            task = "classify" if section == "classification" else "segment"
            result[section] = _skipped_section(section, f"no {task} model was evaluated")
        if shift and per_task_shift[section]:
            result[f"{section}_lab_shift"] = next(iter(per_task_shift[section].values()))
            if len(per_task_shift[section]) > 1:
                result[f"{section}_lab_shift_models"] = per_task_shift[section]
        elif shift:
            result[f"{section}_lab_shift"] = _skipped_section(
                section, result[section].get("skipped") or "nothing to shift")
    if shift and plots:
        figures["lab_shift"] = {"examples": _shift_examples(samples, shift_fn, plot_dir / "lab_shift_examples.png")}
    result["notes"] = notes
    write_json(result, out_dir / "metrics.json")
    R.write_report(result, out_dir, figures)
    return result
