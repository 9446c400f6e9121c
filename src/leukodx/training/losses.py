"""Segmentation loss and the Dice used for early stopping (batch-global, at the probability threshold)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROBABILITY_THRESHOLD = 0.5


class DiceBCELoss(nn.Module):
    """BCE-with-logits + (1 - soft Dice), the Dice computed over the whole batch (stable on empty masks)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum()
        dice = (2 * inter + self.smooth) / (p.sum() + target.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)


class DiceScore:
    """Streaming global Dice of thresholded predictions (the early-stopping metric): update(logits, target)."""

    def __init__(self, threshold: float = PROBABILITY_THRESHOLD):
        self.logit_threshold = float(np.log(threshold / (1 - threshold)))
        self.reset()

    def reset(self) -> None:
        self.inter = self.pred = self.ref = 0.0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        p = logits.detach() > self.logit_threshold
        t = target.detach() > 0.5
        self.inter += float((p & t).sum())
        self.pred += float(p.sum())
        self.ref += float(t.sum())

    def compute(self) -> float:
        den = self.pred + self.ref
        return 1.0 if den == 0 else 2 * self.inter / den


# ---------------------------------------------------------------------------------------------------------------
# data
