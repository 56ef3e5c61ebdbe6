"""Fake-binarized layers against references written here with plain torch ops, and the building blocks.

Conventions checked (ALGORITHMS.md): sign(0) = +1, zero padding contributes 0, alpha_o = mean |W_o| over
everything but the output channel, and in eval mode the scale is applied after an exact integer sum.
"""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bnn
from bnn import BConfig
from bnn.layers import (BinaryConv1d, BinaryConv2d, BinaryConv3d, BinaryConvTranspose1d, BinaryConvTranspose2d,
                        BinaryConvTranspose3d, BinaryLinear, LearnableBias, PowerOfTwoRPReLU, RPReLU)
from bnn.ops import (BasicInputBinarizer, MagnitudeAwareWeightBinarizer, ScaledStandardizedWeight,
                     XNORWeightBinarizer)

CONV = {1: (nn.Conv1d, BinaryConv1d, F.conv1d), 2: (nn.Conv2d, BinaryConv2d, F.conv2d),
        3: (nn.Conv3d, BinaryConv3d, F.conv3d)}
CONVT = {1: (nn.ConvTranspose1d, BinaryConvTranspose1d, F.conv_transpose1d),
         2: (nn.ConvTranspose2d, BinaryConvTranspose2d, F.conv_transpose2d),
         3: (nn.ConvTranspose3d, BinaryConvTranspose3d, F.conv_transpose3d)}
SCALED = [XNORWeightBinarizer, MagnitudeAwareWeightBinarizer]
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- references, plain torch -----------------------------------------------------------------------
def sgn(t):
    """sign with sign(0) = +1 (negative zero included: -0.0 >= 0)."""
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def alpha_conv(w):
    """mean |W_o| per output channel of a (C_out, C_in/g, *k) or (C_out, C_in) weight, shaped for broadcasting."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


def alpha_convt(w, groups):
    """Per-output-channel mean |W| of a ConvTranspose weight (C_in, C_out/g, *k), returned twice: as a
    vector over the C_out output channels, and expanded to the weight's own shape (C_in, C_out/g, 1, ...)."""
    c_in, cout_g = w.shape[:2]
    cin_g = c_in // groups
    per_out = torch.empty(groups * cout_g, dtype=w.dtype)
    full = torch.empty((c_in, cout_g) + (1,) * (w.dim() - 2), dtype=w.dtype)
    for g in range(groups):
        for j in range(cout_g):
            a = w[g * cin_g:(g + 1) * cin_g, j].abs().mean()
            per_out[g * cout_g + j] = a
            full[g * cin_g:(g + 1) * cin_g, j] = a
    return per_out, full


def with_ties(x):
    """Put exact zeros (positive and negative) into a tensor, where sign(0) must be +1."""
    x = x.clone()
    flat = x.view(-1)
    flat[0] = 0.0
    if flat.numel() > 2:
        flat[flat.numel() // 2] = -0.0
    return x


def channel_view(v, ndim, dim=1):
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)


