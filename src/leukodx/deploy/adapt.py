"""`leukodx adapt`: model directories adapted to a lab's own stain, camera and white balance, learnt from the
lab's UNLABELLED smear fields (README, "Adapting to your lab"). What needs no labels is refitted; nothing else
is touched.

    >>> report = adapt_models("lab_fields/", "adapted/")      # bundled models by default
    >>> # then: leukodx predict FIELDS --classifier adapted/classifier --segmenter adapted/segmenter --out OUT

Refitted, and recorded in each adapted config's ``adaptation`` block: the **stain** rule of both models (the
lab's statistics as `source`, the training fields' ``stain_reference`` of the bundled configs as `target`:
`reference_stain`, measured once on the Taleqani training rows, so a clinic never needs the training data),
and the classifier's **out-of-distribution threshold** by RULE: never lowered, raised just so far that the
lab's ordinary look is not flagged, never past MAX_RAISE x the trained value. **Risk**: a raised threshold
lets through fields as far from the training fields as the lab's most unusual ordinary ones, and bad images in
the folder raise it; fields the smear check rejects are left out, and the cap keeps a polluted folder from
switching the check off (heavily blurred smears score ~1.35 x the trained threshold, benchmarks/non_smear.md:
the report says how far it rose). Not refitted: the temperature and low-confidence threshold (they need
labels), the red-cell scale (measured on every field anyway), the weights (batch-norm statistics would need a
re-export).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from leukodx.data.images import IMAGE_SUFFIXES, image_reason, read_field
from leukodx.errors import DatasetError, ImageError, ModelError
from leukodx.inference import tiling
from leukodx.inference.stain import measure, normalize
from leukodx.models.model_config import (
    CONFIG,
    ModelConfig,
    ScaleRule,
    StainRule,
    StainStats,
    read_model_config,
    update_model_config,
)

OOD_PERCENTILE = 99.5  # of the lab's normalised fields' feature distances (as leukodx.deploy.ood_fit's)
MAX_RAISE = 1.5  # the adapted OOD threshold is at most this x the trained one
MIN_IMAGES = 10  # fewer usable fields than this: no adaptation (statistics too noisy)
MAX_FILE_MB = 25
RULE = (f"threshold = min(max(trained, P{OOD_PERCENTILE:g} of the lab's normalised fields' feature distances), "
        f"{MAX_RAISE:g} x trained)")

__all__ = ["adapt_models", "lab_images", "reference_stain", "write_stain_reference"]


def _work(rgb: np.ndarray, scale: ScaleRule):
    """The field's working image at the training scale (the pipeline's prepare_field), cropped to its valid part,
    with its preparation and smear check."""
    from leukodx.inference.pipeline import prepare_field

    prep, smear = prepare_field(rgb, scale)
    vh, vw = prep.valid
    return prep.work[:vh, :vw], prep, smear


def reference_stain(data: str | Path, split_csv: str | Path | None = None, split: str = "train",
                    scale: ScaleRule | None = None, max_images: int | None = None) -> StainStats:
    """The training fields' stain statistics (the target a lab is mapped onto): `split` rows of `split_csv` (every
    image under `data` without one), each measured on its working image at the training scale."""
    if split_csv is not None:
        from leukodx.data.split import read_split

        paths = [Path(data) / r["path"] for r in read_split(split_csv, data) if r["split"] == split]
    else:
        paths = lab_images(data)
    if max_images and len(paths) > max_images:
        paths = paths[:: int(np.ceil(len(paths) / max_images))]
    return measure(_work(read_field(p), scale or ScaleRule())[0] for p in paths)


def write_stain_reference(model_dirs: Sequence[str | Path], stats: StainStats) -> None:
    """Store the training fields' statistics as each model config's ``stain_reference``."""
    for d in model_dirs:
        update_model_config(d, stain_reference=stats.model_dump(mode="json"))


def lab_images(data: str | Path) -> list[Path]:
    """The image files under `data` (JPEG, PNG, TIFF, BMP; recursively, sorted); DatasetError when there are none."""
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.", "Give the folder that holds the lab's smear fields.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        others = ", ".join(str(p.relative_to(root)) for p in files[:5]) + (" ..." if len(files) > 5 else "")
        raise DatasetError(f"{root} holds no images (JPEG, PNG, TIFF or BMP)" + (f"; it has {others}" if files
                                                                                  else "; it is empty") + ".",
                           "Give a folder with at least a few dozen of the lab's ordinary smear fields.")
    return images


def _copy_model(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the model directory's files into `dst`; config.json is copied (it is rewritten). A
    subfolder (a segmenter's crop segmenter) goes along whole, its own config unchanged."""
    if dst.resolve() == src.resolve():
        raise ModelError(f"{dst} is the source model directory itself.", "Give another --out folder.")
    if dst.exists() and any(dst.iterdir()):
        try:
            old = read_model_config(dst)
        except ModelError:
            old = None
        if old is None or getattr(old, "adaptation", None) is None:
            raise DatasetError(f"{dst} exists and is not an adapted model directory; it was left as it is.",
                               "Give an empty or new --out folder.")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_dir():
            shutil.copytree(f, dst / f.name, copy_function=_link_or_copy)
            continue
        if not f.is_file() or f.name.endswith(".tmp"):
            continue
        if f.stat().st_size > MAX_FILE_MB * 1024 * 1024:
            raise ModelError(f"{f} is over {MAX_FILE_MB} MB.", "Adapt a model directory whose files are smaller.")
        if f.name == CONFIG:
            shutil.copyfile(f, dst / f.name)
            continue
        _link_or_copy(f, dst / f.name)


