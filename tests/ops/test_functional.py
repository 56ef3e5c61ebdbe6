"""bnn.ops.functional: the autograd functions, checked against ALGORITHMS.md written out by hand.

Every expected value below is computed independently of bnn: explicit numbers, the formula of the
gradient estimator typed in from the table, autograd of the smooth function the estimator is the
derivative of, or torch.autograd.gradcheck in double precision.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnn.ops import functional as F

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# Points where the estimators change behaviour, both zeros, and a few ordinary values.
GRID = [-3.0, -1.5, -1.0, -0.999, -0.75, -0.5, -0.25, -1e-30, -0.0, 0.0, 1e-30, 0.25, 0.5, 0.75, 0.999, 1.0,
        1.5, 3.0]


def ref_sign(x):
    """sign with sign(0) = +1, -0.0 included (-0.0 >= 0 is True in IEEE arithmetic)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


# -- the gradient formulas of ALGORITHMS.md, written out -------------------------------------------
def d_sign_ste(x):
    return ((x > -1) & (x < 1)).to(x.dtype)


def d_approx_sign(x):
    return torch.where((x >= -1) & (x < 0), 2 + 2 * x, torch.where((x >= 0) & (x < 1), 2 - 2 * x, torch.zeros_like(x)))


def d_mask(x, slope=1.5):
    return slope / torch.cosh(slope * x) ** 2


def d_swish(x, beta=5.0):
    return beta * (2 - beta * x * torch.tanh(beta * x / 2)) / (1 + torch.cosh(beta * x))


def d_identity(x):
    return torch.ones_like(x)


ESTIMATORS = [
    ("sign_ste", F.sign_ste, d_sign_ste),
    ("approx_sign", F.approx_sign, d_approx_sign),
    ("mask_sign", F.mask_sign, d_mask),
    ("swish_sign", F.swish_sign, d_swish),
    ("identity_sign", F.identity_sign, d_identity),
]
ESTIMATOR_IDS = [e[0] for e in ESTIMATORS]


def grad_of(fn, x, g):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


# -- sign -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sign_explicit_values_with_both_zeros(dtype):
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-3, -1e-3, 3.0], dtype=dtype)
    assert torch.signbit(x[1]) and not torch.signbit(x[2])
    expected = torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0, 1.0], dtype=dtype)
    out = F.sign(x)
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    assert not torch.signbit(out[1])  # +1, not -1 with a stray sign bit


def test_sign_of_tiny_values_and_infinities():
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([tiny / 4, -tiny / 4, float("inf"), -float("inf")])  # subnormals are not zero
    assert torch.equal(F.sign(x), torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_sign_leaves_input_untouched_and_accepts_a_tensor_that_requires_grad():
    x = torch.tensor([-0.0, -1.0, 2.0], requires_grad=True)
    before, version = x.detach().clone(), x._version
    out = F.sign(x)
    assert torch.equal(out, torch.tensor([1.0, -1.0, 1.0]))
    assert torch.equal(x.detach(), before) and x._version == version
    assert not out.requires_grad  # sign has no gradient; the estimators add one


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=64))
def test_sign_matches_comparison_reference(values):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(F.sign(x), ref_sign(x))


# -- gradient estimators ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,fn,formula", ESTIMATORS, ids=ESTIMATOR_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimator_forward_and_backward_on_grid(name, fn, formula, dtype):
    x = torch.tensor(GRID, dtype=dtype)
    g = torch.linspace(-2.0, 3.0, len(GRID), dtype=dtype)
    before = x.clone()
    out, grad = grad_of(fn, x, g)
    assert torch.equal(x, before)
    assert torch.equal(out, ref_sign(x))
    torch.testing.assert_close(grad, g * formula(x))


def test_estimator_hand_values():
    """A few values worked out on paper from the table of ALGORITHMS.md."""
    x = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    g = torch.ones_like(x)
    assert torch.equal(grad_of(F.sign_ste, x, g)[1], torch.tensor([0.0, 1, 1, 1, 1, 1, 0]))  # strict at +-1
    assert torch.equal(grad_of(F.approx_sign, x, g)[1], torch.tensor([0.0, 1.0, 1.5, 2.0, 1.5, 1.0, 0.0]))
    assert torch.equal(grad_of(F.identity_sign, x, 3 * g)[1], 3 * g)
    # Mask'(0) = 1.5; SwishSign'(0) = beta * 2 / 2 = beta.
    assert grad_of(F.mask_sign, torch.tensor([0.0]), torch.ones(1))[1].item() == pytest.approx(1.5)
    assert grad_of(F.swish_sign, torch.tensor([0.0]), torch.ones(1))[1].item() == pytest.approx(5.0)
    assert grad_of(lambda v: F.swish_sign(v, 2.0), torch.tensor([0.0]), torch.ones(1))[1].item() == \
        pytest.approx(2.0)


