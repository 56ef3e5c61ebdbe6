r"""Fake-binarized layers and the building blocks of binary architectures."""
from .binarized import (BinarizedLayer, BinaryConv1d, BinaryConv2d, BinaryConv3d, BinaryConvTranspose1d,
                        BinaryConvTranspose2d, BinaryConvTranspose3d, BinaryLinear)
from .blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU, ScaledStdConv2d

# Upstream bnn 0.1.2 names.
Conv1d, Conv2d, Linear = BinaryConv1d, BinaryConv2d, BinaryLinear

__all__ = [
    "BinarizedLayer", "BinaryConv1d", "BinaryConv2d", "BinaryConv3d", "BinaryConvTranspose1d",
    "BinaryConvTranspose2d", "BinaryConvTranspose3d", "BinaryLinear", "LearnableBias", "RPReLU",
    "PowerOfTwoRPReLU", "ScaledStdConv2d", "Conv1d", "Conv2d", "Linear",
]
