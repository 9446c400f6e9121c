"""Batch prediction over files, folders and globs: the engine of `leukodx predict`.

Inputs are streamed in chunks (any folder size); rows are appended to predictions.csv as they are done, so an
interrupted run keeps what it finished. Folders are walked recursively without following symbolic links to
folders (no loops); files whose names are not images are skipped and listed; an explicitly named file is always
tried. Unreadable files become rows with flag `unreadable` and their reason.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from leukodx.data.images import is_image_name
from leukodx.errors import LeukodxError
from leukodx.inference.pipeline import NO_LEUKOCYTE, load_analyzer
from leukodx.inference.render import heatmap_png, overlay_png
from leukodx.inference.types import FieldResult

CONTRACT_COLUMNS = ("path", "label", "confidence", "malignant_probability", "cell_count", "flag", "overlay")


def collect_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(files to analyse, files skipped for their name). Order: as given, folders sorted."""
    files: list[str] = []
    skipped: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for root, dirs, names in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(name for name in names if not name.startswith(".")):
                    (files if is_image_name(n) else skipped).append(os.path.join(root, n))
        elif p.exists() or p.is_symlink():
            files.append(str(p))
        elif glob.has_magic(raw):
            for m in sorted(glob.glob(raw, recursive=True)):
                if os.path.isdir(m):
                    found, not_images = collect_inputs([m])
                    files += found
                    skipped += not_images
                else:
                    (files if is_image_name(m) else skipped).append(m)
        else:
            files.append(raw)  # becomes an `unreadable` row: no such file
    return list(dict.fromkeys(files)), skipped  # each file once, in the order first given


