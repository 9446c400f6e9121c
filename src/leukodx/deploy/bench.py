"""Speed of the analysis on this machine: PyTorch eager vs ONNX Runtime fp32 vs ONNX int8, per stage.

All engines, and the reference study's pipeline on its first `seed_n` fields, run on the same encoded fields
(decoding is measured), interleaved field by field so that load from other processes affects them alike: one
field at a time for latency, a few with the heat map, and the batch API (`analyze_many`) for throughput.

    >>> res = run_bench(n=50, batch_size=16)     # synthetic 224 x 224 fields when no images are given
"""

from __future__ import annotations

import io
import itertools
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leukodx.cpus import logical_cores, usable_cores
from leukodx.errors import DatasetError

if TYPE_CHECKING:
    from leukodx.inference.pipeline import Analysis
    from leukodx.inference.types import FieldResult

ENGINE_KEYS = {"eager": "torch", "onnx": "onnx", "onnx_int8": "onnx-int8"}
STAGES = ("decode", "scale", "classify", "segment", "instances", "cells", "quality", "heatmap")
# issue 23: a field in 20 ms on a clinic's 2 cores, >= 20x the reference study's pipeline in the same run
TARGETS = {"analysis_p50_ms_max": 20.0, "onnx_speedup_min": 2.0, "throughput_fields_per_s_min": 50.0,
           "seed_pipeline_speedup_min": 20.0, "numpy_stages_p50_ms_max": 5.0}
NUMPY_STAGES = ("scale", "instances", "quality")  # smear check + red-cell scale + tiling, cells, flags
MODEL_STAGES = ("classify", "segment", "cells")  # the three networks (cells: crops + the cell model)


def _torch_version() -> str | None:
    try:
        import torch
    except ModuleNotFoundError:  # the clinic install: ONNX Runtime only
        return None
    return torch.__version__


def machine_info(threads: int) -> dict:
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores_logical": logical_cores(), "cores_usable": usable_cores(), "threads": threads,
            "torch": _torch_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def bench_fields(images: str | Path | None, n: int, size: int = 224, seed: int = 0) -> tuple[list[bytes], str]:
    """n encoded fields: from a data folder (first n, sorted) or synthetic size x size JPEGs."""
    from PIL import Image

    if images is not None:
        from leukodx.data.images import is_image_name

        files = sorted(p for p in Path(images).rglob("*") if p.is_file() and is_image_name(p)
                       and "Segmented" not in p.parts)
        if not files:
            raise DatasetError(f"No images found under {images}.", "Give a folder of smear fields.")
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(files), min(n, len(files)), replace=False))
        return [files[i].read_bytes() for i in pick], f"{len(pick)} fields from {images}"
    from leukodx.data.synthetic import MORPHOLOGY, synthetic_field

    classes = tuple(MORPHOLOGY)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(synthetic_field(classes[i % 4], size, seed=seed + i)[0]).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out, f"{n} synthetic {size}x{size} JPEG fields"


def _ensure_onnx(model_dir: Path, tmp: Path) -> tuple[Path, str]:
    """The model dir itself when it has model.onnx; else a temporary copy with a fresh export."""
    if (model_dir / "model.onnx").is_file():
        return model_dir, "model.onnx shipped in the model directory"
    from leukodx.deploy.export import export_onnx

    dst = tmp / model_dir.name
    shutil.copytree(model_dir, dst, ignore=shutil.ignore_patterns("*.onnx"))
    export_onnx(dst, dst / "model.onnx")
    return dst, "model.onnx exported for this benchmark (the model directory has none)"


def _pct(v, q):
    return round(float(np.percentile(v, q)), 3) if len(v) else None


