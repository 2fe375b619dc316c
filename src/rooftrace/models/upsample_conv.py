"""A U-Net decoder's "upsample by 2, concatenate the skip, 3 x 3 convolution", computed without the upsampling.

Each block of the U-Net decoder doubles its input by nearest-neighbour upsampling, concatenates the encoder's
skip feature and runs a 3 x 3 convolution on the result. The convolution is linear, so it splits in two: one
part over the upsampled channels, one over the skip's. The first part never needs the upsampled tensor. Every
output pixel ``(2i + a, 2j + b)`` reads a 3 x 3 window of the upsampled map, which covers only 2 x 2 distinct
input pixels, so the four output phases ``(a, b)`` are four 2 x 2 convolutions of the input, and together they
are one stride-2 transposed convolution with a 4 x 4 kernel made of sums of the 3 x 3 kernel's taps
(:func:`transposed_weight`). Per output pixel it reads 4 taps of each input channel instead of 9 and never
writes or copies the upsampled, concatenated tensor (the largest tensors of the decoder).

Exact: the same sums in another order. In fp32 the outputs agree to rounding (``tests/models/test_upsample_conv.py``);
under bf16 autocast the summed taps are rounded to bf16 once, so outputs move about as much as bf16 moves
them. Measured on this project's 2-core CPU, the shipped network on batches of 512 x 512 tiles in bf16
(``benchmarks/upsample_conv_speed.py``): see DESIGN.md and the README's performance section.

:func:`use_transposed_upsampling` turns it on in a network: the shipped network's plain-torch build
(:class:`rooftrace.models.lite0.DecoderBlock`), as the inference runtime loads it (``inference.runtime.load_any``,
after the batch norms are folded), and segmentation-models-pytorch's U-Net decoder blocks, as training builds
them (``train.transposed_upsampling``). While gradients flow, the kernel is made from the 3 x 3 weights in every
forward pass, so they train as before; without, it is made once and kept while the weights do not change. The
saved file does not change. ``load_model`` gives the network as written.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from rooftrace.models.swap import swap_forward


def _taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Along ``dim`` (size 3: taps at -1, 0, +1 of the upsampled grid), the 4 taps of the transposed kernel:
    index ``k`` of a stride-2 transposed convolution with padding 1 feeds output ``2i + k - 1`` from input ``i``."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack((w2, w1 + w2, w0 + w1, w0), dim)


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 convolution's weight ``(C_out, C_in, 3, 3)`` applied after nearest 2x upsampling, as the weight
    ``(C_in, C_out, 4, 4)`` of one transposed convolution (stride 2, padding 1) on the input before it."""
    return _taps(_taps(weight, 2), 3).transpose(0, 1)


