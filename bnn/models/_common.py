r"""What the model families share: the two backbone layouts of the seed papers and the real
scaled-weight-standardized convolution of the normalizer-free models."""
import math
from typing import List, Sequence, Tuple

import torch.nn as nn


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
