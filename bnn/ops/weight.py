r"""Weight binarizers (``weight_pre_process``).

Weights reach a binarizer in out-major layout ``(C_out, C_in / groups, *kernel)`` (linear:
``(C_out, C_in)``); the binary layers transpose ConvTranspose weights into it.

Binarizers with a per-output-channel scale :math:`K_o` derive from :class:`ScaledWeightBinarizer`. Besides
``forward(w) -> K * sign(W)`` they offer ``split(w) -> (sign(W), K)``, which the binary layers use in
eval mode to apply the scale *after* the sum, conv(x_b, K sign(W)) = K conv(x_b, sign(W)), keeping the
sum an exact integer (ALGORITHMS.md, "scale after the sum").
"""
import math
from typing import Tuple

import torch
import torch.nn as nn

from . import functional as F
from .base import BinarizerBase, layer_channels

__all__ = [
    "ScaledWeightBinarizer", "XNORWeightBinarizer", "MagnitudeAwareWeightBinarizer",
    "ScaledWSWeightBinarizer", "ScaledStandardizedWeight",
]


def _fan_in_dims(w: torch.Tensor) -> Tuple[int, ...]:
    if w.dim() < 2:
        raise ValueError(f"a weight binarizer expects a weight of 2 or more dimensions (C_out, C_in, ...), "
                         f"got shape {tuple(w.shape)}")
    return tuple(range(1, w.dim()))


def _mean_abs(w: torch.Tensor) -> torch.Tensor:
    """mean |W_o| over the fan-in, shaped (C_out, 1, ..., 1); one pass over the weight."""
    dims = _fan_in_dims(w)
    return w.abs().sum(dim=dims, keepdim=True) / math.prod(w.shape[1:])


def _standardize(w: torch.Tensor, eps: float) -> torch.Tensor:
    """N^(-1/2) (W - mu_o) / (sigma_o + eps), per output channel, biased sigma (NF-Nets)."""
    dims = _fan_in_dims(w)
    fan_in = math.prod(w.shape[1:])
    var, mean = torch.var_mean(w, dim=dims, keepdim=True, correction=0)
    return (w - mean) / ((var.sqrt() + eps) * math.sqrt(fan_in))


def _bind_gain(module: nn.Module, layer: nn.Module) -> None:
    """Create (or check) the per-output-channel ``gain`` of a weight standardizer."""
    _, out_channels = layer_channels(layer)
    if module.gain is None:
        module.gain = nn.Parameter(torch.ones(out_channels))
    elif module.gain.numel() != out_channels:
        raise ValueError(f"{type(module).__name__} has {module.gain.numel()} channels, the layer has {out_channels}")