# -- random conv shapes -------------------------------------------------------------------------
@st.composite
def conv_cases(draw, transposed):
    d = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(d))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(d))
    max_len = {1: 8, 2: 6, 3: 4}[d]
    size = tuple(draw(st.integers(1, max_len)) for _ in range(d))
    for i in range(d):
        if transposed:
            assume((size[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1 >= 1)
        else:
            assume(size[i] + 2 * padding[i] >= dilation[i] * (k[i] - 1) + 1)
    return dict(d=d, groups=groups, cin=cin, cout=cout, k=k, stride=stride, dilation=dilation, padding=padding,
                size=size, batch=draw(st.integers(1, 2)), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def build(case, transposed, weight_binarizer, input_binarizer=BasicInputBinarizer):
    """A float layer of the case's shape and the binary layer made from it (sharing its Parameters)."""
    torch.manual_seed(case["seed"])
    float_cls, _, _ = (CONVT if transposed else CONV)[case["d"]]
    fl = float_cls(case["cin"], case["cout"], case["k"], stride=case["stride"], padding=case["padding"],
                   dilation=case["dilation"], groups=case["groups"], bias=case["bias"])
    with torch.no_grad():
        fl.weight.copy_(with_ties(torch.randn_like(fl.weight)))
        if fl.bias is not None:
            fl.bias.copy_(torch.randn_like(fl.bias))
    bconfig = BConfig(activation_pre_process=input_binarizer, weight_pre_process=weight_binarizer)
    layer = (CONVT if transposed else CONV)[case["d"]][1].from_float(fl, bconfig)
    x = with_ties(torch.randn(case["batch"], case["cin"], *case["size"]))
    return fl, layer, x


def reference(case, transposed, w, x, bias):
    """conv(sign x, alpha * sign W) + bias, alpha per output channel, all by hand."""
    op = (CONVT if transposed else CONV)[case["d"]][2]
    if transposed:
        _, full = alpha_convt(w, case["groups"])
        wb = full * sgn(w)
        return op(sgn(x), wb, bias, stride=case["stride"], padding=case["padding"], groups=case["groups"],
                  dilation=case["dilation"])
    wb = alpha_conv(w) * sgn(w)
    return op(sgn(x), wb, bias, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])


def integer_sum(case, transposed, w, x):
    """conv(sign x, sign W) in float64: the exact integer sum of ±1 products (zero padding adds 0)."""
    op = (CONVT if transposed else CONV)[case["d"]][2]
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    return op(sgn(x).double(), sgn(w).double(), None, **kw)


def per_out_alpha(case, transposed, w):
    if transposed:
        return alpha_convt(w, case["groups"])[0]
    return alpha_conv(w).reshape(-1)


def assert_integer_times_scale(out, ints, alpha):
    """Each output channel c is *exactly* ints[:, c] * k_c for one float32 k_c (no rounding inside the sum,
    one rounding by the scale), and k_c is mean |W_c| up to float32 summation."""
    assert out.dtype == ints.dtype == torch.float32
    for c in range(out.shape[1]):
        o, i = out[:, c].reshape(-1), ints[:, c].reshape(-1)
        if alpha[c] == 0:
            assert torch.equal(o, torch.zeros_like(o))
            continue
        nz = i != 0
        assert torch.equal(o[~nz], torch.zeros_like(o[~nz]))
        if not nz.any():
            continue
        candidates = torch.unique(o[nz] / i[nz])
        exact = [k for k in candidates if torch.equal(o, i * k)]
        assert exact, f"channel {c}: no float32 k with out == integer * k"
        torch.testing.assert_close(exact[0], alpha[c].to(torch.float32), rtol=1e-6, atol=0)


# -- forward against the reference -----------------------------------------------------------------
@pytest.mark.parametrize("weight_binarizer", SCALED)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
@HYP
@given(data=st.data())
def test_conv_train_forward_matches_hand_reference(weight_binarizer, transposed, data):
    case = data.draw(conv_cases(transposed))
    fl, layer, x = build(case, transposed, weight_binarizer)
    assert layer.training
    out = layer(x)
    with torch.no_grad():
        expected = reference(case, transposed, fl.weight, x, fl.bias)
    assert out.shape == expected.shape == fl(x).shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_binarizer", SCALED)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
@HYP
@given(data=st.data())
def test_conv_eval_sum_is_an_exact_integer_then_scaled(weight_binarizer, transposed, data):
    case = data.draw(conv_cases(transposed))
    fl, layer, x = build(case, transposed, weight_binarizer)
    with torch.no_grad():
        train_out = layer(x)
        layer.eval()
        out = layer(x)
        ints = integer_sum(case, transposed, fl.weight, x)
        assert torch.equal(ints, ints.round())
        alpha = per_out_alpha(case, transposed, fl.weight)
        nd = out.dim()
        bias = 0.0 if fl.bias is None else channel_view(fl.bias.double(), nd)
        # scale after the sum: out == K * integer (+ bias), with K = mean |W_o|
        expected = (ints * channel_view(alpha.double(), nd) + bias).float()
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6 if fl.bias is not None else 0.0)
        if fl.bias is None:
            assert_integer_times_scale(out, ints.float(), alpha)
        # train and eval agree
        torch.testing.assert_close(out, train_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_conv_eval_matches_integer_sum_times_alpha_bitwise(transposed, d):
    """Fixed shape, no bias: out == float32(integer sum) * float32(K_o) exactly, element for element."""
    case = dict(d=d, groups=2, cin=4, cout=6, k=(3,) * d, stride=(2,) * d, dilation=(1,) * d, padding=(1,) * d,
                size=(5,) * d, batch=2, bias=False, seed=7)
    fl, layer, x = build(case, transposed, MagnitudeAwareWeightBinarizer)
    layer.eval()
    with torch.no_grad():
        out = layer(x)
        ints = integer_sum(case, transposed, fl.weight, x).float()
        alpha = per_out_alpha(case, transposed, fl.weight)
        assert_integer_times_scale(out, ints, alpha)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_zero_padding_contributes_zero(d):
    """A 3x3 conv of all-positive input with all-positive weights: border outputs count only valid taps."""
    _, cls, _ = CONV[d]
    layer = cls(1, 1, 3, padding=1, bias=False,
                bconfig=BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer))
    with torch.no_grad():
        layer.weight.fill_(0.5)
    x = torch.rand(1, 1, *(4,) * d)  # all >= 0 -> all +1
    taps = F.pad(torch.ones(1, 1, *(4,) * d), (1, 1) * d)  # 1 inside, 0 in the padding
    expected = 0.5 * CONV[d][2](taps, torch.ones(1, 1, *(3,) * d))
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    corner = expected.reshape(-1)[0].item()
    assert corner == 0.5 * 2 ** d  # a corner sees 2 valid taps per axis


def test_conv_transpose_groups2_alpha_is_per_output_channel():
    """Weight (C_in, C_out/g, k): output channel o of group g owns W[g-th C_in block, o % (C_out/g)]."""
    groups, cin, cout, k = 2, 4, 6, 2
    layer = BinaryConvTranspose1d(cin, cout, k, groups=groups, bias=False, bconfig=BConfig(
        activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer))
    assert layer.weight.shape == (cin, cout // groups, k)
    with torch.no_grad():
        # |W| = (j + 1) * 10^g on output channel g*3 + j (all positive): alpha_o is that value
        for g in range(groups):
            for j in range(cout // groups):
                layer.weight[g * 2:(g + 1) * 2, j] = (j + 1) * 10.0 ** g
    x = torch.ones(1, cin, 1)
    # each output position sums 2 inputs (C_in/g) of +1 times alpha_o * (+1)
    expected_alpha = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    for mode in (True, False):
        layer.train(mode)
        out = layer(x)
        assert out.shape == (1, cout, k)
        torch.testing.assert_close(out, (2 * expected_alpha).view(1, -1, 1).expand(1, cout, k), rtol=0, atol=0)
    # and the reference helper agrees with that hand value
    torch.testing.assert_close(alpha_convt(layer.weight.detach(), groups)[0], expected_alpha)


def test_conv_transpose_output_size_is_honoured():
    torch.manual_seed(0)
    fl = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    layer = BinaryConvTranspose2d.from_float(fl, BConfig(activation_pre_process=BasicInputBinarizer,
                                                         weight_pre_process=XNORWeightBinarizer))
    x = torch.randn(1, 3, 5, 5)
    out = layer(x, output_size=[10, 10])
    assert out.shape == (1, 4, 10, 10)
    _, full = alpha_convt(fl.weight.detach(), 1)
    expected = F.conv_transpose2d(sgn(x), full * sgn(fl.weight.detach()), fl.bias.detach(), stride=2, padding=1,
                                  output_padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x, output_size=[10, 10]), expected, rtol=1e-5, atol=1e-5)


def test_center_weights_subtracts_the_input_channel_mean():
    torch.manual_seed(0)
    fl = nn.Conv2d(3, 4, 3, padding=1)
    layer = BinaryConv2d.from_float(fl, BConfig(activation_pre_process=BasicInputBinarizer,
                                                weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True)))
    x = torch.randn(2, 3, 6, 6)
    w = fl.weight.detach()
    wc = w - w.mean(dim=1, keepdim=True)
    expected = F.conv2d(sgn(x), alpha_conv(wc) * sgn(wc), fl.bias.detach(), padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# -- linear ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_binarizer", SCALED)
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_hand_reference(weight_binarizer, shape, bias):
    torch.manual_seed(1)
    fl = nn.Linear(7, 5, bias=bias)
    with torch.no_grad():
        fl.weight.copy_(with_ties(torch.randn(5, 7)))
    layer = BinaryLinear.from_float(fl, BConfig(activation_pre_process=BasicInputBinarizer,
                                                weight_pre_process=weight_binarizer))
    x = with_ties(torch.randn(*shape))
    w = fl.weight.detach()
    b = None if fl.bias is None else fl.bias.detach()
    expected = F.linear(sgn(x), alpha_conv(w) * sgn(w), b)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    with torch.no_grad():
        ev = layer(x)
        ints = F.linear(sgn(x).double(), sgn(w).double())
        ref = ints * alpha_conv(w).double().reshape(-1)
        if b is not None:
            ref = ref + b.double()
        torch.testing.assert_close(ev, ref.float(), rtol=1e-6, atol=1e-6 if bias else 0.0)
    torch.testing.assert_close(ev, out, rtol=1e-5, atol=1e-5)


# -- unbatched inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
def test_unbatched_conv_input_in_train_and_eval(transposed):
    """(C, H, W) input: the per-channel scale of the eval path goes on axis 0, not on H."""
    case = dict(d=2, groups=1, cin=3, cout=5, k=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1),
                size=(5, 5), batch=1, bias=True, seed=3)  # H == W == C_out: a wrong axis would broadcast
    fl, layer, x = build(case, transposed, XNORWeightBinarizer)
    x = x[0]
    with torch.no_grad():
        expected = reference(case, transposed, fl.weight, x[None], fl.bias)[0]
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.eval()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# -- gradients -------------------------------------------------------------------------------------
def _ste(t, strict):
    """sign(t) forward, gradient 1{|t| < 1} (strict) or clamp's 1{|t| <= 1} backward."""
    c = t.clamp(-1, 1)
    g = c - c.detach()
    if strict:
        g = torch.where(t.abs() < 1, g, torch.zeros_like(g))
    return sgn(t.detach()) + g


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
@pytest.mark.parametrize("weight_binarizer", SCALED)
def test_backward_matches_reference_gradients(transposed, weight_binarizer):
    case = dict(d=2, groups=2, cin=4, cout=4, k=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1),
                size=(5, 5), batch=2, bias=True, seed=11)
    fl, layer, x = build(case, transposed, weight_binarizer)
    with torch.no_grad():
        # no exact zeros in W here: d|W|/dW at 0 is a subgradient choice, not part of the contract
        fl.weight.copy_(torch.randn_like(fl.weight) * 1.2)
    x.requires_grad_(True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    assert layer.weight.grad is not None and layer.bias.grad is not None and x.grad is not None
    assert layer.weight.grad.abs().sum() > 0

    # the reference: sign-STE on x. On W, XNOR-Net: alpha(W) * sign-STE(W), alpha not detached (the product
    # rule). Bi-Real / ReActNet HardBinaryConv: alpha detached * sign(W), plus the gradient of
    # clamp(W, -1, 1) *not* multiplied by alpha.
    w = fl.weight.detach().clone().requires_grad_(True)
    b = fl.bias.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    xb = _ste(xr, strict=True)
    if transposed:
        # alpha per output channel of a (C_in, C_out/g, k, k) weight, expanded back to that shape
        cin_g = case["cin"] // 2
        blocks = []
        for gi in range(2):
            blk = w[gi * cin_g:(gi + 1) * cin_g]
            blocks.append(blk.abs().mean(dim=(0, 2, 3), keepdim=True).expand_as(blk))
        alpha = torch.cat(blocks, 0)
    else:
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    if weight_binarizer is XNORWeightBinarizer:
        wb = alpha * _ste(w, strict=True)
    else:
        clamped = w.clamp(-1, 1)
        wb = alpha.detach() * sgn(w.detach()) + (clamped - clamped.detach())
    if transposed:
        ref = F.conv_transpose2d(xb, wb, b, padding=1, groups=2)
    else:
        ref = F.conv2d(xb, wb, b, padding=1, groups=2)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref.backward(g)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [BinaryConv1d, BinaryConv3d, BinaryConvTranspose1d, BinaryConvTranspose3d])
