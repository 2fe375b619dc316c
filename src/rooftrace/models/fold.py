"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch norm is a fixed scale and shift per channel, so ``bn(conv(x))`` equals one convolution
whose weights are scaled and whose bias is shifted (``torch.nn.utils.fusion.fuse_conv_bn_eval``). Folding
removes every batch-norm pass of the shipped network (58), and with it, under bf16 autocast, the casts to fp32
and back around each one (autocast runs batch norm in fp32). Measured on this project's 2-core CPU, one
512 x 512 tile of the shipped network (``benchmarks/fold_speed.py``, median of 8 interleaved rounds): bf16
43.9 -> 39.1 ms (1.12x), fp32 98.3 -> 68.8 ms (1.43x; CPUs without native bf16 run fp32).

In fp32 the outputs change only by rounding (probabilities within 1e-4, ``tests/models/test_fold.py``; on the
sample pack the same buildings, byte for byte). In bf16 the folded weights are rounded to bf16 after scaling,
so the outputs move about as much as bf16 itself moves them: against the fp32 network, 0.35 % of pixels on
the other side of 0.5 folded, 0.24 % unfolded (the same script); the held-out object F1 moved both ways,
by up to 0.02 (MODEL_CARD.md).

Which convolution feeds which batch norm is read from the network's structure, never guessed:

* a module that lists its pairs in ``CONV_BN`` (``(("conv_pw", "bn1"), ...)``: the blocks of
  :mod:`rooftrace.models.lite0`); the batch norm is replaced by its activation (``act``) if it has one;
* an ``nn.Sequential`` whose child ``k`` is an ``nn.Conv2d`` and child ``k + 1`` an ``nn.BatchNorm2d``
  (segmentation-models-pytorch's ``Conv2dReLU``, the plain U-Net's blocks); the batch norm becomes the
  identity (or its activation).

Anything else is left as it is (a network without such pairs runs unchanged). Only for inference: the
folded network has no batch norm left to train.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _after(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a batch norm once folded: its activation (``BatchNormAct``), else nothing."""
    act = getattr(bn, "act", None)
    return act if isinstance(act, nn.Module) else nn.Identity()


def _foldable(conv: object, bn: object) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each batch norm of ``model`` (in eval mode) into the convolution before it, in place.

    Returns:
        How many were folded.

    Raises:
        ValueError: ``model`` is in training mode (its batch norms still learn).
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; folding is for inference (call .eval() first)")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "CONV_BN", ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, _after(bn))
                folded += 1
        if isinstance(module, nn.Sequential):
            for k in range(len(module) - 1):
                if _foldable(module[k], module[k + 1]):
                    conv, bn = module[k], module[k + 1]
                    module[k] = fuse_conv_bn_eval(conv, bn)
                    module[k + 1] = _after(bn)
                    folded += 1
    return folded
