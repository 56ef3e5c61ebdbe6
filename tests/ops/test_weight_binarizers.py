"""Weight binarizers against ALGORITHMS.md: hand-computed small weights, the gradient formulas written
out, autograd of plain reference implementations written here, and gradcheck for the smooth parts."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnn
from bnn.ops import (MagnitudeAwareWeightBinarizer, ScaledStandardizedWeight, ScaledWeightBinarizer,
                     ScaledWSWeightBinarizer, XNORWeightBinarizer)

SHAPES = [(4, 3, 3, 3), (5, 7)]
SHAPE_IDS = ["conv", "linear"]


def ref_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class SignSTE(torch.autograd.Function):
    """Reference sign with the strict straight-through estimator g * 1{|x| < 1}."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ref_sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() < 1).to(g.dtype)


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def fan_in_dims(w):
    return tuple(range(1, w.dim()))


def row_view(v, w):
    return v.view((-1,) + (1,) * (w.dim() - 1))


def make_weight(shape, seed=0, dtype=torch.float32, spread=1.0):
    """Random weight, away from 0 (so that autograd's |.| has a gradient to compare), with some entries
    beyond +-1 and some exactly at +-1 to exercise the estimator's bounds."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    w = torch.where(w.abs() < 1e-3, torch.full_like(w, 0.5), w)
    flat = w.view(-1)
    k = min(2, flat.numel())
    flat[:k] = torch.tensor([1.0, -1.0], dtype=torch.float64)[:k]
    return w.to(dtype)


def xnor_reference(w, detach_alpha=False, power_of_two=False):
    alpha = w.abs().mean(dim=fan_in_dims(w), keepdim=True)
    if power_of_two:
        alpha = torch.exp2(RoundSTE.apply(torch.log2(alpha)))
    if detach_alpha:
        alpha = alpha.detach()
    return alpha * SignSTE.apply(w)


def fwd_bwd(module, w, g):
    w = w.clone().requires_grad_(True)
    out = module(w)
    out.backward(g)
    return out.detach(), w.grad


ALL_WEIGHT_BINARIZERS = [
    ("XNOR", XNORWeightBinarizer),
    ("XNOR.center", lambda: XNORWeightBinarizer(center_weights=True)),
    ("XNOR.no_alpha", lambda: XNORWeightBinarizer(compute_alpha=False)),
    ("XNOR.detach", lambda: XNORWeightBinarizer(detach_alpha=True)),
    ("XNOR.pow2", lambda: XNORWeightBinarizer(power_of_two=True)),
    ("MagnitudeAware", MagnitudeAwareWeightBinarizer),
    ("MagnitudeAware.pow2", lambda: MagnitudeAwareWeightBinarizer(power_of_two=True)),
    ("ScaledWS", lambda: ScaledWSWeightBinarizer(channels=2)),
    ("ScaledWS.pow2", lambda: ScaledWSWeightBinarizer(channels=2, power_of_two=True)),
]
ALL_IDS = [b[0] for b in ALL_WEIGHT_BINARIZERS]


# -- sign(0) = +1, exact +-K outputs, no in-place -------------------------------------------------------
@pytest.mark.parametrize("name,make", ALL_WEIGHT_BINARIZERS, ids=ALL_IDS)
def test_zero_and_negative_zero_map_to_plus_scale(name, make):
    # Rows are zero-mean, so the zeros stay exact zeros after centering / standardization; the
    # negative zero stays negative (-0.0 - 0.0 = -0.0, -0.0 / s = -0.0) and must still give +K.
    w = torch.tensor([[1.0, -1.0, 0.0, -0.0], [-0.0, 0.5, -0.5, 0.0]])
    binarizer = make()
    out = binarizer(w)
    signs, scale = binarizer.split(w)
    assert torch.equal(signs, torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0]]))
    assert torch.equal(out, signs * scale.view(-1, 1))
    assert (scale > 0).all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name,make", ALL_WEIGHT_BINARIZERS, ids=ALL_IDS)
def test_output_is_plus_minus_a_row_constant_and_input_untouched(name, make, shape):
    binarizer = make()
    if isinstance(binarizer, ScaledWSWeightBinarizer):
        binarizer = ScaledWSWeightBinarizer(channels=shape[0], power_of_two=binarizer.power_of_two)
    w = make_weight(shape, seed=4).requires_grad_(True)
    before, version = w.detach().clone(), w._version
    out = binarizer(w)
    out.backward(torch.ones_like(out))
    assert torch.equal(w.detach(), before) and w._version == version
    out = out.detach()
    row_max = out.abs().amax(dim=fan_in_dims(out), keepdim=True)
    assert torch.equal(out.abs(), row_max.expand_as(out))  # |W_b| is one value per output channel
    assert (row_max > 0).all()
    # The sign is that of the (centred / standardized) weight; compare on the raw weight where the
    # transform keeps signs, i.e. for the binarizers that do not centre.
    if name in ("XNOR", "XNOR.no_alpha", "XNOR.detach", "XNOR.pow2", "MagnitudeAware", "MagnitudeAware.pow2"):
        assert torch.equal(out / row_max, ref_sign(w.detach()))


@pytest.mark.parametrize("cls", [XNORWeightBinarizer, MagnitudeAwareWeightBinarizer,
                                 lambda: ScaledWSWeightBinarizer(3), lambda: ScaledStandardizedWeight(3)])
def test_one_dimensional_weight_is_a_clear_value_error(cls):
    with pytest.raises(ValueError, match=r"2 or more dimensions.*got shape \(3,\)"):
        cls()(torch.randn(3))
    binarizer = cls()
    if isinstance(binarizer, ScaledWeightBinarizer):
        with pytest.raises(ValueError, match="2 or more dimensions"):
            binarizer.split(torch.randn(3))


# -- XNOR -------------------------------------------------------------------------------------------
def test_xnor_hand_example():
    w = torch.tensor([[0.5, -1.5, 1.0], [-0.3, 0.6, 0.0]])
    torch.testing.assert_close(XNORWeightBinarizer()(w), torch.tensor([[1.0, -1.0, 1.0], [-0.3, 0.3, 0.3]]))
    assert torch.equal(XNORWeightBinarizer(compute_alpha=False)(w), torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1, 1]]))


def test_xnor_center_weights_hand_example():
    # row 0: mean 1.5 -> (-0.5, 0.5), alpha 0.5; row 1: mean 4 -> (-1, 1), alpha 1.
    w = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert torch.equal(XNORWeightBinarizer(center_weights=True)(w), torch.tensor([[-0.5, 0.5], [-1.0, 1.0]]))
    assert torch.equal(XNORWeightBinarizer(center_weights=True, compute_alpha=False)(w),
                       torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))


def test_xnor_center_weights_uses_the_input_channel_dimension_only():
    w = make_weight((3, 4, 2, 2), seed=11)
    c = w - w.mean(dim=1, keepdim=True)  # (C_out, 1, kh, kw) means, not one mean per output channel
    expected = c.abs().mean(dim=(1, 2, 3), keepdim=True) * ref_sign(c)
    torch.testing.assert_close(XNORWeightBinarizer(center_weights=True)(w), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_xnor_gradient_formula_and_autograd_reference(shape, dtype):
    w = make_weight(shape, seed=1, dtype=dtype)
    g = make_weight(shape, seed=2, dtype=dtype)
    out, grad = fwd_bwd(XNORWeightBinarizer(), w, g)
    dims = fan_in_dims(w)
    n = math.prod(shape[1:])
    alpha = w.abs().mean(dim=dims, keepdim=True)
    s = ref_sign(w)
    torch.testing.assert_close(out, alpha * s)
    formula = g * alpha * (w.abs() < 1) + s / n * (g * s).sum(dim=dims, keepdim=True)
    torch.testing.assert_close(grad, formula)
    w_ref = w.clone().requires_grad_(True)
    xnor_reference(w_ref).backward(g)
    torch.testing.assert_close(grad, w_ref.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_xnor_detach_alpha_drops_the_alpha_term(shape):
    w, g = make_weight(shape, seed=5), make_weight(shape, seed=6)
    out, grad = fwd_bwd(XNORWeightBinarizer(detach_alpha=True), w, g)
    alpha = w.abs().mean(dim=fan_in_dims(w), keepdim=True)
    torch.testing.assert_close(out, alpha * ref_sign(w))
    torch.testing.assert_close(grad, g * alpha * (w.abs() < 1))
    w_ref = w.clone().requires_grad_(True)
    xnor_reference(w_ref, detach_alpha=True).backward(g)
    torch.testing.assert_close(grad, w_ref.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_xnor_no_alpha_is_plain_sign_ste(shape):
    w, g = make_weight(shape, seed=7), make_weight(shape, seed=8)
    out, grad = fwd_bwd(XNORWeightBinarizer(compute_alpha=False), w, g)
    assert torch.equal(out, ref_sign(w))
    assert torch.equal(grad, g * (w.abs() < 1))


@pytest.mark.parametrize("detach_alpha", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_xnor_power_of_two(shape, detach_alpha):
    w, g = make_weight(shape, seed=9, spread=0.3), make_weight(shape, seed=10)
    out, grad = fwd_bwd(XNORWeightBinarizer(power_of_two=True, detach_alpha=detach_alpha), w, g)
    dims = fan_in_dims(w)
    scale = out.abs().amax(dim=dims, keepdim=True)
    k = torch.log2(scale)
    assert torch.equal(k, torch.round(k))  # exact powers of two
    alpha = w.abs().mean(dim=dims, keepdim=True)
    assert torch.equal(scale, torch.exp2(torch.round(torch.log2(alpha))))
    assert torch.equal(out, scale * ref_sign(w))
    # gradient: reference built with autograd and a straight-through round ...
    w_ref = w.clone().requires_grad_(True)
    xnor_reference(w_ref, detach_alpha=detach_alpha, power_of_two=True).backward(g)
    torch.testing.assert_close(grad, w_ref.grad)
    # ... and the formula, d 2^round(log2 a) / da = 2^k / a.
    s, n = ref_sign(w), math.prod(shape[1:])
    formula = g * scale * (w.abs() < 1)
    if not detach_alpha:
        formula = formula + s / n * (g * s).sum(dim=dims, keepdim=True) * scale / alpha
    torch.testing.assert_close(grad, formula)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_xnor_center_weights_gradient_flows_through_the_centering(shape):
    w, g = make_weight(shape, seed=12), make_weight(shape, seed=13)
    out, grad = fwd_bwd(XNORWeightBinarizer(center_weights=True), w, g)
    w_ref = w.clone().requires_grad_(True)
    ref = xnor_reference(w_ref - w_ref.mean(dim=1, keepdim=True))
    ref.backward(g)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(grad, w_ref.grad)


@settings(max_examples=25, deadline=None)
@given(c_out=st.integers(1, 4), rest=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16), detach_alpha=st.booleans())
def test_xnor_random_shapes(c_out, rest, seed, detach_alpha):
    shape = (c_out, *rest)
    w, g = make_weight(shape, seed=seed, dtype=torch.float64), make_weight(shape, seed=seed + 1, dtype=torch.float64)
    out, grad = fwd_bwd(XNORWeightBinarizer(detach_alpha=detach_alpha), w, g)
    w_ref = w.clone().requires_grad_(True)
    ref = xnor_reference(w_ref, detach_alpha=detach_alpha)
    ref.backward(g)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(grad, w_ref.grad)


def test_xnor_all_zero_row_has_zero_gradient():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 2.0]], requires_grad=True)
    out = XNORWeightBinarizer()(w)
    assert torch.equal(out.detach()[0], torch.zeros(3))
    out.backward(torch.ones_like(out))
    assert torch.equal(w.grad[0], torch.zeros(3))
    assert torch.isfinite(w.grad).all()


# -- Bi-Real / ReActNet magnitude-aware ------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_magnitude_aware_forward_and_inclusive_clamp_gradient(shape):
    w, g = make_weight(shape, seed=14), make_weight(shape, seed=15)
    out, grad = fwd_bwd(MagnitudeAwareWeightBinarizer(), w, g)
    alpha = w.abs().mean(dim=fan_in_dims(w), keepdim=True)
    torch.testing.assert_close(out, alpha * ref_sign(w))
    # alpha detached; g * 1{-1 <= W <= 1}, not multiplied by alpha. w has entries exactly +-1.
    assert torch.equal(grad, g * ((w >= -1) & (w <= 1)))


def test_magnitude_aware_hand_example():
    w = torch.tensor([[1.0, -1.0, 0.5, -1.5], [0.25, 0.25, -0.25, 3.25]], requires_grad=True)
    out = MagnitudeAwareWeightBinarizer()(w)
    assert torch.equal(out.detach(), torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0]]))
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    out.backward(g)
    assert torch.equal(w.grad, torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_magnitude_aware_clamp_bounds_in_other_dtypes(dtype):
    one = torch.tensor(1.0, dtype=dtype)
    above = torch.nextafter(one, torch.tensor(2.0, dtype=dtype))
    w = torch.stack([-above, -one, one, above, 0.5 * one]).view(1, 5).requires_grad_(True)
    MagnitudeAwareWeightBinarizer()(w).backward(torch.ones(1, 5, dtype=dtype))
    assert torch.equal(w.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]], dtype=dtype))


# -- scaled weight standardization -------------------------------------------------------------------------
def standardize_reference(w, eps=1e-5):
    dims = fan_in_dims(w)
    n = math.prod(w.shape[1:])
    mu = w.mean(dim=dims, keepdim=True)
    sigma = ((w - mu) ** 2).mean(dim=dims, keepdim=True).sqrt()  # biased
    return (w - mu) / (sigma + eps) / math.sqrt(n)


def scaled_ws_binary_reference(w, gain):
    """gain * mean|W'| (detached) * sign(W'); gradient of clamp(W', -1, 1) (inclusive) for W and
    sum(g * mean|W'| * sign(W')) for the gain."""
    v = standardize_reference(w)
    m = v.abs().mean(dim=fan_in_dims(w), keepdim=True).detach()
    s = ref_sign(v).detach()
    gain = row_view(gain, w)
    mask = ((v >= -1) & (v <= 1)).to(v.dtype).detach()
    return (gain * m * s).detach() + mask * (v - v.detach()) + (gain - gain.detach()) * m * s


def test_standardization_hand_example_uses_biased_sigma():
    # one row (1, 3): mu = 2, biased sigma = 1 (unbiased would be sqrt 2), N = 2.
    w = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor([[-1.0, 1.0]], dtype=torch.float64) / (1 + 1e-5) / math.sqrt(2)
    torch.testing.assert_close(ScaledStandardizedWeight(1).double()(w), expected)
    # binary: K = mean|W'| = 1 / ((1 + 1e-5) sqrt 2), sign (-1, +1)
    torch.testing.assert_close(ScaledWSWeightBinarizer(1).double()(w), expected)


@pytest.mark.parametrize("power_of_two", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_scaled_ws_binary_against_reference(shape, power_of_two):
    w, g = make_weight(shape, seed=16, dtype=torch.float64), make_weight(shape, seed=17, dtype=torch.float64)
    gain_values = torch.linspace(-1.5, 2.0, shape[0], dtype=torch.float64)  # a negative gain included
    binarizer = ScaledWSWeightBinarizer(shape[0], power_of_two=power_of_two).double()
    with torch.no_grad():
        binarizer.gain.copy_(gain_values)
    out, grad = fwd_bwd(binarizer, w, g)

    w_ref = w.clone().requires_grad_(True)
    gain_ref = gain_values.clone().requires_grad_(True)
    if power_of_two:
        v = standardize_reference(w_ref)
        m = v.abs().mean(dim=fan_in_dims(w), keepdim=True).detach()
        k = row_view(gain_ref, w) * m
        k = torch.sign(k) * torch.exp2(RoundSTE.apply(torch.log2(k.abs())))
        mask = ((v >= -1) & (v <= 1)).to(v.dtype).detach()
        s = ref_sign(v).detach()
        ref = (k * s).detach() + mask * (v - v.detach()) + (k - k.detach()) * s
    else:
        ref = scaled_ws_binary_reference(w_ref, gain_ref)
    ref.backward(g)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(grad, w_ref.grad)
    torch.testing.assert_close(binarizer.gain.grad, gain_ref.grad)
    if power_of_two:
        k = torch.log2(out.abs().amax(dim=fan_in_dims(out)))
        assert torch.equal(k, torch.round(k))
    # Row signs follow the gain: a negative gain flips the binary row.
    row_sign = ref_sign(gain_values)
    signs, scale = binarizer.split(w)
    assert torch.equal(ref_sign(scale), row_sign)


def test_scaled_ws_gain_gradient_formula_and_gradcheck():
    w = make_weight((3, 2, 3, 3), seed=18, dtype=torch.float64)
    g = make_weight((3, 2, 3, 3), seed=19, dtype=torch.float64)
    binarizer = ScaledWSWeightBinarizer(3).double()
    binarizer(w).backward(g)
    v = standardize_reference(w)
    dims = fan_in_dims(w)
    expected = (g * v.abs().mean(dim=dims, keepdim=True) * ref_sign(v)).sum(dim=dims)
    torch.testing.assert_close(binarizer.gain.grad, expected)

    def as_fn_of_gain(gain):
        return torch.func.functional_call(binarizer, {"gain": gain}, (w,))

    gain = torch.tensor([0.7, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(as_fn_of_gain, (gain,))


def test_scaled_ws_bound_through_a_layer():
    layer = bnn.layers.BinaryConv2d(3, 4, 3, bconfig=bnn.BConfig(weight_pre_process=ScaledWSWeightBinarizer))
    binarizer = layer.weight_pre_process
    assert binarizer.gain.shape == (4,) and torch.equal(binarizer.gain.detach(), torch.ones(4))
    linear = bnn.layers.BinaryLinear(5, 2, bconfig=bnn.BConfig(weight_pre_process=ScaledStandardizedWeight))
    assert linear.weight_pre_process.gain.shape == (2,)
    with pytest.raises(ValueError, match="3 channels, the layer has 4"):
        bnn.layers.BinaryConv2d(3, 4, 3, bconfig=bnn.BConfig(
            weight_pre_process=ScaledWSWeightBinarizer.with_args(channels=3)))
    with pytest.raises(RuntimeError, match="channels"):
        ScaledWSWeightBinarizer()(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="channels"):
        ScaledStandardizedWeight()(torch.randn(2, 3))


# -- real scaled weight standardization --------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_scaled_standardized_weight_value_and_gradcheck(shape):
    module = ScaledStandardizedWeight(shape[0]).double()
    w = make_weight(shape, seed=20, dtype=torch.float64)
    gain = torch.linspace(-1.0, 2.0, shape[0], dtype=torch.float64)
    out = torch.func.functional_call(module, {"gain": gain}, (w,))
    torch.testing.assert_close(out, row_view(gain, w) * standardize_reference(w))
    w_in = w.clone()
    version = w_in._version
    module(w_in)
    assert torch.equal(w_in, w) and w_in._version == version

    def fn(weight, gain):
        return torch.func.functional_call(module, {"gain": gain}, (weight,))

    assert torch.autograd.gradcheck(fn, (w.clone().requires_grad_(True), gain.clone().requires_grad_(True)))


# -- split -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name,make", ALL_WEIGHT_BINARIZERS, ids=ALL_IDS)
def test_split_recombines_to_forward_exactly(name, make, shape):
    binarizer = make()
    if isinstance(binarizer, ScaledWSWeightBinarizer):
        binarizer = ScaledWSWeightBinarizer(channels=shape[0], power_of_two=binarizer.power_of_two)
        with torch.no_grad():
            binarizer.gain.copy_(torch.linspace(-0.8, 1.7, shape[0]))
    w = make_weight(shape, seed=21)
    signs, scale = binarizer.split(w)
    assert scale.shape == (shape[0],)
    assert set(signs.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(signs * scale.view((-1,) + (1,) * (len(shape) - 1)), binarizer(w))
    if name in ("XNOR", "XNOR.detach", "XNOR.no_alpha", "XNOR.pow2", "MagnitudeAware", "MagnitudeAware.pow2"):
        assert torch.equal(signs, ref_sign(w))
    if name in ("XNOR", "XNOR.detach", "MagnitudeAware"):
        torch.testing.assert_close(scale, w.abs().mean(dim=fan_in_dims(w)))
    if name == "XNOR.no_alpha":
        assert torch.equal(scale, torch.ones(shape[0]))


def test_eval_layer_uses_split_and_matches_training_forward():
    torch.manual_seed(0)
    layer = bnn.layers.BinaryConv2d(3, 4, 3, padding=1, bconfig=bnn.BConfig(
        weight_pre_process=ScaledWSWeightBinarizer))
    with torch.no_grad():
        layer.weight_pre_process.gain.copy_(torch.tensor([1.0, -0.5, 2.0, 0.25]))
    x = torch.randn(2, 3, 5, 5)
    expected = torch.nn.functional.conv2d(x, layer.weight_pre_process(layer.weight), layer.bias, padding=1)
    torch.testing.assert_close(layer.train()(x), expected)
    torch.testing.assert_close(layer.eval()(x), expected)


# -- precision and factories -------------------------------------------------------------------------------
def test_precision():
    for cls in (XNORWeightBinarizer, MagnitudeAwareWeightBinarizer, ScaledWSWeightBinarizer):
        assert cls.precision == 1 and cls().precision == 1
    assert ScaledStandardizedWeight.precision == 32 and ScaledStandardizedWeight(2).precision == 32


def test_with_args_builds_fresh_instances():
    make = XNORWeightBinarizer.with_args(center_weights=True)
    a, b = make(), make()
    assert a is not b and a.center_weights and b.center_weights and not a.detach_alpha
    chained = make.with_args(power_of_two=True)()
    assert chained.center_weights and chained.power_of_two
    make_ws = ScaledWSWeightBinarizer.with_args(channels=3)
    x, y = make_ws(), make_ws()
    assert x is not y and x.gain is not y.gain
