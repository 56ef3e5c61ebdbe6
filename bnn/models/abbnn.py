r"""A&B BNN: Ma, Qiao, Liu, Meng, Ning, Liu, Hu, "A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary
Neural Network", CVPR 2024 (arXiv:2403.03739); structure of the official code (Ruichen0424/AB-BNN,
``Network/ReActNet_18_Qa(w).py``, ``Network/ReActNet_A_Qa(w).py``).

ReActNet-18 / 34 / A made normalizer-free: no BatchNorm; each binary branch is multiplied by
``alpha`` (0.25 = 2^-2) before its residual add; each sign's input is multiplied by
``beta = 1 / sqrt(expected_var)``, where ``expected_var`` starts at 1 after the stem, grows by alpha^2
per residual add and is reset to 1 after a transition (downsampling) block; RPReLU's slope is a power of
two (:class:`bnn.layers.PowerOfTwoRPReLU`). The stem and the shortcut 1x1 convolutions are real
weight-standardized convolutions (``ScaledStdConv2d``, as in the official step-1 code); the binary
convolutions are plain ``nn.Conv2d`` here and get their standardization from the recipe
(``recipes/abbnn.yaml`` step 2: ``ScaledWSWeightBinarizer``), as they get the mask-layer sign (RSign with
the ``mask`` gradient). The official step-2 code binarizes the shortcut convolutions' weights (not their
input); ``recipes/abbnn.yaml`` binarizes them whole, a recipe with ``"$downsample$": null`` keeps them real.

The betas are the official code's, quirk included: in the Bi-Real layout it counts the residual add of
every block but the first of each stage, so the first stage (which has no transition block) misses one
alpha^2 (see :func:`resnet_betas`). Keeping it makes a loaded official checkpoint compute the same
function.
"""
import math
from typing import List, Sequence

import torch
import torch.nn as nn

from ..layers import LearnableBias, PowerOfTwoRPReLU, ScaledStdConv2d
from ._common import (RESNET_DEPTHS, RESNET_WIDTHS, NormFreeReActNetA, NormFreeReActNetABlock, plain_conv,
                      resnet_stem_conv)
from .registry import register_model

__all__ = ["ABBlock", "ABReActNet", "ABReActNetABlock", "ABReActNetA", "resnet_betas", "abbnn_reactnet18",
           "abbnn_reactnet34", "abbnn_reactnet_a"]

_PAPER = "Ma et al., A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary Neural Network, CVPR 2024"

#: The residual branch scale of A&B BNN (2^-2: a shift).
ALPHA = 0.25


def resnet_betas(depths: Sequence[int], alpha: float) -> List[List[float]]:
    r"""beta of every block of the Bi-Real layout, per stage, as the official ``_make_layer`` computes it:
    a block's beta is ``1 / sqrt(expected_var)`` of its input; the first block of a stage with a transition
    (stride 2) resets ``expected_var`` to 1, and every later block adds alpha^2. The first block of the
    first stage adds nothing (the official count)."""
    expected_var, betas = 1.0, []
    for stage, depth in enumerate(depths):
        stage_betas = [1.0 / math.sqrt(expected_var)]
        if stage > 0:
            expected_var = 1.0
        for _ in range(1, depth):
            stage_betas.append(1.0 / math.sqrt(expected_var))
            expected_var += alpha ** 2
        betas.append(stage_betas)
    return betas


class ABBlock(nn.Module):
    r"""``x -> * beta -> bias -> [mask sign] -> binary 3x3 -> * alpha -> + shortcut -> power-of-two RPReLU``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 2 for a transition block, which then gets the real shortcut ``downsample`` =
            AvgPool2d(2) -> weight-standardized 1x1 conv.
        alpha: residual branch scale.
        beta: ``1 / sqrt(expected_var)`` of the block's input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = ALPHA,
                 beta: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.threshold = LearnableBias(in_channels)
        self.conv = plain_conv(in_channels, out_channels, 3, stride, 1)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride) if stride != 1 else nn.Identity(),
                ScaledStdConv2d(in_channels, out_channels, 1),
            )
        self.act = PowerOfTwoRPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.alpha * self.conv(self.threshold(self.beta * x)) + shortcut)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta:.6g}"


class ABReActNet(nn.Module):
    r"""A&B ReActNet-18 / 34: weight-standardized real stem (max-pool on ImageNet), four stages of
    :class:`ABBlock` of widths 64, 128, 256, 512 with the betas of :func:`resnet_betas`, global pool,
    real classifier.

    Args:
        depths: blocks per stage.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` or ``"cifar"``.
        alpha: residual branch scale (A&B: 0.25).
    """

    def __init__(self, depths: Sequence[int], num_classes: int = 1000, stem: str = "imagenet",
                 alpha: float = ALPHA):
        super().__init__()
        self.conv1, self.maxpool = resnet_stem_conv(stem, RESNET_WIDTHS[0], ScaledStdConv2d)
        in_channels = RESNET_WIDTHS[0]
        for i, (depth, width, betas) in enumerate(zip(depths, RESNET_WIDTHS, resnet_betas(depths, alpha))):
            blocks = []
            for j, beta in enumerate(betas):
                blocks.append(ABBlock(in_channels, width, 2 if i > 0 and j == 0 else 1, alpha, beta))
                in_channels = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ABReActNetABlock(NormFreeReActNetABlock):
    r"""The A&B BNN ReActNet-A block: :class:`NormFreeReActNetABlock` with power-of-two RPReLU activations
    and the shortcut pooling the unscaled input. Arguments as there; ``alpha`` 0.25 = 2^-2."""

    activation = PowerOfTwoRPReLU
    pool_scaled_input = False

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = ALPHA,
                 beta1: float = 1.0, beta2: float = 1.0):
        super().__init__(in_channels, out_channels, stride, alpha, beta1, beta2)


class ABReActNetA(NormFreeReActNetA):
    r"""A&B ReActNet-A: :class:`NormFreeReActNetA` with :class:`ABReActNetABlock` (alpha 0.25 = 2^-2)."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA):
        super().__init__(ABReActNetABlock, num_classes, stem, alpha)


@register_model(paper=_PAPER, default_recipe="recipes/abbnn.yaml")
def abbnn_reactnet18(num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA) -> ABReActNet:
    r"""A&B BNN ReActNet-18. Published top-1: 91.94% CIFAR-10, 69.35% CIFAR-100, 61.39% ImageNet."""
    return ABReActNet(RESNET_DEPTHS[18], num_classes, stem, alpha)


@register_model(paper=_PAPER, default_recipe="recipes/abbnn.yaml")
def abbnn_reactnet34(num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA) -> ABReActNet:
    r"""A&B BNN ReActNet-34. Published top-1: 65.19% ImageNet."""
    return ABReActNet(RESNET_DEPTHS[34], num_classes, stem, alpha)


@register_model(paper=_PAPER, default_recipe="recipes/abbnn.yaml")
def abbnn_reactnet_a(num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA) -> ABReActNetA:
    r"""A&B BNN ReActNet-A. Published top-1: 89.44% CIFAR-10, 63.23% CIFAR-100, 66.89% ImageNet."""
    return ABReActNetA(num_classes, stem, alpha)
