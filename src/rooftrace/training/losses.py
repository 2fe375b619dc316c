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


class TolerantLoss(SegmentationLoss):
    """:class:`SegmentationLoss` that forgives confident buildings outside the labels (``rooftrace finetune``).

    OpenStreetMap never maps every building: a pixel outside the labels where the network is confident
    (footprint probability above ``confident``) may be an unmapped building, and a full-weight loss there
    teaches the network to miss such buildings. Those pixels weigh ``unlabelled_weight`` (0: ignored, 1:
    the plain loss) in every channel's BCE, Dice and focal terms; the weights are computed from the
    network's own output, detached, so they steer nothing themselves.
    """

    def __init__(self, cfg: LossConfig, channels: int, unlabelled_weight: float = 0.2, confident: float = 0.8):
        super().__init__(cfg, channels)
        self.unlabelled_weight = float(unlabelled_weight)
        self.confident = float(confident)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.unlabelled_weight >= 1.0:
            return super().forward(logits, target)
        logits, target = logits.float(), target.float()
        with torch.no_grad():
            outside = (target[:, :1] < 0.5) & (torch.sigmoid(logits[:, :1]) > self.confident)
            w = torch.where(outside, torch.full_like(target[:, :1], self.unlabelled_weight), torch.ones_like(target[:, :1]))
            w = w.expand_as(target)
            wsum = w.sum((2, 3)).clamp(min=1.0)
        per = torch.zeros(logits.shape[:2], device=logits.device)
        if self.cfg.bce:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            per = per + self.cfg.bce * (bce * w).sum((2, 3)) / wsum
        if self.cfg.dice:
            p = torch.sigmoid(logits) * w
            t = target * w
            inter = (p * t).sum((2, 3))
            per = per + self.cfg.dice * (1.0 - (2.0 * inter + 1.0) / (p.sum((2, 3)) + t.sum((2, 3)) + 1.0))
        if self.cfg.focal:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            focal = (1 - torch.exp(-bce)) ** self.cfg.focal_gamma * bce
            per = per + self.cfg.focal * (focal * w).sum((2, 3)) / wsum
        return (per * self.weights).sum(1).mean()
