r"""BNN - BN = ?: Chen, Zhang, Ouyang, Liu, Shen, Wang, "BNN - BN = ?: Training Binary Neural Networks without
Batch Normalization", CVPR Workshops 2021 (arXiv:2104.08215); structure of the official code
(VITA-Group/BNN_NoBN, ``models/Qa(w)_reactnet_A_bf.py``).

ReActNet-A without BatchNorm: each binary branch is multiplied by ``alpha`` (0.2) before its residual add,
each sign's input by ``beta = 1 / sqrt(expected_var)`` (1 after the stem, + alpha^2 per residual add, 1
again after a strided block); RPReLU as in ReActNet; the real stem uses scaled weight standardization.
The binary convolutions are plain ``nn.Conv2d`` here: the recipe (``recipes/bnn-bn.yaml``) binarizes them
with scaled weight standardization in step 2, and clips gradients adaptively (AGC 0.02) in both steps.

One detail of the official code is kept: in a strided block the shortcut pools the *beta-scaled* input
(``AvgPool2d(beta1 * x)``), where A&B BNN pools ``x``.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from ..layers import LearnableBias, RPReLU, ScaledStdConv2d
from ._common import (REACTNET_A_CHANNELS, plain_conv, reactnet_a_betas, reactnet_a_blocks,
                      stem_stride)
from .registry import register_model

__all__ = ["NFReActNetABlock", "NFReActNetA", "nf_reactnet_a"]

_PAPER = ("Chen et al., BNN - BN = ?: Training Binary Neural Networks without Batch Normalization, "
          "CVPR Workshops 2021")

#: The residual branch scale of the official BN-free ReActNet-A.
ALPHA = 0.2


class NFReActNetABlock(nn.Module):
    r"""The BN-free ReActNet-A block:

    ``x -> * beta1 -> bias -> [sign] -> binary 3x3 -> * alpha -> + shortcut -> RPReLU`` then
    ``-> * beta2 -> bias -> [sign] -> binary 1x1 (one, or two concatenated) -> * alpha -> + shortcut -> RPReLU``.
    A strided block's shortcut is ``downsample`` = AvgPool2d(2) of ``beta1 * x`` (official code).

    Args:
        in_channels: input channels.
        out_channels: ``in_channels`` or ``2 * in_channels``.
        stride: 1 or 2.
        alpha: residual branch scale.
        beta1: ``1 / sqrt(expected_var)`` of the block's input.
        beta2: the same after the block's first residual add.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = ALPHA,
                 beta1: float = 1.0, beta2: float = 1.0):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"a ReActNet-A block maps C to C or 2C channels, got {in_channels} -> {out_channels}")
        self.alpha, self.beta1, self.beta2 = float(alpha), float(beta1), float(beta2)
        self.threshold1 = LearnableBias(in_channels)
        self.conv3x3 = plain_conv(in_channels, in_channels, 3, stride, 1)
        self.downsample = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.act1 = RPReLU(in_channels)
        self.threshold2 = LearnableBias(in_channels)
        self.pointwise = nn.ModuleList(plain_conv(in_channels, in_channels, 1)
                                       for _ in range(out_channels // in_channels))
        self.act2 = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = self.beta1 * x
        shortcut = x if self.downsample is None else self.downsample(scaled)
        x = self.act1(self.alpha * self.conv3x3(self.threshold1(scaled)) + shortcut)
        y = self.threshold2(self.beta2 * x)
        return self.act2(torch.cat([self.alpha * conv(y) + x for conv in self.pointwise], dim=1))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta1={self.beta1:.6g}, beta2={self.beta2:.6g}"


class NFReActNetA(nn.Module):
    r"""BN-free ReActNet-A: weight-standardized real 3x3 stem (stride 2 on ImageNet, 1 on CIFAR), 13
    :class:`NFReActNetABlock`, global pool, real classifier. Betas as in A&B BNN's ReActNet-A (same rule,
    alpha 0.2).

    Args:
        num_classes: classifier outputs.
        stem: ``"imagenet"`` or ``"cifar"``.
        alpha: residual branch scale (0.2).
    """

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA):
        super().__init__()
        channels = REACTNET_A_CHANNELS
        self.stem = nn.Sequential(OrderedDict(conv=ScaledStdConv2d(3, channels[0], 3, stem_stride(stem), 1)))
        blocks = reactnet_a_blocks(channels)
        self.blocks = nn.Sequential(*(NFReActNetABlock(i, o, s, alpha, b1, b2)
                                      for (i, o, s), (b1, b2) in zip(blocks, reactnet_a_betas(blocks, alpha))))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model(paper=_PAPER, default_recipe="recipes/bnn-bn.yaml")
def nf_reactnet_a(num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA) -> NFReActNetA:
    r"""BN-free ReActNet-A of "BNN - BN = ?" (trained with adaptive gradient clipping by its recipe)."""
    return NFReActNetA(num_classes, stem, alpha)
