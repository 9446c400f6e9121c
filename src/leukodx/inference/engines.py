"""Inference engines: ONNX Runtime (the default CPU engine) and PyTorch eager, behind one small interface.

An engine takes a float32 batch N x 3 x H x W with RGB values in 0..255 and returns a dict of named outputs:
``logits`` always, ``features`` (penultimate features, for the out-of-distribution score) for classifiers.

    >>> eng = load_engine("src/leukodx/assets/classifier", cfg, engine="onnx", threads=2)
    >>> out = eng.run(batch)            # {"logits": N x C, "features": N x D}
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from leukodx.cpus import usable_cores
from leukodx.errors import ModelError
from leukodx.io import file_sha256
from leukodx.models.model_config import ModelConfig

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME = "image"
ENGINES = ("onnx", "onnx-int8", "torch")




# ---------------------------------------------------------------------------------------------------------------
# PyTorch


def last_linear(model):
    """The model's last nn.Linear (the classification head), or None."""
    from torch import nn

    found = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            found = m
    return found


def with_features(model, cam_input_size: tuple[int, int] | None = None):
    """Wrap a classifier so it returns (logits, features): features are the input of its last nn.Linear
    (the penultimate representation). Without a linear head, the logits double as features.

    With `cam_input_size` (H, W), it also returns the class activation maps N x classes x h x w: the head's
    weights applied to the last feature map (Zhou et al. 2016), exact for a global-average-pool + linear head,
    which makes a heat map a by-product of the forward pass (in the ONNX graph too; no gradients, no torch at a
    clinic). Models whose head is not linear on the pooled last feature map get no CAM output."""
    import torch
    from torch import nn

    head = last_linear(model)
    layer = None
    if cam_input_size is not None and head is not None:
        from leukodx.inference.gradcam import feature_map_layer

        layer, channels = feature_map_layer(model, cam_input_size)
        if channels != head.in_features:
            layer = None

    class ClassifierWithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.has_cam = layer is not None
            self._local = threading.local()  # per thread: another thread's forward must not swap them
            if head is not None:
                head.register_forward_pre_hook(self._grab)
            if layer is not None:
                layer.register_forward_hook(self._grab_map)

        def _grab(self, _module, inputs):
            self._local.features = inputs[0]

        def _grab_map(self, _module, _inputs, output):
            self._local.feature_map = output

        def forward(self, x: torch.Tensor):
            logits = self.model(x)
            feats = getattr(self._local, "features", None) if head is not None else logits
            self._local.features = None
            if feats is None:
                raise RuntimeError("the classifier head's input was not captured in this forward pass")
            if not self.has_cam:
                return logits, feats.flatten(1)
            fmap, self._local.feature_map = self._local.feature_map, None
            return logits, feats.flatten(1), torch.einsum("kc,nchw->nkhw", head.weight, fmap)

    return ClassifierWithFeatures().eval()


class TorchEngine:
    """PyTorch eager on the CPU (torch.set_num_threads(threads))."""

    name = "torch"

    def __init__(self, model, task: str, threads: int | None = None, input_size: tuple[int, int] | None = None):
        import torch

        self.threads = threads or usable_cores()
        torch.set_num_threads(self.threads)
        self.task = task
        self.model = model.eval()
        self.net = with_features(self.model, input_size) if task == "classify" else self.model
        self.source = "model.safetensors (PyTorch eager)"
        self._lock = threading.Lock()  # the features hook keeps state: one call at a time

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with self._lock, torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if self.task == "classify":
            names = ("logits", "features", "cam")
            return {k: v.detach().float().numpy() for k, v in zip(names, out, strict=False)}
        return {"logits": out.detach().float().numpy()}


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
        raise ModelError(f"{path} returns logits of shape {out_shape}, not N x 1 x H x W: it is not a "
                         "segmenter's export.", redo)


class OnnxEngine:
    """ONNX Runtime on the CPU: one session, created once; intra-op threads set explicitly, inter-op 1."""

    name = "onnx"

    def __init__(self, path: str | Path, config: ModelConfig, threads: int | None = None,
                 verify_weights: bool = True):
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads or usable_cores()
        self.task = config.task
        if verify_weights:
            check_onnx_record(self.path, config)
        try:
            self.sess = ort.InferenceSession(str(self.path), sess_options=session_options(self.threads),
                                             providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's to fix
            raise ModelError(f"{self.path} cannot be loaded by ONNX Runtime ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200]}).",
                             f"Re-export it: leukodx export onnx --model {self.path.parent} --out {self.path}") from None
        check_onnx_session(self.sess, self.path, config)
        if verify_weights:
            check_onnx_metadata(self.sess, self.path, config)
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.source = self.path.name + " (ONNX Runtime)"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        res = self.sess.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.outputs, res, strict=True))


def check_onnx_metadata(sess, path: Path, config: ModelConfig) -> None:
    """The ONNX file names the weights it was exported from: they must be the model directory's weights."""
    import json

    meta = sess.get_modelmeta().custom_metadata_map or {}
    redo = f"Re-export it: leukodx export onnx --model {path.parent} --out {path.parent / ONNX_FILE}"
    wsha = meta.get("leukodx_weights_sha256")
    weights = path.parent / "model.safetensors"
    if wsha and weights.is_file() and file_sha256(weights) != wsha:
        raise ModelError(f"{path} was exported from other weights than {weights} (the model was retrained or "
                         "the files were mixed).", redo)
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
    entry = None
    if rec.get("file") == path.name:
        entry = rec
    elif (rec.get("int8") or {}).get("file") == path.name:
        entry = rec["int8"]
    if entry is None:
        return
    want = entry.get("sha256")
    if want and file_sha256(path) != want:
        raise ModelError(f"{path} is not the file recorded in config.json (its checksum differs): it was replaced "
                         "or belongs to another model.", redo)
    wsha = rec.get("weights_sha256")
    weights = path.parent / "model.safetensors"
    if wsha and weights.is_file() and file_sha256(weights) != wsha:
        raise ModelError(f"{path} was exported from other weights than {weights} (the model was retrained or "
                         "the files were mixed).", redo)


def load_engine(model_dir: str | Path, config: ModelConfig, engine: str = "onnx", threads: int | None = None,
                torch_model=None):
    """The engine for one model directory. engine "onnx" uses model.onnx when present (else PyTorch, noted in
    `.source`), "onnx-int8" uses model.int8.onnx (else model.onnx), "torch" uses PyTorch eager."""
    if engine not in ENGINES:
        raise ModelError(f"Unknown engine {engine!r}.", f"Use one of: {', '.join(ENGINES)}.")
    d = Path(model_dir)
    if engine == "onnx-int8" and (d / INT8_FILE).is_file():
        return OnnxEngine(d / INT8_FILE, config, threads)
    if engine in ("onnx", "onnx-int8") and (d / ONNX_FILE).is_file():
        return OnnxEngine(d / ONNX_FILE, config, threads)
    if torch_model is None:
        from leukodx.models.checkpoint import load_model

        torch_model, _ = load_model(d)
    eng = TorchEngine(torch_model, config.task, threads, config.input_size)
    if engine != "torch":
        eng.source = f"model.safetensors (PyTorch eager: no {ONNX_FILE} in {d}; run `leukodx export onnx`)"
    return eng
