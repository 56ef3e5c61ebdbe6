r"""Eval-mode BatchNorm after a packed convolution, as an exact epilogue step.

PyTorch's CPU batch norm in eval mode computes per channel ``alpha = weight / sqrt(var + eps)`` and
``beta = bias - mean * alpha``, then ``y = x * alpha + beta``; whether each product and sum is rounded on its
own or fused into one multiply-add, and how ``1 / sqrt`` is computed, depends on how ATen was compiled. So
the converter does not assume a formula: it tries the candidates below and keeps one only if it gives the
BatchNorm module's own results, bit for bit, on every value the convolution before it can produce (all
integer sums, through the epilogue so far). No candidate matches: the BatchNorm stays a module.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["fused_multiply_add", "batchnorm_steps"]

Step = Tuple[str, Optional[torch.Tensor]]


def fused_multiply_add(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x * a + b`` in float32 with one rounding, as a hardware fused multiply-add (``fmaf``), in torch ops.

    The product of two floats is exact in float64, and so is the error of its float64 sum with ``b``
    (TwoSum); rounding that sum to float32 is then wrong only when it lands exactly halfway between two
    floats while the error term is not zero, and the error's sign says which way the exact result lies."""
    p = x.double() * a.double()
    bd = b.double()
    s = p + bd
    b_virtual = s - p
    err = (p - (s - b_virtual)) + (bd - b_virtual)
    r = s.float()
    rd = r.double()
    toward = torch.where(s > rd, torch.full_like(r, float("inf")), torch.full_like(r, float("-inf")))
    neighbour = torch.nextafter(r, toward)
    halfway = (s != rd) & (s == (rd + neighbour.double()) / 2)
    # halfway: s rounded (ties to even) to r; the exact value s + err lies beyond s (away from r) when err
    # has the sign of s - r
    beyond = (err != 0) & ((err > 0) == (s > rd))
    return torch.where(halfway & beyond, neighbour, r)


def _candidates(bn: nn.BatchNorm2d):
    """(alpha, beta, fused) triples: the ways ATen may compute the eval-mode batch norm."""
    var, mean = bn.running_var.detach().float(), bn.running_mean.detach().float()
    weight = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    eps = torch.tensor(bn.eps, dtype=torch.float32)
    for invstd in (torch.rsqrt(var + eps), 1 / torch.sqrt(var + eps),
                   (1 / torch.sqrt(var.double() + bn.eps)).float()):
        alpha = invstd * weight
        for beta in (fused_multiply_add(-mean, alpha, bias), bias - mean * alpha):
            for fused in (True, False):
                yield alpha, beta, fused


def _apply(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, fused: bool) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    a, b = alpha.view(shape).expand_as(x), beta.view(shape).expand_as(x)
    return fused_multiply_add(x, a, b) if fused else x * a + b


def batchnorm_steps(bn: nn.Module, reachable: torch.Tensor) -> Optional[List[Step]]:
    """The epilogue steps equal to ``bn`` (eval mode) on every value of ``reachable`` (``(1, C, 1, K)``:
    each channel's possible inputs), or None."""
    if (type(bn) is not nn.BatchNorm2d or bn.training or not bn.track_running_stats or bn.running_var is None
            or reachable.dim() != 4 or reachable.shape[1] != bn.num_features):
        return None
    with torch.no_grad():
        expected = bn(reachable)
        for alpha, beta, fused in _candidates(bn):
            # a few channels at a time: the float64 work of fused_multiply_add on a 1024-channel 3x3 layer's
            # 18 thousand values per channel would otherwise take a gigabyte
            if all(torch.equal(_apply(reachable[:, c:c + 64], alpha[c:c + 64], beta[c:c + 64], fused),
                               expected[:, c:c + 64]) for c in range(0, reachable.shape[1], 64)):
                return [("multiply_add", torch.stack([alpha, beta]))] if fused else [("multiply", alpha), ("add", beta)]
    return None