def output_stem(path: str) -> str:
    """A file-name-safe stem unique per input path (same names in different folders do not collide)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "field"
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """An instance image as a 16-bit PNG (labels 0..65535), a boolean mask as an 8-bit one (0/255)."""
    if mask.dtype == bool:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    else:
        if int(mask.max(initial=0)) > 65535:
            raise LeukodxError(f"{path.name}: more than 65,535 cells do not fit a 16-bit label image.",
                               "Analyse smaller fields.")
        Image.fromarray(mask.astype(np.uint16)).save(path)


def run_predict(paths: list[str], out: str | Path, *, classifier_dir=None, segmenter_dir=None, heatmap: bool = True,
                workers: int = 2, engine: str = "onnx", batch_size: int = 16, threads: int | None = None,
                overlays: bool = True, console=None, eager=None, save_masks: bool = False,
                um_per_px: float | None = None, cells_dir: str | Path | None = None) -> dict:
    """Analyse `paths` (files, folders, globs) and write predictions.csv, predictions.json, overlays and heat maps
    to `out`. `eager`: PyTorch for model directories without model.onnx (leukodx.models.eager.load_eager).
    `save_masks`: also masks/<stem>_cells.png (16-bit instance labels, 0 = background, k = cell id k) and
    masks/<stem>_nucleus.png (0/255, with a two-output segmenter), in the field's own pixels. `um_per_px`: the
    lab's calibration for every field (replaces the estimated scale; leukodx.inference.scale.check_um_per_px)."""
    files, skipped = collect_inputs(paths)
    if not files:
        raise LeukodxError(f"No images found in {', '.join(paths)}" + (
            f" ({len(skipped)} file(s) skipped: not image names)" if skipped else "") + ".",
            "Give image files (JPEG, PNG, TIFF, BMP), folders holding them, or a glob like 'smears/*.jpg'.")
    analysis = load_analyzer(classifier_dir, segmenter_dir, engine=engine, threads=threads, eager=eager,
                             cell_classifier=cells_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for sub, wanted in (("overlays", overlays), ("heatmaps", heatmap), ("masks", save_masks)):
        if wanted:
            (out / sub).mkdir(exist_ok=True)
    classes = analysis.classes
    columns = [*CONTRACT_COLUMNS, "flag_reason", "size_note", "heatmap", "ood_score", "cell_mask",
               "nucleus_mask", *(f"prob_{c}" for c in classes), "analysis_ms", "rbc_diameter_px",
               "scale_factor", "um_per_px", "scale_source", "no_call_reason", "cell_model", "scale_warning"]
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    results: list[dict] = []
    all_results: list[FieldResult] = []
    chunk_size = max(batch_size, 1) * 4
    t_start = time.perf_counter()

    def write_pngs(r: FieldResult, rgb, stem: str) -> dict[str, str]:
        made = {"overlay": "", "heatmap": "", "cell_mask": "", "nucleus_mask": ""}
        if overlays:
            made["overlay"] = f"overlays/{stem}_overlay.png"
            (out / made["overlay"]).write_bytes(overlay_png(rgb, r))
        if heatmap and r.heatmap is not None:
            made["heatmap"] = f"heatmaps/{stem}_heatmap.png"
            (out / made["heatmap"]).write_bytes(heatmap_png(rgb, r))
        if save_masks and r.instances is not None:
            made["cell_mask"] = f"masks/{stem}_cells.png"
            write_mask_png(out / made["cell_mask"], r.instances)
            if r.nucleus_mask is not None:
                made["nucleus_mask"] = f"masks/{stem}_nucleus.png"
                write_mask_png(out / made["nucleus_mask"], r.nucleus_mask)
        return made

    with open(csv_path, "w", newline="") as fh, ThreadPoolExecutor(max_workers=workers) as pool, Progress(
            TextColumn("[bold]analysing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[last]}"), console=console, transient=False,
            disable=console is None) as progress:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        task = progress.add_task("predict", total=len(files), last="")
        for i in range(0, len(files), chunk_size):
            chunk = files[i:i + chunk_size]
            analysed = analysis.analyze_many(chunk, names=chunk, batch_size=batch_size, heatmap=heatmap,
                                             keep_images=True, um_per_px=um_per_px)
            rows_futs: list[tuple[FieldResult, Future[dict[str, str]] | None]] = []
            for p, r in zip(chunk, analysed, strict=True):
                rgb, r.image = r.image, None
                rows_futs.append((r, None if rgb is None else pool.submit(write_pngs, r, rgb, output_stem(p))))
            for r, fut in rows_futs:
                saved = fut.result() if fut is not None else {"overlay": "", "heatmap": ""}
                row: dict[str, object] = {"path": r.path, "flag": r.flag, "flag_reason": r.flag_reason,
                                          "size_note": r.size_note, **saved,
                                          "rbc_diameter_px": "" if r.rbc_diameter_px is None else r.rbc_diameter_px,
                                          "scale_factor": "" if r.scale_factor is None else r.scale_factor,
                                          "um_per_px": "" if r.um_per_px is None else r.um_per_px,
                                          "scale_source": r.scale_source, "no_call_reason": r.no_call_reason,
                                          "cell_model": r.cell_model or "", "scale_warning": r.scale_warning}
                if r.no_call_reason == NO_LEUKOCYTE:
                    row["cell_count"] = r.cell_count  # 0 leukocytes (cells called no leukocyte may be outlined)
                if r.label is not None:
                    row.update({"label": r.label, "confidence": f"{r.confidence:.4f}",
                                "malignant_probability": f"{r.malignant_probability:.4f}",
                                "cell_count": r.cell_count,
                                "ood_score": "" if r.ood_score is None else f"{r.ood_score:.4f}",
                                "analysis_ms": f"{r.timings_ms.get('total', 0):.1f}"})
                    row.update({f"prob_{c}": f"{r.probabilities.get(c, 0.0):.4f}" for c in classes})
                writer.writerow(row)
                results.append(r.to_dict() | saved)
                r.mask = r.nucleus_mask = r.instances = r.heatmap = None  # keep memory flat on big folders
                all_results.append(r)
                progress.update(task, advance=1, last=Path(r.path or "").name[:40])
            fh.flush()
    case = asdict(analysis.summarize(all_results))
    doc = {"n_fields": len(files), "seconds": round(time.perf_counter() - t_start, 2), "um_per_px": um_per_px,
           "models": analysis.describe(), "case": case, "fields": results, "skipped": skipped,
           "columns": columns}
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(json_path)
    return {"n_fields": len(files), "csv": str(csv_path), "json": str(json_path), "case": case,
            "skipped": skipped}
