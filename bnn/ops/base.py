r"""What every binarizer shares: the ``with_args`` factory, the declared precision, binding to a layer."""
from typing import Any, Tuple

import torch
import torch.nn as nn

from ..bconfig import with_args

__all__ = ["BinarizerBase", "Identity", "layer_channels", "channel_dim"]


class BinarizerBase(nn.Module):
    r"""Base of bnn's binarizers.

    ``precision`` is the number of bits of what the binarizer outputs (1 for a binarizer, 32 for a
    real-valued transform); reports and the inference converter read it, never the class name.
    ``bind(layer)`` is called once when a layer builds the binarizer, so that per-channel parameters
    can be sized from the layer.
    """

    precision: int = 1
    with_args = classmethod(with_args)

    def bind(self, layer: nn.Module) -> None:
        """Size any per-channel state from ``layer``; nothing by default."""


class Identity(BinarizerBase):
    r"""Identity that accepts and ignores extra arguments: ``Identity()(x, x_in) is x``.

    The default ``activation_post_process`` (called with the layer output and the layer input), and a
    real-valued ``activation_pre_process`` / ``weight_pre_process``.
    """

    precision = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return x


def layer_channels(layer: nn.Module) -> Tuple[int, int]:
    """(input channels, output channels) of a conv or linear layer, from its public attributes."""
    if hasattr(layer, "in_channels"):
        return layer.in_channels, layer.out_channels
    if hasattr(layer, "in_features"):
        return layer.in_features, layer.out_features
    raise ValueError(
        f"{type(layer).__name__} has neither in_channels/out_channels nor in_features/out_features; "
        "a per-channel binarizer cannot size itself from it"
    )


def channel_dim(layer: nn.Module) -> int:
    """The channel axis of the layer's activations: 1 for convolutions (N, C, ...), -1 for linear."""
    return 1 if hasattr(layer, "in_channels") else -1


def broadcast_shape(num_channels: int, ndim: int, dim: int) -> Tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along axis ``dim`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[dim] = num_channels
    return tuple(shape)
