r"""Activation binarizers (``activation_pre_process``): sign in the forward pass, the paper's gradient
estimator in the backward pass. All output exactly +1 / -1, with sign(0) = +1."""
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import functional as F
from .base import BinarizerBase, broadcast_shape, channel_dim, layer_channels

__all__ = [
    "BasicInputBinarizer", "StochasticInputBinarizer", "AdvancedInputBinarizer", "ApproxSignBinarizer",
    "SwishSignBinarizer", "MaskSignBinarizer", "IdentitySTEBinarizer", "RSign", "SIGN_ESTIMATORS",
]

#: Gradient estimators by name, for the binarizers that let you choose one.
SIGN_ESTIMATORS = {
    "ste": F.sign_ste,
    "approx_sign": F.approx_sign,
    "mask": F.mask_sign,
    "swish": F.swish_sign,
    "identity": F.identity_sign,
}


def _estimator(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return SIGN_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown gradient estimator {name!r}; choose one of {sorted(SIGN_ESTIMATORS)}") from None


class BasicInputBinarizer(BinarizerBase):
    r"""sign(x) with the straight-through estimator :math:`g \cdot 1\{|x| < 1\}`.

    BinaryNet (Courbariaux et al., 2016) and XNOR-Net (Rastegari et al., ECCV 2016).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.sign_ste(x)


class StochasticInputBinarizer(BinarizerBase):
    r"""Stochastic binarization in training: +1 with probability :math:`\mathrm{clip}((x+1)/2, 0, 1)`;
    deterministic sign in eval mode. Gradient: sign-STE. BinaryNet (Courbariaux et al., 2016)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.stochastic_sign(x) if self.training else F.sign_ste(x)


class AdvancedInputBinarizer(BinarizerBase):
    r"""sign(x) forward, the gradient of ``derivative_funct(t * x)`` backward (default
    :math:`\tanh(5x)`: :math:`g \cdot 5(1 - \tanh^2(5x))`). Upstream bnn 0.1.2's soft-sign binarizer.

    Args:
        derivative_funct: a differentiable elementwise function whose gradient is used.
        t: the sharpness it is evaluated at.
    """

    def __init__(self, derivative_funct: Callable[[torch.Tensor], torch.Tensor] = torch.tanh, t: float = 5.0):
        super().__init__()
        self.derivative_funct = derivative_funct
        self.t = float(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.sign_with_surrogate(x, lambda v: self.derivative_funct(self.t * v))

    def extra_repr(self) -> str:
        return f"derivative_funct={getattr(self.derivative_funct, '__name__', self.derivative_funct)}, t={self.t}"


class ApproxSignBinarizer(BinarizerBase):
    r"""sign(x) with Bi-Real Net's ApproxSign gradient: :math:`g(2 + 2x)` on [-1, 0),
    :math:`g(2 - 2x)` on [0, 1), 0 elsewhere. Liu et al., Bi-Real Net, ECCV 2018."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.approx_sign(x)


class SwishSignBinarizer(BinarizerBase):
    r"""sign(x) with the SwishSign gradient
    :math:`g\,\beta(2 - \beta x\tanh(\beta x/2)) / (1 + \cosh(\beta x))`, :math:`\beta = 5` by default.
    Darabi et al., BNN+ (2018), as in larq."""

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.swish_sign(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class MaskSignBinarizer(BinarizerBase):
    r"""The A&B BNN mask layer fused into the sign: forward sign(x), backward
    :math:`g \cdot \mathrm{Mask}'(x)` with :math:`\mathrm{Mask}(x) = 2\sigma(3x) - 1 = \tanh(1.5x)`.
    Ma et al., A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary Neural Network, CVPR 2024."""

    def __init__(self, slope: float = 1.5):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mask_sign(x, self.slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class IdentitySTEBinarizer(BinarizerBase):
    r"""sign(x) with the gradient passed through unchanged (identity straight-through estimator)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.identity_sign(x)


class RSign(BinarizerBase):
    r"""ReActNet's RSign: :math:`\mathrm{sign}(x + b_c)`, a learnable per-channel threshold :math:`-b_c`
    (initialised to 0). Liu et al., ReActNet, ECCV 2020; the official code uses the ApproxSign gradient.

    Args:
        channels: number of channels; left out, it is taken from the layer the binarizer is bound to.
        estimator: gradient estimator, one of :data:`SIGN_ESTIMATORS` (default ``"approx_sign"``).
        dim: the channel axis of the input (1 for N, C, ... tensors, -1 for channels-last / linear).
    """

    def __init__(self, channels: Optional[int] = None, estimator: str = "approx_sign", dim: int = 1):
        super().__init__()
        self._sign = _estimator(estimator)
        self.estimator = estimator
        self.dim = dim
        self.bias = nn.Parameter(torch.zeros(channels)) if channels is not None else None

    def bind(self, layer: nn.Module) -> None:
        in_channels, _ = layer_channels(layer)
        self.dim = channel_dim(layer)
        if self.bias is None:
            self.bias = nn.Parameter(torch.zeros(in_channels))
        elif self.bias.numel() != in_channels:
            raise ValueError(f"RSign has {self.bias.numel()} channels but the layer takes {in_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            raise RuntimeError("RSign needs `channels`, or to be bound to a layer through a BConfig")
        if x.dim() < 2 or x.shape[self.dim] != self.bias.numel():
            raise ValueError(
                f"RSign expects {self.bias.numel()} channels on axis {self.dim}, got input of shape {tuple(x.shape)}"
            )
        shift = self.bias.view(broadcast_shape(self.bias.numel(), x.dim(), self.dim))
        return self._sign(x + shift)

    def extra_repr(self) -> str:
        channels = None if self.bias is None else self.bias.numel()
        return f"channels={channels}, estimator={self.estimator!r}"
