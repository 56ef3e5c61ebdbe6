"""to_inference against the fake-binarized model it comes from, in eval mode: small nets built here under
several binarization configs (hypothesis over channel counts, kernel, stride, padding, dilation, groups), and
torchvision's resnet18 under every shipped recipe. Learned parameters are randomized first (conftest)."""
import operator
from collections import OrderedDict

import pytest
import torch
import torch.fx
import torch.nn as nn
import torchvision
from hypothesis import given, settings, strategies as st

import bnn
from bnn.inference import ConversionError, InferenceModel, to_inference
from bnn.inference.modules import EPILOGUE_STEPS, PackedBinaryConv2d, PackedBinaryLinear, SignedRealLayer
from bnn.layers import BinarizedLayer, LearnableBias, PowerOfTwoRPReLU, RPReLU
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, MagnitudeAwareWeightBinarizer, RSign,
                     ScaledWSWeightBinarizer, XNORScaleBinarizer, XNORWeightBinarizer)

from inference_helpers import BACKENDS, RECIPES, kernels, randomize_learned

CONFIGS = {
    "sign+xnor": bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer),
    "rsign+magnitude": bnn.BConfig(activation_pre_process=RSign, weight_pre_process=MagnitudeAwareWeightBinarizer),
    "rsign-mask+ws-pow2": bnn.BConfig(activation_pre_process=RSign.with_args(estimator="mask"),
                                      weight_pre_process=ScaledWSWeightBinarizer.with_args(power_of_two=True)),
    "rsign+ws+scale": bnn.BConfig(activation_pre_process=RSign, weight_pre_process=ScaledWSWeightBinarizer,
                                  activation_post_process=BasicScaleBinarizer),
    "sign+xnor-centred+xnor-scale": bnn.BConfig(
        activation_pre_process=BasicInputBinarizer, activation_post_process=XNORScaleBinarizer,
        weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True)),
    "activations-only": bnn.BConfig(activation_pre_process=RSign),
    "weights-only": bnn.BConfig(weight_pre_process=XNORWeightBinarizer),
}
# configs whose binary layers take 1-bit activations and let the per-channel ops before them fold
FOLDING = {"sign+xnor", "rsign+magnitude", "rsign-mask+ws-pow2", "rsign+ws+scale", "activations-only"}


class Net2d(nn.Module):
    """stem -> BN -> learnable bias -> binary conv (drawn geometry) -> BN -> RPReLU -> binary grouped 3x3 + BN,
    residual -> power-of-two RPReLU -> BN * 0.5 -> binary 1x1, residual -> pool -> BN1d -> binary linear ->
    ReLU -> classifier."""

    def __init__(self, c1, c2, kernel, stride, padding, dilation, groups, groups2, bias):
        super().__init__()
        self.stem = nn.Conv2d(3, c1, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c1)
        self.lb = LearnableBias(c1)
        self.conv1 = nn.Conv2d(c1, c2, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                               bias=bias)
        self.bn1 = nn.BatchNorm2d(c2)
        self.act1 = RPReLU(c2)
        self.conv2 = nn.Conv2d(c2, c2, 3, padding=1, groups=groups2, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.act2 = PowerOfTwoRPReLU(c2)
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c2, 1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_lin = nn.BatchNorm1d(c2)
        self.lin = nn.Linear(c2, 11)
        self.fc = nn.Linear(11, 10)

    def forward(self, x):
        x = self.lb(self.bn0(self.stem(x)))
        y = self.act1(self.bn1(self.conv1(x)))
        z = self.act2(self.bn2(self.conv2(y)) + y)
        w = self.conv3(self.bn3(z) * 0.5) + z
        h = self.lin(self.bn_lin(torch.flatten(self.pool(w), 1)))
        return self.fc(torch.relu(h))


class Net1d(nn.Module):
    def __init__(self, c1, c2, kernel, stride, padding, dilation, groups, bias):
        super().__init__()
        self.stem = nn.Conv1d(2, c1, 3, padding=1)
        self.bn0 = nn.BatchNorm1d(c1)
        self.conv1 = nn.Conv1d(c1, c2, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                               bias=bias)
        self.bn1 = nn.BatchNorm1d(c2)
        self.act1 = RPReLU(c2)
        self.conv2 = nn.Conv1d(c2, c2, 3, padding=1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(self.bn0(self.stem(x)))))
        y = self.conv2(y) + y
        return self.fc(y.mean(-1))


