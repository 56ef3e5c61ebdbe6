"""derive_thresholds against the predicate it replaces, sign(bn(x) + b) in eval mode, evaluated by the test on
random inputs, on random float32 bit patterns (every magnitude), and on each threshold and its two float32
neighbours, where an approximate threshold would flip a bit."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from bnn.inference.thresholds import ChannelThresholds, derive_thresholds

SHAPE = (2, 0, 3, 3)  # channel count filled in


def make_predicate(c: int, seed: int, zero_weights: int = 2, scale: float = 1.0):
    """sign(bn(x) + b) > 0 with random BN statistics and affine (some weights negative, ``zero_weights`` of
    them exactly 0: constant channels) and a random bias b, everything times ``scale`` (large magnitudes)."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 4 * scale)
        bn.running_var.copy_((0.1 + 3 * torch.rand(c, generator=g)) * scale * scale)
        w = (0.1 + 2 * torch.rand(c, generator=g)) * torch.where(torch.rand(c, generator=g) < 0.4, -1.0, 1.0)
        w[torch.randperm(c, generator=g)[:zero_weights]] = 0.0
        bn.weight.copy_(w)
        bn.bias.copy_(torch.randn(c, generator=g))
    b = torch.randn(c, generator=g).view(1, c, 1, 1)

    def positive(x):
        with torch.no_grad():
            y = bn(x) + b
        return torch.where(y >= 0, 1.0, -1.0) > 0  # sign(0) = +1
    return positive, bn


def random_float32(shape, g):
    """Uniformly random finite float32 bit patterns: every exponent, both signs, zeros and subnormals."""
    bits = torch.randint(-(2 ** 31), 2 ** 31, shape, generator=g, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def neighbours(t: torch.Tensor):
    """t, the next float32 above and below, and two steps away."""
    up = torch.nextafter(t, torch.tensor(float("inf")))
    down = torch.nextafter(t, torch.tensor(float("-inf")))
    return [t, up, down, torch.nextafter(up, torch.tensor(float("inf"))),
            torch.nextafter(down, torch.tensor(float("-inf")))]


def check_against_predicate(positive, th: ChannelThresholds, c: int, seed: int):
    shape = (2, c, 3, 3)
    g = torch.Generator().manual_seed(seed + 1)
    for x in (torch.randn(shape, generator=g) * 3, random_float32(shape, g),
              torch.randn(shape, generator=g) * 1e30, torch.zeros(shape), torch.full(shape, -0.0)):
        assert torch.equal(th.bits(x), positive(x))
    # at every channel's threshold and its float32 neighbours (broadcast to all channels: each channel also
    # sees the other channels' thresholds)
    for t in neighbours(th.threshold.clone()):
        shuffled = t[torch.randperm(c, generator=g)]
        for values in (t, shuffled):
            x = values.view(1, c, 1, 1).expand(shape).contiguous()
            assert torch.equal(th.bits(x), positive(x))
        every = t.view(-1, 1, 1, 1).expand(c, c, 1, 1).contiguous()  # each threshold value in every channel
        assert torch.equal(th.bits(every), positive(every))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 70), seed=st.integers(0, 10 ** 6), zeros=st.integers(0, 3),
       scale=st.sampled_from([1.0, 1e-20, 1e15, 1e18]))
def test_thresholds_agree_with_sign_of_bn_plus_bias(c, seed, zeros, scale):
    positive, bn = make_predicate(c, seed, zero_weights=min(zeros, c), scale=scale)
    th = derive_thresholds(positive, c, (2, c, 3, 3))
    assert th.threshold.dtype == torch.float32 and th.threshold.shape == (c,)
    w = bn.weight.detach()
    # direction: the sign of the BN weight (the bias b is added after the BN, it cannot flip it)
    assert torch.equal(th.direction[w > 0], torch.ones(int((w > 0).sum()), dtype=torch.int8))
    assert torch.equal(th.direction[w < 0], -torch.ones(int((w < 0).sum()), dtype=torch.int8))
    assert torch.equal(th.direction[w == 0], torch.zeros(int((w == 0).sum()), dtype=torch.int8))
    check_against_predicate(positive, th, c, seed)


def test_threshold_is_exact_boundary_of_a_plain_sign():
    """sign(x + b): the threshold is -b (x + b >= 0 exactly when x >= -b for these b), the smallest +1 input."""
    b = torch.tensor([0.0, 0.5, -1.25, 3.0e38, -1e-40])
    th = derive_thresholds(lambda x: (x + b.view(1, -1)) >= 0, 5, (4, 5), channel_dim=-1)
    assert th.direction.tolist() == [1, 1, 1, 1, 1]
    for c in range(5):
        t = th.threshold[c]
        assert bool(t + b[c] >= 0)
        assert not bool(torch.nextafter(t, torch.tensor(float("-inf"))) + b[c] >= 0)
    # sign(0) = +1 and sign(-0.0) = +1 for b = 0
    x = torch.tensor([[0.0, 0, 0, 0, 0], [-0.0, 0, 0, 0, 0]])
    assert th.bits(x, -1)[:, 0].tolist() == [True, True]


def test_decreasing_channel_uses_flipped_compare():
    # sign(-2 x + 1) = +1 for x <= 0.5
    th = derive_thresholds(lambda x: (-2 * x + 1) >= 0, 1, (3, 1))
    assert th.direction.tolist() == [-1]
    assert th.threshold.item() == 0.5
    x = torch.tensor([[0.5], [0.5000001], [-1e38]])
    assert th.bits(x, 1).flatten().tolist() == [True, False, True]


def test_constant_channels():
    th = derive_thresholds(lambda x: (0 * x + torch.tensor([1.0, -1.0, 0.0]).view(1, 3)) >= 0, 3, (2, 3))
    assert th.direction.tolist() == [0, 0, 0]
    x = random_float32((50, 3), torch.Generator().manual_seed(0))
    bits = th.bits(x, 1)
    assert bits[:, 0].all() and not bits[:, 1].any() and bits[:, 2].all()


def test_channels_last_axis():
    c = 9
    positive4, _ = make_predicate(c, seed=3)

    def positive_last(x):  # the same predicate on (N, H, W, C)
        return positive4(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    th = derive_thresholds(positive_last, c, (2, 3, 3, c), channel_dim=-1)
    ref = derive_thresholds(positive4, c, (2, c, 3, 3))
    assert torch.equal(th.threshold, ref.threshold) and torch.equal(th.direction, ref.direction)
    x = random_float32((2, 3, 3, c), torch.Generator().manual_seed(1))
    assert torch.equal(th.bits(x, -1), positive_last(x))


@pytest.mark.parametrize("predicate", [
    lambda x: (x * x - 1) >= 0,            # +1 outside [-1, 1]: two boundaries
    lambda x: (1 - x * x) >= 0,            # +1 inside [-1, 1]
    lambda x: torch.cos(x) >= 0,           # periodic
])
def test_non_monotone_predicate_raises(predicate):
    with pytest.raises(ValueError, match="monotone"):
        derive_thresholds(predicate, 4, (2, 4, 2, 2))


def test_predicate_varying_within_a_channel_raises():
    pos = torch.arange(6.0).view(1, 1, 6)
    with pytest.raises(ValueError, match="differs between positions"):
        derive_thresholds(lambda x: (x - pos) >= 0, 2, (1, 2, 6))
