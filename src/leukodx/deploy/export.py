"""ONNX export of a model directory, verified against PyTorch, with optional int8 static quantisation.

    >>> report = export_onnx("runs/cls", "runs/cls/model.onnx")          # fp32, checked against PyTorch
    >>> report = export_onnx("runs/cls", "runs/cls/model.onnx", int8=True, calibration="data/")

Inputs and outputs are those of RUN/model.onnx in docs/architecture.md (dynamic batch). When the file is
written inside the model directory, the export is recorded in its config.json under ``onnx``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from leukodx.errors import DatasetError, ModelError
from leukodx.inference.engines import INPUT_NAME, INT8_FILE, session_options
from leukodx.io import file_sha256
from leukodx.models.eager import with_features

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3  # max abs difference of logits, relative to max(1, |logits|)
INT8_MAX_DROP_POINTS = 0.3


def _export_module(net, example, path: Path, output_names: list[str], opset: int) -> None:
    import torch

    dyn = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: fast, and fine for these plain CNNs
            torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                              external_data=False)
    tmp.replace(path)


def stamp_metadata(path: Path, model_dir: Path, config: dict) -> None:
    """Write into the ONNX file which weights and config it was exported from (checked when it is loaded)."""
    import onnx

    m = onnx.load(str(path))
    stamp = {
        "leukodx_weights_sha256": file_sha256(model_dir / "model.safetensors"),
        "leukodx_task": str(config.get("task")),
        "leukodx_arch": str(config.get("arch")),
        "leukodx_input_size": json.dumps(config.get("input_size")),
        "leukodx_classes": json.dumps(config.get("classes") or []),
    }
    others = {p.key: p.value for p in m.metadata_props if p.key not in stamp}
    onnx.helper.set_model_props(m, others | stamp)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(m, str(tmp))
    tmp.replace(path)


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def _sample_inputs(config: dict, data: str | Path | None, n: int = 4, seed: int = 0) -> np.ndarray:
    """A verification batch: real fields from `data` when given, else synthetic smear fields."""
    h, w = config["input_size"]
    if data is not None:
        return np.stack([_prep(it.image, h, w) for it in _dataset_items(data)[:n]])
    from leukodx.data.synthetic import MORPHOLOGY, synthetic_field

    classes = tuple(MORPHOLOGY)
    fields = (synthetic_field(classes[i % 4], max(h, w), seed=seed + i)[0] for i in range(n))
    return np.stack([_prep(rgb, h, w) for rgb in fields])


def _prep(image, h: int, w: int) -> np.ndarray:
    """One field (path, array or PIL image) resized whole to the model input, as 3 x h x w float32 0..255."""
    from leukodx.data.images import read_field
    from leukodx.inference.tiling import resize_rgb, to_batch

    return to_batch([resize_rgb(read_field(image), h, w)])[0]


def _dataset_items(data: str | Path) -> list:
    """The data folder's samples (leukodx.data.layout.Sample) in a fixed shuffled order."""
    from leukodx.data.layout import load_dataset

    items = list(load_dataset(data).samples)
    if not items:
        raise DatasetError(f"{data} holds no images.", "Give the data folder the model was trained on.")
    return [items[i] for i in np.random.default_rng(0).permutation(len(items))]


def verify_against_torch(net, path: Path, example: np.ndarray, output_names: list[str]) -> float:
    """Run PyTorch and ONNX Runtime on the same batch (and a different batch size); max abs difference of logits."""
    import torch

    sess = _ort_session(path)
    worst = 0.0
    for batch in (example, example[:1]):
        with torch.inference_mode():
            ref = net(torch.from_numpy(batch))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(output_names, {INPUT_NAME: batch})
        for name, r, g in zip(output_names, ref, got, strict=True):
            if r.shape != g.shape:
                raise ModelError(f"{path}: output {name} has shape {g.shape} in ONNX Runtime but {tuple(r.shape)} "
                                 "in PyTorch.", "Report this export failure with the architecture name.")
        worst = max(worst, float(np.abs(ref[0].numpy() - got[0]).max()))
    return worst


