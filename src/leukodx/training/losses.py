"""The losses: segmentation (one output; two outputs on known pixels only), the cell model's label-set loss, and
the Dice used for early stopping (batch-global, at the probability threshold)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROBABILITY_THRESHOLD = 0.5


class DiceBCELoss(nn.Module):
    """BCE-with-logits + (1 - soft Dice, smoothed by 1) over the whole batch (stable on empty masks)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
        return bce + (1 - dice)


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


def masked_bce_dice(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice, smoothed by 1) per channel on known pixels only (N x C x H x W each), summed over
    channels; a channel with no known pixel in the batch adds nothing. The Dice is batch-global per channel."""
    logits, target, known = logits.float(), target.float(), known.float()
    total = logits.new_zeros(())
    for c in range(logits.shape[1]):
        k = known[:, c]
        n = k.sum()
        if float(n) == 0:
            continue
        lg, t = logits[:, c], target[:, c]
        bce = (F.binary_cross_entropy_with_logits(lg, t, reduction="none") * k).sum() / n
        p = torch.sigmoid(lg) * k
        tt = t * k
        dice = (2 * (p * tt).sum() + 1.0) / (p.sum() + tt.sum() + 1.0)
        total = total + bce + (1 - dice)
    return total


def set_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-log P(label set) per crop, averaged: cross-entropy for a single label (`allowed`: N x classes bool)."""
    inside = torch.logsumexp(logits.masked_fill(~allowed.bool(), float("-inf")), 1)
    return (torch.logsumexp(logits, 1) - inside).mean()
