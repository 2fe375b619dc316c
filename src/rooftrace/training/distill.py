"""Knowledge distillation: teacher models whose averaged probabilities the student also learns from.

An ensemble of models trained on the same data finds more buildings than any of its members (the
shipped model and three runs of issue 21, averaged: validation object F1 0.614 tuned, against 0.583
for the shipped model alone), but it costs one network per member at every prediction. Distillation
moves part of that gain into one network of the same size: during training the teachers (rooftrace
model files, ``train.teachers``) run on each batch, in eval mode and without gradients, and their
mean sigmoid probabilities become a second, soft target for every channel. The loss is

    (1 - loss.distill) * loss(student, labels) + loss.distill * loss(student, teachers' mean)

with the same per-channel BCE and Dice terms (both are defined for targets between 0 and 1). The
teachers see the same augmented crops as the student, so nothing is precomputed and every sample of
the recipe (simulated panchromatic, haze, pixel scale) gets its soft target.

Teachers are read as every model file is (safetensors only, SHA-256 sidecar checked, never a
pickle); each must give the run's channels and expect the run's input normalisation, or the run
stops before training and names the file. Their batch norms are folded into the convolutions before
them, and under bf16 autocast their depthwise convolutions run in fp32 as the student's do, so a
teacher costs about a third of a training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from rooftrace.core.errors import RooftraceError


class Teachers:
    """The teacher models of a run, callable on a batch: their mean sigmoid probabilities, ``(N, C, H, W)`` float32."""

    def __init__(self, paths: Sequence[str | Path], channels: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 device: torch.device, depthwise_fp32: str = "none", channels_last: bool = False):
        from rooftrace.models.autocast import depthwise_in_fp32
        from rooftrace.models.files import load_model
        from rooftrace.models.inference_form import inference_form

        if not paths:
            raise ValueError("Teachers: no teacher model files")
        self.paths = [Path(p) for p in paths]
        self.models: list[torch.nn.Module] = []
        for path in self.paths:
            loaded = load_model(path, device=device)
            if tuple(loaded.channels) != tuple(channels):
                raise RooftraceError(f"train.teachers {path}: it gives the channels {list(loaded.channels)}, this run trains "
                                     f"{list(channels)}; a teacher must give the run's channels; nothing was trained")
            if not _close(loaded.mean, mean) or not _close(loaded.std, std):
                raise RooftraceError(f"train.teachers {path}: it expects inputs normalised with mean {list(loaded.mean)}, std "
                                     f"{list(loaded.std)}, this run gives mean {list(mean)}, std {list(std)} (data.mean, "
                                     "data.std); nothing was trained")
            net = inference_form(loaded.model, channels_last)  # as the runtime runs it, in the student's memory format
            depthwise_in_fp32(net, depthwise_fp32)  # none, slow or all (train.depthwise_fp32)
            self.models.append(net)

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the teachers' sigmoid probabilities for the batch ``x`` (run under the caller's autocast)."""
        total = None
        for net in self.models:
            p = torch.sigmoid(net(x).float())
            total = p if total is None else total.add_(p)
        assert total is not None
        return total.div_(len(self.models))


def distilled_loss(loss_fn: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None,
                   weight: float) -> torch.Tensor:
    """``(1 - weight) * loss(logits, target) + weight * loss(logits, soft)``; the plain loss when ``soft`` is ``None``."""
    hard = loss_fn(logits, target)
    if soft is None or weight <= 0.0:
        return hard
    if soft.shape != target.shape:
        raise ValueError(f"distilled_loss: teacher probabilities {tuple(soft.shape)} and targets {tuple(target.shape)} differ")
    return (1.0 - weight) * hard + weight * loss_fn(logits, soft)


def _close(a: Sequence[float], b: Sequence[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(float(u) - float(v)) <= tol for u, v in zip(a, b))