def export_onnx(model_dir: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, int8: bool = False,
                calibration: str | Path | None = None, eval_data: str | Path | None = None,
                tolerance: float = DEFAULT_TOLERANCE, n_calibration: int = 200, n_eval: int = 400,
                split_csv: str | Path | None = None) -> dict:
    """Export `model_dir` to `out`, verify it against PyTorch, optionally add an int8 model; returns a report."""
    import torch

    from leukodx.models.checkpoint import CONFIG, load_model

    d = Path(model_dir)
    model, config = load_model(d)
    out = Path(out)
    task = config["task"]
    if "input_size" not in config:
        raise ModelError(f"{d / CONFIG} has no input_size.", "Retrain the model with this version of leukodx.")
    torch.manual_seed(0)
    net = with_features(model, tuple(config["input_size"])) if task == "classify" else model
    net.eval()
    output_names = (["logits", "features"] + (["cam"] if net.has_cam else [])) if task == "classify" else ["logits"]
    example = _sample_inputs(config, calibration, n=4)
    t0 = time.perf_counter()
    _export_module(net, torch.from_numpy(example), out, output_names, opset)
    stamp_metadata(out, d, config)
    net.eval()
    max_diff = verify_against_torch(net, out, example, output_names)
    with torch.inference_mode():
        logits = net(torch.from_numpy(example))
    allowed = tolerance * max(1.0, float((logits[0] if task == "classify" else logits).abs().max()))
    report = {
        "file": out.name, "path": str(out), "task": task, "opset": opset, "inputs": [INPUT_NAME],
        "outputs": output_names, "dynamic_batch": True, "input_size": config["input_size"],
        "max_abs_diff": max_diff, "tolerance": allowed, "export_seconds": round(time.perf_counter() - t0, 2),
        "sha256": file_sha256(out), "weights_sha256": file_sha256(d / "model.safetensors"),
        "size_mb": round(out.stat().st_size / 1e6, 2),
    }
    if not np.isfinite(max_diff) or max_diff > allowed:
        out.unlink(missing_ok=True)
        raise ModelError(f"The ONNX export of {d} differs from PyTorch by {max_diff:.3g} (> tolerance {allowed:.3g}); "
                         "the file was not kept.", "Try another --opset, or report the architecture.")
    if int8:
        if calibration is None:
            raise DatasetError("--int8 needs --calibration DATA (real images to calibrate the int8 ranges).",
                               "Give the data folder the model was trained on.")
        report["int8"] = quantize_int8(out, config, calibration, eval_data, n_calibration, n_eval,
                                       split_csv=split_csv, model_dir=d)
    if out.resolve().parent == d.resolve():
        from leukodx.models.model_config import update_model_config

        update_model_config(d, onnx={k: v for k, v in report.items() if k != "path"})
        report["recorded_in"] = str(d / CONFIG)
    return report


def _score_onnx(path: Path, samples, config: dict) -> float:
    """Accuracy (classification) or global Dice (segmentation) in %, of one ONNX file on `samples`, scored the
    way `leukodx evaluate` scores (the analysis pipeline, fields at their own size)."""
    from leukodx.evaluation.evaluate import evaluate_classifier, evaluate_segmenter, load_models
    from leukodx.models.model_config import write_model_config

    with tempfile.TemporaryDirectory(prefix="leukodx-int8-") as tmp:
        d = Path(tmp)
        shutil.copyfile(path, d / "model.onnx")
        write_model_config(d, {k: v for k, v in config.items() if k != "onnx"})
        if (path.parent / "ood_features.npz").is_file():  # the OOD statistics config.json names (classifiers)
            shutil.copyfile(path.parent / "ood_features.npz", d / "ood_features.npz")
        em = load_models([d], engine="onnx")[0][0]
        if config["task"] == "classify":
            return 100.0 * evaluate_classifier(em, list(samples))["metrics"]["accuracy"]
        return 100.0 * (evaluate_segmenter(em, list(samples))["metrics"]["dice_global"] or 0.0)


