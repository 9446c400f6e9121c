"""Grad-CAM (Selvaraju et al. 2017) on a classifier's last convolutional stage, with no extra dependency.

The target layer is found by running the model once: the last module, in execution order, whose output is a
feature map (4-D, spatial size > 1). For the project's SmearNet that is its feature stack; for timm backbones
the last stage.

    >>> cam = GradCAM(model)
    >>> heat = cam(batch, class_index=[2])      # N x H x W in [0, 1], at the input resolution
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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

    def _find_layer(self, x):
        return feature_map_layer(self.model, tuple(x.shape[-2:]))[0]

    def __call__(self, x, class_index) -> np.ndarray:
        """x: float tensor N x 3 x H x W (0..255); class_index: one int per image. Returns N x H x W in [0, 1]."""
        import torch
        import torch.nn.functional as F

        if self.layer is None:
            self.layer = self._find_layer(x)

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
        out = np.zeros_like(maps, dtype=np.float32)
        for i, c in enumerate(maps):
            hi = float(c.max())
            out[i] = c / hi if hi > 0 else 0.0
        self._act = self._grad = None
        return out
