r"""What the model families share: the two backbone layouts of the seed papers and the real
scaled-weight-standardized convolution of the normalizer-free models."""
import math
from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from ..layers import LearnableBias, ScaledStdConv2d


#: Blocks per stage of the Bi-Real layout (one binary 3x3 conv per block) and the stage widths.
RESNET_DEPTHS = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}
RESNET_WIDTHS = (64, 128, 256, 512)

#: ReActNet-A (MobileNet-like): the stem's width, then each block's output width.
REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def reactnet_a_blocks(channels=REACTNET_A_CHANNELS) -> List[Tuple[int, int, int]]:
    r"""``(in, out, stride)`` of each ReActNet-A block after the stem: stride 2 where the width changes,
    except into 64 (the official rule, which puts the strides at blocks 2, 4, 6 and 12)."""
    blocks = []
    for i in range(1, len(channels)):
        inp, out = channels[i - 1], channels[i]
        blocks.append((inp, out, 2 if inp != out and out != 64 else 1))
    return blocks


def stem_stride(stem: str) -> int:
    r"""Stride of a 3x3 stem: 2 for ``"imagenet"``, 1 for ``"cifar"`` (32x32 inputs)."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    return 2 if stem == "imagenet" else 1


def resnet_stem_conv(stem: str, out_channels: int = 64, conv=nn.Conv2d) -> Tuple[nn.Module, nn.Module]:
    r"""The Bi-Real layout's stem: ImageNet 7x7 stride 2 + 3x3 max-pool, CIFAR 3x3 stride 1 and no pool.
    Returns ``(conv, pool)``; ``conv`` builds the convolution (a plain or a weight-standardized one)."""
    if stem_stride(stem) == 2:
        return conv(3, out_channels, 7, 2, 3), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return conv(3, out_channels, 3, 1, 1), nn.Identity()


def plain_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0) -> nn.Conv2d:
    r"""A bias-free ``nn.Conv2d``: the float form of every binary (and BN-followed) convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)


def reactnet_a_betas(blocks: Sequence[Tuple[int, int, int]], alpha: float) -> List[Tuple[float, float]]:
    r"""``(beta1, beta2)`` of every ReActNet-A block: beta1 scales the input of the 3x3 sign, beta2 that of
    the 1x1 sign (one residual add later). ``expected_var`` starts at 1 after the stem, grows by alpha^2 per
    residual add (two per block) and is 1 after a strided (transition) block."""
    expected_var, betas = 1.0, []
    for _, _, stride in blocks:
        betas.append((1.0 / math.sqrt(expected_var), 1.0 / math.sqrt(expected_var + alpha ** 2)))
        expected_var = 1.0 if stride == 2 else expected_var + 2 * alpha ** 2
    return betas


class BiRealLayout(nn.Module):
    r"""The Bi-Real / ReActNet-18 and -34 layout: real stem (conv, BN, max-pool on ImageNet), four stages of
    ``block`` of widths 64, 128, 256, 512 (stride 2 at the start of stages 2-4), global pool, real classifier.

    Args:
        block: the block class, called as ``block(in_channels, out_channels, stride=...)``.
        depths: blocks per stage, e.g. ``(4, 4, 4, 4)``.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` (7x7 stride 2 + max-pool) or ``"cifar"`` (3x3 stride 1).
    """

    def __init__(self, block: type, depths: Sequence[int], num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__()
        self.conv1, self.maxpool = resnet_stem_conv(stem, RESNET_WIDTHS[0], plain_conv)
        self.bn1 = nn.BatchNorm2d(RESNET_WIDTHS[0])
        in_channels = RESNET_WIDTHS[0]
        for i, (depth, width) in enumerate(zip(depths, RESNET_WIDTHS)):
            blocks = []
            for j in range(depth):
                blocks.append(block(in_channels, width, stride=2 if i > 0 and j == 0 else 1))
                in_channels = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class NormFreeReActNetABlock(nn.Module):
    r"""A normalizer-free ReActNet-A block (A&B BNN, BNN - BN = ?):

    ``x -> * beta1 -> bias -> [sign] -> binary 3x3 -> * alpha -> + shortcut -> activation`` then
    ``-> * beta2 -> bias -> [sign] -> binary 1x1 (one, or two concatenated) -> * alpha -> + shortcut ->
    activation``. A strided block's shortcut is ``downsample`` = AvgPool2d(2) of the input, or of
    ``beta1 * x`` when ``pool_scaled_input`` (the BNN - BN = ? code). Subclasses set ``activation`` and
    ``pool_scaled_input``.

    Args:
        in_channels: input channels.
        out_channels: ``in_channels`` or ``2 * in_channels``.
        stride: 1 or 2.
        alpha: residual branch scale.
        beta1: ``1 / sqrt(expected_var)`` of the block's input.
        beta2: the same after the block's first residual add.
    """

    activation: type = nn.Identity
    pool_scaled_input: bool = False

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = 0.25,
                 beta1: float = 1.0, beta2: float = 1.0):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"a ReActNet-A block maps C to C or 2C channels, got {in_channels} -> {out_channels}")
        self.alpha, self.beta1, self.beta2 = float(alpha), float(beta1), float(beta2)
        self.threshold1 = LearnableBias(in_channels)
        self.conv3x3 = plain_conv(in_channels, in_channels, 3, stride, 1)
        self.downsample = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.act1 = self.activation(in_channels)
        self.threshold2 = LearnableBias(in_channels)
        self.pointwise = nn.ModuleList(plain_conv(in_channels, in_channels, 1)
                                       for _ in range(out_channels // in_channels))
        self.act2 = self.activation(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = self.beta1 * x
        shortcut = x if self.downsample is None else self.downsample(scaled if self.pool_scaled_input else x)
        x = self.act1(self.alpha * self.conv3x3(self.threshold1(scaled)) + shortcut)
        y = self.threshold2(self.beta2 * x)
        return self.act2(torch.cat([self.alpha * conv(y) + x for conv in self.pointwise], dim=1))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta1={self.beta1:.6g}, beta2={self.beta2:.6g}"


class NormFreeReActNetA(nn.Module):
    r"""The normalizer-free ReActNet-A network: weight-standardized real 3x3 stem (stride 2 on ImageNet, 1 on
    CIFAR), 13 blocks of class ``block`` (a :class:`NormFreeReActNetABlock`), global pool, real classifier.
    Block i gets ``beta1 = 1 / sqrt(v)`` and ``beta2 = 1 / sqrt(v + alpha^2)``, where ``v`` is 1 after the
    stem and after a strided block and grows by ``2 alpha^2`` (two residual adds) per other block.

    Args:
        block: the block class.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` or ``"cifar"``.
        alpha: residual branch scale.
    """

    def __init__(self, block: type, num_classes: int = 1000, stem: str = "imagenet", alpha: float = 0.25):
        super().__init__()
        channels = REACTNET_A_CHANNELS
        self.stem = nn.Sequential(OrderedDict(conv=ScaledStdConv2d(3, channels[0], 3, stem_stride(stem), 1)))
        blocks = reactnet_a_blocks(channels)
        self.blocks = nn.Sequential(*(block(i, o, s, alpha, b1, b2)
                                      for (i, o, s), (b1, b2) in zip(blocks, reactnet_a_betas(blocks, alpha))))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