def float_nodes(path: str | Path) -> list[str]:
    """The nodes int8 leaves in float:

    - the per-image normalisation a leukodx model starts with (mean, variance, square root, division: its
      `normalize` module, everything before the first convolution): quantised, the squares and the root lose
      the image's contrast and the model collapses (the classifier fell to 25.8 % on validation);
    - the shape arithmetic (TF-style "same" padding, resize targets: Shape -> Cast -> Div -> Ceil -> ...):
      quantised, a pad comes out a pixel off (the segmenter's decoder then fails to concatenate).
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    out = []
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            break
        out.append(n.name)
    static = {i.name for i in g.initializer}
    for n in g.node:
        if n.op_type in ("Shape", "Constant", "ConstantOfShape", "Size") or (
                n.input and all(i in static or i == "" for i in n.input)):
            static.update(n.output)
            out.append(n.name)
    return sorted(set(out))


def _end_convs(path: Path, first: int, last: int) -> list[str]:
    import onnx

    convs = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
             if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    return convs[:first] + (convs[len(convs) - last:] if last else [])


def quantize_file(fp32_path: Path, out: Path, batches, method: str = "minmax", float_convs: tuple[int, int] = (0, 0)
                  ) -> None:
    """Static int8 of one ONNX file (QDQ, weights per channel and symmetric, activations uint8 from min/max
    ranges over `batches`, each an N x 3 x H x W float32 input; method "percentile": the 0.01-99.99th
    percentiles instead), the per-image normalisation and the shape arithmetic left in float (`float_nodes`);
    `float_convs` (first, last): that many convolutions at the start and the end of the graph left float too."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            nxt = next(self._it, None)
            return None if nxt is None else {INPUT_NAME: np.ascontiguousarray(nxt, dtype=np.float32)}

    pre = out.with_name(out.name + ".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice through the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = fp32_path
            try:  # shape inference + graph optimisation, as ONNX Runtime recommends before quantising
                from onnxruntime.quantization.shape_inference import quant_pre_process

                # where symbolic shape inference gives up it leaves debug files in the working directory
                with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
                    quant_pre_process(str(Path(fp32_path).resolve()), str(pre.resolve()))
                source = pre
            except Exception:  # noqa: BLE001 - optional step
                pass
            quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=float_nodes(source) + _end_convs(source, *float_convs),
                            calibrate_method=(CalibrationMethod.Percentile if method == "percentile"
                                              else CalibrationMethod.MinMax),
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                           "CalibPercentile": 99.99})
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)


def int8_speed(fp32_path: Path, int8_path: Path, size, threads: int | None = 2, n: int = 40,
               batch: int = 1) -> dict:
    """Median time of one call of each file on the same input (batch x 3 x size), interleaved call by call so
    that load from other processes hits both alike; int8 is kept only when it is also faster."""
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, *size)).astype(np.float32)
    sessions = [_ort_session(p, threads) for p in (fp32_path, int8_path)]
    times: list[list[float]] = [[], []]
    for s in sessions:
        for _ in range(3):
            s.run(None, {INPUT_NAME: x})
    for _ in range(n):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {INPUT_NAME: x})
            times[i].append((time.perf_counter() - t0) * 1000)
    f, q = (float(np.median(t)) for t in times)
    return {"fp32_ms_batch1": round(f, 3), "int8_ms_batch1": round(q, 3), "int8_speedup": round(f / q, 2),
            "int8_faster": bool(q < f), "speed_threads": threads}


def accept_int8(fp32: dict[str, float], int8: dict[str, float], speed: dict) -> bool:
    """The one rule that keeps an int8 model: no metric (in %, on validation) loses more than
    INT8_MAX_DROP_POINTS against fp32, and it runs faster (`int8_speed`)."""
    return bool(max(fp32[k] - int8[k] for k in fp32) <= INT8_MAX_DROP_POINTS and speed["int8_faster"])


