"""Inference engines: ONNX Runtime, the clinic's engine (PyTorch eager, for training and checks, is
leukodx.models.eager.TorchEngine, passed in as `eager`), behind one small interface.

An engine takes a float32 batch N x 3 x H x W with RGB values in 0..255 and returns a dict of named outputs:
``logits`` always, ``features`` (penultimate features, for the out-of-distribution score) for classifiers.

    >>> eng = load_engine("src/leukodx/assets/classifier", cfg, engine="onnx", threads=2)
    >>> out = eng.run(batch)            # {"logits": N x C, "features": N x D}
    >>> probs = softmax(out["logits"] / temperature)   # the one softmax of the clinic runtime
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leukodx.cpus import usable_cores
from leukodx.errors import ModelError
from leukodx.io import file_sha256
from leukodx.models.model_config import ModelConfig

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME = "image"
ENGINES = ("onnx", "onnx-int8", "torch")
EagerLoader = Callable[[Path, ModelConfig, "int | None"], Any]  # (model_dir, config, threads) -> engine


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis of logits `z`, in float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting after a run: the analysis goes on in numpy/scipy (cell splitting, checks) on the same
    # cores, and spinning ONNX Runtime threads would steal them
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def check_onnx_session(sess, path: Path, config: ModelConfig) -> None:
    """Raise ModelError when the ONNX file does not fit its config.json (names, input size, outputs)."""
    redo = f"Re-export it: leukodx export onnx --model {path.parent} --out {path}"
    inputs = sess.get_inputs()
    outputs = [o.name for o in sess.get_outputs()]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelError(f"{path} takes inputs {[i.name for i in inputs]}, not one input named {INPUT_NAME!r}.", redo)
    shape = inputs[0].shape
    want = list(config.input_size)
    if len(shape) != 4 or shape[1] != 3 or (want and [shape[2], shape[3]] != want):
        raise ModelError(f"{path} takes input shape {shape}, but {path.parent / 'config.json'} says "
                         f"input_size {want} (expected [batch, 3, {want[0] if want else 'H'}, {want[1] if want else 'W'}]).",
                         redo)
    if "logits" not in outputs:
        raise ModelError(f"{path} has outputs {outputs}, no 'logits'.", redo)
    out_shape = sess.get_outputs()[outputs.index("logits")].shape
    if config.task == "classify":
        n_cls = len(config.classes)
        if len(out_shape) != 2:
            raise ModelError(f"{path} returns logits of shape {out_shape}, not N x classes: it is not a "
                             "classifier's export.", redo)
        if n_cls and isinstance(out_shape[-1], int) and out_shape[-1] != n_cls:
            raise ModelError(f"{path} returns {out_shape[-1]} classes but config.json lists {n_cls}.", redo)
    elif len(out_shape) != 4:
        raise ModelError(f"{path} returns logits of shape {out_shape}, not N x channels x H x W: it is not a "
                         "segmenter's export.", redo)


class OnnxEngine:
    """ONNX Runtime on the CPU: one session, created once; intra-op threads set explicitly, inter-op 1."""

    name = "onnx"

    def __init__(self, path: str | Path, config: ModelConfig, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads or usable_cores()
        self.task = config.task
        check_onnx_record(self.path, config)
        try:
            self.sess = ort.InferenceSession(str(self.path), sess_options=session_options(self.threads),
                                             providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's to fix
            raise ModelError(f"{self.path} cannot be loaded by ONNX Runtime ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200]}).",
                             f"Re-export it: leukodx export onnx --model {self.path.parent} --out {self.path}") from None
        check_onnx_session(self.sess, self.path, config)
        check_onnx_metadata(self.sess, self.path, config)
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.source = self.path.name + " (ONNX Runtime)"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        res = self.sess.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.outputs, res, strict=True))


def check_onnx_metadata(sess, path: Path, config: ModelConfig) -> None:
    """The ONNX file names the weights it was exported from: they must be the model directory's weights."""
    meta = sess.get_modelmeta().custom_metadata_map or {}
    redo = f"Re-export it: leukodx export onnx --model {path.parent} --out {path.parent / ONNX_FILE}"
    _check_weights(path, meta.get("leukodx_weights_sha256"), redo)
    size = meta.get("leukodx_input_size")
    if size and json.loads(size) != list(config.input_size):
        raise ModelError(f"{path} was exported for input size {json.loads(size)}, but config.json says "
                         f"{list(config.input_size)}.", redo)
    task = meta.get("leukodx_task")
    if task and task != config.task:
        raise ModelError(f"{path} holds a {task!r} model but config.json a {config.task!r} one.", redo)


def check_onnx_record(path: Path, config: ModelConfig) -> None:
    """When config.json recorded the export, the ONNX file and the weights must be the ones exported."""
    rec = config.onnx or {}
    redo = f"Re-export it: leukodx export onnx --model {path.parent} --out {path.parent / ONNX_FILE}"
    entry = next((e for e in (rec, rec.get("int8") or {}) if e.get("file") == path.name), None)
    if entry is None:
        return
    want = entry.get("sha256")
    if want and file_sha256(path) != want:
        raise ModelError(f"{path} is not the file recorded in config.json (its checksum differs): it was replaced "
                         "or belongs to another model.", redo)
    _check_weights(path, rec.get("weights_sha256"), redo)


def _check_weights(path: Path, wsha: str | None, redo: str) -> None:
    weights = path.parent / "model.safetensors"
    if wsha and weights.is_file() and file_sha256(weights) != wsha:
        raise ModelError(f"{path} was exported from other weights than {weights} (the model was retrained or "
                         "the files were mixed).", redo)


def load_engine(model_dir: str | Path, config: ModelConfig, engine: str = "onnx", threads: int | None = None,
                eager: EagerLoader | None = None):
    """The engine for one model directory. engine "onnx" uses model.onnx, "onnx-int8" model.int8.onnx (else
    model.onnx), "torch" PyTorch eager. PyTorch (also for a directory without model.onnx) comes from `eager`
    (leukodx.models.eager.load_eager, which the training install passes): the clinic runtime has no torch."""
    if engine not in ENGINES:
        raise ModelError(f"Unknown engine {engine!r}.", f"Use one of: {', '.join(ENGINES)}.")
    d = Path(model_dir)
    if engine == "onnx-int8" and (d / INT8_FILE).is_file():
        return OnnxEngine(d / INT8_FILE, config, threads)
    if engine in ("onnx", "onnx-int8") and (d / ONNX_FILE).is_file():
        return OnnxEngine(d / ONNX_FILE, config, threads)
    if eager is None:
        raise ModelError(f"{d} has no {ONNX_FILE}" + (", and the PyTorch engine needs the training install."
                                                      if engine == "torch" else "."),
                         f"Export it (leukodx export onnx --model {d} --out {d / ONNX_FILE}), or install "
                         "leukodx[train] to run it in PyTorch.")
    eng = eager(d, config, threads)
    if engine != "torch":
        eng.source = f"model.safetensors (PyTorch eager: no {ONNX_FILE} in {d}; run `leukodx export onnx`)"
    return eng
