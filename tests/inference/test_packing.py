"""Bit packing and the reference XNOR-popcount kernels against independent computations: Python's own bit
counting, and F.conv2d / F.linear on ±1 tensors made in the test (sign(0) = +1, sign(-0.0) = +1, zero padding
contributes 0)."""
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bnn.inference.packing import (WORD_BITS, binary_conv2d_reference, binary_linear_reference, pack_bits,
                                   popcount, unpack_bits)


def pm1(x: torch.Tensor) -> torch.Tensor:
    """The library convention, written out here: x >= 0 -> +1 (0.0 and -0.0 included), x < 0 -> -1."""
    return torch.where(x >= 0, 1.0, -1.0)


def with_zeros(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """About a sixth of the entries exactly 0.0 and another sixth -0.0."""
    r = torch.rand(x.shape, generator=g)
    x = torch.where(r < 1 / 6, torch.zeros_like(x), x)
    return torch.where((r >= 1 / 6) & (r < 1 / 3), torch.full_like(x, -0.0), x)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_pack_unpack_round_trip(k):
    g = torch.Generator().manual_seed(k)
    bits = torch.rand(3, 5, k, generator=g) < 0.5
    words = pack_bits(bits)
    assert words.dtype == torch.int64
    assert words.shape == (3, 5, -(-k // WORD_BITS))
    assert torch.equal(unpack_bits(words, k), bits)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_pack_layout_little_endian(k):
    """Bit i of word j holds element 64 j + i; bits past k are 0; bit 63 is the sign bit of the int64."""
    g = torch.Generator().manual_seed(100 + k)
    bits = torch.rand(k, generator=g) < 0.5
    words = pack_bits(bits).tolist()
    for j, word in enumerate(words):
        u = word & (2 ** 64 - 1)  # two's complement as unsigned
        expected = sum(1 << i for i in range(WORD_BITS) if 64 * j + i < k and bool(bits[64 * j + i]))
        assert u == expected


def test_pack_all_ones_sets_sign_bit_and_counts_64():
    words = pack_bits(torch.ones(64, dtype=torch.bool))
    assert words.item() == -1
    assert popcount(words).item() == 64


def test_pack_refuses_non_bool():
    with pytest.raises(ValueError, match="bool"):
        pack_bits(torch.ones(8))


def test_popcount_matches_python_bin_count():
    rng = random.Random(0)
    values = [0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 0x5555555555555555, -0x5555555555555556]
    values += [rng.randrange(-(2 ** 63), 2 ** 63) for _ in range(500)]
    words = torch.tensor(values, dtype=torch.int64)
    got = popcount(words.unsqueeze(-1)).tolist()
    assert got == [bin(v & (2 ** 64 - 1)).count("1") for v in values]
    # summed over the last axis
    rows = words[:500].view(100, 5)
    assert popcount(rows).tolist() == [sum(bin(v & (2 ** 64 - 1)).count("1") for v in r) for r in rows.tolist()]


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_binary_linear_reference_equals_float_linear(k):
    g = torch.Generator().manual_seed(k)
    a = with_zeros(torch.randn(2, 3, k, generator=g), g)
    w = with_zeros(torch.randn(7, k, generator=g), g)
    expected = F.linear(pm1(a), pm1(w))
    got = binary_linear_reference(pack_bits(a >= 0), pack_bits(w >= 0), k)
    assert got.dtype == torch.int32
    assert torch.equal(got.float(), expected)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    c_in = groups * draw(st.integers(1, max(1, 70 // groups)))
    c_out = groups * draw(st.integers(1, max(1, 70 // groups)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 7))
    w = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 7))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(n=n, c_in=c_in, c_out=c_out, h=h, w=w, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, seed=seed)


def _check_conv(case):
    g = torch.Generator().manual_seed(case["seed"])
    x = with_zeros(torch.randn(case["n"], case["c_in"], case["h"], case["w"], generator=g), g)
    wt = with_zeros(torch.randn(case["c_out"], case["c_in"] // case["groups"], *case["kernel"], generator=g), g)
    args = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    expected = F.conv2d(pm1(x), pm1(wt), **args)
    got = binary_conv2d_reference(x >= 0, pack_bits((wt >= 0).reshape(case["c_out"], -1)), case["kernel"],
                                  case["stride"], case["padding"], case["dilation"], case["groups"], case["c_in"])
    assert got.dtype == torch.int32
    assert got.shape == expected.shape
    assert got.is_contiguous()  # the layout F.conv2d returns: float ops downstream reduce in the same order
    assert torch.equal(got.float(), expected), case


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_binary_conv2d_reference_equals_conv2d_on_signs(case):
    _check_conv(case)


@pytest.mark.parametrize("case", [
    # channel counts around a word: k = C_in * kh * kw = 63, 64, 65, 130 bits per filter
    dict(n=2, c_in=7, c_out=5, h=5, w=6, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1),
    dict(n=2, c_in=64, c_out=3, h=4, w=4, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1),
    dict(n=1, c_in=65, c_out=2, h=4, w=5, kernel=(1, 1), stride=(2, 1), padding=(2, 0), dilation=(1, 1), groups=1),
    dict(n=2, c_in=26, c_out=4, h=6, w=6, kernel=(5, 1), stride=(1, 3), padding=(2, 1), dilation=(1, 2), groups=2),
    # depthwise, non-square kernel, large padding on a tiny map (outputs made of padding only at the corners)
    dict(n=2, c_in=6, c_out=6, h=2, w=3, kernel=(3, 2), stride=(1, 1), padding=(2, 2), dilation=(2, 1), groups=6),
])
def test_binary_conv2d_reference_fixed_cases(case):
    _check_conv(dict(case, seed=1))


def test_zero_and_negative_zero_are_plus_one():
    """An all-zero map (0.0 and -0.0) is +1 everywhere; padding still contributes 0."""
    x = torch.tensor([[[[0.0, -0.0], [-0.0, 0.0]]]])
    w = torch.ones(1, 1, 3, 3)
    got = binary_conv2d_reference(x >= 0, pack_bits((w >= 0).reshape(1, -1)), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1)
    assert got.flatten().tolist() == [4, 4, 4, 4]  # 4 valid taps of +1 * +1, 5 padded taps count 0
    w_neg = -torch.ones(1, 1, 3, 3)
    got = binary_conv2d_reference(x >= 0, pack_bits((w_neg >= 0).reshape(1, -1)), (3, 3), (1, 1), (1, 1), (1, 1),
                                  1, 1)
    assert got.flatten().tolist() == [-4, -4, -4, -4]
