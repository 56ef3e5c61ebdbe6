r"""Building blocks of binary architectures that sit around the binary layers: learnable bias, RPReLU and
the power-of-two RPReLU. All per-channel on axis 1 (N, C, ...) by default."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.base import broadcast_shape
from ..ops.functional import round_ste
from ..ops.weight import ScaledStandardizedWeight

__all__ = ["LearnableBias", "RPReLU", "PowerOfTwoRPReLU", "ScaledStdConv2d"]


def _per_channel(p: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dim() < 2 or x.shape[dim] != p.numel():
        raise ValueError(f"expected {p.numel()} channels on axis {dim}, got input of shape {tuple(x.shape)}")
    return p.view(broadcast_shape(p.numel(), x.dim(), dim))


class LearnableBias(nn.Module):
    r"""``x + b_c``, a learnable per-channel shift (init 0). ReActNet's ``LearnableBias``.

    Args:
        channels: number of channels.
        dim: channel axis (1 for N, C, ... tensors; -1 for channels-last).
    """

    def __init__(self, channels: int, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _per_channel(self.bias, x, self.dim)

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}"


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU: :math:`x \mapsto \mathrm{PReLU}_c(x + \gamma_c) + \zeta_c`, per-channel slope
    (init 0.25) and shifts (init 0). Liu et al., ReActNet, ECCV 2020."""

    def __init__(self, channels: int, init_slope: float = 0.25, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(init_slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _per_channel(self.shift_in, x, self.dim)
        if self.dim == 1:
            x = F.prelu(x, self.slope)
        else:
            x = torch.where(x >= 0, x, x * _per_channel(self.slope, x, self.dim))
        return x + _per_channel(self.shift_out, x, self.dim)

    def extra_repr(self) -> str:
        return f"channels={self.slope.numel()}"


class PowerOfTwoRPReLU(nn.Module):
    r"""A&B BNN's quantized RPReLU: between two learnable shifts, :math:`y = x` for :math:`x \ge 0` and
    :math:`2^{k_c} x` for :math:`x < 0`, :math:`k_c = \mathrm{round}(a_c)` with an identity gradient
    through the rounding; :math:`a_c` init -3 (slope 1/8), not clamped, positive slopes only.
    In inference the negative branch is an arithmetic shift. Exclude ``log2_slope`` from weight decay.
    Ma et al., A&B BNN, CVPR 2024."""

    def __init__(self, channels: int, init_log2_slope: float = -3.0, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.log2_slope = nn.Parameter(torch.full((channels,), float(init_log2_slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    @property
    def exponent(self) -> torch.Tensor:
        """The integer exponents :math:`k_c` as the forward pass uses them."""
        return torch.round(self.log2_slope.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _per_channel(self.shift_in, x, self.dim)
        slope = torch.exp2(round_ste(self.log2_slope))
        if self.dim == 1:
            x = F.prelu(x, slope)  # one fused pass; torch.where is several times slower on CPU
        else:
            x = torch.where(x >= 0, x, x * _per_channel(slope, x, self.dim))
        return x + _per_channel(self.shift_out, x, self.dim)

    def extra_repr(self) -> str:
        return f"channels={self.log2_slope.numel()}"


class ScaledStdConv2d(nn.Conv2d):
    r"""A real, bias-free convolution with scaled weight standardization, the normalizer-free nets' real
    layer (``ScaledStdConv2d`` of the official code, after NF-Nets):
    :math:`W' = \gamma_o N^{-1/2}(W - \mu_o)/(\sigma_o + 10^{-5})`, computed by
    :class:`bnn.ops.ScaledStandardizedWeight` (``weight_pre_process``, which holds the gain).

    An ``nn.Conv2d``, so the recipes' selectors count it (the stem is ``_first_``) and leave it as it is
    when they keep it real; a recipe that binarizes it replaces it with a binary layer, whose weight
    binarizer then decides the standardization."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.weight_pre_process = ScaledStandardizedWeight(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_pre_process(self.weight), self.bias)
