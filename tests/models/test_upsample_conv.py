"""A U-Net decoder block's upsampling and first convolution as one transposed convolution
(rooftrace.models.upsample_conv): the same function, forward and backward, and the fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rooftrace.models.upsample_conv import (
    as_written,
    decoder_block_forward,
    transposed_weight,
    upsampled_conv,
    use_transposed_upsampling,
)


def _as_written(conv: nn.Conv2d, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    u = F.interpolate(x, scale_factor=2, mode="nearest")
    return conv(u if skip is None else torch.cat([u, skip], 1))


@pytest.mark.parametrize("skip_channels", [0, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_the_transposed_convolution_equals_upsample_then_convolve(skip_channels, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(7 + skip_channels, 4, 3, padding=1, bias=bias).double()
    x = torch.randn(2, 7, 6, 9, dtype=torch.float64)
    skip = torch.randn(2, skip_channels, 12, 18, dtype=torch.float64) if skip_channels else None
    got = upsampled_conv(conv, x, skip)
    want = _as_written(conv, x, skip)
    assert got.shape == want.shape == (2, 4, 12, 18)
    assert torch.allclose(got, want, atol=1e-12)  # borders included: the zero padding lands where it should


def test_the_transposed_kernel_sums_the_taps_each_input_pixel_feeds():
    """Each of the four output phases reads 2 x 2 input pixels; the 4 x 4 kernel's entries are sums of the
    3 x 3 kernel's taps over the upsampled pixels that repeat one input pixel."""
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
    t = transposed_weight(w)[0, 0]
    assert t.shape == (4, 4)
    assert torch.equal(t.sum(), w.sum() * 4)  # every tap is used once by each of the four phases
    # Rows of the kernel: (w2, w1 + w2, w0 + w1, w0) along each axis.
    assert torch.equal(t[0, 0], w[0, 0, 2, 2]) and torch.equal(t[3, 3], w[0, 0, 0, 0])
    assert torch.equal(t[1, 1], w[0, 0, 1:, 1:].sum())


def test_gradients_reach_the_three_by_three_weights_as_before():
    torch.manual_seed(1)
    conv_a = nn.Conv2d(6 + 3, 5, 3, padding=1).double()
    conv_b = copy.deepcopy(conv_a)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 3, 10, 14, dtype=torch.float64, requires_grad=True)
    _as_written(conv_a, x, skip).square().sum().backward()
    ga = (x.grad.clone(), skip.grad.clone(), conv_a.weight.grad, conv_a.bias.grad)
    x.grad = skip.grad = None
    upsampled_conv(conv_b, x, skip).square().sum().backward()
    for a, b in zip(ga, (x.grad, skip.grad, conv_b.weight.grad, conv_b.bias.grad)):
        assert torch.allclose(a, b, atol=1e-10)


def test_the_cached_kernel_follows_a_changed_weight():
    """Without gradients the transposed kernel is kept between calls; a weight changed in place makes it again."""
    torch.manual_seed(2)
    block = nn.Module()
    block.conv1 = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
    block.upsample_transposed = True
    x = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        first = decoder_block_forward(block, x, (8, 8), None)
        assert torch.allclose(first, block.conv1(F.interpolate(x, scale_factor=2)), atol=1e-5)
        block.conv1[0].weight.mul_(-1)
        second = decoder_block_forward(block, x, (8, 8), None)
        assert torch.allclose(second, block.conv1(F.interpolate(x, scale_factor=2)), atol=1e-5)
        assert not torch.allclose(first, second)


def test_blocks_switched_off_other_sizes_and_other_convolutions_run_as_written():
    block = nn.Module()
    block.conv1 = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1))
    x = torch.randn(1, 4, 5, 5)
    assert decoder_block_forward(block, x, (10, 10), None) is None  # no switch: as written
    block.upsample_transposed = True
    assert decoder_block_forward(block, x, (10, 10), None) is not None  # the switch on, and it applies
    assert decoder_block_forward(block, x, (9, 10), None) is None  # not 2x: the caller upsamples
    assert decoder_block_forward(block, x, (10, 10), None, mode="bilinear") is None
    block.conv1 = nn.Sequential(nn.Conv2d(4, 3, 3, padding=2, dilation=2))
    assert decoder_block_forward(block, x, (10, 10), None) is None
    with pytest.raises(ValueError, match="takes 4 channels"):
        upsampled_conv(nn.Conv2d(4, 3, 3, padding=1), x, torch.randn(1, 2, 10, 10))


def test_an_smp_unet_trains_the_same_through_transposed_blocks():
    """segmentation-models-pytorch's U-Net, as training builds it: the same outputs and gradients (float64),
    the same parameter names, and a block with attention left as it is."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    plain = smp.Unet("resnet18", encoder_weights=None, classes=2, decoder_channels=(32, 16, 16, 8, 8)).double().train()
    fast = copy.deepcopy(plain)
    assert use_transposed_upsampling(fast) == 5
    assert use_transposed_upsampling(fast) == 0  # once
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    ya, yb = plain(x), fast(x)
    assert torch.allclose(ya, yb, atol=1e-9)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for (name, pa), pb in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-9), name
    # as_written turns the swapped blocks off too (what an ONNX graph is exported from), and back on after.
    with torch.no_grad():
        with as_written(fast):
            assert torch.equal(fast(x), plain(x))
        assert all(b.upsample_transposed for b in fast.decoder.blocks)
        assert not torch.equal(fast(x), plain(x))
    scse = smp.Unet("resnet18", encoder_weights=None, classes=1, decoder_attention_type="scse")
    assert use_transposed_upsampling(scse) == 0


def test_the_runtime_loads_the_shipped_network_with_transposed_blocks_and_load_model_as_written():
    from rooftrace.inference.runtime import load_any
    from rooftrace.models.files import load_model, shipped_model

    assert not any(b.upsample_transposed for b in load_model(shipped_model()).model.decoder.blocks)
    assert all(b.upsample_transposed for b in load_any(shipped_model(), device="cpu").model.decoder.blocks)


def test_an_onnx_graph_is_exported_from_the_decoder_as_written():
    """ONNX Runtime runs the plain decoder faster than transposed convolutions, so the graph of a network the
    runtime loaded is exported as written, and the network keeps its transposed blocks after."""
    from rooftrace.inference.runtime import load_any
    from rooftrace.models.files import shipped_model
    from rooftrace.models.onnx_graph import graph_bytes

    net = load_any(shipped_model(), device="cpu").model
    graph = graph_bytes(net)
    assert b"Conv" in graph and b"ConvTranspose" not in graph and b"Resize" in graph
    assert all(b.upsample_transposed for b in net.decoder.blocks)