def bench_engines(analyses: dict[str, Analysis], fields: list[bytes], batch_size: int, heatmap_n: int, warmup: int = 3,
                  repeats: int = 1, limits: dict[str, int] | None = None) -> dict:
    """Time every engine on the same fields, interleaved field by field (and batch by batch), so that a burst
    of load from other processes hits all engines alike. `limits`: an engine timed on only its first n fields
    (the slow reference pipeline), still interleaved with the others; no heat maps for it."""
    limits = limits or {}
    n_of = {k: min(limits.get(k, len(fields)), len(fields)) for k in analyses}
    for k, a in analyses.items():
        for f in fields[:min(warmup, n_of[k]) if k in limits else warmup]:
            a.analyze(f)
        if heatmap_n and k not in limits:  # warm the heat-map step up too
            for f in fields[:2]:
                a.analyze(f, heatmap=True)
        a.analyze_many(fields[:min(batch_size, n_of[k])], batch_size=batch_size)  # warm the batch shapes
    totals: dict[str, list[float]] = {k: [] for k in analyses}
    stages: dict[str, dict[str, list[float]]] = {k: {s: [] for s in (*STAGES, "numpy", "models")} for k in analyses}
    for _ in range(repeats):
        for i, f in enumerate(fields):
            for k, a in analyses.items():
                if i >= n_of[k]:
                    continue
                t0 = time.perf_counter()
                r = a.analyze(f)
                totals[k].append((time.perf_counter() - t0) * 1000)
                for s in STAGES[:-1]:
                    stages[k][s].append(r.timings_ms.get(s, 0.0))
                stages[k]["numpy"].append(sum(r.timings_ms.get(s, 0.0) for s in NUMPY_STAGES))
                stages[k]["models"].append(sum(r.timings_ms.get(s, 0.0) for s in MODEL_STAGES))
    for k, a in ((k, a) for k, a in analyses.items() if k not in limits):
        # the first `heatmap_n` fields with a class call: a field without one (no leukocyte) gets no heat map
        maps = (a.analyze(f, heatmap=True).timings_ms.get("heatmap") for f in fields)
        stages[k]["heatmap"] += list(itertools.islice((t for t in maps if t is not None), heatmap_n))
    batch_time = dict.fromkeys(analyses, 0.0)
    done: dict[str, list[FieldResult]] = {k: [] for k in analyses}
    for i in range(0, len(fields), batch_size):
        for k, a in analyses.items():
            if i >= n_of[k]:
                continue
            chunk = fields[i:min(i + batch_size, n_of[k])]
            t0 = time.perf_counter()
            done[k] += a.analyze_many(chunk, batch_size=batch_size)
            batch_time[k] += time.perf_counter() - t0
    out = {}
    for k, a in analyses.items():
        models = a.describe()
        out[k] = {
            "analysis_p50_ms": _pct(totals[k], 50), "analysis_p95_ms": _pct(totals[k], 95),
            "analysis_mean_ms": round(float(np.mean(totals[k])), 3),
            **{f"{s}_p50_ms": _pct(v, 50) for s, v in stages[k].items()},
            "throughput_fields_per_s": round(len(done[k]) / batch_time[k], 2), "throughput_batch_size": batch_size,
            "n_fields": n_of[k], "n_heatmap": len(stages[k]["heatmap"]),
            "classifier_engine": models["classifier"]["engine"], "segmenter_engine": models["segmenter"]["engine"],
            "cell_engine": a.cell_classifier.engine.source if a.cell_classifier is not None else None,
            "flags": {f: sum(r.flag == f for r in done[k]) for f in ("ok", "low_confidence", "out_of_distribution",
                                                                     "unreadable")},
        }
    return out


def _seed_pipeline_dirs(tmp: Path) -> tuple[Path, Path]:
    """The reference study's pipeline, as a baseline: InceptionResNetV2 classifier + the classic U-Net (64 ->
    1024 filters), both at 224 px, PyTorch eager (random weights: the speed does not depend on them)."""
    import torch

    from leukodx.data.synthetic import MORPHOLOGY
    from leukodx.models import create_model, save_model

    torch.manual_seed(0)
    c = save_model(tmp / "seed-classifier", create_model("classify", "inception_resnet_v2", num_classes=4),
                   {"task": "classify", "arch": "inception_resnet_v2", "arch_kwargs": {"num_classes": 4},
                    "classes": list(MORPHOLOGY), "input_size": [224, 224]})
    s = save_model(tmp / "seed-segmenter", create_model("segment", "unet"),
                   {"task": "segment", "arch": "unet", "arch_kwargs": {}, "input_size": [224, 224]})
    return c, s


