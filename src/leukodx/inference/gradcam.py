"""Grad-CAM (Selvaraju et al. 2017) on a classifier's last convolutional stage, with no extra dependency.

The target layer is found by running the model once: the last module, in execution order, whose output is a
feature map (4-D, spatial size > 1). For the project's SmearNet that is its feature stack; for timm backbones
the last stage.

    >>> cam = GradCAM(model)
    >>> heat = cam(batch, class_index=[2])      # N x H x W in [0, 1], at the input resolution
"""

from __future__ import annotations

import numpy as np


class GradCAM:
    def __init__(self, model, target_layer=None):
        self.model = model.eval()
        self.layer = target_layer
        self._act = None
        self._grad = None

    def _find_layer(self, x):
        import torch

        order: list = []
        hooks = []

        def rec(module, _inp, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
                order.append(module)

        for m in self.model.modules():
            if m is not self.model:
                hooks.append(m.register_forward_hook(rec))
        try:
            with torch.no_grad():
                self.model(x[:1])
        finally:
            for h in hooks:
                h.remove()
        if not order:
            raise RuntimeError("no convolutional feature map found for Grad-CAM")
        return order[-1]

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
        act, grad = self._act.detach(), self._grad.detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = cam.numpy()
        out = np.zeros_like(cam, dtype=np.float32)
        for i, c in enumerate(cam):
            hi = float(c.max())
            out[i] = c / hi if hi > 0 else 0.0
        self._act = self._grad = None
        return out