def test_backward_flows_to_the_weight_in_every_conv(cls):
    d = 1 if "1d" in cls.__name__ else 3
    layer = cls(2, 3, 2, bconfig=BConfig(activation_pre_process=BasicInputBinarizer,
                                         weight_pre_process=MagnitudeAwareWeightBinarizer))
    x = torch.randn(2, 2, *(4,) * d, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0
    assert x.grad is not None


# -- precision -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, weight_bits, act_bits", [
    (BConfig(), 32, 32),
    (BConfig(activation_pre_process=BasicInputBinarizer), 32, 1),
    (BConfig(weight_pre_process=XNORWeightBinarizer), 1, 32),
    (BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=MagnitudeAwareWeightBinarizer), 1, 1),
    (BConfig(activation_pre_process=bnn.Identity, weight_pre_process=ScaledStandardizedWeight), 32, 32),
])
def test_precision_reads_the_binarizers(config, weight_bits, act_bits):
    for layer in (BinaryConv2d(4, 4, 3, bconfig=config), BinaryLinear(4, 4, bconfig=config),
                  BinaryConvTranspose2d(4, 4, 3, bconfig=config)):
        assert layer.weight_precision == weight_bits
        assert layer.activation_precision == act_bits


# -- input rank ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, bad_shape", [
    (BinaryConv1d, (4,)), (BinaryConv1d, (1, 2, 2, 4)),
    (BinaryConv2d, (2, 5)), (BinaryConv2d, (1, 2, 3, 5, 5)),
    (BinaryConv3d, (2, 5, 5)),
    (BinaryConvTranspose1d, (2, 2, 2, 2)), (BinaryConvTranspose2d, (2, 5)), (BinaryConvTranspose3d, (2, 4, 4)),
])
def test_wrong_rank_input_names_the_layer_class(cls, bad_shape):
    layer = cls(2, 3, 1, bconfig=BConfig(activation_pre_process=BasicInputBinarizer))
    with pytest.raises(ValueError) as info:
        layer(torch.randn(*bad_shape))
    assert cls.__name__ in str(info.value)
    assert str(tuple(bad_shape)) in str(info.value)