def test_sign_ste_is_strict_at_plus_minus_one_and_passes_just_inside():
    one_minus = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    x = torch.tensor([-1.0, -one_minus, one_minus, 1.0])
    assert torch.equal(grad_of(F.sign_ste, x, torch.ones(4))[1], torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_approx_sign_is_derivative_of_bireal_polynomial():
    """Bi-Real's ApproxSign: -1 below -1, 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), 1 above."""
    x = torch.linspace(-1.7, 1.7, 69, dtype=torch.float64)

    def poly(v):
        return torch.where(v < -1, -torch.ones_like(v),
                           torch.where(v < 0, 2 * v + v * v, torch.where(v < 1, 2 * v - v * v, torch.ones_like(v))))

    xr = x.clone().requires_grad_(True)
    poly(xr).sum().backward()
    torch.testing.assert_close(grad_of(F.approx_sign, x, torch.ones_like(x))[1], xr.grad)


@pytest.mark.parametrize("slope", [1.5, 0.7])
def test_mask_sign_is_derivative_of_two_sigmoid_minus_one(slope):
    """Mask(x) = 2 sigmoid(2 slope x) - 1 (= tanh(slope x)); A&B uses slope 1.5, i.e. 2 sigmoid(3x) - 1."""
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (2 * torch.sigmoid(2 * slope * xr) - 1).sum().backward()
    torch.testing.assert_close(grad_of(lambda v: F.mask_sign(v, slope), x, torch.ones_like(x))[1], xr.grad)


@pytest.mark.parametrize("beta", [5.0, 2.0])
def test_swish_sign_is_derivative_of_larq_swish_sign(beta):
    """larq's SwishSign: 2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1."""
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    s = torch.sigmoid(beta * xr)
    (2 * s * (1 + beta * xr * (1 - s)) - 1).sum().backward()
    torch.testing.assert_close(grad_of(lambda v: F.swish_sign(v, beta), x, torch.ones_like(x))[1], xr.grad)


def test_swish_sign_gradient_is_finite_where_cosh_overflows():
    x = torch.tensor([-50.0, 50.0, 200.0])
    grad = grad_of(F.swish_sign, x, torch.ones(3))[1]
    assert torch.isfinite(grad).all()
    assert grad.abs().max() < 1e-20


@st.composite
def tensors(draw, max_dims=4, max_side=4):
    shape = draw(st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims))
    n = math.prod(shape)
    elem = st.one_of(st.floats(-2.5, 2.5, width=32), st.sampled_from([-1.0, 1.0, 0.0, -0.0, -0.5, 0.5]))
    values = draw(st.lists(elem, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


@settings(max_examples=25, deadline=None)
@given(x=tensors(), seed=st.integers(0, 2 ** 16))
@pytest.mark.parametrize("name,fn,formula", ESTIMATORS, ids=ESTIMATOR_IDS)
def test_estimators_random_shapes(name, fn, formula, x, seed):
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    before, version = x.clone(), x._version
    out, grad = grad_of(fn, x, g)
    assert torch.equal(x, before) and x._version == version
    assert torch.equal(out, ref_sign(x))
    assert out.shape == x.shape
    torch.testing.assert_close(grad, g * formula(x))


def test_estimators_do_not_modify_a_requires_grad_input_in_place():
    for _, fn, _ in ESTIMATORS + [("st", F.stochastic_sign, None)]:
        x = torch.tensor([-0.0, 0.3, -2.0, 1.0], requires_grad=True)
        before, version = x.detach().clone(), x._version
        fn(x).sum().backward()
        assert torch.equal(x.detach(), before) and x._version == version


# -- stochastic sign ------------------------------------------------------------------------------
def test_stochastic_sign_probabilities_and_gradient():
    torch.manual_seed(1234)
    n = 100_000
    levels = torch.tensor([-1.5, -1.0, -0.6, 0.0, 0.4, 0.9, 1.0, 2.0])
    x = levels.repeat_interleave(n).requires_grad_(True)
    out = F.stochastic_sign(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    p_plus = (out.detach().view(len(levels), n) == 1).double().mean(dim=1)
    expected = ((levels.double() + 1) / 2).clamp(0, 1)
    # 6 standard deviations of a binomial estimate with n samples is at most 0.0095.
    torch.testing.assert_close(p_plus, expected, atol=0.0095, rtol=0)
    # Certain outcomes are exact.
    assert p_plus[0] == 0 and p_plus[1] == 0 and p_plus[-2] == 1 and p_plus[-1] == 1
    g = torch.randn(x.shape)
    out.backward(g)
    torch.testing.assert_close(x.grad, g * d_sign_ste(x.detach()))


def test_stochastic_sign_is_reproducible_under_a_seed():
    x = torch.linspace(-1, 1, 1000)
    torch.manual_seed(7)
    a = F.stochastic_sign(x)
    torch.manual_seed(7)
    b = F.stochastic_sign(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stochastic_sign_keeps_dtype(dtype):
    assert F.stochastic_sign(torch.zeros(5, dtype=dtype)).dtype == dtype


# -- sign with surrogate gradient --------------------------------------------------------------------
def test_sign_with_surrogate_forward_sign_backward_surrogate():
    x = torch.tensor([-2.0, -0.3, -0.0, 0.0, 0.1, 0.9], dtype=torch.float64, requires_grad=True)
    out = F.sign_with_surrogate(x, lambda v: torch.tanh(5 * v))
    assert torch.equal(out.detach(), ref_sign(x.detach()))
    g = torch.arange(1.0, 7.0, dtype=torch.float64)
    out.backward(g)
    torch.testing.assert_close(x.grad, g * 5 * (1 - torch.tanh(5 * x.detach()) ** 2))


@settings(max_examples=40, deadline=None)
@given(x=tensors())
def test_sign_with_surrogate_output_is_exactly_plus_minus_one(x):
    x.requires_grad_(True)
    out = F.sign_with_surrogate(x, lambda v: torch.tanh(5 * v))
    assert torch.equal(out.detach(), ref_sign(x.detach()))


# -- scaled sign (weights) --------------------------------------------------------------------------
def test_scaled_sign_hand_example_clamp_and_ste():
    v = torch.tensor([[0.5, -1.0, 1.0, -0.0], [1.5, -0.2, 0.0, -3.0]], requires_grad=True)
    scale = torch.tensor([[2.0], [0.25]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 5.0, 6.0, 7.0]])
    out = F.scaled_sign(v, scale, "clamp")
    assert torch.equal(out.detach(), torch.tensor([[2.0, -2.0, 2.0, 2.0], [0.25, -0.25, 0.25, -0.25]]))
    out.backward(g)
    # clamp: g * 1{|v| <= 1}, inclusive, not multiplied by the scale.
    assert torch.equal(v.grad, torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 6.0, 0.0]]))
    # scale: sum of g * sign(v) per row: 1 - 2 + 3 + 4 = 6; -1 - 5 + 6 - 7 = -7.
    assert torch.equal(scale.grad, torch.tensor([[6.0], [-7.0]]))

    v.grad = scale.grad = None
    F.scaled_sign(v, scale, "ste").backward(g)
    # ste: g * scale * 1{|v| < 1}, strict.
    assert torch.equal(v.grad, torch.tensor([[2.0, 0.0, 0.0, 8.0], [0.0, 1.25, 1.5, 0.0]]))
    assert torch.equal(scale.grad, torch.tensor([[6.0], [-7.0]]))


