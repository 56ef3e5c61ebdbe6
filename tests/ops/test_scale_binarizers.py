"""Output scalers (activation_post_process): BasicScaleBinarizer and XNORScaleBinarizer, bound through
a layer, against hand loops and gradcheck."""
import pytest
import torch
import torch.nn.functional as tF

import bnn
from bnn.ops import BasicScaleBinarizer, ScaledStandardizedWeight, XNORScaleBinarizer


def conv_with(post, *args, cls=bnn.layers.BinaryConv2d, **kwargs):
    return cls(*args, bconfig=bnn.BConfig(activation_post_process=post), **kwargs)


def linear_with(post, *args, **kwargs):
    return bnn.layers.BinaryLinear(*args, bconfig=bnn.BConfig(activation_post_process=post), **kwargs)


# -- BasicScaleBinarizer --------------------------------------------------------------------------------
def test_basic_scale_conv_multiplies_channel_axis_one():
    layer = conv_with(BasicScaleBinarizer, 2, 3, 3, padding=1)
    scaler = layer.activation_post_process
    assert scaler.dim == 1
    assert scaler.alpha.shape == (3,) and torch.equal(scaler.alpha.detach(), torch.ones(3))
    with torch.no_grad():
        scaler.alpha.copy_(torch.tensor([1.0, -2.0, 0.5]))
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    expected = out.clone()
    expected[:, 1] *= -2.0
    expected[:, 2] *= 0.5
    assert torch.equal(scaler(out, torch.randn(2, 2, 2, 2)), expected)
    # and through the whole layer (real input and weight, the defaults)
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(layer(x), tF.conv2d(x, layer.weight, layer.bias, padding=1) *
                               torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)])
def test_basic_scale_linear_multiplies_last_axis(shape):
    layer = linear_with(BasicScaleBinarizer, 6, 3)
    scaler = layer.activation_post_process
    assert scaler.dim == -1 and scaler.alpha.shape == (3,)
    with torch.no_grad():
        scaler.alpha.copy_(torch.tensor([2.0, 3.0, -1.0]))
    out = torch.randn(shape)
    expected = torch.stack([out[..., 0] * 2.0, out[..., 1] * 3.0, -out[..., 2]], dim=-1)
    assert torch.equal(scaler(out, None), expected)


def test_basic_scale_gradcheck_and_alpha_gradient():
    scaler = conv_with(BasicScaleBinarizer, 2, 3, 3).activation_post_process.double()
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def fn(o, a):
        return torch.func.functional_call(scaler, {"alpha": a}, (o, None))

    assert torch.autograd.gradcheck(fn, (out, alpha))
    g = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    scaler(out.detach(), None).backward(g)
    torch.testing.assert_close(scaler.alpha.grad, (g * out.detach()).sum(dim=(0, 2, 3)))


def test_basic_scale_explicit_shape_and_legacy_module_argument():
    scaler = BasicScaleBinarizer(shape=(1, 3, 1, 1))
    with torch.no_grad():
        scaler.alpha.copy_(torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1))
    out = torch.ones(2, 3, 2, 2)
    assert torch.equal(scaler(out), torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2))
    legacy = BasicScaleBinarizer(torch.nn.Linear(4, 5))
    assert legacy.alpha.shape == (5,) and legacy.dim == -1
    with pytest.raises(RuntimeError, match="shape"):
        BasicScaleBinarizer()(torch.randn(2, 3))


# -- XNORScaleBinarizer --------------------------------------------------------------------------------
def xnor_k_loop(x, kernel, stride, padding, dilation):
    """K = box filter over A = mean_c |x|, by hand: the sum of the valid taps (zeros padded) over kh*kw."""
    n, _, h, w = x.shape
    a = x.abs().mean(dim=1)
    kh, kw = kernel
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    k = torch.zeros(n, 1, ho, wo, dtype=x.dtype)
    for b in range(n):
        for oi in range(ho):
            for oj in range(wo):
                total = 0.0
                for ki in range(kh):
                    for kj in range(kw):
                        i = oi * stride[0] - padding[0] + ki * dilation[0]
                        j = oj * stride[1] - padding[1] + kj * dilation[1]
                        if 0 <= i < h and 0 <= j < w:
                            total += a[b, i, j].item()
                k[b, 0, oi, oj] = total / (kh * kw)
    return k


