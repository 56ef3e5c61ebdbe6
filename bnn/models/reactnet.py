r"""ReActNet: Liu, Shen, Savvides, Cheng, "ReActNet: Towards Precise Binary Neural Network with Generalized
Activation Functions", ECCV 2020 (arXiv:2003.03488); structure of the official code (liuzechun/ReActNet).

Two backbones:

* ReActNet-18 / 34, the Bi-Real layout: every block is one binary 3x3 convolution with its own real
  shortcut, ``x -> learnable bias -> [sign] -> binary 3x3 -> BN -> + shortcut -> RPReLU``; the first block of
  stages 2-4 has stride 2 and a real ``AvgPool2d(2) -> 1x1 conv -> BN`` shortcut.
* ReActNet-A, MobileNet-like: a binary 3x3 (in -> in) and a binary 1x1 (in -> in, or two of them
  concatenated for in -> 2 in), each with its shortcut, BN and RPReLU.

The models are float: the convolutions that the recipe binarizes are plain ``nn.Conv2d`` and the sign is
the recipe's (``recipes/reactnet.yaml``: RSign). The learnable bias before each binary convolution is the
model's (``threshold``, the official ``move`` layers); the recipe's RSign adds a threshold of its own, zero
at first, so the binarized model starts as the official one and has one redundant vector per binary conv.
"""
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..layers import LearnableBias, RPReLU
from ._common import (BiRealLayout, REACTNET_A_CHANNELS, RESNET_DEPTHS, plain_conv, reactnet_a_blocks, stem_stride)
from .registry import register_model

__all__ = ["ReActNetBlock", "ReActNet", "ReActNetABlock", "ReActNetA", "reactnet18", "reactnet34", "reactnet_a"]

_PAPER = ("Liu et al., ReActNet: Towards Precise Binary Neural Network with Generalized Activation "
          "Functions, ECCV 2020")


class ReActNetBlock(nn.Module):
    r"""``x -> bias -> [sign] -> binary 3x3 -> BN -> + shortcut -> RPReLU`` (ReActNet-18/34).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 2 for the first block of a downsampling stage, which then gets the real shortcut
            ``downsample`` = AvgPool2d(2) -> 1x1 conv -> BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.threshold = LearnableBias(in_channels)
        self.conv = plain_conv(in_channels, out_channels, 3, stride, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride) if stride != 1 else nn.Identity(),
                plain_conv(in_channels, out_channels, 1),
                nn.BatchNorm2d(out_channels),
            )
        self.act = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.bn(self.conv(self.threshold(x))) + shortcut)


class ReActNet(BiRealLayout):
    r"""ReActNet-18 / 34: real stem (conv, BN, max-pool on ImageNet), four stages of
    :class:`ReActNetBlock` of widths 64, 128, 256, 512, global pool, real classifier.

    Args:
        depths: blocks per stage, e.g. ``(4, 4, 4, 4)``.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` (7x7 stride 2 + max-pool) or ``"cifar"`` (3x3 stride 1).
    """

    def __init__(self, depths: Sequence[int], num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__(ReActNetBlock, depths, num_classes, stem)


class ReActNetABlock(nn.Module):
    r"""The ReActNet-A block (two binary convolutions, each with its shortcut):

    ``x -> bias -> [sign] -> binary 3x3 (in -> in, stride) -> BN -> + shortcut -> RPReLU`` then
    ``-> bias -> [sign] -> binary 1x1 -> BN -> + shortcut -> RPReLU``, where the 1x1 part is one conv
    (in == out) or two in -> in convs whose results are concatenated (out == 2 in). A strided block's
    shortcut is ``downsample`` = AvgPool2d(2).

    Args:
        in_channels: input channels.
        out_channels: ``in_channels`` or ``2 * in_channels``.
        stride: 1 or 2.
        threshold: builds the per-channel module before each sign (default :class:`bnn.layers.LearnableBias`;
            BCDNet passes its contextual dynamic threshold).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 threshold: Callable[[int], nn.Module] = LearnableBias):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"a ReActNet-A block maps C to C or 2C channels, got {in_channels} -> {out_channels}")
        self.threshold1 = threshold(in_channels)
        self.conv3x3 = plain_conv(in_channels, in_channels, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.downsample = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.act1 = RPReLU(in_channels)
        self.threshold2 = threshold(in_channels)
        copies = out_channels // in_channels
        self.pointwise = nn.ModuleList(plain_conv(in_channels, in_channels, 1) for _ in range(copies))
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(copies))
        self.act2 = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv3x3(self.threshold1(x))) + shortcut)
        y = self.threshold2(x)
        return self.act2(torch.cat([bn(conv(y)) + x for conv, bn in zip(self.pointwise, self.bn2)], dim=1))


class ReActNetA(nn.Module):
    r"""ReActNet-A: real 3x3 stem (stride 2 on ImageNet, 1 on CIFAR) with BN, 13
    :class:`ReActNetABlock` (widths 64 ... 1024, stride 2 at blocks 2, 4, 6, 12), global pool, real classifier.

    Args:
        num_classes: classifier outputs.
        stem: ``"imagenet"`` or ``"cifar"``.
        channels: the stem's width then every block's (default ReActNet-A's).
    """

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet",
                 channels: Sequence[int] = REACTNET_A_CHANNELS):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=plain_conv(3, channels[0], 3, stem_stride(stem), 1),
            bn=nn.BatchNorm2d(channels[0]),
        ))
        self.blocks = nn.Sequential(*(ReActNetABlock(i, o, s) for i, o, s in reactnet_a_blocks(channels)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model(paper=_PAPER, default_recipe="recipes/reactnet.yaml")
def reactnet18(num_classes: int = 1000, stem: str = "imagenet") -> ReActNet:
    r"""ReActNet-18 (Bi-Real-18 layout with RSign and RPReLU, BatchNorm)."""
    return ReActNet(RESNET_DEPTHS[18], num_classes, stem)


@register_model(paper=_PAPER, default_recipe="recipes/reactnet.yaml")
def reactnet34(num_classes: int = 1000, stem: str = "imagenet") -> ReActNet:
    r"""ReActNet-34 (Bi-Real-34 layout with RSign and RPReLU, BatchNorm)."""
    return ReActNet(RESNET_DEPTHS[34], num_classes, stem)


@register_model(paper=_PAPER, default_recipe="recipes/reactnet.yaml")
def reactnet_a(num_classes: int = 1000, stem: str = "imagenet") -> ReActNetA:
    r"""ReActNet-A (MobileNet-like, BatchNorm)."""
    return ReActNetA(num_classes, stem)
