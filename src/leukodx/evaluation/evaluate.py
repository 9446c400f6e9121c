"""`leukodx evaluate`: score model directories on a data folder, write metrics.json, plots and report.html.

    >>> from leukodx.evaluation.evaluate import evaluate
    >>> m = evaluate("data/all-taleqani", "runs/eval", ["runs/clf"], split_csv="split.csv", shift="lab")
    >>> m["classification"]["accuracy"], m["classification_lab_shift"]["coverage"]

Every field goes through the analysis pipeline on the engine `predict` uses (docs/architecture.md), so what
is evaluated is what runs. Segmentation scores only fields with a reference mask (grayscale(Segmented) >
mask_threshold); its cells are compared with the reference mask's connected components after the same speck
rule.
"""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from leukodx import __version__
from leukodx.data.images import read_field, read_reference_mask
from leukodx.data.layout import Sample
from leukodx.errors import DatasetError, ImageError, LeukodxError, ModelError
from leukodx.evaluation import metrics as M
from leukodx.evaluation import report as R
from leukodx.evaluation.cells import scored_nucleus
from leukodx.evaluation.samples import leakage_notes, select_samples
from leukodx.inference.engines import ENGINES
from leukodx.io import write_json

if TYPE_CHECKING:
    from leukodx.inference.pipeline import Analysis

SHIFTS = ("lab",)
TASK_SECTION = {"classify": "classification", "segment": "segmentation"}
CLASSIFICATION_KEYS = ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                       "confusion_matrix", "classes", "per_class")
SEGMENTATION_KEYS = ("n_images", "dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy",
                     "n_reference_failed", "count_mae")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class EvaluatedModel:
    """One model directory behind the analysis pipeline (only its own stage runs)."""

    dir: Path
    name: str
    task: str
    config: dict
    analysis: Analysis

    def info(self) -> dict:
        return {"model": str(self.dir), "model_name": self.name, "arch": self.config.get("arch"),
                "engine": self.analysis.describe()[
                    "classifier" if self.task == "classify" else "segmenter"]["engine"]}


def load_models(model_dirs: list[str | Path] | None, engine: str = "onnx",
                threads: int | None = None) -> tuple[list[EvaluatedModel], list[str]]:
    """The given model directories, or the bundled defaults, each behind the analysis pipeline."""
    from leukodx.assets import default_model_dir
    from leukodx.inference.pipeline import Analysis
    from leukodx.models.eager import load_eager
    from leukodx.models.model_config import read_model_config

    if engine not in ENGINES:
        raise LeukodxError(f"Unknown --engine {engine!r}.", f"Use one of: {', '.join(ENGINES)}.")
    notes: list[str] = []
    if model_dirs:
        dirs = [Path(d) for d in model_dirs]
    else:
        dirs, missing = [], []
        for task in ("classify", "segment"):
            try:
                dirs.append(default_model_dir(task))
            except ModelError:
                missing.append(task)
        if len(missing) == 2:
            raise ModelError("No --model was given and no bundled models are installed.",
                             "Pass --model RUN with a model directory written by `leukodx train`.")
        notes += [f"No bundled {t} model is installed; its part was skipped (pass --model RUN)." for t in missing]
    configs = [read_model_config(d) for d in dirs]  # a clear error for a foreign folder, before anything slow
    loaded: list[EvaluatedModel] = []
    used: set[str] = set()
    try:
        cells_beside: Path | None = default_model_dir("segment")
    except ModelError:
        cells_beside = None
    for d, cfg in zip(dirs, configs, strict=True):
        name = str(cfg.name or d.resolve().name)
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        # a classifier is scored with the bundled segmenter and cell model beside it, as `predict` runs it: its
        # flags include the call rule (a leukaemic call needs a blast among the field's cells)
        clf, seg = (d, cells_beside) if cfg.task == "classify" else (None, d)
        analysis = Analysis(clf, seg, engine, threads, eager=load_eager)
        loaded.append(EvaluatedModel(d, name, cfg.task, cfg.to_json(), analysis))
    return loaded, notes


def _read(sample: Sample, unreadable: list[dict]) -> np.ndarray | None:
    try:
        return read_field(sample.image, sample.path)
    except ImageError as exc:
        unreadable.append({"path": sample.path, "reason": exc.reason})
        return None


def _readable(batch: list[Sample], read: Callable) -> tuple[list[Sample], list]:
    """The samples of `batch` that `read` could read (it returns None for the others), and what it read."""
    got = [(s, x) for s in batch if (x := read(s)) is not None]
    return [s for s, _ in got], [x for _, x in got]


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


