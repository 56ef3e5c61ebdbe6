r"""``nn.MaxPool2d`` / ``nn.AvgPool2d`` on the fast CPU kernels (``csrc/pooling.cpp``).

PyTorch's CPU pooling on NCHW float32 tensors scans every window element by element, one output at a time
(the stem's 3x3 max-pool of a ResNet at 224x224 costs more than several binary layers). The kernels compute
the same outputs a vector of output columns at a time, **bit-identical** to ``F.max_pool2d`` /
``F.avg_pool2d`` on a contiguous NCHW tensor: the same output sizes (``ceil_mode`` included), max-pooling's
``val > max || isnan(val)`` scan (the first of equal maxima, so the sign of a zero; the last NaN), average
pooling's row-by-row float sum, its divide factor (``count_include_pad``, ``divisor_override``) and its
``0 + sum / factor``.

The modules fall back to PyTorch (``super().forward``) when the kernels are not built (or
``BNN_KERNELS=reference``), for anything but a 4-D float32 CPU tensor, with ``return_indices``, when
autograd records, and for non-contiguous layouts the kernel would not match or not speed up: a channels-last
input (PyTorch's channels-last kernels are vectorized already, and its average-pooling one leaves a ``-0``
quotient where the NCHW one gives ``+0``), and any non-contiguous input of ``FastAvgPool2d``. Other
non-contiguous inputs of ``FastMaxPool2d`` are made contiguous first (a maximum does not depend on the layout).
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from . import kernels

__all__ = ["FastMaxPool2d", "FastAvgPool2d"]


def _kernel_input(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled()))


class FastMaxPool2d(nn.MaxPool2d):
    r"""``nn.MaxPool2d`` on the pooling kernel (bit-identical outputs; see the module's docstring)."""

    @classmethod
    def from_module(cls, pool: nn.MaxPool2d) -> "FastMaxPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode)

    def _geometry(self) -> Tuple[int, ...]:
        """``(kh, kw, sh, sw, ph, pw, dh, dw)``, cached (recomputed if an attribute changed)."""
        key = (self.kernel_size, self.stride, self.padding, self.dilation)
        cached = self.__dict__.get("_geometry_cache")
        if cached is None or cached[0] != key:
            cached = self._geometry_cache = (key, _pair(self.kernel_size) + _pair(self.stride) + _pair(self.padding)
                                             + _pair(self.dilation))
        return cached[1]

    def forward(self, x: torch.Tensor):
        if not self.return_indices and _kernel_input(x):
            ext, isa = kernels.active()
            if isa is not None:
                if not x.is_contiguous():
                    if x.is_contiguous(memory_format=torch.channels_last):
                        return super().forward(x)
                    x = x.contiguous()
                return ext.max_pool2d_nchw(x, *self._geometry(), self.ceil_mode, isa)
        return super().forward(x)


class FastAvgPool2d(nn.AvgPool2d):
    r"""``nn.AvgPool2d`` on the pooling kernel (bit-identical outputs; see the module's docstring)."""

    @classmethod
    def from_module(cls, pool: nn.AvgPool2d) -> "FastAvgPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
                   pool.divisor_override)

    def _geometry(self) -> Tuple[int, ...]:
        """``(kh, kw, sh, sw, ph, pw)``, cached (recomputed if an attribute changed)."""
        key = (self.kernel_size, self.stride, self.padding)
        cached = self.__dict__.get("_geometry_cache")
        if cached is None or cached[0] != key:
            cached = self._geometry_cache = (key, _pair(self.kernel_size) + _pair(self.stride) + _pair(self.padding))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_input(x) and x.is_contiguous():
            ext, isa = kernels.active()
            if isa is not None:
                return ext.avg_pool2d_nchw(x, *self._geometry(), self.ceil_mode, self.count_include_pad,
                                           self.divisor_override, isa)
        return super().forward(x)
