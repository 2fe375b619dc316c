"""Batch norm folded into convolutions for inference (rooftrace.models.fold): the same outputs, no batch norm."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rooftrace.models.architectures import BaselineUNet
from rooftrace.models.files import load_model, shipped_model
from rooftrace.models.fold import fold_batchnorm


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _randomise_stats(model: nn.Module) -> None:
    """Batch norms with statistics far from the identity, so a fold that ignored them would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def test_the_shipped_network_folded_has_no_batch_norm_and_the_same_outputs(sample):
    """fp32: the same probabilities up to rounding. bf16: on real tiles, about as far from the fp32 network as
    the unfolded network in bf16 is (bf16 rounds the scaled weights; the threshold moves few pixels)."""
    import cv2

    loaded = load_model(shipped_model())
    folded = copy.deepcopy(loaded.model)
    before = _batchnorms(folded)
    assert before > 50
    assert fold_batchnorm(folded) == before
    assert _batchnorms(folded) == 0
    # the activations stay: ReLU6 where the batch norm had one, ReLU in the decoder
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == sum(isinstance(m, nn.ReLU6) for m in loaded.model.modules())
    files = sorted((sample / "val" / "image").glob("*"))[:2]
    tiles = np.stack([cv2.resize(cv2.imread(str(p))[:, :, ::-1], (256, 256), interpolation=cv2.INTER_AREA) for p in files])
    mean, std = np.asarray(loaded.mean, np.float32), np.asarray(loaded.std, np.float32)
    x = torch.from_numpy(((tiles / 255.0 - mean) / std).astype(np.float32)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, out = torch.sigmoid(loaded.model(x)), torch.sigmoid(folded(x))
        assert (ref - out).abs().max() < 1e-4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16, out16 = torch.sigmoid(loaded.model(x).float()), torch.sigmoid(folded(x).float())
    assert (out16 - ref).abs().mean() < 2 * (ref16 - ref).abs().mean()
    assert ((out16 > 0.5) != (ref > 0.5)).float().mean() < 0.01


def test_sequential_conv_bn_pairs_fold_with_their_statistics():
    """The plain U-Net's conv-BN-ReLU blocks (nn.Sequential), with batch-norm statistics far from the identity."""
    model = BaselineUNet(classes=3, base=8).eval()
    _randomise_stats(model)
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == _batchnorms(model) > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), folded(x), rtol=1e-4, atol=1e-4)


def test_only_a_batch_norm_right_after_its_convolution_folds():
    # a batch norm before the convolution, and one after a convolution of other channels, stay as they are
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(model) == 0 and _batchnorms(model) == 2


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(BaselineUNet(classes=1, base=8))


def test_the_runtime_runs_the_folded_network():
    from rooftrace.inference.runtime import load_runtime

    runtime = load_runtime(None, device="cpu")
    assert _batchnorms(runtime.net.model) == 0