def test_wrong_rank_input_names_the_layer_built_by_prepare():
    net = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3), head=nn.Sequential(nn.Flatten(), nn.Linear(4, 2))))
    net = bnn.prepare_binary_model(net, BConfig(activation_pre_process=BasicInputBinarizer))
    assert net.stem.bnn_name == "stem" and net.head[1].bnn_name == "head.1"
    with pytest.raises(ValueError) as info:
        net.stem(torch.randn(3, 8))
    assert "BinaryConv2d" in str(info.value) and "'stem'" in str(info.value)


# -- blocks ------------------------------------------------------------------------------------------
def test_learnable_bias():
    lb = LearnableBias(3)
    assert torch.equal(lb.bias, torch.zeros(3))
    with torch.no_grad():
        lb.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(2, 3, 4, 4)
    expected = x + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(lb(x), expected, rtol=0, atol=0)
    last = LearnableBias(3, dim=-1)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    torch.testing.assert_close(last(torch.zeros(4, 3)), torch.tensor([[1.0, -2.0, 0.5]] * 4), rtol=0, atol=0)
    with pytest.raises(ValueError):
        lb(torch.randn(2, 4, 4, 4))


def _rprelu_by_hand(x, b1, slope, b2, dim):
    shape = [1] * x.dim()
    shape[dim] = -1
    y = x + b1.view(shape)
    y = torch.where(y >= 0, y, slope.view(shape) * y)
    return y + b2.view(shape)