def _class_rows(em: EvaluatedModel, rgbs: list[np.ndarray], paths: list[str], batch_size: int):
    """(probabilities N x C, flags, calls: the field's class, '' where the pipeline makes none) from the pipeline."""
    classes = em.config["classes"]
    results = em.analysis.analyze_many(rgbs, names=paths, batch_size=batch_size)
    probs = np.array([[r.probabilities[c] for c in classes] for r in results], dtype=np.float64)
    return probs, [r.flag for r in results], [r.label or "" for r in results]


def evaluate_classifier(em: EvaluatedModel, samples: list[Sample], batch_size: int = 32, shift_fn=None,
                        progress: Progress | None = None) -> dict:
    """Returns {"metrics", "metrics_shift" (or None), "y", "probs", "probs_shift", "flags", "paths", ...}."""
    classes = list(em.config["classes"])
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise ModelError(
            f"Model {em.dir} knows the classes {', '.join(classes)}, but the data has {', '.join(unknown)}.",
            "Evaluate a model trained on these classes, or leave those class folders out of the data.")
    unreadable: list[dict] = []
    ys: list[int] = []
    paths: list[str] = []
    probs, probs_s = [], []
    flags: list[str] = []
    flags_s: list[str] = []
    calls: list[str] = []
    done = 0
    for batch in _batches(samples, batch_size):
        kept, rgbs = _readable(batch, lambda s: _read(s, unreadable))
        if rgbs:
            names = [s.path for s in kept]
            p, f, c = _class_rows(em, rgbs, names, batch_size)
            probs.append(p)
            flags += f
            calls += c
            if shift_fn is not None:
                p, f, _ = _class_rows(em, [shift_fn(rgb, s.path) for rgb, s in zip(rgbs, kept, strict=True)],
                                      names, batch_size)
                probs_s.append(p)
                flags_s += f
            ys += [classes.index(s.label) for s in kept]
            paths += names
        done += len(batch)
        if progress:
            progress(f"classify {em.name}", done, len(samples))
    if not ys:
        raise DatasetError("None of the selected images could be read.",
                           f"Check the files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']}.")
    y = np.asarray(ys)

    def finish(p: np.ndarray, f: list[str]) -> dict:
        m = M.classification_metrics(y, p, classes, (em.config.get("case_rule") or {}).get("benign"))
        m.update(M.selective_metrics(y, p, f))
        m.update(em.info())
        m.update({"temperature": float(em.config.get("temperature") or 1.0), "unreadable": unreadable})
        if unreadable:
            m["unreadable_note"] = f"{len(unreadable)} image(s) could not be read and were left out."
        return m

    out: dict = {"y": y, "probs": np.concatenate(probs), "paths": paths, "classes": classes, "flags": flags,
                 "calls": calls, "probs_shift": None, "flags_shift": None, "metrics_shift": None}
    out["metrics"] = finish(out["probs"], flags)
    if shift_fn is not None:
        out["probs_shift"], out["flags_shift"] = np.concatenate(probs_s), flags_s
        out["metrics_shift"] = finish(out["probs_shift"], flags_s)
    return out


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
                        f"({p[i, pred[i]]:.0%}, {res['flags'][i]})", rgb))
    return out