class ScaledWeightBinarizer(BinarizerBase):
    r"""Base of :math:`W_b = K_o \cdot \mathrm{sign}(V)` binarizers with a per-output-channel scale.

    Subclasses implement ``_sign_and_scale(w) -> (V, K)`` (``K`` shaped ``(C_out, 1, ..., 1)``) and
    ``_scaled_sign(V, K)`` (the gradient estimator). ``power_of_two=True`` rounds :math:`K_o` to the nearest
    power of two (gradient passed through the rounding), so that inference applies it as a shift.
    """

    def __init__(self, power_of_two: bool = False):
        super().__init__()
        self.power_of_two = bool(power_of_two)

    def _sign_and_scale(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _scaled_sign(self, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scale(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        v, scale = self._sign_and_scale(w)
        if self.power_of_two:
            # Rounded in magnitude, the sign kept: a negative K (a learnable gain below 0) stays negative.
            scale = F.power_of_two(scale.abs().clamp_min(torch.finfo(scale.dtype).tiny)).copysign(scale)
        return v, scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        v, scale = self._scale(w)
        return self._scaled_sign(v, scale)

    def split(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(sign(V), K)``, with ``K`` flattened to ``(C_out,)``: the binary weight and its scale apart."""
        v, scale = self._scale(w)
        ones = torch.ones_like(scale)
        return self._scaled_sign(v, ones), scale.reshape(-1)

    def extra_repr(self) -> str:
        return f"power_of_two={self.power_of_two}"


class XNORWeightBinarizer(ScaledWeightBinarizer):
    r"""XNOR-Net weights: :math:`W_b = \alpha_o \mathrm{sign}(W)`, :math:`\alpha_o = \frac{1}{n}\|W_o\|_1`
    over the fan-in. Rastegari et al., XNOR-Net, ECCV 2016.

    The gradient goes through the sign by sign-STE and, unless ``detach_alpha``, through
    :math:`\alpha` as well (as upstream bnn does; the Bi-Real / ReActNet code detaches it).

    Args:
        compute_alpha: scale by :math:`\alpha_o`; if False, :math:`W_b = \mathrm{sign}(W)`.
        center_weights: subtract the mean over the input-channel dimension first.
        detach_alpha: no gradient through :math:`\alpha`.
        power_of_two: round :math:`\alpha_o` to a power of two.
    """

    def __init__(self, compute_alpha: bool = True, center_weights: bool = False, detach_alpha: bool = False,
                 power_of_two: bool = False):
        super().__init__(power_of_two=power_of_two)
        self.compute_alpha = bool(compute_alpha)
        self.center_weights = bool(center_weights)
        self.detach_alpha = bool(detach_alpha)

    def _sign_and_scale(self, w):
        dims = _fan_in_dims(w)
        if self.center_weights:
            w = w - w.mean(dim=1, keepdim=True)
        if not self.compute_alpha:
            return w, torch.ones((w.shape[0],) + (1,) * len(dims), dtype=w.dtype, device=w.device)
        alpha = _mean_abs(w)
        return w, alpha.detach() if self.detach_alpha else alpha

    def _scaled_sign(self, v, scale):
        return F.scaled_sign(v, scale, "ste")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.compute_alpha:
            return super().forward(w)
        if self.center_weights:
            w = w - w.mean(dim=1, keepdim=True)
        return F.xnor_sign(w, detach_alpha=self.detach_alpha, power_of_two=self.power_of_two)

    def extra_repr(self) -> str:
        return (f"compute_alpha={self.compute_alpha}, center_weights={self.center_weights}, "
                f"detach_alpha={self.detach_alpha}, power_of_two={self.power_of_two}")


class MagnitudeAwareWeightBinarizer(ScaledWeightBinarizer):
    r"""Bi-Real Net / ReActNet ``HardBinaryConv`` weights: :math:`W_b = \alpha_o \mathrm{sign}(W)` with
    :math:`\alpha_o = \mathrm{mean}|W_o|` detached, gradient of :math:`\mathrm{clamp}(W, -1, 1)`.

    Liu et al., Bi-Real Net (ECCV 2018) and ReActNet (ECCV 2020), as their official code computes it
    (the paper's magnitude-aware gradient is absent from that code).
    """

    def _sign_and_scale(self, w):
        return w, _mean_abs(w).detach()

    def _scaled_sign(self, v, scale):
        return F.scaled_sign(v, scale, "clamp", nonnegative=True)  # a mean of |W|, rounded or not


class ScaledWSWeightBinarizer(ScaledWeightBinarizer):
    r"""Binary scaled weight standardization (BNN - BN = ?, A&B BNN):

    .. math::
        W' = N^{-1/2} \frac{W - \mu_o}{\sigma_o + \epsilon}, \qquad
        W_b = \gamma_o \cdot \mathrm{mean}|W'_o| \cdot \mathrm{sign}(W')

    with :math:`N = C_{in} k_h k_w`, biased :math:`\sigma`, a learnable gain :math:`\gamma` (init 1),
    :math:`\mathrm{mean}|W'|` detached, and the gradient of :math:`\mathrm{clamp}(W', -1, 1)`.
    Chen et al., "BNN - BN = ?", CVPR-W 2021; Ma et al., A&B BNN, CVPR 2024.

    Args:
        channels: output channels; left out, taken from the layer.
        eps: added to :math:`\sigma`.
        power_of_two: round :math:`K_o = \gamma_o \mathrm{mean}|W'_o|` to a power of two (the
            multiplication-free A&B variant).
    """

    def __init__(self, channels: int = None, eps: float = 1e-5, power_of_two: bool = False):
        super().__init__(power_of_two=power_of_two)
        self.eps = float(eps)
        self.gain = nn.Parameter(torch.ones(channels)) if channels is not None else None

    def bind(self, layer: nn.Module) -> None:
        _bind_gain(self, layer)

    def _sign_and_scale(self, w):
        if self.gain is None:
            raise RuntimeError("ScaledWSWeightBinarizer needs `channels`, or to be bound to a layer through a BConfig")
        v = _standardize(w, self.eps)
        gain = self.gain.view((-1,) + (1,) * (w.dim() - 1))
        return v, gain * _mean_abs(v).detach()

    def _scaled_sign(self, v, scale):
        return F.scaled_sign(v, scale, "clamp")

    def extra_repr(self) -> str:
        return f"eps={self.eps}, power_of_two={self.power_of_two}"


class ScaledStandardizedWeight(BinarizerBase):
    r"""Real-valued scaled weight standardization of NF-Nets:
    :math:`W' = \gamma_o N^{-1/2} (W - \mu_o) / (\sigma_o + \epsilon)`, gain :math:`\gamma` init 1.
    For the real layers of a normalizer-free network. Brock et al., NF-Nets, ICLR / ICML 2021."""

    precision = 32

    def __init__(self, channels: int = None, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)
        self.gain = nn.Parameter(torch.ones(channels)) if channels is not None else None

    def bind(self, layer: nn.Module) -> None:
        _bind_gain(self, layer)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.gain is None:
            raise RuntimeError("ScaledStandardizedWeight needs `channels`, or to be bound to a layer through a BConfig")
        return self.gain.view((-1,) + (1,) * (w.dim() - 1)) * _standardize(w, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
