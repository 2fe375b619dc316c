"""Loss: weighted BCE + soft Dice per target channel, with focal loss as an option.

The original final pipeline used ``0.3 x BCE + 0.7 x Dice`` on one channel. With the
footprint/boundary/contact targets each channel gets its own BCE and Dice, and the channels are
weighted (``loss.channel_weights``): the footprint matters most, the thin boundary and contact
channels teach the model where buildings separate.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rooftrace.config import LossConfig


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` per sample and channel, shape ``(N, C)``; ``eps`` keeps empty tiles defined."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum((2, 3))
    union = p.sum((2, 3)) + t.sum((2, 3))
    return 1.0 - (2.0 * inter + eps) / (union + eps)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss per sample and channel, ``(N, C)`` (mean over pixels)."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean((2, 3))


class SegmentationLoss(nn.Module):
    """``sum_c w_c * (bce * BCE_c + dice * Dice_c + focal * Focal_c) / sum_c w_c``, averaged over samples."""

    def __init__(self, cfg: LossConfig, channels: int):
        super().__init__()
        self.cfg = cfg
        w: Sequence[float] = cfg.channel_weights[:channels]
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32) / float(sum(w)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = torch.zeros(logits.shape[:2], device=logits.device)
        if self.cfg.bce:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean((2, 3))
            per = per + self.cfg.bce * bce
        if self.cfg.dice:
            per = per + self.cfg.dice * soft_dice_loss(logits, target)
        if self.cfg.focal:
            per = per + self.cfg.focal * focal_loss(logits, target, self.cfg.focal_gamma)
        return (per * self.weights).sum(1).mean()
