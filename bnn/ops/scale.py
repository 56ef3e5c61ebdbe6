r"""Output scalers (``activation_post_process``): called as ``f(output, input)`` after the binary sum."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import BinarizerBase, broadcast_shape, channel_dim, layer_channels

__all__ = ["BasicScaleBinarizer", "XNORScaleBinarizer"]


class BasicScaleBinarizer(BinarizerBase):
    r"""A learnable per-output-channel scale :math:`\alpha_c` (init 1): ``output * alpha``.

    Bulat & Tzimiropoulos, XNOR-Net++ (BMVC 2019), the factorised scale's simplest form.

    Args:
        module: optional, upstream bnn 0.1.2 style: the layer to size the scale from.
        shape: optional explicit shape of :math:`\alpha` (upstream bnn 0.1.2 argument).
    """

    precision = 32

    def __init__(self, module: nn.Module = None, shape=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(*shape)) if shape is not None else None
        self.dim = 1
        if module is not None:
            self.bind(module)

    def bind(self, layer: nn.Module) -> None:
        self.dim = channel_dim(layer)
        if self.alpha is None:
            _, out_channels = layer_channels(layer)
            self.alpha = nn.Parameter(torch.ones(out_channels))

    def forward(self, out: torch.Tensor, x: torch.Tensor = None) -> torch.Tensor:
        if self.alpha is None:
            raise RuntimeError("BasicScaleBinarizer needs `shape`, or to be bound to a layer through a BConfig")
        alpha = self.alpha
        if alpha.dim() == 1:
            alpha = alpha.view(broadcast_shape(alpha.numel(), out.dim(), self.dim))
        return out * alpha

    def extra_repr(self) -> str:
        return "" if self.alpha is None else f"{list(self.alpha.shape)}"


class XNORScaleBinarizer(BinarizerBase):
    r"""XNOR-Net's activation scale: :math:`K = A * k`, :math:`A = \frac{1}{c}\sum_c |I_c|` the mean
    absolute input over channels, :math:`k` a box filter of the layer's kernel size, stride, padding and
    dilation (zeros padded count, as in the layer). Output: ``output * K``. For a linear layer ``K`` is the
    mean absolute input per sample. Rastegari et al., XNOR-Net, ECCV 2016.
    """

    precision = 32

    def __init__(self, module: nn.Module = None):
        super().__init__()
        self.kernel_size = None
        if module is not None:
            self.bind(module)

    def bind(self, layer: nn.Module) -> None:
        if getattr(layer, "transposed", False):
            raise ValueError("XNORScaleBinarizer has no definition for transposed convolutions")
        if isinstance(getattr(layer, "padding", 0), str):
            raise ValueError("XNORScaleBinarizer needs numeric padding, the layer has padding="
                             f"{layer.padding!r}")
        if hasattr(layer, "kernel_size"):
            self.kernel_size = tuple(layer.kernel_size)
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        else:
            self.kernel_size = ()

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size is None:
            raise RuntimeError("XNORScaleBinarizer needs the layer: pass it, or build it through a BConfig")
        if not self.kernel_size:
            return out * x.abs().mean(dim=-1, keepdim=True)
        a = x.abs().mean(dim=1, keepdim=True)
        box = torch.full((1, 1) + self.kernel_size, 1.0 / math.prod(self.kernel_size), dtype=a.dtype, device=a.device)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        return out * conv(a, box, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
