r"""Bi-Real Net: Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with
Improved Representational Capability and Advanced Training Algorithm", ECCV 2018 (arXiv:1808.00278);
structure of the official PyTorch code (liuzechun/Bi-Real-net, ``pytorch_implementation/BiReal18_34``).

Every binary 3x3 convolution has its own real-valued shortcut: ``x -> [sign] -> binary 3x3 -> BN ->
+ shortcut``; no learnable bias, no activation. The first block of stages 2-4 has stride 2 and a real
``AvgPool2d(2) -> 1x1 conv -> BN`` shortcut. The sign (ApproxSign gradient) and the weight binarizer are
the recipe's (``recipes/bireal.yaml``).
"""
from typing import Sequence

import torch
import torch.nn as nn

from ._common import RESNET_DEPTHS, BiRealLayout, plain_conv
from .registry import register_model

__all__ = ["BiRealBlock", "BiRealNet", "birealnet18", "birealnet34"]

_PAPER = ("Liu et al., Bi-Real Net: Enhancing the Performance of 1-bit CNNs With Improved Representational "
          "Capability and Advanced Training Algorithm, ECCV 2018")


class BiRealBlock(nn.Module):
    r"""``x -> [sign] -> binary 3x3 -> BN -> + shortcut``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 2 for the first block of a downsampling stage, which then gets the real shortcut
            ``downsample`` = AvgPool2d(2) -> 1x1 conv -> BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = plain_conv(in_channels, out_channels, 3, stride, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride) if stride != 1 else nn.Identity(),
                plain_conv(in_channels, out_channels, 1),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn(self.conv(x)) + shortcut


class BiRealNet(BiRealLayout):
    r"""Bi-Real Net 18 / 34: real stem (conv, BN, max-pool on ImageNet), four stages of
    :class:`BiRealBlock` of widths 64, 128, 256, 512, global pool, real classifier.

    Args:
        depths: blocks per stage, e.g. ``(4, 4, 4, 4)``.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` (7x7 stride 2 + max-pool) or ``"cifar"`` (3x3 stride 1).
    """

    def __init__(self, depths: Sequence[int], num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__(BiRealBlock, depths, num_classes, stem)


@register_model(paper=_PAPER, default_recipe="recipes/bireal.yaml")
def birealnet18(num_classes: int = 1000, stem: str = "imagenet") -> BiRealNet:
    r"""Bi-Real Net 18. Published: 56.4% ImageNet top-1."""
    return BiRealNet(RESNET_DEPTHS[18], num_classes, stem)


@register_model(paper=_PAPER, default_recipe="recipes/bireal.yaml")
def birealnet34(num_classes: int = 1000, stem: str = "imagenet") -> BiRealNet:
    r"""Bi-Real Net 34. Published: 62.2% ImageNet top-1."""
    return BiRealNet(RESNET_DEPTHS[34], num_classes, stem)
