"""Activation binarizers (nn.Modules): sign(0) = +1, exact +-1 outputs, no in-place writes, and each
module's gradient against the estimator formula of ALGORITHMS.md written out here."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnn
from bnn.ops import (AdvancedInputBinarizer, ApproxSignBinarizer, BasicInputBinarizer, IdentitySTEBinarizer,
                     MaskSignBinarizer, RSign, StochasticInputBinarizer, SwishSignBinarizer)


def ref_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def d_sign_ste(x):
    return ((x > -1) & (x < 1)).to(x.dtype)


def d_approx_sign(x):
    return torch.where((x >= -1) & (x < 0), 2 + 2 * x, torch.where((x >= 0) & (x < 1), 2 - 2 * x, torch.zeros_like(x)))


def d_mask(x):
    return 1.5 * (1 - torch.tanh(1.5 * x) ** 2)


def d_swish(x, beta=5.0):
    return beta * (2 - beta * x * torch.tanh(beta * x / 2)) / (1 + torch.cosh(beta * x))


def d_tanh5(x):
    return 5 * (1 - torch.tanh(5 * x) ** 2)


# (factory building an eval-ready module for a 3-channel (N, 3, ...) input, gradient formula or None)
MODULES = [
    ("BasicInputBinarizer", BasicInputBinarizer, d_sign_ste),
    ("StochasticInputBinarizer.eval", lambda: StochasticInputBinarizer().eval(), d_sign_ste),
    ("AdvancedInputBinarizer", AdvancedInputBinarizer, d_tanh5),
    ("ApproxSignBinarizer", ApproxSignBinarizer, d_approx_sign),
    ("SwishSignBinarizer", SwishSignBinarizer, d_swish),
    ("MaskSignBinarizer", MaskSignBinarizer, d_mask),
    ("IdentitySTEBinarizer", IdentitySTEBinarizer, torch.ones_like),
    ("RSign", lambda: RSign(3), d_approx_sign),  # bias 0 at init: ApproxSign of x itself
]
IDS = [m[0] for m in MODULES]

GRID = torch.tensor([-3.0, -1.0, -0.999, -0.6, -0.0, 0.0, 1e-30, -1e-30, 0.2, 0.999, 1.0, 2.0])


def grid_input(dtype=torch.float32):
    # (N=2, C=3, 4): every channel sees every grid value.
    return GRID.to(dtype).view(1, 1, -1).expand(2, 3, -1).reshape(2, 3, 12, 1).contiguous()


@pytest.mark.parametrize("name,make,formula", MODULES, ids=IDS)
def test_zero_and_negative_zero_give_plus_one(name, make, formula):
    x = torch.tensor([-0.0, 0.0, -0.0]).view(1, 3, 1).expand(2, 3, 2).contiguous()
    out = make()(x)
    assert torch.equal(out, torch.ones_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,make,formula", MODULES, ids=IDS)
def test_forward_backward_against_formula(name, make, formula, dtype):
    module = make().to(dtype)
    x = grid_input(dtype).requires_grad_(True)
    before, version = x.detach().clone(), x._version
    out = module(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out.detach(), ref_sign(x.detach()))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out.backward(g)
    assert torch.equal(x.detach(), before) and x._version == version
    torch.testing.assert_close(x.grad, g * formula(x.detach()))


@st.composite
def nchw(draw):
    shape = (draw(st.integers(1, 3)), 3) + tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    n = math.prod(shape)
    elem = st.one_of(st.floats(-2.5, 2.5, width=32), st.sampled_from([-1.0, 1.0, 0.0, -0.0]))
    return torch.tensor(draw(st.lists(elem, min_size=n, max_size=n)), dtype=torch.float32).reshape(shape)


@settings(max_examples=20, deadline=None)
@given(x=nchw())
@pytest.mark.parametrize("name,make,formula", MODULES, ids=IDS)
def test_random_shapes(name, make, formula, x):
    x.requires_grad_(True)
    before = x.detach().clone()
    out = make()(x)
    assert torch.equal(out.detach(), ref_sign(x.detach()))
    g = torch.linspace(-1, 1, x.numel()).view(x.shape)
    out.backward(g)
    assert torch.equal(x.detach(), before)
    torch.testing.assert_close(x.grad, g * formula(x.detach()))


def test_hand_gradient_values():
    x = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]])

    def grad(module):
        xr = x.clone().requires_grad_(True)
        module(xr).sum().backward()
        return xr.grad

    assert torch.equal(grad(BasicInputBinarizer()), torch.tensor([[0.0, 1, 1, 1, 0]]))
    assert torch.equal(grad(ApproxSignBinarizer()), torch.tensor([[0.0, 1, 2, 1, 0]]))
    assert torch.equal(grad(IdentitySTEBinarizer()), torch.ones(1, 5))
    assert grad(MaskSignBinarizer())[0, 2].item() == pytest.approx(1.5)
    assert grad(SwishSignBinarizer())[0, 2].item() == pytest.approx(5.0)
    assert grad(AdvancedInputBinarizer())[0, 2].item() == pytest.approx(5.0)


def test_binarizer_arguments_change_the_gradient():
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)

    def grad(module):
        xr = x.clone().requires_grad_(True)
        out = module(xr)
        assert torch.equal(out.detach(), ref_sign(x))
        out.sum().backward()
        return xr.grad

    torch.testing.assert_close(grad(SwishSignBinarizer(beta=2.0)), d_swish(x, 2.0))
    torch.testing.assert_close(grad(MaskSignBinarizer(slope=0.5)), 0.5 * (1 - torch.tanh(0.5 * x) ** 2))
    s = torch.sigmoid(2 * x)
    torch.testing.assert_close(grad(AdvancedInputBinarizer(torch.sigmoid, t=2.0)), 2 * s * (1 - s))


# -- stochastic binarization ------------------------------------------------------------------------
def test_stochastic_input_binarizer_eval_is_deterministic_sign():
    module = StochasticInputBinarizer().eval()
    x = torch.linspace(-1, 1, 101)
    outs = [module(x) for _ in range(3)]
    for out in outs:
        assert torch.equal(out, ref_sign(x))


def test_stochastic_input_binarizer_train_probabilities_and_gradient():
    module = StochasticInputBinarizer().train()
    torch.manual_seed(0)
    n = 50_000
    levels = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.8, 1.0])
    x = levels.view(1, -1, 1).expand(2, -1, n // 2).contiguous().requires_grad_(True)
    out = module(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    p = (out.detach() == 1).double().mean(dim=(0, 2))
    # 6 standard deviations of a binomial estimate from 50000 samples is at most 0.0135.
    torch.testing.assert_close(p, ((levels.double() + 1) / 2).clamp(0, 1), atol=0.0135, rtol=0)
    assert p[0] == 0 and p[-1] == 1
    g = torch.randn(x.shape)
    out.backward(g)
    torch.testing.assert_close(x.grad, g * d_sign_ste(x.detach()))


# -- RSign ------------------------------------------------------------------------------------------
def test_rsign_threshold_hand_example():
    rsign = RSign(2)
    with torch.no_grad():
        rsign.bias.copy_(torch.tensor([0.5, -0.25]))
    # channel 0: sign(x + 0.5); channel 1: sign(x - 0.25). x == -b exactly gives sign(0) = +1.
    x = torch.tensor([[[-0.5, -0.6, 0.0], [0.25, 0.2, -1.0]]])  # (N=1, C=2, L=3)
    assert torch.equal(rsign(x), torch.tensor([[[1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]]))


def rsign_bias_grad_reference(x, bias, g, dim, formula=d_approx_sign):
    shape = [1] * x.dim()
    shape[dim] = -1
    local = g * formula(x + bias.view(shape))
    dims = [d for d in range(x.dim()) if d != dim % x.dim()]
    return local.sum(dim=dims), local


@pytest.mark.parametrize("estimator,formula", [("approx_sign", d_approx_sign), ("ste", d_sign_ste),
                                               ("mask", d_mask), ("identity", torch.ones_like)])
def test_rsign_conv_shaped_gradients(estimator, formula):
    gen = torch.Generator().manual_seed(1)
    rsign = RSign(3, estimator=estimator)
    with torch.no_grad():
        rsign.bias.copy_(torch.tensor([0.3, -0.2, 0.0]))
    x = torch.randn(2, 3, 4, 5, generator=gen, requires_grad=True)
    out = rsign(x)
    assert torch.equal(out.detach(), ref_sign(x.detach() + rsign.bias.detach().view(1, 3, 1, 1)))
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    bias_grad, x_grad = rsign_bias_grad_reference(x.detach(), rsign.bias.detach(), g, 1, formula)
    torch.testing.assert_close(rsign.bias.grad, bias_grad)
    torch.testing.assert_close(x.grad, x_grad)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_rsign_bound_to_linear_uses_last_axis(shape):
    layer = bnn.layers.BinaryLinear(5, 2, bconfig=bnn.BConfig(activation_pre_process=RSign))
    rsign = layer.activation_pre_process
    assert isinstance(rsign, RSign) and rsign.dim == -1
    assert rsign.bias.shape == (5,) and torch.equal(rsign.bias.detach(), torch.zeros(5))
    with torch.no_grad():
        rsign.bias.copy_(torch.tensor([0.5, -0.5, 0.1, 0.0, 2.0]))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen)
    out = rsign(x)
    assert torch.equal(out, ref_sign(x + rsign.bias.detach()))
    g = torch.randn(shape, generator=gen)
    out.backward(g)
    bias_grad, _ = rsign_bias_grad_reference(x, rsign.bias.detach(), g, -1)
    torch.testing.assert_close(rsign.bias.grad, bias_grad)


def test_rsign_bound_to_conv_uses_axis_one_and_in_channels():
    layer = bnn.layers.BinaryConv2d(3, 4, 3, padding=1, bconfig=bnn.BConfig(activation_pre_process=RSign))
    rsign = layer.activation_pre_process
    assert rsign.dim == 1 and rsign.bias.shape == (3,)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), spatial=st.lists(st.integers(1, 4), max_size=2),
       seed=st.integers(0, 2 ** 16))
def test_rsign_random_shapes_bias_gradient(n, c, spatial, seed):
    gen = torch.Generator().manual_seed(seed)
    rsign = RSign(c)
    with torch.no_grad():
        rsign.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    shape = (n, c, *spatial)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    out = rsign(x)
    assert torch.equal(out.detach(), ref_sign(x + rsign.bias.detach().view([1, c] + [1] * len(spatial))))
    g = torch.randn(shape, generator=gen)
    out.backward(g)
    bias_grad, _ = rsign_bias_grad_reference(x, rsign.bias.detach(), g, 1)
    torch.testing.assert_close(rsign.bias.grad, bias_grad)


def test_rsign_errors():
    with pytest.raises(ValueError, match="unknown gradient estimator"):
        RSign(3, estimator="nope")
    with pytest.raises(RuntimeError, match="channels"):
        RSign()(torch.randn(2, 3))
    with pytest.raises(ValueError, match="3 channels on axis 1"):
        RSign(3)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError):
        RSign(3)(torch.randn(3))
    with pytest.raises(ValueError, match="4 channels but the layer takes 3"):
        bnn.layers.BinaryConv2d(3, 4, 3, bconfig=bnn.BConfig(activation_pre_process=RSign.with_args(channels=4)))


# -- precision and factories --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [BasicInputBinarizer, StochasticInputBinarizer, AdvancedInputBinarizer,
                                 ApproxSignBinarizer, SwishSignBinarizer, MaskSignBinarizer,
                                 IdentitySTEBinarizer, RSign])
def test_precision_is_one_bit(cls):
    assert cls.precision == 1
    assert cls().precision == 1


def test_identity_is_32_bit_and_passes_through():
    x = torch.randn(3)
    ident = bnn.Identity()
    assert ident.precision == 32
    assert ident(x, torch.randn(2)) is x


def test_with_args_builds_fresh_instances():
    make = RSign.with_args(channels=3, estimator="ste")
    a, b = make(), make()
    assert a is not b and a.bias is not b.bias
    assert a.estimator == "ste" and a.bias.shape == (3,)
    with torch.no_grad():
        a.bias.fill_(1.0)
    assert torch.equal(b.bias.detach(), torch.zeros(3))
    make_swish = SwishSignBinarizer.with_args(beta=2.0)
    s1, s2 = make_swish(), make_swish()
    assert s1 is not s2 and s1.beta == s2.beta == 2.0