def _record_int8(d: Path, rec: dict) -> None:
    from leukodx.models.checkpoint import read_config
    from leukodx.models.model_config import update_model_config

    update_model_config(d, onnx=dict(read_config(d).get("onnx") or {}) | {"int8": rec})


def _onnx_of(d: Path) -> Path:
    if not (d / "model.onnx").is_file():
        raise ModelError(f"{d} has no model.onnx to quantise.", f"Export it first: leukodx export onnx --model {d}")
    return d / "model.onnx"


def add_int8(model_dir: str | Path, calibration: str | Path, *, eval_data: str | Path | None = None,
             split_csv: str | Path | None = None, n_calibration: int = 200, n_eval: int = 400) -> dict:
    """int8 for a model directory's existing model.onnx (no new fp32 export): quantised, judged (accuracy or
    Dice on validation, and speed) and, when kept, recorded in config.json under onnx.int8 beside the file."""
    from leukodx.models.checkpoint import read_config

    d = Path(model_dir)
    rec = quantize_int8(_onnx_of(d), read_config(d), calibration, eval_data, n_calibration, n_eval,
                        split_csv=split_csv, model_dir=d)
    _record_int8(d, rec)
    return rec


def add_int8_crops(model_dir: str | Path, calib: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                   method: str = "minmax", float_convs: tuple[int, int] = (0, 0), record: bool = True,
                   collect_seconds: float | None = None) -> dict:
    """int8 for a cell-type model directory's model.onnx from its crops (float32 N x 3 x H x W, as the model
    takes them): calibrated on `calib` (training crops), judged by accuracy and balanced accuracy on `x_val`,
    `y_val` (validation crops, class indices) and by speed, kept by `accept_int8`; when kept and `record`,
    written as model.int8.onnx and recorded in config.json under onnx.int8."""
    from leukodx.evaluation.cell_types import balanced_accuracy
    from leukodx.models.checkpoint import read_config

    d = Path(model_dir)
    fp32_path, config = _onnx_of(d), read_config(d)
    temperature = float(config.get("temperature") or 1.0)

    def score(path: Path) -> dict:
        sess = _ort_session(path, 2)
        logits = np.concatenate([sess.run(["logits"], {INPUT_NAME: x_val[i:i + 128]})[0]
                                 for i in range(0, len(x_val), 128)])
        pred = (logits / temperature).argmax(1)
        return {"accuracy": round(100 * float((pred == y_val).mean()), 3),
                "balanced_accuracy": round(100 * balanced_accuracy(pred, y_val), 3), "pred": pred}

    with tempfile.TemporaryDirectory(prefix="leukodx-int8-cells-") as tmp:
        q = Path(tmp) / INT8_FILE
        t1 = time.perf_counter()
        quantize_file(fp32_path, q, (calib[i:i + 16] for i in range(0, len(calib), 16)), method, float_convs)
        stamp_metadata(q, d, config)
        f, i8 = score(fp32_path), score(q)
        speed = int8_speed(fp32_path, q, tuple(config["input_size"]), batch=10)
        metrics = ("accuracy", "balanced_accuracy")
        kept = accept_int8({k: f[k] for k in metrics}, {k: i8[k] for k in metrics}, speed)
        rec = {"file": INT8_FILE if kept else None, "kept": kept, "metric": "accuracy and balanced accuracy",
               **{f"{k}_{v}": r[k] for k in metrics for v, r in (("fp32", f), ("int8", i8))},
               "drop_points": {k: round(f[k] - i8[k], 3) for k in metrics}, "max_drop_points": INT8_MAX_DROP_POINTS,
               "agreement": round(100 * float((f["pred"] == i8["pred"]).mean()), 3),
               "n_calibration": len(calib), "n_eval": len(x_val),
               "eval_data": "validation crops (single-labelled) of the sources in config.json training.sources",
               "calibration_data": "training crops of the same sources", "calibration_method": method,
               "float_convs_first_last": list(float_convs), "quant_format": "QDQ", "per_channel": True,
               "seconds": round(time.perf_counter() - t1, 1), "collect_seconds": collect_seconds, **speed}
        if kept:
            rec |= {"sha256": file_sha256(q), "size_mb": round(q.stat().st_size / 1e6, 2)}
            if record:
                shutil.copyfile(q, d / INT8_FILE)
                _record_int8(d, rec)
    return rec