def doubles(x: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether nearest-neighbour resizing ``x`` to ``size`` repeats each pixel twice in each direction."""
    return tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])


class _Cached:
    """The transposed weight of one convolution, made again only when the weight changes (inference) or
    every call when gradients flow to it (training)."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None


def _weights(conv: nn.Conv2d, up_channels: int, cache: _Cached) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight
    if (w.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return transposed_weight(w[:, :up_channels]), w[:, up_channels:]
    key = (w.data_ptr(), w._version, w.dtype, w.device, up_channels)
    if cache.key != key:
        with torch.no_grad():
            cache.value = transposed_weight(w[:, :up_channels]).contiguous()
        cache.key = key
    return cache.value, w[:, up_channels:]


def upsampled_conv(conv: nn.Conv2d, x: torch.Tensor, skip: torch.Tensor | None, cache: _Cached | None = None) -> torch.Tensor:
    """``conv(cat([upsample2x(x), skip]))`` for a 3 x 3, stride-1, padding-1 ``conv`` (the skip may be None).

    Raises:
        ValueError: ``conv`` is not such a convolution, or its input channels are not ``x``'s plus ``skip``'s.
    """
    if not supports(conv):
        raise ValueError(f"upsampled_conv: {conv} is not a plain 3 x 3, stride-1, padding-1 convolution")
    c_up, c_skip = x.shape[1], 0 if skip is None else skip.shape[1]
    if conv.in_channels != c_up + c_skip:
        raise ValueError(f"upsampled_conv: {conv} takes {conv.in_channels} channels, given {c_up} + {c_skip}")
    w_up, w_skip = _weights(conv, c_up, cache or _Cached())
    y = F.conv_transpose2d(x, w_up, conv.bias, stride=2, padding=1)
    if skip is not None:
        y = y + F.conv2d(skip, w_skip, None, padding=1)
    return y


def supports(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution :func:`upsampled_conv` can run."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def decoder_block_forward(block: nn.Module, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None,
                          mode: str = "nearest") -> torch.Tensor | None:
    """The first convolution of a U-Net decoder block (``block.conv1``: a 3 x 3 convolution, then its
    batch norm and activation) on ``upsample(x) ++ skip``, through :func:`upsampled_conv`; None where the block's
    ``upsample_transposed`` switch is off (:func:`use_transposed_upsampling` turns it on, :func:`as_written` off
    for a while) or where it does not apply (another resize than nearest 2x, another convolution), so the caller
    runs the block as written."""
    conv = block.conv1[0]
    if (not getattr(block, "upsample_transposed", False) or mode != "nearest" or not doubles(x, size)
            or not supports(conv)):
        return None
    cache = block.__dict__.setdefault("_transposed_cache", _Cached())
    y = upsampled_conv(conv, x, skip, cache)
    for layer in list(block.conv1)[1:]:
        y = layer(y)
    return y


@contextmanager
def as_written(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its decoder blocks upsampling as written for the duration (each switch
    :func:`use_transposed_upsampling` turned on, off), then as they were: what an ONNX graph is exported from, since ONNX Runtime runs the plain
    decoder faster than its transposed convolutions (on this project's CPU a 512 x 512 tile took 137 against
    172 ms, the same probabilities within 2e-7; a one-off script over ``models.onnx_graph.graph_bytes``)."""
    blocks = [m for m in model.modules() if getattr(m, "upsample_transposed", None) is True]
    for m in blocks:
        m.upsample_transposed = False
    try:
        yield model
    finally:
        for m in blocks:
            m.upsample_transposed = True


def use_transposed_upsampling(model: nn.Module) -> int:
    """Run the first convolution of each U-Net decoder block of ``model`` through :func:`upsampled_conv`,
    in place; returns how many blocks changed. Each block has one switch, ``upsample_transposed``, that
    :func:`decoder_block_forward` reads: :class:`rooftrace.models.lite0.DecoderBlock` has it (off), and
    segmentation-models-pytorch's ``UnetDecoderBlock`` gets it when its class is swapped for one whose forward
    goes through :func:`decoder_block_forward`. Parameter names, shapes and the saved file do not change; a
    block with attention, or a resize other than nearest 2x, runs as written."""
    count = 0
    for module in model.modules():
        if (not hasattr(module, "upsample_transposed") and type(module).__name__ == "UnetDecoderBlock"
                and _smp_signature(type(module)) and isinstance(getattr(module.attention1, "attention", None), nn.Identity)):
            swap_forward(module, _TransposedBlock, _transposed_forward)
            module.upsample_transposed = False
        if getattr(module, "upsample_transposed", None) is False and supports(module.conv1[0]):
            module.upsample_transposed = True
            count += 1
    return count


def _smp_signature(cls: type) -> bool:
    """Whether ``cls.forward`` takes what segmentation-models-pytorch 0.5+ passes a decoder block (the feature
    map, the target size, the skip), the signature :func:`_transposed_forward` replaces; older blocks run as written."""
    params = list(inspect.signature(cls.forward).parameters)
    return params[1:] == ["feature_map", "target_height", "target_width", "skip_connection"]


class _TransposedBlock:
    """Marker base of smp decoder blocks swapped by :func:`use_transposed_upsampling`."""


def _transposed_forward(cls: type):
    def forward(self, feature_map: torch.Tensor, target_height: int, target_width: int,
                skip_connection: torch.Tensor | None = None) -> torch.Tensor:
        y = decoder_block_forward(self, feature_map, (target_height, target_width), skip_connection,
                                  self.interpolation_mode)
        if y is None:
            return cls.forward(self, feature_map, target_height, target_width, skip_connection)
        return self.attention2(self.conv2(y))

    return forward
