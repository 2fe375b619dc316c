"""A network in the form every inference path runs it: ``inference_form`` and ``inference_copy``.

The runtime (:func:`rooftrace.inference.runtime.load_any`), distillation's teachers
(:class:`rooftrace.training.distill.Teachers`) and a training run's validation
(:meth:`rooftrace.training.loop.Trainer.validate`) all compute with the same network: batch norms folded into
their convolutions (:func:`rooftrace.models.fold.fold_batchnorm`), the decoder's upsampling as transposed
convolutions (:func:`rooftrace.models.upsample_conv.use_transposed_upsampling`), channels-last. So a run's
validation scores the probabilities ``rooftrace tune`` and ``predict`` compute from the file it saves, not
those of the network as it trains (batch norms apart, depthwise convolutions in fp32: ``train.depthwise_fp32``).
"""

from __future__ import annotations

import torch

from rooftrace.config import ModelConfig
from rooftrace.models.files import network_from_state, unwrap
from rooftrace.models.fold import fold_batchnorm
from rooftrace.models.upsample_conv import use_transposed_upsampling


def inference_form(model: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
    """``model`` (in eval mode, its weights final) in place as inference runs it: batch norms folded, transposed
    upsampling, channels-last (``channels_last=False``: as it is, for a caller that feeds it planes); returned. Its
    parameters no longer need gradients."""
    model.eval()
    fold_batchnorm(model)  # the same outputs, without a batch-norm pass
    use_transposed_upsampling(model)  # the same function, without the decoder's upsampled tensors
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@torch.no_grad()
def inference_copy(model: torch.nn.Module, cfg: ModelConfig, classes: int) -> torch.nn.Module:
    """A copy of a training network (``model``: plain, DistributedDataParallel, compiled or an EMA's module) built as
    :func:`rooftrace.models.files.load_model` builds a model file's network from the same weights, in
    :func:`inference_form`, on the same device: the network ``predict`` would run from the file a run saves now."""
    source = unwrap(model)
    with torch.inference_mode(False):  # normal tensors, whatever the caller's mode (the kept kernels track versions)
        net = network_from_state(cfg, classes, source.state_dict())  # the weights copied in, not shared
        return inference_form(net.to(next(source.parameters()).device))


__all__ = ["inference_copy", "inference_form"]
