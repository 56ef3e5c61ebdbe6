r"""BCDNet: Xing, Li, Li, Ding, Jiang, Wang, Shao, Liu, Liu, "Towards Accurate Binary Neural Networks via
Modeling Contextual Dependencies", ECCV 2022 (arXiv:2209.01404); structure of the official code
(Sense-GVT/BCDNet, ``prototype/model/a_3.py``).

BCDNet-A: ReActNet-A blocks up to 1024 channels (widths 64, 128, 128, 256, 256, 512 x 4, 1024), then three
binary MLP blocks, each three :class:`ShiftBlock` (long-short range token mixing) and one
:class:`PointBlock` (channel mixing). A shift block sums three binary 1x1 convolutions, of its input, of the
input with its four channel groups rolled by one pixel (up, down, left, right) and of the same rolled by three
pixels, then BN, residual add and RPReLU. ``torch.roll`` wraps around the border, as in the official code.

Our reading, not in the public code (opt in with ``dynamic_threshold=True``): the paper's contextual dynamic
thresholds. Before each sign of the ReActNet-A blocks, the threshold is the learnable per-channel bias plus
a per-image term computed from the globally pooled input by a small real MLP (C -> C/r -> ReLU -> C); see
:class:`ContextualThreshold`.

The official code also trains a second, distillation classifier (``fc_dist``, DeiT-style: cross-entropy
on one head, the teacher's distribution on the other, their mean at evaluation). ``distillation_head=True``
builds it, as one real ``nn.Linear`` producing both heads' logits (so that it stays the last layer, which
the recipes keep real); the model then returns ``(logits, dist_logits)`` in training. By default the model
has one head and trains with ``recipes/bcdnet.yaml`` (distribution loss on that head).
"""
import functools
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import LearnableBias, RPReLU
from ._common import plain_conv, reactnet_a_blocks, stem_stride
from .reactnet import ReActNetABlock
from .registry import register_model

__all__ = ["ContextualThreshold", "Shift", "ShiftBlock", "PointBlock", "BinaryMLPBlock", "BCDNetA", "bcdnet_a"]

_PAPER = ("Xing et al., Towards Accurate Binary Neural Networks via Modeling Contextual Dependencies, "
          "ECCV 2022")

#: The stem's width then each ReActNet-A block's output width in BCDNet-A.
BCDNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 1024)


class ContextualThreshold(nn.Module):
    r"""A per-image, per-channel threshold before a sign (our reading of BCDNet's contextual dynamic
    embeddings): :math:`x + b_c + t_c(x)`, :math:`t(x) = W_2\,\mathrm{ReLU}(W_1 \bar{x} + c_1)` with
    :math:`\bar{x}` the spatial mean of :math:`x`.

    :math:`b` plays the part of :class:`bnn.layers.LearnableBias` (same name, init 0); :math:`W_2` starts at
    zero, so the module starts as the static threshold. The MLP is real-valued and held as plain
    parameters, so no recipe binarizes it.

    Args:
        channels: channels of the input.
        reduction: hidden width is ``max(channels // reduction, 1)``.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight1 = nn.Parameter(torch.empty(hidden, channels))
        self.bias1 = nn.Parameter(torch.zeros(hidden))
        self.weight2 = nn.Parameter(torch.zeros(channels, hidden))
        nn.init.kaiming_uniform_(self.weight1, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=(2, 3))
        dynamic = F.linear(F.relu(F.linear(context, self.weight1, self.bias1)), self.weight2)
        return x + (self.bias + dynamic)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}, hidden={self.bias1.numel()}"


class Shift(nn.Module):
    r"""Rolls the four channel groups of the input (channels divisible by 4) by ``distance`` pixels: down,
    up, right, left (``torch.roll``, wrapping around). Parameter-free; commutes with the sign."""

    def __init__(self, distance: int):
        super().__init__()
        self.distance = int(distance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # indexed, not unpacked, and no shape check here: torch.fx (count_ops, to_inference) traces it
        groups, d = x.chunk(4, dim=1), self.distance
        return torch.cat([groups[0].roll(d, 2), groups[1].roll(-d, 2), groups[2].roll(d, 3), groups[3].roll(-d, 3)],
                         dim=1)

    def extra_repr(self) -> str:
        return f"distance={self.distance}"


class ShiftBlock(nn.Module):
    r"""Long-short range binary MLP (token mixing): ``y = bias(x)``, then
    ``BN(conv(y) + conv_short(shift_1(y)) + conv_long(shift_3(y))) + x -> RPReLU``, three binary 1x1 convs
    (each with the recipe's sign on its input)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 4:
            raise ValueError(f"a shift block rolls four channel groups: channels must divide by 4, got {channels}")
        self.threshold = LearnableBias(channels)
        self.shift_short = Shift(1)
        self.shift_long = Shift(3)
        self.conv = plain_conv(channels, channels, 1)
        self.conv_short = plain_conv(channels, channels, 1)
        self.conv_long = plain_conv(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = RPReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.threshold(x)
        mixed = self.conv(y) + self.conv_short(self.shift_short(y)) + self.conv_long(self.shift_long(y))
        return self.act(self.bn(mixed) + x)


class PointBlock(nn.Module):
    r"""Binary channel MLP: ``x -> bias -> [sign] -> binary 1x1 -> BN -> + x -> RPReLU``."""

    def __init__(self, channels: int):
        super().__init__()
        self.threshold = LearnableBias(channels)
        self.conv = plain_conv(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = RPReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.threshold(x))) + x)