def quantize_int8(fp32_path: Path, config: dict, calibration: str | Path, eval_data: str | Path | None,
                  n_calibration: int = 200, n_eval: int = 400,
                  split_csv: str | Path | None = None, model_dir: str | Path | None = None) -> dict:
    """Static int8 quantisation (QDQ, per-channel) calibrated on real images; kept only when accuracy
    (classification) or Dice (segmentation) drops by at most 0.3 points against fp32 on held-out images."""
    task = config["task"]
    h, w = config["input_size"]
    items = _dataset_items(calibration)
    if task == "segment":
        items = [it for it in items if it.mask is not None]
        if not items:
            raise DatasetError(f"{calibration} has no reference masks (Segmented/) to check the int8 Dice.",
                               "Give a data folder in the public layout with Segmented/.")
    if split_csv is not None:  # calibrate on training fields, judge on validation fields (else test)
        from leukodx.data.split import read_split

        split_rows = {r["path"]: r["split"] for r in read_split(split_csv, calibration)}
        # keeping or dropping int8 is a model choice: it must not look at the test set when val exists
        part = "val" if "val" in split_rows.values() else "test"
        calib_items = [it for it in items if split_rows.get(it.path) == "train"][:n_calibration]
        eval_items = [it for it in items if split_rows.get(it.path) == part][:n_eval]
        eval_source = f"{part} rows of {split_csv}"
    elif eval_data is not None:
        calib_items = items[:n_calibration]
        eval_items = _dataset_items(eval_data)[:n_eval]
        eval_source = str(eval_data)
    else:  # disjoint parts of the same folder: calibrate on one, judge on the other
        half = len(items) // 2
        calib_items = items[:min(n_calibration, half)]
        eval_items = items[half:half + n_eval]
        eval_source = f"held-out part of {calibration}"

    out = fp32_path.with_name(INT8_FILE) if fp32_path.name == "model.onnx" else fp32_path.with_suffix(".int8.onnx")
    t0 = time.perf_counter()
    quantize_file(fp32_path, out, (_prep(it.image, h, w)[None] for it in calib_items))
    stamp_metadata(out, fp32_path.parent if model_dir is None else Path(model_dir), config)
    metric = "accuracy" if task == "classify" else "dice"
    fp32 = _score_onnx(fp32_path, eval_items, config)
    q = _score_onnx(out, eval_items, config)
    speed = int8_speed(fp32_path, out, (h, w))
    kept = accept_int8({metric: fp32}, {metric: q}, speed)
    rec = {
        "file": out.name, "kept": kept, "metric": metric, f"{metric}_fp32": round(fp32, 3),
        f"{metric}_int8": round(q, 3), "drop_points": round(fp32 - q, 3),
        "max_drop_points": INT8_MAX_DROP_POINTS,
        "n_calibration": len(calib_items), "n_eval": len(eval_items), "eval_data": eval_source,
        "calibration_data": str(calibration), "quant_format": "QDQ", "per_channel": True,
        "seconds": round(time.perf_counter() - t0, 1), **speed,
    }
    if kept:
        rec |= {"sha256": file_sha256(out), "size_mb": round(out.stat().st_size / 1e6, 2)}
    else:
        out.unlink(missing_ok=True)
        rec |= {"file": None, "rejected_file": out.name}
    return rec
