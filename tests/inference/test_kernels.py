"""The compiled kernels against the PyTorch reference: bit-identical outputs on every code path (AVX-512,
AVX2, portable), odd shapes, batch sizes 1 to 64, one and two threads."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnn.inference import kernels
from bnn.inference.modules import PackedBinaryConv2d
from bnn.inference.thresholds import ChannelThresholds

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="no C++ compiler: the reference runs alone")
PATHS = [name for isa, name in kernels.ISA_NAMES.items() if isa <= (kernels.kernel_isa() or 0)]


def packed_conv(cin, cout, k, stride, padding, dilation, groups, seed):
    g = torch.Generator().manual_seed(seed)
    thresholds = ChannelThresholds(torch.randn(cin, generator=g) * 0.3,
                                   torch.randint(-1, 2, (cin,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(cout, cin // groups, k, k, generator=g) >= 0, 1.0, -1.0)
    return PackedBinaryConv2d(thresholds, signs, (stride, stride), (padding, padding), (dilation, dilation),
                              groups, scale=torch.rand(cout, generator=g) + 0.5, bias=torch.randn(cout, generator=g))


def run(layer, x, path, monkeypatch):
    monkeypatch.setenv("BNN_KERNELS", path)
    return layer(x)


@settings(max_examples=25, deadline=None)
@given(cin_groups=st.sampled_from([(1, 1), (3, 1), (64, 1), (65, 1), (130, 2), (8, 4), (16, 16)]),
       cout_per_group=st.integers(1, 37), k=st.sampled_from([1, 2, 3]), stride=st.integers(1, 3),
       padding=st.integers(0, 2), dilation=st.integers(1, 2), size=st.integers(3, 9), seed=st.integers(0, 99))
def test_every_path_matches_the_reference(cin_groups, cout_per_group, k, stride, padding, dilation, size, seed):
    cin, groups = cin_groups
    if size + 2 * padding < dilation * (k - 1) + 1:
        return
    layer = packed_conv(cin, cout_per_group * groups, k, stride, padding, dilation, groups, seed)
    x = torch.randn(2, cin, size, size + 1, generator=torch.Generator().manual_seed(seed))
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
