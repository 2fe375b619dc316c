"""Freezing the first layers of a network's encoder while the rest trains (``train.freeze_encoder``).

Detection and segmentation codebases fine-tune with the backbone's first stages frozen (weights and
BatchNorm statistics): their low-level filters are generic, and the backward through the largest feature
maps, the costliest part of a step, is skipped. Here the frozen layers are chosen by where they run, not by
their names, so that every encoder of ``segmentation_models_pytorch`` and timm is covered: depth ``N``
freezes the encoder layers whose outputs are at 1/2 .. 1/2^N of the input's size (``N`` at least the
encoder's depth: the whole encoder). One forward of a small input with hooks finds them.

A frozen parameter gets no gradient, so AdamW leaves it (and keeps no state for it) and weight decay does
not shrink it; the frozen BatchNorm layers are put back in eval mode after every ``model.train()``
(:func:`hold_norms`), so their running statistics stay those of the starting weights.
"""

from __future__ import annotations

import torch
from torch import nn

#: The normalisation layers whose running statistics a frozen layer keeps.
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

_PROBE = 64  #: side of the probe input: 1/32 of it is still 2 x 2, enough to tell every stride apart


def encoder_layers_up_to(model: nn.Module, depth: int) -> list[nn.Module]:
    """The modules of ``model.encoder`` that hold parameters and whose outputs are at 1/1 .. 1/2^``depth``
    of the input's size (1/1: a layer before the first stride), in the encoder's module order. A module
    the probe does not run (timm's unused classifier head) is left out: it gets no gradient anyway.
    ``depth`` 0 gives none, for any model. Raises ``ValueError`` for a model without an ``encoder``."""
    if depth <= 0:
        return []
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no encoder to freeze")
    first = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{type(encoder).__name__}: no convolution to find the encoder's input channels from")
    # Modules holding parameters of their own (timm's BatchNormAct2d holds its activation as a child).
    owners = [m for m in encoder.modules() if any(True for _ in m.parameters(recurse=False))]
    sizes: dict[int, int] = {}

    def hook(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and id(module) not in sizes:
            sizes[id(module)] = int(output.shape[-1])

    handles = [m.register_forward_hook(hook) for m in owners]
    modes = [m.training for m in encoder.modules()]
    p = next(iter(encoder.parameters()))
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, first.in_channels, _PROBE, _PROBE, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(encoder.modules(), modes):
            m.training = mode
    smallest = _PROBE >> depth
    return [m for m in owners if id(m) in sizes and sizes[id(m)] >= smallest]


def freeze(modules: list[nn.Module]) -> list[nn.Module]:
    """Stop gradients to every parameter of ``modules``; return their normalisation layers, for
    :func:`hold_norms`."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    return [m for m in modules if isinstance(m, NORM_TYPES)]


def hold_norms(norms: list[nn.Module]) -> None:
    """Put frozen normalisation layers in eval mode (their running statistics neither used from the batch nor
    updated); call after every ``model.train()``."""
    for m in norms:
        m.eval()
