"""The compiled kernels against the PyTorch reference: bit-identical outputs on every code path (AVX-512,
AVX2, portable), odd shapes, batch sizes 1 to 64, one and two threads."""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnn.inference import kernels
from bnn.inference.modules import PackedBinaryConv2d
from bnn.inference.thresholds import ChannelThresholds

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="no C++ compiler: the reference runs alone")
PATHS = [name for isa, name in kernels.ISA_NAMES.items() if isa <= (kernels.kernel_isa() or 0)]


def packed_conv(cin, cout, k, stride, padding, dilation, groups, seed):
    """k, stride, padding, dilation: ints or (height, width) pairs."""
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    thresholds = ChannelThresholds(torch.randn(cin, generator=g) * 0.3,
                                   torch.randint(-1, 2, (cin,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(cout, cin // groups, *pair(k), generator=g) >= 0, 1.0, -1.0)
    return PackedBinaryConv2d(thresholds, signs, pair(stride), pair(padding), pair(dilation),
                              groups, scale=torch.rand(cout, generator=g) + 0.5, bias=torch.randn(cout, generator=g))


def run(layer, x, path, monkeypatch):
    monkeypatch.setenv("BNN_KERNELS", path)
    return layer(x)


# widths up to 41: rows of several SIMD vectors (8 pixels each on AVX-512), in register blocks of 1 to 3
@settings(max_examples=150, deadline=None)
@given(cin_groups=st.sampled_from([(1, 1), (3, 1), (64, 1), (65, 1), (130, 2), (8, 4), (16, 16)]),
       cout_per_group=st.integers(1, 37), kh=st.sampled_from([1, 2, 3, 5]), kw=st.sampled_from([1, 2, 3, 5]),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dh=st.integers(1, 2), dw=st.integers(1, 2), height=st.integers(3, 9), width=st.integers(3, 41),
       seed=st.integers(0, 99))
def test_every_path_matches_the_reference(cin_groups, cout_per_group, kh, kw, sh, sw, ph, pw, dh, dw, height,
                                          width, seed):
    cin, groups = cin_groups
    assume(height + 2 * ph >= dh * (kh - 1) + 1 and width + 2 * pw >= dw * (kw - 1) + 1)
    layer = packed_conv(cin, cout_per_group * groups, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, seed)
    x = torch.randn(2, cin, height, width, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 0, :] = 0.0
    with pytest.MonkeyPatch.context() as mp:
        expected = run(layer, x, "reference", mp)
        for path in PATHS:
            assert torch.equal(run(layer, x, path, mp), expected), path


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_batches_and_threads(batch, threads, monkeypatch):
    torch.set_num_threads(threads)
    layer = packed_conv(67, 45, 3, 1, 1, 1, 1, seed=batch)
    x = torch.randn(batch, 67, 7, 6)
    expected = run(layer, x, "reference", monkeypatch)
    assert torch.equal(run(layer, x, PATHS[-1], monkeypatch), expected)
