r"""Exact per-channel thresholds: a sign after per-channel monotone elementwise operations becomes one
compare on the input of those operations.

For eval-mode ops such as ``sign(bn(x) + b)`` (``a_c x + b_c`` for a BatchNorm, a learnable bias, a scalar
scale, the binarizer's own shift), the set of ``x`` that give +1 is a half-line for each channel, because
every float operation involved is monotone. The threshold is found by bisection over the float32 values
themselves, evaluating the very same torch operations the fake-binarized model runs, so the compare is
derived, not approximated: it agrees with the model bit for bit, ties included.
"""
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

__all__ = ["ChannelThresholds", "derive_thresholds"]

_INT32_MIN = -(2 ** 31)


def _to_key(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 key with the same order (-0.0 just below +0.0)."""
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, _INT32_MIN - 1 - bits)


def _from_key(key: torch.Tensor) -> torch.Tensor:
    bits = torch.where(key >= 0, key, _INT32_MIN - 1 - key)
    return bits.to(torch.int32).view(torch.float32)


@dataclass
class ChannelThresholds:
    r"""Per channel: ``bit = x >= threshold`` (``direction == 1``), ``bit = x <= threshold``
    (``direction == -1``), or a constant bit (``direction == 0``, the bit is ``threshold > 0``)."""
    threshold: torch.Tensor   # float32 (C,)
    direction: torch.Tensor   # int8 (C,)

    def bits(self, x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """The ±1 bits (True = +1) of a real tensor ``x``."""
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        t = self.threshold.view(shape).to(x.dtype)
        d = self.direction.view(shape)
        return torch.where(d > 0, x >= t, torch.where(d < 0, x <= t, t > 0))


def derive_thresholds(positive: Callable[[torch.Tensor], torch.Tensor], channels: int,
                      shape: Tuple[int, ...], channel_dim: int = 1) -> ChannelThresholds:
    r"""Thresholds of a per-channel monotone predicate.

    Args:
        positive: maps a float32 tensor of ``shape`` to a bool tensor of the same shape, True where the
            fake-binarized model outputs +1. Every element of a channel holds the same candidate value.
        channels: number of channels.
        shape: the shape to evaluate at, that of the real activations (so the same kernels run).
        channel_dim: the channel axis in ``shape``.

    Raises:
        ValueError: when the predicate is not a per-channel half-line (not monotone, or not the same at
            every position of a channel).
    """
    view = [1] * len(shape)
    view[channel_dim] = channels

    def evaluate(values: torch.Tensor) -> torch.Tensor:
        x = values.view(view).expand(shape).contiguous()
        p = positive(x)
        reduce = tuple(d for d in range(len(shape)) if d != channel_dim % len(shape))
        every, some = p.all(dim=reduce) if reduce else p, p.any(dim=reduce) if reduce else p
        if not torch.equal(every, some):
            raise ValueError("the binarized value differs between positions of one channel")
        return every.reshape(channels)

    big = torch.finfo(torch.float32).max
    low = evaluate(torch.full((channels,), -big))
    high = evaluate(torch.full((channels,), big))
    increasing = ~low & high
    decreasing = low & ~high

    # bisection on the ordered keys: find the boundary between the two values of the predicate
    lo = _to_key(torch.full((channels,), -big))
    hi = _to_key(torch.full((channels,), big))
    for _ in range(34):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        p = evaluate(_from_key(mid))
        # increasing: want the smallest True -> True moves hi down; decreasing: want the largest True
        move_hi = torch.where(increasing, p, ~p)
        hi = torch.where(move_hi, mid, hi)
        lo = torch.where(move_hi, lo, mid)
        if bool(((hi - lo) <= 1).all()):
            break
    threshold = torch.where(increasing, _from_key(hi), _from_key(lo))
    constant = ~(increasing | decreasing)
    direction = torch.where(increasing, 1, torch.where(decreasing, -1, 0)).to(torch.int8)
    threshold = torch.where(constant, low.to(torch.float32), threshold)

    # check: the compare agrees with the predicate on both sides of every boundary (finite probes only: past
    # the largest float is +-inf, where e.g. a zero BatchNorm weight gives inf * 0 = nan, not the constant)
    key_min, key_max = _to_key(torch.tensor(-big)), _to_key(torch.tensor(big))
    for probe in (_from_key(hi), _from_key(lo), _from_key((hi + 1).clamp(max=key_max)),
                  _from_key((lo - 1).clamp(min=key_min)), torch.zeros(channels)):
        expected = evaluate(probe)
        got = ChannelThresholds(threshold, direction).bits(probe.view(view).expand(shape), channel_dim)
        reduce = tuple(d for d in range(len(shape)) if d != channel_dim % len(shape))
        if not torch.equal(got.all(dim=reduce).reshape(channels) if reduce else got.reshape(channels), expected):
            raise ValueError("the binarized value is not a monotone function of the input in every channel")
    return ChannelThresholds(threshold, direction)