def binarize(model, config):
    model = bnn.prepare_binary_model(model, CONFIGS[config], ignore_layers_name=["_first_", "_last_"])
    randomize_learned(model, seed=7)
    model.train()
    with torch.no_grad():  # BN statistics of this very model
        for _ in range(2):
            model(torch.randn(4, *EXAMPLE_SHAPES[type(model)], generator=torch.Generator().manual_seed(3)))
    return model.eval()


EXAMPLE_SHAPES = {Net2d: (3, 11, 10), Net1d: (2, 13)}


def assert_same_outputs(fast, model, *inputs):
    for x in inputs:
        with torch.no_grad():
            ref = model(x)
        out = fast(x)
        assert out.shape == ref.shape
        if not torch.equal(out, ref):
            rel = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            raise AssertionError(f"outputs differ, relative error {rel:.3g}")
        assert torch.equal(out.argmax(-1), ref.argmax(-1))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def check_conversion(model, config, example, *others):
    before = state(model)
    types_before = [type(m) for m in model.modules()]
    fast = to_inference(model, example)
    # the user's model is left alone: parameters, buffers, module types, eval mode
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == types_before
    assert isinstance(fast, InferenceModel) and isinstance(fast, nn.Module) and not fast.training
    assert_same_outputs(fast, model, example, *others)

    # every binary layer was replaced by its inference form
    gm_modules = dict(fast.graph_module.named_modules())
    for name, layer in model.named_modules():
        if isinstance(layer, BinarizedLayer):
            new = gm_modules[name]
            both = layer.weight_precision == 1 and layer.activation_precision == 1
            if both:
                assert isinstance(new, (PackedBinaryConv2d, PackedBinaryLinear)), (name, type(new))
            else:
                assert isinstance(new, SignedRealLayer), (name, type(new))
    assert not any(isinstance(m, BinarizedLayer) for m in fast.modules())
    return fast


def binary_input_node(fast, target):
    """The node whose output the binary layer ``target`` takes: through the ``[0]`` of a layer that hands
    over its bits, that layer."""
    [node] = [n for n in fast.graph_module.graph.nodes if n.op == "call_module" and n.target == target]
    source = node.args[0]
    return source.args[0] if source.op == "call_function" and source.target is operator.getitem else source


