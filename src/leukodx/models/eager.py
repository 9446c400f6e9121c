"""PyTorch eager inference for the training install: the eager engine, the classifier wrapped to return its
features and class activation maps (what `export onnx` puts in the ONNX graph), and Grad-CAM for comparison.

The clinic runtime (leukodx.inference) runs ONNX files only; evaluation, studies, calibration and export pass
`load_eager` to it where PyTorch should run.

    >>> eng = load_eager(Path("runs/cls"), read_model_config("runs/cls"), threads=2)
    >>> out = eng.run(batch)            # {"logits": N x C, "features": N x D, "cam": N x C x h x w}
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leukodx.cpus import usable_cores
from leukodx.errors import ModelError

if TYPE_CHECKING:
    import torch

    from leukodx.models.model_config import ModelConfig


def feature_map_layer(model, size: tuple[int, int]):
    """(module, channels): the last module, in execution order, whose output is a feature map (4-D, spatial size
    > 1) on a size[0] x size[1] input; raises RuntimeError when there is none."""
    import torch

    found: list = []
    hooks = []

    def rec(module, _inp, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            found.append((module, int(out.shape[1])))

    for m in model.modules():
        if m is not model:
            hooks.append(m.register_forward_hook(rec))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, int(size[0]), int(size[1])))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not found:
        raise RuntimeError("no convolutional feature map found for a class activation map")
    return found[-1]


class GradCAM:
    def __init__(self, model, target_layer=None):
        self.model = model.eval()
        self.layer = target_layer
        self._act: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    def __call__(self, x, class_index) -> np.ndarray:
        """x: float tensor N x 3 x H x W (0..255); class_index: one int per image. Returns N x H x W in [0, 1]."""
        import torch
        import torch.nn.functional as F

        if self.layer is None:
            self.layer = feature_map_layer(self.model, tuple(x.shape[-2:]))[0]

        def fwd(_m, _i, out):
            if not out.requires_grad:  # another thread's no-grad forward through the shared model: not ours
                return
            self._act = out
            out.register_hook(lambda g: setattr(self, "_grad", g))

        h = self.layer.register_forward_hook(fwd)
        try:
            with torch.enable_grad():
                inp = x.detach().clone().requires_grad_(False)
                logits = self.model(inp)
                idx = torch.as_tensor(list(class_index), dtype=torch.long).view(-1, 1)
                self.model.zero_grad(set_to_none=True)
                logits.gather(1, idx).sum().backward()
        finally:
            h.remove()
        if self._act is None or self._grad is None:
            raise RuntimeError("Grad-CAM: the target layer's activations or gradients were not captured")
        act, grad = self._act.detach(), self._grad.detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = cam.numpy()
        hi = maps.max(axis=(1, 2), keepdims=True)  # each map scaled to a maximum of 1
        out = np.divide(maps, hi, out=np.zeros_like(maps, dtype=np.float32), where=hi > 0)
        self._act = self._grad = None
        return out


def last_linear(model):
    """The model's last nn.Linear (the classification head), or None."""
    from torch import nn

    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


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
        layer, channels = feature_map_layer(model, cam_input_size)
        # a head on concatenated [mean, max] pools (SmearNet) gets the map of both halves' weights: exact for the
        # mean half, the max half's weight spread as if it were averaged
        pools = head.in_features // channels if head.in_features % channels == 0 else 0
        if pools not in (1, 2):
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
            w = head.weight.reshape(head.weight.shape[0], -1, fmap.shape[1]).sum(1)
            return logits, feats.flatten(1), torch.einsum("kc,nchw->nkhw", w, fmap)

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


def load_eager(model_dir: Path, config: ModelConfig, threads: int | None = None) -> TorchEngine:
    """The PyTorch engine of a model directory (leukodx.inference.engines.load_engine's `eager`)."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise ModelError(f"{model_dir} needs PyTorch (no model.onnx, or --engine torch), which this install lacks.",
                         "pip install 'leukodx[train]', or export the model: leukodx export onnx --model "
                         f"{model_dir} --out {Path(model_dir) / 'model.onnx'}") from None
    from leukodx.models.checkpoint import load_model

    return TorchEngine(load_model(model_dir)[0], config.task, threads, config.input_size)