def run_bench(images: str | Path | None = None, n: int = 50, batch_size: int = 16, threads: int | None = None,
              classifier_dir: str | Path | None = None, segmenter_dir: str | Path | None = None,
              heatmap_n: int = 10, repeats: int = 1, engines: tuple[str, ...] = ("eager", "onnx", "onnx_int8"),
              seed_n: int = 10, log=None) -> dict:
    """Time the engines on the same fields; with `seed_n` > 0 (and torch), also the reference study's pipeline
    (top-level key "seed_pipeline", the same fields as "eager") on the first `seed_n` of them."""
    from leukodx.assets import default_model_dir
    from leukodx.inference.engines import INT8_FILE
    from leukodx.inference.pipeline import Analysis
    from leukodx.models.checkpoint import read_config
    from leukodx.models.eager import load_eager

    threads = threads or usable_cores()
    cdir = Path(classifier_dir) if classifier_dir else default_model_dir("classify")
    sdir = Path(segmenter_dir) if segmenter_dir else default_model_dir("segment")
    size = int(read_config(cdir)["input_size"][0])
    fields, source = bench_fields(images, n, size=224 if images is None else size)
    machine = machine_info(threads)  # before measuring: the load average at the start
    with tempfile.TemporaryDirectory(prefix="leukodx-bench-") as tmp:
        notes = {}
        analyses = {}
        for key in engines:
            engine = ENGINE_KEYS[key]
            if key == "eager" and _torch_version() is None:
                notes[key] = "PyTorch is not installed (the clinic install): pip install 'leukodx[train]' to compare"
                continue
            if key == "onnx_int8":
                from leukodx.inference.cell_classifier import _bundled_dir

                have = [n for n, d in (("classifier", cdir), ("segmenter", sdir), ("cells", _bundled_dir()))
                        if (d / INT8_FILE).is_file()]
                if not have:
                    notes[key] = "no model.int8.onnx in any model directory (none exported, or int8 not kept)"
                    continue
                notes[key] = (f"int8 for {', '.join(have)}; fp32 ONNX for the others (int8 is shipped only where "
                              "it loses <= 0.3 points on validation)")
            c, s = cdir, sdir
            if key == "onnx":
                c, notes["onnx_classifier"] = _ensure_onnx(cdir, Path(tmp))
                s, notes["onnx_segmenter"] = _ensure_onnx(sdir, Path(tmp))
            analyses[key] = Analysis(c, s, engine=engine, threads=threads, eager=load_eager)
        limits = {}
        if seed_n and _torch_version() is not None:
            c, s = _seed_pipeline_dirs(Path(tmp))
            analyses["seed_pipeline"] = Analysis(c, s, engine="torch", threads=threads, eager=load_eager)
            limits["seed_pipeline"] = seed_n
        elif seed_n:
            notes["seed_pipeline"] = "PyTorch is not installed: the reference study's pipeline cannot be timed"
        if log:
            log(f"measuring {', '.join(analyses)} (interleaved; the reference study's pipeline on the first "
                f"{min(seed_n, len(fields))} fields) ...")
        out = bench_engines(analyses, fields, batch_size, heatmap_n, repeats=repeats, limits=limits)
        analyses.clear()
        if "seed_pipeline" in out:
            out["seed_pipeline"].update({"classifier_engine": "inception_resnet_v2 224 px (PyTorch eager)",
                                         "segmenter_engine": "unet 64->1024 224 px (PyTorch eager)"})
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out["machine"] = machine
    out["setup"] = {"fields": source, "n": len(fields), "batch_size": batch_size, "heatmap_n": heatmap_n,
                    "repeats": repeats, "classifier_dir": str(cdir), "segmenter_dir": str(sdir),
                    "classifier_arch": read_config(cdir).get("arch"), "segmenter_arch": read_config(sdir).get("arch"),
                    "notes": notes,
                    "analysis": "decode + classify + segment + cell instances + quality/OOD checks, no heat map; "
                                "one field at a time; throughput via analyze_many; engines interleaved field by "
                                "field (and batch by batch) so load from other processes hits them alike"}
    if "eager" in out and "onnx" in out:
        e, o = out["eager"], out["onnx"]
        out["comparison"] = {"onnx_speedup_p50": round(e["analysis_p50_ms"] / o["analysis_p50_ms"], 2),
                             "onnx_speedup_model_stages": round(
                                 (e["classify_p50_ms"] + e["segment_p50_ms"])
                                 / max(o["classify_p50_ms"] + o["segment_p50_ms"], 1e-9), 2),
                             "onnx_speedup_throughput": round(o["throughput_fields_per_s"]
                                                              / e["throughput_fields_per_s"], 2)}
        if "onnx_int8" in out:
            q = out["onnx_int8"]
            out["comparison"]["int8_speedup_p50_vs_eager"] = round(e["analysis_p50_ms"] / q["analysis_p50_ms"], 2)
    if "seed_pipeline" in out:
        best_p50 = min(out[k]["analysis_p50_ms"] for k in ENGINE_KEYS if k in out)
        out.setdefault("comparison", {})["seed_pipeline_speedup_p50"] = round(
            out["seed_pipeline"]["analysis_p50_ms"] / best_p50, 1)
    best = min((k for k in ENGINE_KEYS if k in out), key=lambda k: out[k]["analysis_p50_ms"], default=None)
    if best:
        out["targets"] = {
            **TARGETS, "fastest_engine": best,
            "analysis_p50_ms_met": out[best]["analysis_p50_ms"] <= TARGETS["analysis_p50_ms_max"],
            "throughput_met": max(out[k]["throughput_fields_per_s"] for k in ENGINE_KEYS if k in out)
            >= TARGETS["throughput_fields_per_s_min"],
            "onnx_speedup_met": (out.get("comparison", {}).get("onnx_speedup_p50", 0) >= TARGETS["onnx_speedup_min"])
            if "comparison" in out else None,
            "seed_pipeline_speedup_met": (out["comparison"]["seed_pipeline_speedup_p50"]
                                          >= TARGETS["seed_pipeline_speedup_min"]) if "seed_pipeline" in out else None,
            "numpy_stages_met": out[best]["numpy_p50_ms"] <= TARGETS["numpy_stages_p50_ms_max"],
        }
    return out


