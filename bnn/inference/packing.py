r"""Bit packing and the pure-PyTorch reference of the packed binary kernels.

Bits are packed little-endian along the last axis into int64 words: bit ``i`` of word ``j`` holds element
``64 j + i``; a 1 bit stands for +1, a 0 bit for -1. For ``n`` valid bits of activations ``a`` and weights
``w``, :math:`\sum a_i w_i = n - 2\,\mathrm{popcount}(a \oplus w)` (XNOR-popcount, ALGORITHMS.md).

Zero padding of a binary feature map contributes 0 in the fake-binarized model (``F.conv2d`` pads with 0,
not with -1); here every tap carries a validity bit and only valid taps are counted.

These functions are the oracle of the fast kernels and the fallback when no compiler is available: they
use only bitwise operations on integer tensors, a byte lookup table for popcount and integer sums.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["WORD_BITS", "pack_bits", "unpack_bits", "popcount", "binary_linear_reference",
           "binary_conv2d_reference", "conv_output_size"]

WORD_BITS = 64
_POWERS = None
_POPCOUNT_TABLE = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def _powers(device: torch.device) -> torch.Tensor:
    global _POWERS
    if _POWERS is None or _POWERS.device != device:
        p = torch.ones(WORD_BITS, dtype=torch.int64, device=device)
        p[1:] = 2
        _POWERS = torch.cumprod(p, 0)  # 1, 2, 4, ..., 2**63 (wraps to -2**63: the sign bit)
    return _POWERS


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    r"""Pack a boolean tensor ``(..., K)`` into int64 words ``(..., ceil(K / 64))``; missing bits are 0."""
    if bits.dtype != torch.bool:
        raise ValueError(f"pack_bits takes a bool tensor, got {bits.dtype}")
    k = bits.shape[-1]
    words = max(1, math.ceil(k / WORD_BITS))
    padded = F.pad(bits.to(torch.int64), (0, words * WORD_BITS - k))
    return (padded.view(*bits.shape[:-1], words, WORD_BITS) * _powers(bits.device)).sum(-1)


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    r"""Inverse of :func:`pack_bits`: int64 words ``(..., W)`` to booleans ``(..., k)``."""
    bits = (words.unsqueeze(-1) & _powers(words.device)) != 0
    return bits.reshape(*words.shape[:-1], words.shape[-1] * WORD_BITS)[..., :k]


def popcount(words: torch.Tensor) -> torch.Tensor:
    r"""Number of set bits of each int64 word, summed over the last axis (int32)."""
    if words.numel() == 0:  # (an empty tensor may have zero strides, which a view as bytes refuses)
        return torch.zeros(words.shape[:-1], dtype=torch.int32, device=words.device)
    table = _POPCOUNT_TABLE.to(words.device)
    as_bytes = words.contiguous().view(torch.uint8).to(torch.int64)
    return table[as_bytes].sum(-1, dtype=torch.int32)


def binary_linear_reference(a_bits: torch.Tensor, w_bits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Integer dot products of packed ±1 vectors.

    Args:
        a_bits: packed activations ``(..., W)``.
        w_bits: packed weights ``(C_out, W)``.
        k: number of valid bits per vector.

    Returns:
        int32 ``(..., C_out)``: :math:`k - 2\,\mathrm{popcount}(a \oplus w)`.
    """
    diff = a_bits.unsqueeze(-2) ^ w_bits  # (..., C_out, W)
    return k - 2 * popcount(diff)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def binary_conv2d_reference(bits: torch.Tensor, w_bits: torch.Tensor, kernel_size: Tuple[int, int],
                            stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                            groups: int, in_channels: int) -> torch.Tensor:
    r"""Binary 2-D convolution on ±1 maps given as booleans, with zero padding counted as absent.

    Args:
        bits: bool ``(N, C_in, H, W)``, True for +1.
        w_bits: packed weights ``(C_out, W_words)``, each row the ``C_in / groups * kh * kw`` bits of one
            filter in ``weight.view(C_out, -1)`` order.
        kernel_size, stride, padding, dilation, groups: as ``F.conv2d``.
        in_channels: ``C_in``.

    Returns:
        int32 ``(N, C_out, H_out, W_out)``: the sum over valid taps of :math:`a \cdot w`.
    """
    n, c, h, w = bits.shape
    c_out = w_bits.shape[0]
    h_out = conv_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    w_out = conv_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    unfold = dict(kernel_size=kernel_size, dilation=dilation, padding=padding, stride=stride)
    # unfold pads with 0: a 0/1 map of the bits, and a map of ones telling valid taps from padded ones
    taps = F.unfold(bits.to(torch.uint8).float(), **unfold) > 0.5            # (N, C*kh*kw, L)
    valid = F.unfold(torch.ones(1, 1, h, w, device=bits.device), **unfold)[0] > 0.5  # (kh*kw, L)
    per_group = c // groups
    k = per_group * kernel_size[0] * kernel_size[1]
    outs = []
    out_per_group = c_out // groups
    for g in range(groups):
        a = taps[:, g * k:(g + 1) * k].transpose(1, 2)                     # (N, L, k)
        v = valid.repeat(per_group, 1).transpose(0, 1)                       # (L, k)
        a_words, v_words = pack_bits(a), pack_bits(v)                        # (N, L, W), (L, W)
        wg = w_bits[g * out_per_group:(g + 1) * out_per_group]               # (C_out/g, W)
        diff = (a_words.unsqueeze(-2) ^ wg) & v_words.unsqueeze(-2)          # (N, L, C_out/g, W)
        n_valid = popcount(v_words).unsqueeze(-1)                            # (L, 1)
        outs.append(n_valid - 2 * popcount(diff))                             # (N, L, C_out/g)
    out = torch.cat(outs, dim=-1)                                            # (N, L, C_out)
    # contiguous (N, C, H, W), as F.conv2d returns it: float ops downstream (a mean over channels, a real
    # conv) may reduce in another order on a channels-last layout and differ from the fake model in the last bit
    return out.transpose(1, 2).reshape(n, c_out, h_out, w_out).contiguous()