class BinaryMLPBlock(nn.Sequential):
    r"""Three :class:`ShiftBlock` then one :class:`PointBlock`, all at ``channels``."""

    def __init__(self, channels: int):
        super().__init__(ShiftBlock(channels), ShiftBlock(channels), ShiftBlock(channels), PointBlock(channels))


class BCDNetA(nn.Module):
    r"""BCDNet-A: real 3x3 stem with BN (stride 2 on ImageNet, 1 on CIFAR), ten ReActNet-A blocks
    (:class:`bnn.models.reactnet.ReActNetABlock`) up to 1024 channels, three :class:`BinaryMLPBlock`, global
    pool, real classifier.

    Args:
        num_classes: classifier outputs.
        stem: ``"imagenet"`` or ``"cifar"``.
        num_mlp_blocks: binary MLP blocks (3).
        dynamic_threshold: contextual dynamic thresholds in the ReActNet-A blocks (our reading of the paper;
            not in its public code).
        threshold_reduction: hidden width divisor of the threshold MLP.
        distillation_head: a second classifier head as in the official code (see the module doc).
    """

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", num_mlp_blocks: int = 3,
                 dynamic_threshold: bool = False, threshold_reduction: int = 8, distillation_head: bool = False):
        super().__init__()
        channels = BCDNET_A_CHANNELS
        self.num_classes = num_classes
        self.distillation_head = bool(distillation_head)
        threshold = (functools.partial(ContextualThreshold, reduction=threshold_reduction) if dynamic_threshold
                     else LearnableBias)
        self.stem = nn.Sequential(OrderedDict(
            conv=plain_conv(3, channels[0], 3, stem_stride(stem), 1),
            bn=nn.BatchNorm2d(channels[0]),
        ))
        self.blocks = nn.Sequential(*(ReActNetABlock(i, o, s, threshold=threshold)
                                      for i, o, s in reactnet_a_blocks(channels)))
        self.mlp = nn.Sequential(*(BinaryMLPBlock(channels[-1]) for _ in range(num_mlp_blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes * (2 if distillation_head else 1))

    def forward(self, x: torch.Tensor):
        x = self.mlp(self.blocks(self.stem(x)))
        logits = self.fc(torch.flatten(self.pool(x), 1))
        if not self.distillation_head:
            return logits
        logits, dist_logits = logits.split(self.num_classes, dim=1)
        return (logits, dist_logits) if self.training else (logits + dist_logits) / 2


@register_model(paper=_PAPER, default_recipe="recipes/bcdnet.yaml")
def bcdnet_a(num_classes: int = 1000, stem: str = "imagenet", dynamic_threshold: bool = False,
             threshold_reduction: int = 8, distillation_head: bool = False) -> BCDNetA:
    r"""BCDNet-A. Published: 72.3% ImageNet top-1. ``dynamic_threshold=True`` adds the paper's contextual
    dynamic thresholds as we read them (absent from the public code)."""
    return BCDNetA(num_classes, stem, dynamic_threshold=dynamic_threshold,
                   threshold_reduction=threshold_reduction, distillation_head=distillation_head)