ROWS = [("analysis p50 (ms)", "analysis_p50_ms"), ("analysis p95 (ms)", "analysis_p95_ms"),
        ("  decode p50", "decode_p50_ms"), ("  smear check + scale p50", "scale_p50_ms"),
        ("  classify p50", "classify_p50_ms"),
        ("  segment p50", "segment_p50_ms"), ("  instances p50", "instances_p50_ms"),
        ("  cell calls p50", "cells_p50_ms"),
        ("  quality/OOD p50", "quality_p50_ms"),
        ("numpy stages p50 (scale + instances + flags)", "numpy_p50_ms"),
        ("model stages p50 (classify + segment + cell calls)", "models_p50_ms"), ("heat map p50 (ms)", "heatmap_p50_ms"),
        ("throughput (fields/s)", "throughput_fields_per_s")]


def _loads(v) -> str:
    return "unknown" if not v else ", ".join(f"{x:.2f}" for x in v)


def _load_words(m: dict) -> str:
    """Whether the machine was idle when the measurement began (the load at the end includes this benchmark's
    own threads)."""
    start = m.get("load_average_at_start")
    if not start:
        return "unknown."
    if start[0] <= 0.5:
        return "the machine was idle when it began (the load at the end is mostly this benchmark's own)."
    return (f"the machine was NOT idle (1-min load {start[0]:.2f} on {m.get('cores_usable')} cores before it "
            "began): other work shared the cores, so the times here are pessimistic.")


def bench_markdown(res: dict, command: str) -> str:
    keys = [k for k in (*ENGINE_KEYS, "seed_pipeline") if k in res]
    m = res["machine"]
    lines = ["# Analysis speed benchmark", "", f"Command: `{command}`", "",
             f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, {m['threads']} threads; torch {m['torch']}, "
             f"onnxruntime {m['onnxruntime']}.", "",
             f"Load average (1, 5, 15 min) at start {_loads(m.get('load_average_at_start'))}, at end "
             f"{_loads(m.get('load_average_at_end'))}: {_load_words(m)}", "",
             f"Fields: {res['setup']['fields']}; batch size {res['setup']['batch_size']}; models: classifier "
             f"`{res['setup']['classifier_arch']}` ({res['setup']['classifier_dir']}), segmenter "
             f"`{res['setup']['segmenter_arch']}` ({res['setup']['segmenter_dir']}).", "",
             "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, k in ROWS:
        lines.append(f"| {label.strip()} | " + " | ".join(str(res[e].get(k)) for e in keys) + " |")
    lines.append("")
    for e in keys:
        lines.append(f"- {e}: classifier {res[e]['classifier_engine']}; segmenter {res[e]['segmenter_engine']}"
                     + (f"; cell model {res[e]['cell_engine']}" if res[e].get("cell_engine") else ""))
    if res["setup"].get("notes"):
        lines += ["", "Notes: " + "; ".join(f"{k}: {v}" for k, v in res["setup"]["notes"].items())]
    if "comparison" in res:
        lines += ["", "Comparison: " + ", ".join(f"{k} {v}" for k, v in res["comparison"].items())]
    if "targets" in res:
        t = res["targets"]
        lines += ["", f"Targets: analysis p50 <= {t['analysis_p50_ms_max']} ms: "
                      f"{'met' if t['analysis_p50_ms_met'] else 'NOT met'} (fastest engine {t['fastest_engine']}); "
                      f"ONNX >= {t['onnx_speedup_min']}x eager: "
                      f"{'met' if t['onnx_speedup_met'] else 'NOT met'}; throughput >= "
                      f"{t['throughput_fields_per_s_min']} fields/s: {'met' if t['throughput_met'] else 'NOT met'}"
                      + (f"; >= {t['seed_pipeline_speedup_min']}x the reference pipeline: "
                         f"{'met' if t['seed_pipeline_speedup_met'] else 'NOT met'}"
                         if t.get("seed_pipeline_speedup_met") is not None else "")
                      + (f"; numpy stages <= {t['numpy_stages_p50_ms_max']} ms: "
                         f"{'met' if t['numpy_stages_met'] else 'NOT met'}" if "numpy_stages_met" in t else "")
                      + "."]
    return "\n".join(lines) + "\n"