def test_xnor_scale_tiny_3x3_stride_1_padding_1():
    layer = conv_with(XNORScaleBinarizer, 2, 3, 3, padding=1)
    scaler = layer.activation_post_process
    x = torch.tensor([[[[1.0, -2.0, 0.0, 4.0],
                        [0.5, 1.5, -1.0, 2.0],
                        [-3.0, 0.0, 1.0, -1.0],
                        [2.0, 1.0, -0.5, 0.0]],
                       [[-1.0, 0.0, 2.0, 0.0],
                        [1.5, -0.5, 1.0, 2.0],
                        [1.0, 2.0, -1.0, 3.0],
                        [0.0, -1.0, 0.5, 2.0]]]])
    k = xnor_k_loop(x, (3, 3), (1, 1), (1, 1), (1, 1))
    # corner (0, 0): A = mean_c |x| = [[1, 1], [1, 1]] on the four valid taps -> 4 / 9
    assert k[0, 0, 0, 0].item() == pytest.approx(4 / 9)
    out = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(scaler(out, x), out * k)
    # the same through the layer (real input and weight)
    torch.testing.assert_close(layer(x), tF.conv2d(x, layer.weight, layer.bias, padding=1) * k)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 2, 1, 1), (2, 1, 0, 2), ((3, 1), (1, 2), (0, 1), 1)])
def test_xnor_scale_stride_padding_dilation(kernel, stride, padding, dilation):
    layer = conv_with(XNORScaleBinarizer, 2, 3, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 2, 7, 6, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    k = xnor_k_loop(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    ref = tF.conv2d(x, layer.weight, layer.bias, stride=stride, padding=padding, dilation=dilation)
    assert k.shape[-2:] == ref.shape[-2:]
    torch.testing.assert_close(y, ref * k)


def test_xnor_scale_conv1d():
    layer = conv_with(XNORScaleBinarizer, 2, 1, 3, padding=1, cls=bnn.layers.BinaryConv1d)
    x = torch.tensor([[[1.0, -2.0, 3.0], [-1.0, 0.0, 1.0]]])
    # A = (1, 1, 2); K = (0 + 1 + 1, 1 + 1 + 2, 1 + 2 + 0) / 3
    out = torch.ones(1, 1, 3)
    torch.testing.assert_close(layer.activation_post_process(out, x), torch.tensor([[[2 / 3, 4 / 3, 1.0]]]))


@pytest.mark.parametrize("shape", [(2, 4), (2, 3, 4)])
def test_xnor_scale_linear_is_mean_abs_over_features(shape):
    layer = linear_with(XNORScaleBinarizer, 4, 3)
    x = torch.arange(1.0, 1.0 + torch.Size(shape).numel()).view(shape) * torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = torch.randn(shape[:-1] + (3,))
    k = x.abs().sum(dim=-1, keepdim=True) / 4
    torch.testing.assert_close(layer.activation_post_process(out, x), out * k)
    if len(shape) == 2:  # hand value for the first sample: (1 + 2 + 3 + 4) / 4
        assert k[0, 0].item() == 2.5
    torch.testing.assert_close(layer(x), tF.linear(x, layer.weight, layer.bias) * k)


def test_xnor_scale_gradcheck():
    scaler = conv_with(XNORScaleBinarizer, 2, 3, 3, padding=1, stride=2).activation_post_process
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.3), x).requires_grad_(True)  # |x| smooth away from 0
    out = torch.randn(1, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scaler, (out, x))
    lin = linear_with(XNORScaleBinarizer, 4, 3).activation_post_process
    xl = torch.tensor([[0.5, -1.0, 2.0, -0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lin, (torch.randn(1, 3, dtype=torch.float64, requires_grad=True), xl))


def test_xnor_scale_input_untouched():
    scaler = conv_with(XNORScaleBinarizer, 2, 3, 3, padding=1).activation_post_process
    x, out = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4)
    xs, outs = x.clone(), out.clone()
    scaler(out, x)
    assert torch.equal(x, xs) and torch.equal(out, outs) and x._version == 0 and out._version == 0


def test_xnor_scale_refusals():
    with pytest.raises(ValueError, match="transposed"):
        conv_with(XNORScaleBinarizer, 2, 3, 3, cls=bnn.layers.BinaryConvTranspose2d)
    with pytest.raises(ValueError, match="numeric padding"):
        conv_with(XNORScaleBinarizer, 2, 3, 3, padding="same")
    with pytest.raises(RuntimeError, match="layer"):
        XNORScaleBinarizer()(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4))


# -- precision and factories ---------------------------------------------------------------------------
def test_precision_of_real_valued_parts():
    for obj in (BasicScaleBinarizer, XNORScaleBinarizer, ScaledStandardizedWeight, bnn.Identity,
                BasicScaleBinarizer(shape=(3,)), XNORScaleBinarizer(), bnn.Identity()):
        assert obj.precision == 32


def test_with_args_builds_fresh_instances():
    make = BasicScaleBinarizer.with_args(shape=(3,))
    a, b = make(), make()
    assert a is not b and a.alpha is not b.alpha
    layer1, layer2 = conv_with(make, 2, 3, 3), conv_with(make, 2, 3, 3)
    assert layer1.activation_post_process is not layer2.activation_post_process
    assert layer1.activation_post_process.alpha is not layer2.activation_post_process.alpha