@st.composite
def geometry(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c1 = groups * draw(st.integers(1, 70 // groups))
    c2 = groups * draw(st.integers(1, 70 // groups))
    groups2 = draw(st.sampled_from([g for g in (1, 2, 3, 5) if c2 % g == 0]))
    return dict(c1=c1, c2=c2, kernel=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
                dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                groups=groups, groups2=groups2, bias=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(geo=geometry(), config=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 1000),
       backend=st.sampled_from(BACKENDS))
def test_small_2d_net_equals_fake_model(geo, config, seed, backend):
    with kernels(backend):
        _check_small_2d(geo, config, seed)


def _check_small_2d(geo, config, seed):
    torch.manual_seed(seed)
    model = binarize(Net2d(**geo), config)
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, 11, 10, generator=g)
    zeros = example.clone()
    zeros[:, :, ::2] = 0.0
    zeros[:, :, 1::3] = -0.0
    fast = check_conversion(model, config, example, torch.randn(2, 3, 11, 10, generator=g) * 3, zeros)
    mods = dict(fast.graph_module.named_modules())
    if config in FOLDING:
        # BN -> learnable bias before conv1, BN -> x * 0.5 before conv3, BN1d before lin: single users, folded
        for folded in ("bn0", "lb", "bn3", "bn_lin"):
            assert folded not in mods, f"{folded} was not folded into the next binary layer's thresholds"
        assert binary_input_node(fast, "conv1").target == "stem"
        # act2 fused into conv2's epilogue, with bn2 and the residual, where conv2 takes fused steps
        assert binary_input_node(fast, "conv3").target in ("act2", "conv2")
        assert binary_input_node(fast, "lin").target is torch.flatten
    # BNs that feed a residual or an RPReLU stay, or fuse into the epilogue of the conv before them
    for bn, conv in (("bn1", "conv1"), ("bn2", "conv2")):
        if bn in mods:
            assert isinstance(mods[bn], nn.BatchNorm2d)
        else:
            steps = [EPILOGUE_STEPS[c] for c in mods[conv].fused_codes.tolist()]
            assert steps[:1] == ["multiply_add"] or steps[:2] == ["multiply", "add"], (conv, steps)


@settings(max_examples=20, deadline=None)
@given(c1=st.integers(1, 70), c2=st.integers(1, 70), kernel=st.integers(1, 4), stride=st.integers(1, 3),
       padding=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(),
       config=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 1000), backend=st.sampled_from(BACKENDS))
def test_small_1d_net_equals_fake_model(c1, c2, kernel, stride, padding, dilation, bias, config, seed, backend):
    with kernels(backend):
        _check_small_1d(c1, c2, kernel, stride, padding, dilation, bias, config, seed)


def _check_small_1d(c1, c2, kernel, stride, padding, dilation, bias, config, seed):
    torch.manual_seed(seed)
    groups = 2 if c1 % 2 == 0 and c2 % 2 == 0 else 1
    model = binarize(Net1d(c1, c2, kernel, stride, padding, dilation, groups, bias), config)
    g = torch.Generator().manual_seed(seed)
    fast = check_conversion(model, config, torch.randn(2, 2, 13, generator=g), torch.randn(2, 2, 13, generator=g))
    if config in FOLDING:
        assert "bn0" not in dict(fast.graph_module.named_modules())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fixed_odd_geometry(config, backend):
    """Channel counts off every word size, non-square strided dilated grouped kernel, padding on one axis."""
    torch.manual_seed(0)
    geo = dict(c1=45, c2=33, kernel=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=3, groups2=3,
               bias=True)
    model = binarize(Net2d(**geo), config)
    with kernels(backend):
        check_conversion(model, config, torch.randn(2, 3, 11, 10), torch.randn(2, 3, 11, 10))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", ["sign+xnor", "rsign+magnitude", "rsign-mask+ws-pow2", "activations-only"])
def test_inputs_on_the_thresholds(config, backend):
    """Inputs exactly on each channel's threshold and on its float32 neighbours, 0.0 and -0.0 (sign(0) = +1):
    BN -> x * 0.5 -> binary conv, and a binary conv on the raw input; the folded compares must give the fake
    model's bits there too."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.direct = nn.Conv2d(37, 37, 3, padding=1, groups=37)
            self.bn = nn.BatchNorm2d(37)
            self.folded = nn.Conv2d(37, 9, 3, padding=1)

        def forward(self, x):
            return torch.cat([self.direct(x).flatten(1), self.folded(self.bn(x) * 0.5).flatten(1)], 1)

    model = bnn.prepare_binary_model(Net(), CONFIGS[config])
    randomize_learned(model, seed=5)
    model.eval()
    x = torch.randn(2, 37, 5, 5)
    fast = to_inference(model, x)
    mods = dict(fast.graph_module.named_modules())
    assert "bn" not in mods
    inf = torch.tensor(float("inf"))
    probes = [torch.zeros(37), torch.full((37,), -0.0)]
    for name in ("direct", "folded"):
        t = mods[name].threshold
        probes += [t, torch.nextafter(t, inf), torch.nextafter(t, -inf)]
    with kernels(backend):
        for p in probes:
            x = p.view(1, 37, 1, 1).repeat(2, 1, 5, 5)
            x[1, :, ::2, 1::2] = torch.randn(37, 3, 2)  # some positions elsewhere
            ref = model(x).detach()
            assert torch.equal(fast(x), ref)


def test_packed_layer_kinds_follow_precisions():
    torch.manual_seed(0)
    geo = dict(c1=8, c2=8, kernel=3, stride=1, padding=1, dilation=1, groups=1, groups2=1, bias=False)
    x = torch.randn(2, 3, 11, 10)
    fast = to_inference(binarize(Net2d(**geo), "rsign-mask+ws-pow2"), x)
    mods = dict(fast.graph_module.named_modules())
    assert isinstance(mods["conv1"], PackedBinaryConv2d) and isinstance(mods["lin"], PackedBinaryLinear)
    assert mods["conv2"].scale_is_shift  # power-of-two K: a shift
    fast = to_inference(binarize(Net2d(**geo), "activations-only"), x)
    layer = dict(fast.graph_module.named_modules())["conv1"]
    assert isinstance(layer, SignedRealLayer) and layer.threshold is not None
    fast = to_inference(binarize(Net2d(**geo), "weights-only"), x)
    layer = dict(fast.graph_module.named_modules())["conv1"]
    assert isinstance(layer, SignedRealLayer) and layer.threshold is None
    assert set(layer.weight.unique().tolist()) == {-1.0, 1.0} and layer.scale is not None


def test_bn_with_two_users_is_not_folded():
    bc = CONFIGS["rsign+magnitude"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(5)
            self.conv = bnn.layers.BinaryConv2d(5, 5, 3, padding=1, bconfig=bc)

        def forward(self, x):
            y = self.bn(x)
            return self.conv(y) + y

    model = randomize_learned(Net()).eval()
    x = torch.randn(2, 5, 6, 6)
    fast = to_inference(model, x)
    assert isinstance(dict(fast.graph_module.named_modules())["bn"], nn.BatchNorm2d)
    assert_same_outputs(fast, model, x, torch.randn(2, 5, 6, 6))


def test_layer_called_twice_with_different_inputs():
    """One binary layer called at two places, one of them after a BN: the BN cannot fold into its thresholds,
    which both calls share."""
    bc = CONFIGS["sign+xnor"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = bnn.layers.BinaryConv2d(4, 4, 3, padding=1, bconfig=bc)

        def forward(self, x):
            return self.conv(self.bn(x)) + self.conv(x * 2.0)

    model = randomize_learned(Net()).eval()
    x = torch.randn(2, 4, 8, 8)
    fast = to_inference(model, x)
    assert_same_outputs(fast, model, x, torch.randn(2, 4, 8, 8))


def test_channels_last_linear_inputs():
    """A linear layer on (N, T, C): a LearnableBias on the last axis folds; a BatchNorm1d over axis 1 of
    (N, C, L) before a linear layer on L is not per-channel for it, stays, and the layer still converts."""
    bc = CONFIGS["rsign+magnitude"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lb = LearnableBias(6, dim=-1)
            self.lin1 = bnn.layers.BinaryLinear(6, 7, bconfig=bc)
            self.bn = nn.BatchNorm1d(3)
            self.lin2 = bnn.layers.BinaryLinear(7, 5, bconfig=bc)

        def forward(self, x):  # x: (N, 3, 6)
            return self.lin2(self.bn(self.lin1(self.lb(x))))

    model = randomize_learned(Net()).eval()
    x = torch.randn(2, 3, 6)
    fast = to_inference(model, x)
    mods = dict(fast.graph_module.named_modules())
    assert "lb" not in mods and isinstance(mods["bn"], nn.BatchNorm1d)
    assert_same_outputs(fast, model, x, torch.randn(4, 3, 6) * 2)


def test_several_inputs(tmp_path):
    bc = CONFIGS["rsign-mask+ws-pow2"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(5)
            self.a = bnn.layers.BinaryConv2d(5, 6, 3, padding=1, bconfig=bc)
            self.b = bnn.layers.BinaryConv2d(3, 6, 1, bconfig=bc)

        def forward(self, x, y):
            return self.a(self.bn(x)) + self.b(y)

    model = randomize_learned(Net()).eval()
    inputs = (torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4))
    fast = to_inference(model, inputs)
    assert torch.equal(fast(*inputs), model(*inputs).detach())
    assert fast.op_census(inputs)["binary_macs"] == bnn.count_ops(model, inputs).bops
    fast.save(tmp_path / "two.bnn")
    assert torch.equal(bnn.load_inference(tmp_path / "two.bnn")(*inputs), fast(*inputs))


def test_zero_bn_weight_channel_converts():
    """A dead channel (BN weight exactly 0) before a binary conv: a constant bit."""
    bc = CONFIGS["sign+xnor"]
    model = nn.Sequential(nn.BatchNorm2d(6), bnn.layers.BinaryConv2d(6, 3, 3, padding=1, bconfig=bc))
    randomize_learned(model)
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0.0
        model[0].bias[1], model[0].bias[4] = 0.5, -0.5
    model.eval()
    x = torch.randn(2, 6, 5, 5)
    fast = to_inference(model, x)
    assert_same_outputs(fast, model, x, torch.randn(2, 6, 5, 5) * 1e30)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_resnet18_under_recipe(recipe, resnet18_recipe):
    model = resnet18_recipe(recipe.stem)
    g = torch.Generator().manual_seed(11)
    example = torch.randn(2, 3, 32, 32, generator=g)
    fast = to_inference(model, example)
    for backend in BACKENDS:
        with kernels(backend):
            assert_same_outputs(fast, model, example, torch.randn(2, 3, 32, 32, generator=g))
    n_binary = sum(isinstance(m, BinarizedLayer) for m in model.modules())
    n_inference = sum(isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear, SignedRealLayer)) for m in fast.modules())
    assert n_binary == n_inference > 0
    assert not fast.training
    with pytest.raises(RuntimeError, match="eval mode only"):
        fast.train()
    fast.eval()  # allowed
    assert not fast.training
    # a different batch size than the example works too
    x3 = torch.randn(3, 3, 32, 32, generator=g)
    assert torch.equal(fast(x3), model(x3).detach())


def test_model_in_train_mode_is_left_in_train_mode():
    torch.manual_seed(0)
    geo = dict(c1=8, c2=8, kernel=3, stride=1, padding=1, dilation=1, groups=1, groups2=1, bias=False)
    model = binarize(Net2d(**geo), "sign+xnor").train()
    before = state(model)
    fast = to_inference(model, torch.randn(2, 3, 11, 10))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 11, 10)
    assert torch.equal(fast(x), model.eval()(x).detach())


def _nested(layer):
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(2, 4, 3, padding=1) if not isinstance(layer, nn.Conv3d) else nn.Conv3d(2, 4, 3, padding=1),
        body=nn.Sequential(OrderedDict(odd=layer)),
        head=nn.Flatten()))


@pytest.mark.parametrize("layer,shape,words", [
    (nn.ConvTranspose2d(4, 4, 3, stride=2), (2, 2, 5, 5), ["body.odd", "ConvTranspose2d"]),
    (nn.Conv3d(4, 4, 3, padding=1), (2, 2, 4, 4, 4), ["body.odd", "Conv3d"]),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5), ["body.odd", "padding_mode", "reflect"]),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), (2, 2, 5, 5), ["body.odd", "circular"]),
])
@pytest.mark.parametrize("config", ["sign+xnor", "weights-only", "activations-only"])
def test_unsupported_layer_raises_naming_it(layer, shape, words, config):
    model = bnn.prepare_binary_model(_nested(layer), CONFIGS[config], ignore_layers_name=["_first_"]).eval()
    x = torch.randn(*shape)
    model(x)  # the fake model runs
    with pytest.raises(ConversionError) as info:
        to_inference(model, x)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_untraceable_model_raises_conversion_error():
    bc = CONFIGS["sign+xnor"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = bnn.layers.BinaryConv2d(3, 3, 3, bconfig=bc)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x

    with pytest.raises(ConversionError, match="trace"):
        to_inference(Net().eval(), torch.randn(1, 3, 5, 5))


def test_scale_of_a_binary_layer_folds_into_the_next_threshold():
    """conv -> BN -> sign -> conv (XNOR-Net's layout): the first binary conv's scale K_c and the BatchNorm fold
    into the second conv's thresholds, which compare the integer sums; no multiply is left between them."""
    from bnn.inference.modules import PackedBinaryConv2d
    from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                        nn.Conv2d(32, 24, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(24, 10))
    bnn.prepare_binary_model(net, bnn.BConfig(activation_pre_process=BasicInputBinarizer,
                                              weight_pre_process=XNORWeightBinarizer),
                             ignore_layers_name=["_first_", "_last_"])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()  # negative scales too: flipped compares
                m.bias.normal_()
    net.eval()
    x = torch.randn(4, 3, 12, 12)
    fast = bnn.to_inference(net, x)
    assert torch.equal(fast(x), net(x))
    packed = {n: m for n, m in fast.graph_module.named_modules() if isinstance(m, PackedBinaryConv2d)}
    assert packed["2"].emit_dot and not packed["4"].emit_dot
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in fast.graph_module.named_modules() if n == "3")
    rows = {r["name"]: r for r in fast.op_census(x, per_layer=True)["layers"]}
    assert "multiplications" not in rows["2"] or rows["2"]["multiplications"] == 0
    assert rows["4"]["multiplications"] == 4 * 24 * 12 * 12  # the last layer keeps its scale: a real add follows


def test_pooling_runs_on_the_kernels_with_the_same_output():
    from bnn.inference.pooling import FastAvgPool2d, FastMaxPool2d
    model = bnn.prepare_binary_model(
        torchvision.models.resnet18(num_classes=10),
        bnn.BConfig(activation_pre_process=bnn.ops.RSign, weight_pre_process=bnn.ops.XNORWeightBinarizer),
        ignore_layers_name=["_first_", "_last_"]).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = to_inference(model, x)
    assert isinstance(fast.graph_module.maxpool, FastMaxPool2d)
    assert torch.equal(fast(x), model(x))
    pooled = nn.Sequential(nn.AvgPool2d(2), model)
    fast = to_inference(pooled, x)
    assert isinstance(fast.graph_module.get_submodule("0"), FastAvgPool2d)
    assert torch.equal(fast(x), pooled(x))