def write_classification_predictions(res: dict, path: Path) -> Path:
    classes = res["classes"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["path", "label", "predicted", "confidence", "flag"] + [f"p_{c}" for c in classes]
        if res["probs_shift"] is not None:
            head += ["predicted_lab_shift", "confidence_lab_shift", "flag_lab_shift"]
        w.writerow(head)
        for i, path_ in enumerate(res["paths"]):
            p = res["probs"][i]
            row = [path_, classes[res["y"][i]], res["calls"][i], f"{p.max():.6f}", res["flags"][i]]
            row += [f"{v:.6f}" for v in p]
            if res["probs_shift"] is not None:
                ps = res["probs_shift"][i]
                row += [classes[int(ps.argmax())], f"{ps.max():.6f}", res["flags_shift"][i]]
            w.writerow(row)
    return path


def _read_pair(s: Sample, thr_mask: int, unreadable: list[dict], resized: list[str]):
    from PIL import Image

    rgb = _read(s, unreadable)
    if rgb is None:
        return None
    assert s.mask is not None, "only fields with a reference mask are scored"  # evaluate_segmenter filters
    h, w = rgb.shape[:2]
    try:
        ref = read_reference_mask(s.mask, threshold=thr_mask, size=(w, h), warn=False)
    except ImageError as exc:
        unreadable.append({"path": str(s.mask), "reason": exc.reason})
        return None
    with Image.open(s.mask) as im:
        if im.size != (w, h):
            resized.append(s.path)
    return rgb, ref


def evaluate_segmenter(em: EvaluatedModel, samples: list[Sample], batch_size: int = 32, shift_fn=None,
                       progress: Progress | None = None, n_examples: int = 3) -> dict:
    """Returns {"metrics", "metrics_shift" (or None), "examples": {"best": [...], "worst": [...]}}."""
    from leukodx.data.reference_masks import repaired_reference
    from leukodx.inference.instances import reference_components, scaled_params

    with_mask = [s for s in samples if s.mask is not None]
    n_missing = len(samples) - len(with_mask)
    if not with_mask:
        return {"metrics": _skipped_section(
            "segmentation", f"none of the {len(samples)} evaluated fields has a reference mask "
            "(DATA/Segmented/<class>/<same name>)", em), "metrics_shift": None, "examples": {}}
    thr_mask = int(em.config.get("reference_mask_level", 128))
    instances = (em.config.get("thresholds") or {}).get("instances")

    def count_ref(mask: np.ndarray) -> int:
        """Cells of a reference mask: its connected components after the pipeline's speck rule, with the
        segmenter's instance parameters scaled to the field."""
        sp = scaled_params(mask.shape, base=instances)
        return int(reference_components(mask, min_area=sp["min_area"], max_hole=sp["max_hole"]))

    # per condition (as is; lab-shifted): the fields against their references, per class, and the same
    # predictions against the repaired references (leukodx.data.reference_masks: HSV masks under 1 %
    # foreground rebuilt by the stain rule, so the pale Pro blasts count)
    class Scores(NamedTuple):
        fields: M.SegmentationAccumulator
        per_class: dict[str, M.SegmentationAccumulator]
        repaired: M.SegmentationAccumulator

    accs = [Scores(M.SegmentationAccumulator(), {}, M.SegmentationAccumulator())
            for _ in range(2 if shift_fn is not None else 1)]
    sources: Counter[str] = Counter()
    unreadable: list[dict] = []
    resized: list[str] = []

    def score(kept, pairs, repaired, acc: Scores):
        """The fields' (rgb, reference) `pairs` analysed; each scored against its reference and repaired one."""
        results = em.analysis.analyze_many([rgb for rgb, _ in pairs], names=[s.path for s in kept],
                                           batch_size=batch_size)
        for s, (_, ref), rep, r in zip(kept, pairs, repaired, results, strict=True):
            n_ref, pm = count_ref(ref), scored_nucleus(r)
            assert pm is not None  # a field read and segmented has a mask
            acc.fields.add(pm, ref, r.cell_count, n_ref, name=s.path)
            acc.per_class.setdefault(s.label, M.SegmentationAccumulator()).add(pm, ref, r.cell_count, n_ref)
            acc.repaired.add(pm, rep, r.cell_count, count_ref(rep), name=s.path)

    done = 0
    for batch in _batches(with_mask, batch_size):
        kept, pairs = _readable(batch, lambda s: _read_pair(s, thr_mask, unreadable, resized))
        if pairs:
            repaired, found = zip(*(repaired_reference(rgb, ref) for rgb, ref in pairs), strict=True)
            sources.update(found)
            score(kept, pairs, repaired, accs[0])
            if shift_fn is not None:
                shifted = [shift_fn(rgb, s.path, ref) for (rgb, ref), s in zip(pairs, kept, strict=True)]
                rep_s = [shift_fn(rgb, s.path, rep)[1] for (rgb, _), rep, s in zip(pairs, repaired, kept, strict=True)]
                score(kept, shifted, rep_s, accs[1])
        done += len(batch)
        if progress:
            progress(f"segment {em.name}", done, len(with_mask))
    if not accs[0].fields.per_image:
        raise DatasetError("None of the fields with masks could be read.",
                           f"Check the files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']}.")

    def finish(acc: Scores) -> dict:
        m = acc.fields.result()
        m["per_class"] = {c: {k: v for k, v in pc.result().items() if k != "per_image"}
                          for c, pc in sorted(acc.per_class.items())}
        m.update(em.info())
        m.update({"probability_threshold": float((em.config.get("thresholds") or {}).get("mask", 0.5)),
                  "mask_threshold": thr_mask, "n_missing_masks": n_missing, "n_masks_resized": len(resized),
                  "unreadable": unreadable})
        if n_missing:
            m["missing_masks_note"] = (f"{n_missing} of {len(samples)} evaluated fields have no reference mask "
                                       "and were left out of the segmentation metrics.")
        if resized:
            m["mask_size_note"] = (f"{len(resized)} reference mask(s) differed in size from their image and were "
                                   f"resized (nearest), e.g. {resized[0]}.")
        if unreadable:
            m["unreadable_note"] = f"{len(unreadable)} image(s) or mask(s) could not be read and were left out."
        m["repaired_references"] = {k: v for k, v in acc.repaired.result().items() if k != "per_image"} | {
            "reference_sources": dict(sources),
            "note": ("the same predictions against the repaired references: HSV masks under 1 % foreground "
                     "rebuilt by the stain rule (leukodx.data.reference_masks); the others kept")}
        return m

    # pictures of the best and worst fields (re-run on those few), and the worst under the lab shift
    best, worst = accs[0].fields.best_worst(n_examples)
    groups = [("best", best, False), ("worst", worst, False)]
    if shift_fn is not None:
        groups.append(("worst, lab-shifted", accs[1].fields.best_worst(n_examples)[1], True))
    by_path = {s.path: s for s in with_mask}
    examples: dict[str, list[dict]] = {}
    for group, recs, shifted_group in groups:
        items = []
        for rec in recs:
            s = by_path[rec["name"]]
            pair = _read_pair(s, thr_mask, [], [])
            if pair is None:
                continue
            rgb, ref = pair
            if shifted_group:
                rgb, ref = shift_fn(rgb, s.path, ref)
            r = em.analysis.analyze_many([rgb], names=[s.path], batch_size=1)[0]
            items.append({"rgb": rgb, "pred": r.mask, "ref": ref, "title": f"Dice {rec['dice']:.3f}\n{Path(s.path).name}"})
        examples[group] = items
    metrics = [finish(a) for a in accs]
    return {"metrics": metrics[0], "metrics_shift": metrics[1] if shift_fn is not None else None,
            "examples": examples}


def _shift_examples(samples: list[Sample], shift_fn, path: Path, n: int = 6) -> Path | None:
    """Up to `n` fields, spread over the classes, before and after their lab shift."""
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    rounds = itertools.zip_longest(*by_class.values())  # one field of each class in turn
    picked = [s for one_each in rounds for s in one_each if s is not None][:n]
    pairs = []
    for s in picked:
        rgb = _read(s, [])
        if rgb is not None:
            pairs.append((f"{s.label}: {Path(s.path).name}", rgb, shift_fn(rgb, s.path)))
    return R.plot_shift_examples(pairs, path) if pairs else None


def _skipped_section(section: str, reason: str, em: EvaluatedModel | None = None) -> dict:
    keys = CLASSIFICATION_KEYS if section == "classification" else SEGMENTATION_KEYS
    out: dict = dict.fromkeys(keys) | {"n_images": 0, "skipped": reason}
    return out | (em.info() if em is not None else {})


def _classification_figures(res: dict, samples: list[Sample], plot_dir: Path, tag: str) -> dict[str, Path]:
    m, ms = res["metrics"], res["metrics_shift"]
    figs = {"confusion matrix": R.plot_confusion(m["confusion_matrix"], m["classes"], plot_dir / f"{tag}_confusion.png"),
            "ROC curves": R.plot_roc(M.roc_curves(res["y"], res["probs"], m["classes"]), plot_dir / f"{tag}_roc.png"),
            "reliability diagram": R.plot_reliability(m["reliability"], plot_dir / f"{tag}_reliability.png", m["ece"])}
    curves = {"in distribution": m} | ({"lab-shifted": ms} if ms is not None else {})
    figs["risk-coverage"] = R.plot_risk_coverage(curves, plot_dir / f"{tag}_risk_coverage.png")
    errors = _confident_errors(res, samples)
    if errors:
        figs["most confident errors"] = R.plot_fields(errors, plot_dir / f"{tag}_errors.png")
    if ms is not None:
        figs["confusion matrix, lab-shifted"] = R.plot_confusion(
            ms["confusion_matrix"], ms["classes"], plot_dir / f"{tag}_confusion_lab_shift.png",
            "Confusion matrix (lab-shifted)")
        figs["ROC curves, lab-shifted"] = R.plot_roc(M.roc_curves(res["y"], res["probs_shift"], ms["classes"]),
                                                     plot_dir / f"{tag}_roc_lab_shift.png", "ROC curves (lab-shifted)")
        figs["reliability diagram, lab-shifted"] = R.plot_reliability(
            ms["reliability"], plot_dir / f"{tag}_reliability_lab_shift.png", ms["ece"], "Reliability (lab-shifted)")
    return figs


def _segmentation_figures(res: dict, plot_dir: Path, tag: str) -> dict[str, Path]:
    m, ms = res["metrics"], res["metrics_shift"]
    if m.get("skipped"):
        return {}
    series = {"in distribution": [r["dice"] for r in m["per_image"] if not r["reference_failed"]]}
    if ms is not None:
        series["lab-shifted"] = [r["dice"] for r in ms["per_image"] if not r["reference_failed"]]
    return {"best and worst fields": R.plot_overlays(list(res["examples"].items()), plot_dir / f"{tag}_overlays.png"),
            "Dice per field": R.plot_dice_histogram(series, plot_dir / f"{tag}_dice.png")}


def evaluate(data: str | Path, out_dir: str | Path, model_dirs: list[str | Path] | None = None,
             split_csv: str | Path | None = None, split: str = "test", shift: str | None = None,
             batch_size: int = 32, max_images: int | None = None, seed: int = 0, severity: float = 1.0,
             progress: Progress | None = None, plots: bool = True, engine: str = "onnx",
             threads: int | None = None) -> dict:
    """Evaluate models on DATA; write out_dir/metrics.json, report.html and plots/*.png. Returns the metrics.

    metrics.json: {"classification": {...}, "segmentation": {...}} with the DESIGN.md contract keys for the
    first model of each task; with several models of a task, "<section>_models" {name: {...}} holds them all;
    with shift="lab", "<section>_lab_shift" (and "<section>_lab_shift_models") hold the same metrics on the
    lab-shifted fields, and "lab_shift" describes the variation and its seed.
    """
    if batch_size < 1:
        raise LeukodxError(f"--batch-size {batch_size} must be at least 1.", "Give a positive number.")
    shift_fn = _shift_fn(shift, seed, severity)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LeukodxError(f"--out {out_dir} is a file.", "Give a folder for metrics.json and report.html.")
    models, notes = load_models(model_dirs, engine, threads)
    samples, split_desc = select_samples(data, split_csv, split, max_images, seed)
    notes += leakage_notes([(em.name, em.dir, em.config) for em in models], data, split_csv, split, samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir = out_dir / "plots"

    result: dict = {
        "data": str(data),
        "split": split_desc,
        "models": {TASK_SECTION[t]: [str(em.dir) for em in models if em.task == t] for t in TASK_SECTION},
        "engine": engine,
        "leukodx_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "note": R.SPLIT_NOTE,
    }
    if shift:
        from leukodx.evaluation.shift import describe

        result["lab_shift"] = {**describe(severity), "seed": seed,
                               "per_field": "one variation per field, drawn from (seed, the field's path)"}
    figures: dict[str, dict[str, Path]] = {}
    per_task: dict[str, dict[str, dict]] = {"classification": {}, "segmentation": {}}
    per_task_shift: dict[str, dict[str, dict]] = {"classification": {}, "segmentation": {}}

    for em in models:
        section = TASK_SECTION[em.task]
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", em.name)  # for file names
        if em.task == "classify":
            res = evaluate_classifier(em, samples, batch_size, shift_fn, progress)
            write_classification_predictions(res, out_dir / f"classification_predictions_{tag}.csv")
            figs = _classification_figures(res, samples, plot_dir, tag) if plots else {}
        else:
            res = evaluate_segmenter(em, samples, batch_size, shift_fn, progress)
            figs = _segmentation_figures(res, plot_dir, tag) if plots else {}
        figures[f"{section}:{em.name}"] = figs
        per_task[section][em.name] = res["metrics"]
        if res["metrics_shift"] is not None:
            per_task_shift[section][em.name] = res["metrics_shift"]

    def put(section: str, key: str, found: dict[str, dict], skipped: str) -> None:
        """The first model's metrics under `key`, every model's under `key`_models when there are several."""
        result[key] = next(iter(found.values())) if found else _skipped_section(section, skipped)
        if len(found) > 1:
            result[f"{key}_models"] = found

    for task, section in TASK_SECTION.items():
        put(section, section, per_task[section], f"no {task} model was evaluated")
        if shift:
            put(section, f"{section}_lab_shift", per_task_shift[section],
                result[section].get("skipped") or "nothing to shift")
    if shift and plots:
        examples = _shift_examples(samples, shift_fn, plot_dir / "lab_shift_examples.png")
        if examples is not None:
            figures["lab_shift"] = {"examples": examples}
    result["notes"] = notes
    write_json(result, out_dir / "metrics.json")
    R.write_report(result, out_dir, figures)
    return result
