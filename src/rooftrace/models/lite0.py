"""The shipped network, ``arch: unet, encoder: tu-efficientnet_lite0``, in plain torch, for inference.

segmentation-models-pytorch builds this network from timm's ``efficientnet_lite0`` (features only) and
its own U-Net decoder. Importing them costs more than the network itself on a short run: timm imports
torchvision, and the two take about 1.9 s before the first tile is read, on every run (measured with
``python -X importtime``; ``benchmarks/pipeline_speed.py`` reports the whole start-up). This module
writes the same modules in plain torch, with the same parameter names and the same operations in the
same order (so a model file's state dict loads strictly, and the outputs are the same:
``tests/inference/test_predict.py`` compares them with smp's build of the same weights). Training, and any other
architecture, still builds through smp (:func:`rooftrace.models.architectures.build_model`).

EfficientNet-Lite0 (timm's ``efficientnet_lite0``): a 3 x 3 stride-2 stem of 32 channels, then seven
stages of depthwise-separable and inverted-residual blocks (expansion 6, no squeeze-excitation, ReLU6,
symmetric padding); the U-Net takes the features after stages 1, 2, 3, 5 and 7 (strides 2 to 32). The
decoder upsamples by nearest neighbour, concatenates the skip, and runs two 3 x 3 conv-BN-ReLU per
block (256, 128, 64, 32, 16 channels); the head is one 3 x 3 convolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rooftrace.models.upsample_conv import decoder_block_forward

#: ``(block type, repeats, kernel, stride, expansion, channels)`` per stage of efficientnet_lite0.
STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
          ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
#: Stages whose output the decoder takes (indices into :data:`STAGES`).
FEATURE_STAGES = (0, 1, 2, 4, 6)
DECODER_CHANNELS = (256, 128, 64, 32, 16)


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm then an optional ReLU6 (timm's ``BatchNormAct2d``: the same state dict keys)."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    #: Each convolution and the batch norm after it (:func:`rooftrace.models.fold.fold_batchnorm`).
    CONV_BN = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.conv_dw = _conv(cin, cin, k, stride, groups=cin)
        self.bn1 = BatchNormAct(cin)
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = BatchNormAct(cout, act=False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    CONV_BN = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))

    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = BatchNormAct(mid)
        self.conv_dw = _conv(mid, mid, k, stride, groups=mid)
        self.bn2 = BatchNormAct(mid)
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = BatchNormAct(cout, act=False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.has_skip else y


class Lite0Features(nn.Module):
    """EfficientNet-Lite0's stem and stages; returns the five features the U-Net takes."""

    CONV_BN = (("conv_stem", "bn1"),)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv_stem = _conv(in_channels, 32, 3, 2)
        self.bn1 = BatchNormAct(32)
        cin, stages = 32, []
        for kind, repeats, k, stride, expansion, cout in STAGES:
            blocks = []
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, s) if kind == "ds" else InvertedResidual(cin, cout, k, s, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in FEATURE_STAGES:
                features.append(x)
        return features


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Lite0Features()


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)
        #: conv1 through :func:`rooftrace.models.upsample_conv.decoder_block_forward` (set by its
        #: ``use_transposed_upsampling``, as the runtime and training do); off, the block runs as written
        self.upsample_transposed = False

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None) -> torch.Tensor:
        y = decoder_block_forward(self, x, size, skip)  # None unless upsample_transposed (rooftrace.models.upsample_conv)
        if y is not None:
            return self.conv2(y)
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class _Decoder(nn.Module):
    def __init__(self, encoder_channels: tuple[int, ...]):
        super().__init__()
        head, *skips = encoder_channels[::-1]
        ins = [head, *DECODER_CHANNELS[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, [*skips, 0], DECODER_CHANNELS))


class UnetLite0(nn.Module):
    """The U-Net with an EfficientNet-Lite0 encoder; ``classes`` output channels (logits). Input sides
    must be multiples of 32 (:func:`rooftrace.inference.runtime.pad_normalise` pads them)."""

    def __init__(self, classes: int = 1):
        super().__init__()
        self.encoder = _Encoder()
        channels = tuple(STAGES[i][5] for i in FEATURE_STAGES)
        self.decoder = _Decoder(channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(DECODER_CHANNELS[-1], classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.model(x)
        sizes = [tuple(f.shape[2:]) for f in features][::-1][1:] + [tuple(x.shape[2:])]
        y, skips = features[-1], features[-2::-1]
        for i, block in enumerate(self.decoder.blocks):
            y = block(y, sizes[i], skips[i] if i < len(skips) else None)
        return self.segmentation_head(y)
