"""The pooling kernels (csrc/pooling.cpp, bnn.inference.pooling) against F.max_pool2d / F.avg_pool2d:
bit-identical outputs on every code path (AVX-512, AVX2, portable), random geometries (ceil_mode,
count_include_pad, divisor_override, dilation), ties, signed zeros, infinities and NaNs, one and two threads,
non-contiguous inputs and the fallbacks."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bnn.inference import kernels
from bnn.inference.pooling import FastAvgPool2d, FastMaxPool2d

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="no C++ compiler: the reference runs alone")
PATHS = [name for isa, name in kernels.ISA_NAMES.items() if isa <= (kernels.kernel_isa() or 0)]


def awkward(shape, seed, nan=True):
    """Few distinct values (exact ties everywhere), +0 and -0, +-inf and (optionally) NaNs of distinct payloads,
    some of them negative."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).float() * 0.5
    r = torch.rand(shape, generator=g)
    x[r < 0.12] = 0.0
    x[(r >= 0.12) & (r < 0.24)] = -0.0
    x[(r >= 0.24) & (r < 0.27)] = float("inf")
    x[(r >= 0.27) & (r < 0.30)] = float("-inf")
    if nan:
        bits = x.view(torch.int32)
        payload = (torch.arange(x.numel()).view(shape) % 4096 + 0x7FC00001).to(torch.int32)
        quiet, negative = (r >= 0.30) & (r < 0.33), (r >= 0.33) & (r < 0.35)
        bits[quiet] = payload[quiet]
        bits[negative] = payload[negative] | torch.tensor(-2 ** 31, dtype=torch.int32)
    return x


def make_input(shape, kind, seed):
    if kind == "randn":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return awkward(shape, seed, nan=kind == "awkward")


def same_bits(out, ref):
    """Bit for bit, NaN payloads and signs of zeros included."""
    return out.shape == ref.shape and out.dtype == ref.dtype and torch.equal(out.view(torch.int32),
                                                                             ref.view(torch.int32))


def same_values(out, ref):
    """Bit for bit except NaN payloads (the NaN of inf + -inf, of NaN + NaN, is left to the hardware)."""
    if out.shape != ref.shape or not torch.equal(out.isnan(), ref.isnan()):
        return False
    keep = ~ref.isnan()
    return torch.equal(out[keep].view(torch.int32), ref[keep].view(torch.int32))


def run(layer, x, path, mp):
    mp.setenv("BNN_KERNELS", path)
    return layer(x)


def check(layer, reference, x, compare):
    """``layer(x)`` on every code path against ``reference(x)`` (or the same error)."""
    try:
        expected = reference(x)
    except RuntimeError:
        expected = None
    with pytest.MonkeyPatch.context() as mp:
        for path in PATHS:
            if expected is None:
                with pytest.raises(RuntimeError):
                    run(layer, x, path, mp)
            else:
                assert compare(run(layer, x, path, mp), expected), path


class threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


geometry = dict(kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
                pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), ceil_mode=st.booleans(),
                batch=st.integers(1, 3), channels=st.integers(1, 20), h=st.integers(1, 19), w=st.integers(1, 37),
                n_threads=st.sampled_from([1, 2]), seed=st.integers(0, 10 ** 6))