def _link_or_copy(f: str | Path, to: str | Path) -> None:
    try:
        os.link(f, to)
    except OSError:
        shutil.copy2(f, to)


def _target(cfg: ModelConfig, other: ModelConfig | None, model_dir: Path) -> StainStats:
    ref = cfg.stain_reference or (other.stain_reference if other is not None else None)
    if ref is None:
        raise ModelError(f"{model_dir / CONFIG} has no stain_reference (the training fields' stain statistics), "
                         "so there is nothing to map the lab's fields onto.",
                         "Measure them once on the model's training fields: python -c \"from leukodx.deploy.adapt "
                         "import *; write_stain_reference(['RUN'], reference_stain('DATA', 'SPLIT.csv'))\"")
    return ref


def _feature_scores(stage, scorer, preps: list, rule: StainRule | None, batch: int = 16) -> np.ndarray:
    """Each field's feature distance (max over its windows) as the analysis scores it, fields normalised by `rule`."""
    out = []
    for i in range(0, len(preps), batch):
        ps = preps[i:i + batch]
        tiles, owner, _ = tiling.cut_tiles([normalize(p.work, rule) for p in ps], stage.size, [p.boxes for p in ps])
        feats = stage.engine.run(tiling.to_batch(tiles)).get("features")
        s = None if feats is None else scorer.feature_scores(feats)
        if s is None:
            return np.array([])
        out += [float(s[owner == k].max()) for k in range(len(ps))]
    return np.asarray(out)