def test_scaled_sign_keeps_the_sign_of_a_negative_scale():
    v = torch.tensor([[0.5, -0.5, -0.0], [0.3, -0.7, 2.0]])
    scale = torch.tensor([[-2.0], [0.5]], requires_grad=True)
    out = F.scaled_sign(v, scale, "clamp")
    assert torch.equal(out.detach(), torch.tensor([[-2.0, 2.0, -2.0], [0.5, -0.5, 0.5]]))
    g = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    out.backward(g)
    assert torch.equal(scale.grad, torch.tensor([[3.0], [1.0]]))


def test_scaled_sign_gradient_for_a_zero_scale_row():
    v = torch.tensor([[0.5, -0.5, 0.25], [0.3, -0.7, 2.0]])
    scale = torch.tensor([[0.0], [1.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    F.scaled_sign(v, scale, "ste").backward(g)
    assert torch.equal(scale.grad, torch.tensor([[3.0], [1.0]]))


@pytest.mark.parametrize("estimator", ["clamp", "ste"])
def test_scaled_sign_gradcheck_for_the_scale(estimator):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    scale = torch.randn(3, 1, 1, 1, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: F.scaled_sign(v, s, estimator), (scale,))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_scaled_sign_clamp_gradient_is_inclusive_in_every_dtype(dtype):
    one = torch.tensor(1.0, dtype=dtype)
    above = torch.nextafter(one, torch.tensor(2.0, dtype=dtype))
    below = torch.nextafter(one, torch.tensor(0.0, dtype=dtype))
    v = torch.stack([-above, -one, -below, below, one, above]).view(1, 6).requires_grad_(True)
    F.scaled_sign(v, torch.full((1, 1), 0.5, dtype=dtype), "clamp").backward(torch.ones(1, 6, dtype=dtype))
    assert torch.equal(v.grad, torch.tensor([[0.0, 1, 1, 1, 1, 0]], dtype=dtype))


def test_scaled_sign_rejects_bad_arguments():
    v = torch.randn(3, 4)
    with pytest.raises(ValueError, match="estimator"):
        F.scaled_sign(v, torch.ones(3, 1), "approx")
    with pytest.raises(ValueError, match="broadcast"):
        F.scaled_sign(v, torch.ones(3), "clamp")
    with pytest.raises(ValueError, match="broadcast"):
        F.scaled_sign(v, torch.ones(2, 1), "clamp")


# -- XNOR sign --------------------------------------------------------------------------------------
def test_xnor_sign_hand_example():
    v = torch.tensor([[0.5, -1.5, 1.0], [-0.3, 0.6, -0.0]], requires_grad=True)
    out = F.xnor_sign(v)
    # alpha = mean |v| per row: 1.0 and 0.3.
    torch.testing.assert_close(out.detach(), torch.tensor([[1.0, -1.0, 1.0], [-0.3, 0.3, 0.3]]))
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out.backward(g)
    # g * alpha * 1{|v| < 1} + sign(v) / 3 * sum(g * sign(v)); row sums: 1 - 2 + 3 = 2, -4 + 5 + 6 = 7.
    expected = torch.tensor([[1.0 + 2 / 3, 0.0 - 2 / 3, 0.0 + 2 / 3],
                             [1.2 - 7 / 3, 1.5 + 7 / 3, 1.8 + 7 / 3]])
    torch.testing.assert_close(v.grad, expected)


def test_xnor_sign_detached_and_power_of_two_hand_example():
    v = torch.tensor([[0.5, -1.5, 1.0, 0.2]], requires_grad=True)  # alpha = 0.8 -> 2^round(log2 0.8) = 1
    out = F.xnor_sign(v, detach_alpha=True, power_of_two=True)
    assert torch.equal(out.detach(), torch.tensor([[1.0, -1.0, 1.0, 1.0]]))
    out.backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert torch.equal(v.grad, torch.tensor([[1.0, 0.0, 0.0, 4.0]]))

    v.grad = None
    F.xnor_sign(v, power_of_two=True).backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # through alpha: sign(v) / n * sum(g sign v) * 2^k / alpha = sign(v) / 4 * 6 * 1 / 0.8 = 1.875 sign(v)
    torch.testing.assert_close(v.grad, torch.tensor([[2.875, -1.875, 1.875, 5.875]]))


def test_xnor_sign_rejects_one_dimensional_weight():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        F.xnor_sign(torch.randn(5))


# -- round / power of two ---------------------------------------------------------------------------
def test_round_ste_forward_round_backward_identity():
    x = torch.tensor([-1.6, -0.4, 0.4, 0.6, 2.5], requires_grad=True)
    out = F.round_ste(x)
    assert torch.equal(out.detach(), torch.tensor([-2.0, -0.0, 0.0, 1.0, 2.0]))
    g = torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0])
    out.backward(g)
    assert torch.equal(x.grad, g)


def test_power_of_two_values_and_gradient():
    x = torch.tensor([0.3, 0.75, 1.0, 1.4, 1.5, 3.0, 100.0], dtype=torch.float64, requires_grad=True)
    out = F.power_of_two(x)
    # round(log2 x): log2 0.3 = -1.74 -> -2; log2 0.75 = -0.415 -> 0; log2 1.5 = 0.585 -> 1; log2 100 = 6.64 -> 7
    expected = torch.tensor([0.25, 1.0, 1.0, 1.0, 2.0, 4.0, 128.0], dtype=torch.float64)
    assert torch.equal(out.detach(), expected)
    out.backward(torch.ones_like(x))
    # d 2^round(log2 x) / dx with the rounding passed through: 2^k ln2 / (x ln2) = 2^k / x.
    torch.testing.assert_close(x.grad, expected / x.detach())