@settings(max_examples=120, deadline=None)
@given(dh=st.integers(1, 3), dw=st.integers(1, 3), kind=st.sampled_from(["randn", "awkward"]), **geometry)
def test_max_pool_matches_torch(kh, kw, sh, sw, pad, dh, dw, ceil_mode, batch, channels, h, w, n_threads, kind,
                                seed):
    ph, pw = min(pad[0], kh // 2), min(pad[1], kw // 2)
    layer = FastMaxPool2d((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode=ceil_mode)
    x = make_input((batch, channels, h, w), kind, seed)
    with threads(n_threads):
        check(layer, lambda t: F.max_pool2d(t, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode), x, same_bits)


@settings(max_examples=120, deadline=None)
@given(count_include_pad=st.booleans(), divisor_override=st.sampled_from([None, None, 1, 3, 7, -2]),
       kind=st.sampled_from(["randn", "awkward", "awkward without NaN"]), **geometry)
def test_avg_pool_matches_torch(kh, kw, sh, sw, pad, ceil_mode, count_include_pad, divisor_override, batch,
                                channels, h, w, n_threads, kind, seed):
    ph, pw = min(pad[0], kh // 2), min(pad[1], kw // 2)
    layer = FastAvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad, divisor_override)
    x = make_input((batch, channels, h, w), kind, seed)
    with threads(n_threads):
        check(layer, lambda t: F.avg_pool2d(t, (kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad,
                                            divisor_override), x, same_values)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_resnet_shapes(batch, n_threads):
    """The stem's max-pool and the downsample shortcuts' average pools of a ResNet-18 at 224x224."""
    with threads(n_threads):
        x = awkward((batch, 64, 112, 112), seed=batch)
        check(FastMaxPool2d(3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), x, same_bits)
        for channels, size in [(64, 56), (128, 28), (256, 14)]:
            x = torch.randn(batch, channels, size, size)
            check(FastAvgPool2d(2, 2), lambda t: F.avg_pool2d(t, 2, 2), x, same_values)
            check(FastAvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                  lambda t: F.avg_pool2d(t, 2, 2, ceil_mode=True, count_include_pad=False), x[..., :-1, :-1],
                  same_values)


def test_avg_pool_signs_and_divisors():
    """ATen's NCHW kernel writes 0 + sum / factor: a -0 quotient comes out +0; the int64 factor is converted
    to float (rounded) as in ``sum / divide_factor``."""
    zeros = torch.zeros(1, 3, 4, 4)
    tiny = torch.full((1, 3, 4, 4), -3e-45)  # -2 denormal units: / 16 rounds to -0
    big = torch.randn(1, 3, 4, 4) * 1e30
    for x, kwargs in [(zeros, dict(divisor_override=-1)), (tiny, dict(divisor_override=16)),
                      (big, dict(divisor_override=2 ** 40 + 1)), (big, dict(divisor_override=-(2 ** 25) - 1)),
                      (-zeros, {})]:
        check(FastAvgPool2d(2, 2, **kwargs), lambda t: F.avg_pool2d(t, 2, 2, **kwargs), x, same_bits)
    assert not FastAvgPool2d(2, 2, divisor_override=-1)(zeros).signbit().any()


@pytest.mark.parametrize("layer, reference", [
    (FastMaxPool2d(3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
    (FastMaxPool2d((2, 3), (1, 2), (1, 1), (2, 1), ceil_mode=True),
     lambda t: F.max_pool2d(t, (2, 3), (1, 2), (1, 1), (2, 1), ceil_mode=True)),
    (FastAvgPool2d(3, 2, 1, ceil_mode=True), lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True)),
    (FastAvgPool2d(2), lambda t: F.avg_pool2d(t, 2)),
])
def test_non_contiguous_inputs(layer, reference):
    base = awkward((2, 12, 15, 17), seed=3, nan=False)
    inputs = [base.transpose(2, 3), base[:, ::2], base[..., 1:], base.contiguous(memory_format=torch.channels_last),
              base.permute(1, 0, 2, 3)]
    for x in inputs:
        assert not x.is_contiguous()
        check(layer, reference, x, same_bits)


def test_fallbacks_and_module_attributes():
    x = torch.randn(2, 5, 9, 11)
    torch_max, torch_avg = nn.MaxPool2d((3, 2), (2, 1), (1, 1), (1, 2), ceil_mode=True), nn.AvgPool2d(3, 2, 1, True,
                                                                                                      False, 4)
    fast_max, fast_avg = FastMaxPool2d.from_module(torch_max), FastAvgPool2d.from_module(torch_avg)
    assert repr(fast_max).replace("FastMaxPool2d", "MaxPool2d") == repr(torch_max)
    assert repr(fast_avg).replace("FastAvgPool2d", "AvgPool2d") == repr(torch_avg)
    assert same_bits(fast_max(x), torch_max(x)) and same_bits(fast_avg(x), torch_avg(x))
    # unbatched, float64, return_indices: PyTorch
    assert same_bits(fast_max(x[0]), torch_max(x[0])) and same_bits(fast_avg(x[0]), torch_avg(x[0]))
    assert torch.equal(fast_max(x.double()), torch_max(x.double()))
    assert torch.equal(fast_avg(x.double()), torch_avg(x.double()))
    indices = FastMaxPool2d(2, return_indices=True)(x)
    assert isinstance(indices, tuple) and torch.equal(indices[1], F.max_pool2d(x, 2, return_indices=True)[1])
    # autograd records: PyTorch, gradients flow
    xg = x.clone().requires_grad_()
    (fast_max(xg).sum() + fast_avg(xg).sum()).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with torch.no_grad():
        assert same_bits(fast_max(xg), torch_max(x))
    # empty batch
    assert fast_max(x[:0]).shape == torch_max(x[:0]).shape and fast_avg(x[:0]).shape == torch_avg(x[:0]).shape
    # a changed attribute is honoured
    fast_max.kernel_size, fast_max.stride = 2, 2
    assert same_bits(fast_max(x), F.max_pool2d(x, 2, 2, (1, 1), (1, 2), ceil_mode=True))


def test_invalid_geometry_raises():
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(RuntimeError):
        FastMaxPool2d(5)(x)
    with pytest.raises(RuntimeError):
        FastAvgPool2d(2, padding=2)(x)
    with pytest.raises(RuntimeError):
        FastAvgPool2d(2, divisor_override=0)(x)