def adapt_models(data: str | Path, out: str | Path, classifier_dir: str | Path | None = None,
                 segmenter_dir: str | Path | None = None, max_images: int = 500, strength: float = 1.0,
                 threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Adapt the classifier and segmenter (default: bundled) to the lab whose unlabelled fields are in `data`;
    writes `out`/classifier and `out`/segmenter and returns the report (also stored as each config's
    ``adaptation``). At most `max_images` fields are used (evenly spaced in name order)."""
    from leukodx.assets import default_model_dir
    from leukodx.inference.ood import OODScorer
    from leukodx.inference.pipeline import ClassifierStage

    say = progress or (lambda _msg: None)
    if not 0.0 <= strength <= 1.0:
        raise DatasetError(f"strength {strength} is outside 0..1.", "Give --strength between 0 and 1.")
    cdir = Path(classifier_dir) if classifier_dir else default_model_dir("classify")
    sdir = Path(segmenter_dir) if segmenter_dir else default_model_dir("segment")
    ccfg, scfg = read_model_config(cdir), read_model_config(sdir)
    if ccfg.task != "classify" or scfg.task != "segment":
        raise ModelError(f"{cdir} must hold a classifier and {sdir} a segmenter.", "Check --classifier/--segmenter.")
    c_target, s_target = _target(ccfg, scfg, cdir), _target(scfg, ccfg, sdir)

    root = Path(data)
    found = lab_images(root)
    paths = found if len(found) <= max_images else found[:: int(np.ceil(len(found) / max_images))][:max_images]
    say(f"reading {len(paths)} of {len(found)} image(s) under {root}")
    works, preps, unreadable, not_smear = [], [], [], []
    for p in paths:
        name = str(p.relative_to(root))
        try:
            rgb = read_field(p, name)
        except ImageError as exc:
            unreadable.append(f"{name} ({image_reason(exc)})")
            continue
        except OSError as exc:
            unreadable.append(f"{name} ({exc.strerror or exc})")
            continue
        work, prep, smear = _work(rgb, ccfg.scale)
        if not smear.usable:
            not_smear.append(f"{name} ({smear.kind})")
            continue
        works.append(work)
        preps.append(prep)
    if not works:
        what = "; ".join((unreadable + not_smear)[:8]) + (" ..." if len(unreadable + not_smear) > 8 else "")
        raise DatasetError(f"None of the {len(paths)} image(s) under {root} is a usable smear field: {what}.",
                           "Give a folder of the lab's ordinary stained smear fields (JPEG, PNG, TIFF or BMP).")
    if len(works) < MIN_IMAGES:
        raise DatasetError(f"Only {len(works)} usable smear field(s) under {root}; adaptation needs at least "
                           f"{MIN_IMAGES} (a few hundred is better).", "Add more of the lab's ordinary fields.")
    try:
        source = measure(works)
    except ValueError:
        raise DatasetError(f"No field under {root} has enough stained pixels to measure the lab's stain.",
                           "Give fields with cells in them, not blank ones.") from None
    rules = {"classifier": StainRule(source=source, target=c_target, strength=strength),
             "segmenter": StainRule(source=source, target=s_target, strength=strength)}
    say(f"stain measured on {source.n_images} field(s) with leukocytes; scoring the classifier's features")

    out = Path(out)
    _copy_model(cdir, out / "classifier")
    _copy_model(sdir, out / "segmenter")
    stage = ClassifierStage(out / "classifier", engine="onnx", threads=threads)
    ood = dict(ccfg.ood or {})
    feats = dict(ood.get("features") or {})
    scorer = OODScorer(ccfg.ood, cdir)
    ood_report: dict = {"rule": RULE, "percentile": OOD_PERCENTILE, "max_raise": MAX_RAISE}
    if feats.get("threshold") is not None:
        trained = float(feats["threshold"])
        raw = _feature_scores(stage, scorer, preps, None)
        norm = _feature_scores(stage, scorer, preps, rules["classifier"])
        if len(norm):
            pct = float(np.percentile(norm, OOD_PERCENTILE))
            new = min(max(trained, pct), MAX_RAISE * trained)
            ood_report |= {
                "trained_threshold": trained, "lab_percentile_score": round(pct, 4), "threshold": round(new, 4),
                "raised": new > trained, "capped": pct > MAX_RAISE * trained, "n_scored": len(norm),
                "median_score_as_is": round(float(np.median(raw)), 4),
                "median_score_normalised": round(float(np.median(norm)), 4),
                "lab_flagged_as_is_trained_threshold": round(float((raw > trained).mean()), 4),
                "lab_flagged_normalised_trained_threshold": round(float((norm > trained).mean()), 4),
                "lab_flagged_normalised_adapted_threshold": round(float((norm > new).mean()), 4),
            }
            feats["threshold"] = float(new)  # unrounded: a rounded copy could fall below the trained one
            feats["trained_threshold"] = trained
            ood["features"] = feats
    else:
        ood_report["note"] = "the classifier has no feature-distance statistics; nothing refit"
    refit = ["stain.source (the lab's stain statistics)"] + (
        ["ood.features.threshold"] if "threshold" in ood_report else [])
    block = {
        "data": str(root.resolve()), "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "n_found": len(found), "n_read": len(paths) - len(unreadable), "n_used": len(works),
        "n_stain_fields": source.n_images, "unreadable": unreadable[:50], "not_smear": not_smear[:50],
        "stain": {"space": "od", "source": source.model_dump(mode="json"), "target": c_target.model_dump(mode="json"),
                  "strength": strength},
        "refit": refit, "ood": ood_report,
        "not_refit": "temperature and low_confidence (need labels); red-cell scale (measured on every field); "
                     "weights",
    }
    update_model_config(out / "classifier", stain=rules["classifier"].model_dump(mode="json"), ood=ood,
                        adaptation=block | {"source_model": str(cdir.resolve())})
    update_model_config(out / "segmenter", stain=rules["segmenter"].model_dump(mode="json"),
                        adaptation=block | {"refit": refit[:1], "ood": None, "source_model": str(sdir.resolve())})
    return block | {"classifier": str(out / "classifier"), "segmenter": str(out / "segmenter")}