@pytest.mark.parametrize("dim, shape", [(1, (2, 3, 4, 4)), (1, (5, 3)), (-1, (2, 4, 3))])
def test_rprelu_matches_hand_formula(dim, shape):
    torch.manual_seed(0)
    m = RPReLU(3, dim=dim)
    assert torch.equal(m.slope.detach(), torch.full((3,), 0.25))
    assert torch.equal(m.shift_in.detach(), torch.zeros(3)) and torch.equal(m.shift_out.detach(), torch.zeros(3))
    x = torch.randn(*shape)
    # at init: plain PReLU with slope 0.25
    torch.testing.assert_close(m(x), torch.where(x >= 0, x, 0.25 * x), rtol=0, atol=0)
    with torch.no_grad():
        m.shift_in.copy_(torch.tensor([0.3, -0.2, 1.0]))
        m.slope.copy_(torch.tensor([0.1, 0.5, -0.3]))
        m.shift_out.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    expected = _rprelu_by_hand(x, m.shift_in.detach(), m.slope.detach(), m.shift_out.detach(), dim)
    torch.testing.assert_close(m(x), expected, rtol=1e-6, atol=1e-6)


def test_power_of_two_rprelu_forward_and_slope_gradient():
    m = PowerOfTwoRPReLU(3)
    assert torch.equal(m.log2_slope.detach(), torch.full((3,), -3.0))
    x = torch.tensor([[-8.0, 0.0, 4.0], [2.0, -1.0, -16.0]]).view(2, 3, 1)
    # init: slope 1/8 on negatives, identity on x >= 0
    torch.testing.assert_close(m(x), torch.where(x >= 0, x, x / 8), rtol=0, atol=0)

    with torch.no_grad():
        m.log2_slope.copy_(torch.tensor([-2.6, -1.2, 0.4]))   # rounds to -3, -1, 0
        m.shift_in.copy_(torch.tensor([0.5, -0.25, 1.0]))
        m.shift_out.copy_(torch.tensor([0.0, 1.0, -1.0]))
    assert torch.equal(m.exponent, torch.tensor([-3.0, -1.0, 0.0]))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5)
    k = torch.tensor([-3.0, -1.0, 0.0]).view(1, 3, 1)
    z = x + m.shift_in.detach().view(1, 3, 1)
    expected = torch.where(z >= 0, z, z * 2.0 ** k) + m.shift_out.detach().view(1, 3, 1)
    y = m(x)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)

    g = torch.randn_like(y)
    y.backward(g)
    # d y / d a_c at the rounded exponent, round passing the gradient as identity:
    # sum over x < 0 of g * z * 2^k * ln 2
    expected_grad = torch.where(z < 0, g * z * 2.0 ** k * math.log(2.0), torch.zeros_like(z)).sum(dim=(0, 2))
    torch.testing.assert_close(m.log2_slope.grad, expected_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.shift_out.grad, g.sum(dim=(0, 2)), rtol=1e-5, atol=1e-6)
    expected_in = torch.where(z >= 0, g, g * 2.0 ** k).sum(dim=(0, 2))
    torch.testing.assert_close(m.shift_in.grad, expected_in, rtol=1e-5, atol=1e-6)


def test_power_of_two_rprelu_channels_last():
    m = PowerOfTwoRPReLU(2, dim=-1)
    with torch.no_grad():
        m.log2_slope.copy_(torch.tensor([1.4, -0.6]))  # 2^1, 2^-1
    x = torch.tensor([[-1.0, -1.0], [3.0, -4.0]])
    torch.testing.assert_close(m(x), torch.tensor([[-2.0, -0.5], [3.0, -2.0]]), rtol=0, atol=0)
