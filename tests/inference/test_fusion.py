"""The epilogue fusion pass (bnn/inference/fusion.py) against the fake-binarized model it comes from.

Small blocks built here (A&B / ReActNet-like: BN -> binary 3x3 conv -> scalar -> residual -> RPReLU and
friends), learned parameters randomized, converted with ``bnn.to_inference``. Each check compares the
converted model with the unconverted one in eval mode (``torch.equal``), on every code path of the packed
convolution (PyTorch reference, and the compiled portable / AVX2 / AVX-512 kernels up to what the CPU runs),
and checks which steps were fused (``fused_codes``) and which graph nodes are gone. Also: operations that must
not fuse, values that stress rounding, the file format, the operation census (fused against the same
conversion with fusion switched off), unbatched inputs and Conv1d.
"""
import copy
import operator

import pytest
import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

import bnn
import bnn.inference.convert as convert_module
from bnn.inference import ConversionError, kernels, load_inference, to_inference
from bnn.inference.census import CENSUS_KEYS
from bnn.inference.fusion import fuse_epilogues
from bnn.inference.modules import EPILOGUE_STEPS, PackedBinaryConv2d
from bnn.inference.thresholds import ChannelThresholds
from bnn.layers import BinaryConv2d, LearnableBias, PowerOfTwoRPReLU, RPReLU
from bnn.ops import BasicInputBinarizer, RSign, ScaledWSWeightBinarizer, XNORWeightBinarizer

from inference_helpers import randomize_learned

# 1-bit activations and 1-bit weights: the binary convolutions become PackedBinaryConv2d
CONFIGS = {
    "rsign+xnor": bnn.BConfig(activation_pre_process=RSign, weight_pre_process=XNORWeightBinarizer),
    "rsign+ws-pow2": bnn.BConfig(activation_pre_process=RSign.with_args(estimator="mask"),
                                 weight_pre_process=ScaledWSWeightBinarizer.with_args(power_of_two=True)),
}
# no per-channel parameter in the input binarizer: the fake model runs on unbatched (C, H, W) inputs too
SIGN_XNOR = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)

PATHS = ("reference", "portable", "avx2", "avx512")

ACT_STEPS = {
    "rprelu": ["add", "prelu", "add"],
    "pow2-rprelu": ["add", "prelu", "add"],
    "prelu-c": ["prelu"],
    "prelu-1": ["prelu"],
    "bias": ["add"],
}
ACTS = tuple(ACT_STEPS)
# shapes (C, H, W, N): channel counts off the word sizes and across a 64-bit word, odd spatial sizes
SHAPES = [(8, 7, 6, 2), (70, 5, 5, 1), (33, 12, 9, 3), (64, 8, 11, 2), (13, 6, 12, 1), (45, 9, 7, 2)]


# ----------------------------------------------------------------------------------------------- helpers

def runs_here(path):
    """Whether this machine runs ``path``: the reference always, a kernel path when built and the CPU has it."""
    ext = kernels.extension() if path != "reference" else None
    return path == "reference" or (ext is not None and kernels.ISA_CODES[path] <= int(ext.cpu_isa()))


def use_path(path, monkeypatch):
    """Run the packed layers on ``path`` (BNN_KERNELS), or skip when this machine cannot."""
    monkeypatch.delenv("BNN_KERNELS", raising=False)
    if path != "reference":
        ext = kernels.extension()
        if ext is None:
            pytest.skip("no compiled kernels (no C++ compiler): the reference runs alone")
        if kernels.ISA_CODES[path] > int(ext.cpu_isa()):
            pytest.skip(f"this CPU does not run the {path} code path")
    monkeypatch.setenv("BNN_KERNELS", path)
    # the switch is read at each call: make sure it selects what the test claims to run
    assert kernels.kernel_isa() == (None if path == "reference" else kernels.ISA_CODES[path])


def assert_same(out, ref):
    """Bit-identical up to the sign of zero (torch.equal), NaNs at the same places."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out.isnan(), ref.isnan()), "NaNs at different places"
    out, ref = out.nan_to_num(0.0, float("inf"), float("-inf")), ref.nan_to_num(0.0, float("inf"), float("-inf"))
    if not torch.equal(out, ref):
        diff = (out - ref).abs()
        bad = int((out != ref).sum())
        raise AssertionError(f"{bad} of {out.numel()} outputs differ, max abs difference {diff.max().item():.3g}, "
                             f"first at {tuple(torch.nonzero(out != ref)[0].tolist())}")


def check_outputs(fast, model, *inputs):
    for x in inputs:
        with torch.no_grad():
            ref = model(x)
        assert_same(fast(x), ref)


def packed(fast, name="conv"):
    layer = fast.graph_module.get_submodule(name)
    assert type(layer) is PackedBinaryConv2d, type(layer)
    return layer


def fused_steps(layer):
    return [EPILOGUE_STEPS[c] for c in layer.fused_codes.tolist()]


def call_nodes(fast):
    """The graph's operations: module names for call_module, function / method names otherwise."""
    return [n.target if isinstance(n.target, str) else n.target.__name__
            for n in fast.graph_module.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]


def make_act(kind, channels):
    return {"rprelu": lambda: RPReLU(channels), "pow2-rprelu": lambda: PowerOfTwoRPReLU(channels),
            "prelu-c": lambda: nn.PReLU(channels), "prelu-1": lambda: nn.PReLU(1),
            "bias": lambda: LearnableBias(channels)}[kind]()


@torch.no_grad()
def randomize(model, seed):
    """Random learned parameters and BN statistics (BN, RSign, RPReLU shifts and slopes of both signs, power-of-two
    exponents -5 to 1, learnable biases: inference_helpers), and PReLU slopes of both signs; in eval mode."""
    randomize_learned(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            m.weight.copy_(1.5 * torch.rand(m.weight.shape, generator=g) - 0.75)
    return model.eval()


def example(shape, seed, unbatched=False):
    c, h, w, n = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    return x[0] if unbatched else x


def with_zeros(x):
    """Exact zeros (+0.0 and -0.0) in about half the positions."""
    x = x.clone()
    x[..., ::2, :] = 0.0
    x[..., 1::3, 1::2] = -0.0
    return x


# ----------------------------------------------------------------------------------------------- models

VARIANTS = {
    # variant: the steps fused before those of the activation
    "alpha-left": ["multiply", "add_residual"],
    "alpha-right": ["multiply", "add_residual"],
    "residual-left": ["multiply", "add_residual"],
    "torch-functions": ["multiply", "add_residual"],
    "augmented-assign": ["multiply", "add_residual"],
    # the residual is computed after the convolution: the chain stops there (moving the convolution later
    # could move it past an in-place change of its input)
    "augmented-assign-into-residual": ["multiply"],
    "residual-after": ["multiply"],
    "scalar-add": ["multiply", "add", "add_residual"],
}


class Block(nn.Module):
    """``act(alpha * conv(bn(x)) + x)`` written in several ways; the BN folds into the conv's thresholds."""

    def __init__(self, channels, act, variant, alpha=0.37, beta=-0.625, bias=False):
        super().__init__()
        self.variant, self.alpha, self.beta = variant, alpha, beta
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.act = make_act(act, channels)

    def forward(self, x):
        y = self.conv(self.bn(x))
        v = self.variant
        if v == "alpha-left":
            out = self.alpha * y + x
        elif v == "alpha-right":
            out = y * self.alpha + x
        elif v == "residual-left":
            out = x + self.alpha * y
        elif v == "torch-functions":
            out = torch.add(torch.mul(y, self.alpha), x)
        elif v == "augmented-assign":  # torch.fx traces ``+=`` on a proxy as operator.add
            out = self.alpha * y
            out += x
        elif v == "augmented-assign-into-residual":
            out = self.pool(x)
            out += self.alpha * y
        elif v == "residual-after":  # the residual is computed after the convolution in the graph's order
            r = self.pool(x)
            out = y * self.alpha + r
        elif v == "scalar-add":
            out = self.beta + self.alpha * y + x
        else:
            raise ValueError(v)
        return self.act(out)


def binarized(module, config="rsign+xnor", seed=0):
    torch.manual_seed(seed)
    model = bnn.prepare_binary_model(module, CONFIGS[config] if isinstance(config, str) else config)
    return randomize(model, seed)


_CACHE = {}


def converted(key, build, example_input):
    """(model, example, fast), converted once per key: conversion does not depend on BNN_KERNELS."""
    if key not in _CACHE:
        model = build()
        _CACHE[key] = (model, example_input, to_inference(model, example_input))
    return _CACHE[key]


def block_case(act, variant):
    i = ACTS.index(act) + len(ACTS) * list(VARIANTS).index(variant)
    shape = SHAPES[i % len(SHAPES)]
    config = sorted(CONFIGS)[i % 2]
    return converted(("block", act, variant),
                     lambda: binarized(Block(shape[0], act, variant, bias=i % 3 == 0), config, seed=i),
                     example(shape, seed=100 + i))


# ---------------------------------------------------------------------------- 1. the fused ReActNet block

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("act", ACTS)
def test_block_fuses_and_equals_fake_model(act, variant, path, monkeypatch):
    model, x, fast = block_case(act, variant)
    use_path(path, monkeypatch)
    g = torch.Generator().manual_seed(5)
    check_outputs(fast, model, x, with_zeros(x), 3 * torch.randn(x.shape, generator=g),
                  torch.randn(1, *x.shape[1:], generator=g))  # another batch size than the example

    layer = packed(fast)
    late_residual = "add_residual" not in VARIANTS[variant]
    # a residual that is the model's input is the caller's tensor: never written over
    assert not layer.overwrites_residual
    kept = x.clone()
    fast(x)
    assert torch.equal(x, kept)
    expected = VARIANTS[variant] + ([] if late_residual else ACT_STEPS[act])
    assert fused_steps(layer) == expected
    assert f"fused={'+'.join(expected)}" in repr(layer)
    assert layer.fused_residual != late_residual
    if late_residual:
        assert torch.equal(layer.fused_params[0], torch.full((layer.out_channels,), model.alpha))
        assert call_nodes(fast)[:2] == ["conv", "pool"] and "act" in call_nodes(fast)
        return
    # the fused parameters are those of the fake model's operations
    c = layer.out_channels
    assert torch.equal(layer.fused_params[0], torch.full((c,), model.alpha, dtype=torch.float32))
    act_rows = layer.fused_params[len(VARIANTS[variant]):]
    if act in ("rprelu", "pow2-rprelu"):
        assert torch.equal(act_rows[0], model.act.shift_in.detach())
        assert torch.equal(act_rows[2], model.act.shift_out.detach())
        slope = model.act.slope if act == "rprelu" else torch.exp2(torch.round(model.act.log2_slope))
        assert torch.equal(act_rows[1], slope.detach())
    elif act.startswith("prelu"):
        assert torch.equal(act_rows[0], model.act.weight.detach().expand(c))
    else:
        assert torch.equal(act_rows[0], model.act.bias.detach())

    # the fused operations are gone from the graph: what is left is the convolution (and the residual's pool),
    # called on its input and the residual
    nodes = call_nodes(fast)
    with_pool = variant in ("residual-after", "augmented-assign-into-residual")
    assert nodes == (["pool", "conv"] if with_pool else ["conv"])
    assert not any(isinstance(m, (RPReLU, PowerOfTwoRPReLU, nn.PReLU, LearnableBias))
                   for m in fast.graph_module.modules())
    [conv] = [n for n in fast.graph_module.graph.nodes if n.target == "conv"]
    [placeholder] = [n for n in fast.graph_module.graph.nodes if n.op == "placeholder"]
    residual = conv.args[1]
    assert conv.args[0] is placeholder
    assert residual.target == "pool" if with_pool else residual is placeholder


class TwoConvs(nn.Module):
    """Two packed convolutions added: the second is computed after the first, and is its residual."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=True)
        self.act = RPReLU(channels)

    def forward(self, x):
        return self.act(0.5 * self.conv1(x) + self.conv2(x))


@pytest.mark.parametrize("path", PATHS)
def test_residual_from_a_later_binary_conv(path, monkeypatch):
    model, x, fast = converted("two-convs", lambda: binarized(TwoConvs(24), seed=3), example((24, 7, 9, 2), 4))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x))
    # conv2 runs after conv1: conv1's chain stops before the addition, which conv2 takes over
    assert fused_steps(packed(fast, "conv1")) == ["multiply"]
    assert fused_steps(packed(fast, "conv2")) == ["add_residual", "add", "prelu", "add"]
    assert call_nodes(fast) == ["conv1", "conv2"]
    # conv1's output is conv2's residual alone: conv2 writes its output over it
    assert packed(fast, "conv2").overwrites_residual and not packed(fast, "conv1").overwrites_residual


class ResidualUsedTwice(nn.Module):
    """``act(0.5 * conv(x) + p) + p``, p = pool(x): the fused residual has another user, so it is kept."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.act = RPReLU(channels)

    def forward(self, x):
        p = self.pool(x)
        return self.act(0.5 * self.conv(x) + p) + p


@pytest.mark.parametrize("path", PATHS)
def test_a_residual_with_another_user_is_not_written_over(path, monkeypatch):
    model, x, fast = converted("residual-twice", lambda: binarized(ResidualUsedTwice(16), seed=7),
                               example((16, 6, 10, 2), 8))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x))
    layer = packed(fast)
    assert "add_residual" in fused_steps(layer) and not layer.overwrites_residual


def test_written_over_residual_survives_the_file(tmp_path, monkeypatch):
    model, x, fast = converted("two-convs", lambda: binarized(TwoConvs(24), seed=3), example((24, 7, 9, 2), 4))
    fast.save(tmp_path / "two.bnn")
    loaded = load_inference(tmp_path / "two.bnn")
    assert packed(loaded, "conv2").overwrites_residual and not packed(loaded, "conv1").overwrites_residual
    for path in PATHS:
        if not runs_here(path):
            continue
        monkeypatch.setenv("BNN_KERNELS", path)
        check_outputs(loaded, model, x, with_zeros(x))


def packed_conv(channels, seed):
    g = torch.Generator().manual_seed(seed)
    thresholds = ChannelThresholds(torch.randn(channels, generator=g) * 0.3,
                                   torch.randint(-1, 2, (channels,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(channels, channels, 3, 3, generator=g) >= 0, 1.0, -1.0)
    return PackedBinaryConv2d(thresholds, signs, (1, 1), (1, 1), (1, 1), 1,
                              scale=torch.rand(channels, generator=g) + 0.5, bias=torch.randn(channels, generator=g))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("conv_first", [True, False], ids=["iadd(conv, r)", "iadd(r, conv)"])
def test_operator_iadd_fuses_only_into_the_first_argument(conv_first, path, monkeypatch):
    """torch.fx traces ``+=`` as operator.add, so operator.iadd comes only from a graph written by hand (or read
    from a file): fuse_epilogues on one, against the same graph run unfused."""
    root = nn.Module()
    root.conv, root.pool = packed_conv(19, seed=25), nn.AvgPool2d(3, stride=1, padding=1)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    pooled = graph.call_module("pool", (x,))
    conv = graph.call_module("conv", (x,))
    scaled = graph.call_function(operator.mul, (conv, 0.625))
    total = graph.call_function(operator.iadd, (scaled, pooled) if conv_first else (pooled, scaled))
    graph.output(graph.call_function(operator.add, (total, -0.5)))
    gm = torch.fx.GraphModule(root, graph)
    x = example((19, 8, 6, 2), seed=26)
    ShapeProp(gm).propagate(x)
    unfused = copy.deepcopy(gm)
    fused = fuse_epilogues(gm)
    gm.recompile()
    use_path(path, monkeypatch)
    for inp in (x, with_zeros(x)):
        assert_same(gm(inp.clone()), unfused(inp.clone()))
    layer = gm.get_submodule("conv")
    if conv_first:
        assert fused == 3 and fused_steps(layer) == ["multiply", "add_residual", "add"]
        assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
    else:  # iadd writes into the pool's output: left alone, and the chain stops there
        assert fused == 1 and fused_steps(layer) == ["multiply"]
        assert operator.iadd in [n.target for n in gm.graph.nodes]


# ----------------------------------------------------------------------------------------- 2. not fused

class NotFused(nn.Module):
    def __init__(self, channels, case):
        super().__init__()
        self.case = case
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = RPReLU(channels)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)

    def forward(self, x):
        c = self.case
        if c == "used-twice":
            y = self.conv(x)
            return self.act(y) + y
        if c == "used-twice-after-scale":
            y = 0.5 * self.conv(x)
            return self.act(y) + y
        if c == "conv-called-twice":
            return self.act(self.conv(x) * 0.5 + x) + self.conv(x * 2.0)
        if c == "add-with-alpha":
            return self.act(torch.add(self.conv(x), x, alpha=2))
        if c == "scalar-add-with-alpha":
            return self.act(torch.add(self.conv(x), 0.5, alpha=2))
        if c == "broadcast-residual":
            return self.act(self.conv(x) + self.gap(x))
        if c == "relu-module":
            return self.act(self.relu(self.conv(x)) * 0.5)
        if c == "relu-after-residual":
            return torch.relu(0.25 * self.conv(x) + x)
        if c == "subtract-divide":
            return self.act(x - self.conv(x) / 4.0)
        if c == "second-residual":
            return self.act(self.conv(x) + x + self.pool(x))
        raise ValueError(c)


NOT_FUSED = {
    # case: (steps fused, the graph's operations after conversion)
    "used-twice": ([], ["conv", "act", "add"]),
    "used-twice-after-scale": (["multiply"], ["conv", "act", "add"]),
    "conv-called-twice": ([], ["conv", "mul", "add", "act", "mul", "conv", "add"]),
    "add-with-alpha": ([], ["conv", "add", "act"]),
    "scalar-add-with-alpha": ([], ["conv", "add", "act"]),
    "broadcast-residual": ([], ["conv", "gap", "add", "act"]),
    "relu-module": ([], ["conv", "relu", "mul", "act"]),
    "relu-after-residual": (["multiply", "add_residual"], ["conv", "relu"]),
    "subtract-divide": ([], ["conv", "truediv", "sub", "act"]),
    "second-residual": (["add_residual"], ["conv", "pool", "add", "act"]),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(NOT_FUSED))
def test_not_fused(case, path, monkeypatch):
    i = list(NOT_FUSED).index(case)
    shape = SHAPES[i % len(SHAPES)]
    model, x, fast = converted(("not-fused", case), lambda: binarized(NotFused(shape[0], case), seed=i),
                               example(shape, seed=200 + i))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x), -2 * x)
    steps, nodes = NOT_FUSED[case]
    assert fused_steps(packed(fast)) == steps
    assert call_nodes(fast) == nodes


class ScaledOutput(nn.Module):
    """conv1 has an output scaler (activation_post_process); conv2 hands its integer sums to conv3, whose
    thresholds absorb its scale and the ``* 0.5`` (emit_dot): neither takes fused steps."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = BinaryConv2d(channels, channels, 3, padding=1, bconfig=bnn.BConfig(
            activation_pre_process=RSign, weight_pre_process=ScaledWSWeightBinarizer,
            activation_post_process=bnn.ops.BasicScaleBinarizer))
        self.act = RPReLU(channels)
        self.conv2 = BinaryConv2d(channels, channels, 3, padding=1, bconfig=CONFIGS["rsign+xnor"])
        self.conv3 = BinaryConv2d(channels, channels, 1, bconfig=CONFIGS["rsign+xnor"])

    def forward(self, x):
        y = self.act(self.conv1(x) * 0.5 + x)
        return self.act(self.conv3(self.conv2(y) * 0.5) + y)


@pytest.mark.parametrize("path", PATHS)
def test_output_scaler_and_emitted_sums_take_no_fused_steps(path, monkeypatch):
    model, x, fast = converted("scaled-output", lambda: randomize(ScaledOutput(12), 27), example((12, 7, 5, 2), 28))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x))
    assert packed(fast, "conv1").post is not None and fused_steps(packed(fast, "conv1")) == []
    assert packed(fast, "conv2").emit_dot and fused_steps(packed(fast, "conv2")) == []
    assert fused_steps(packed(fast, "conv3")) == ["add_residual"] + ACT_STEPS["rprelu"]


@pytest.mark.parametrize("path", PATHS)
def test_activation_shared_by_two_blocks(path, monkeypatch):
    """One RPReLU module called after two convolutions: each may take a copy of its parameters."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.act = RPReLU(16)

        def forward(self, x):
            y = self.act(self.conv1(x) + x)
            return self.act(self.conv2(y) * 0.75 + y)

    model, x, fast = converted("shared-act", lambda: binarized(Net(), seed=9), example((16, 6, 7, 2), 9))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x))
    for name, before in (("conv1", ["add_residual"]), ("conv2", ["multiply", "add_residual"])):
        steps = fused_steps(packed(fast, name))
        assert steps in (before, before + ACT_STEPS["rprelu"]), (name, steps)


# ----------------------------------------------------------------------------------- 3. rounding stress

STRESS = {
    # name: (alpha, beta, parameter override)
    "huge-scale": (1e30, 0.0, "negative-slopes"),
    "overflow-to-inf": (3e38, 1.0, "negative-slopes"),
    "denormal-scale": (1e-40, 0.0, "tiny-slopes"),
    "negative-denormal-scale": (-1e-42, 1e-45, "negative-slopes"),
    "absorbing-shift": (0.1, 1e30, "huge-shifts"),
    "negative-zero-scale": (-0.0, 0.0, "zero-slopes"),
    "power-of-two-scale": (-2.0 ** -20, -0.0, "extreme-exponents"),
    "int-scale": (3, -7, "negative-slopes"),
}


@torch.no_grad()
def override(model, how, seed):
    g = torch.Generator().manual_seed(seed)
    act = model.act
    c = act.shift_in.numel()
    if how == "negative-slopes":
        act.slope.copy_(-4 * torch.rand(c, generator=g) - 1e-3)
        act.shift_in.copy_(10 * torch.randn(c, generator=g))
        act.shift_out.copy_(torch.randn(c, generator=g) * 1e-3)
    elif how == "tiny-slopes":
        act.slope.copy_(torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0) * 1e-39)
        act.shift_in.copy_(torch.randn(c, generator=g) * 1e-40)
    elif how == "huge-shifts":
        act.shift_in.copy_(torch.randn(c, generator=g) * 1e30)
        act.shift_out.copy_(torch.randn(c, generator=g) * 1e-30)
        act.slope.copy_(torch.randn(c, generator=g) * 1e8)
    elif how == "zero-slopes":
        act.slope.zero_()
        act.shift_in.zero_()
    elif how == "extreme-exponents":  # PowerOfTwoRPReLU: slopes from a denormal 2^-140 to 2^20
        act.log2_slope.copy_(torch.randint(-140, 21, (c,), generator=g).float() + 0.3 * torch.rand(c, generator=g))
    return model


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(STRESS))
def test_rounding_stress(case, path, monkeypatch):
    alpha, beta, how = STRESS[case]
    act = "pow2-rprelu" if how == "extreme-exponents" else "rprelu"
    i = list(STRESS).index(case)
    shape = SHAPES[(i + 2) % len(SHAPES)]

    def build():
        return override(binarized(Block(shape[0], act, "scalar-add", alpha=alpha, beta=beta), seed=30 + i), how, i)

    model, x, fast = converted(("stress", case), build, example(shape, seed=300 + i))
    use_path(path, monkeypatch)
    g = torch.Generator().manual_seed(i)
    big = torch.randn(x.shape, generator=g) * 1e30
    tiny = torch.randn(x.shape, generator=g) * 1e-39
    zeros = torch.zeros_like(x)
    check_outputs(fast, model, x, with_zeros(x), with_zeros(big), tiny, zeros, -zeros)
    assert fused_steps(packed(fast)) == VARIANTS["scalar-add"] + ACT_STEPS[act]


# ---------------------------------------------------------------------------------- 4. the file format

def test_fused_model_round_trip(tmp_path, monkeypatch):
    model, x, fast = block_case("pow2-rprelu", "alpha-left")
    path = tmp_path / "fused.bnn"
    fast.save(path)
    loaded = load_inference(path)
    before, after = packed(fast), packed(loaded)
    assert torch.equal(after.fused_codes, before.fused_codes) and fused_steps(after) == fused_steps(before)
    assert torch.equal(after.fused_params, before.fused_params)
    assert after.fused_residual and repr(after) == repr(before)
    assert call_nodes(loaded) == call_nodes(fast) == ["conv"]
    g = torch.Generator().manual_seed(1)
    inputs = (x, with_zeros(x), torch.randn(3, *x.shape[1:], generator=g) * 5)
    for p in PATHS:
        if not runs_here(p):
            continue
        monkeypatch.setenv("BNN_KERNELS", p)
        check_outputs(loaded, model, *inputs)
    assert loaded.op_census(x) == fast.op_census(x)


def test_fused_conv1d_round_trip(tmp_path):
    model, x, fast = conv1d_case("rprelu")
    fast.save(tmp_path / "conv1d.bnn")
    loaded = load_inference(tmp_path / "conv1d.bnn")
    assert fused_steps(packed(loaded)) == fused_steps(packed(fast)) == ["multiply", "add_residual"] + ACT_STEPS[
        "rprelu"]
    check_outputs(loaded, model, x, with_zeros(x))


# -------------------------------------------------------------------------------------------- 5. census

@pytest.mark.parametrize("alpha", [0.37, 0.5, 1.0, -2.0])
@pytest.mark.parametrize("act", ACTS)
def test_census_equals_unfused_conversion(act, alpha, monkeypatch):
    shape = (16, 6, 5, 2)
    model = binarized(Block(16, act, "scalar-add", alpha=alpha), seed=11)
    x = example(shape, seed=12)
    fused = to_inference(model, x)
    monkeypatch.setattr(convert_module, "fuse_epilogues", lambda gm: 0)
    unfused = to_inference(model, x)
    # the comparison is between two different graphs
    assert fused_steps(packed(fused)) == VARIANTS["scalar-add"] + ACT_STEPS[act]
    assert fused_steps(packed(unfused)) == [] and "act" in call_nodes(unfused)
    check_outputs(unfused, model, x)
    a, b = fused.op_census(x), unfused.op_census(x)
    assert {k: a[k] for k in CENSUS_KEYS} == {k: b[k] for k in CENSUS_KEYS}
    assert a["additions"] > 0 and a["comparisons"] > 0 and a["binary_macs"] > 0


def test_census_of_residual_after_and_two_convs(monkeypatch):
    cases = [block_case("rprelu", "residual-after"),
             converted("two-convs", lambda: binarized(TwoConvs(24), seed=3), example((24, 7, 9, 2), 4))]
    unfused = []
    monkeypatch.setattr(convert_module, "fuse_epilogues", lambda gm: 0)
    for model, x, _ in cases:
        unfused.append(to_inference(model, x))
    for (model, x, fast), plain in zip(cases, unfused):
        a, b = fast.op_census(x), plain.op_census(x)
        assert {k: a[k] for k in CENSUS_KEYS} == {k: b[k] for k in CENSUS_KEYS}


# ------------------------------------------------------------------------------ 6. unbatched and Conv1d

class ScalarBlock(nn.Module):
    """Steps that mean the same on (N, C, H, W) and (C, H, W): scalars, the residual, a single-slope PReLU."""

    def __init__(self, channels, conv=nn.Conv2d):
        super().__init__()
        self.conv = conv(channels, channels, 3, padding=1, bias=True)
        self.act = nn.PReLU(1)

    def forward(self, x):
        return self.act(0.25 + self.conv(x) * 0.75 + x)


@pytest.mark.parametrize("path", PATHS)
def test_unbatched_input(path, monkeypatch):
    """Converted at a batched example, run on (C, H, W): the layer adds the batch axis around the fused epilogue
    (the residual too)."""
    shape = (20, 7, 9, 2)
    model, x, fast = converted("unbatched", lambda: binarized(ScalarBlock(20), SIGN_XNOR, seed=13),
                               example(shape, seed=14))
    use_path(path, monkeypatch)
    g = torch.Generator().manual_seed(15)
    single = torch.randn(*shape[:3], generator=g)
    check_outputs(fast, model, single, with_zeros(single), x)
    assert fused_steps(packed(fast)) == ["multiply", "add", "add_residual", "prelu"]
    assert call_nodes(fast) == ["conv"]


def test_an_unbatched_example_is_refused_with_a_clear_error():
    torch.manual_seed(0)
    model = binarized(ScalarBlock(20), SIGN_XNOR, seed=13)
    single = example((20, 7, 9, 1), seed=14, unbatched=True)
    model(single)  # the fake model runs
    with pytest.raises(ConversionError, match=r"unbatched input \(20, 7, 9\).*batched example"):
        to_inference(model, single)


class Block1d(nn.Module):
    def __init__(self, channels, act):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.conv = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.act = make_act(act, channels)

    def forward(self, x):
        return self.act(self.conv(self.bn(x)) * 1.5 + x)


def conv1d_case(act):
    i = ACTS.index(act)
    c, length, n = [(8, 11), (70, 5), (33, 12), (64, 9), (13, 7)][i] + (1 + i % 3,)
    g = torch.Generator().manual_seed(400 + i)
    return converted(("conv1d", act), lambda: binarized(Block1d(c, act), seed=40 + i),
                     torch.randn(n, c, length, generator=g))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ACTS)
def test_conv1d_block(act, path, monkeypatch):
    model, x, fast = conv1d_case(act)
    use_path(path, monkeypatch)
    assert packed(fast).conv1d
    check_outputs(fast, model, x, with_zeros(x), 4 * torch.randn(3, *x.shape[1:]))
    assert fused_steps(packed(fast)) == ["multiply", "add_residual"] + ACT_STEPS[act]
    assert call_nodes(fast) == ["conv"]


@pytest.mark.parametrize("path", ["reference", "portable"])
def test_conv1d_unbatched_input(path, monkeypatch):
    torch.manual_seed(0)
    model = randomize(bnn.prepare_binary_model(ScalarBlock(12, nn.Conv1d), SIGN_XNOR), 16)
    fast = to_inference(model, torch.randn(2, 12, 10))
    use_path(path, monkeypatch)
    single = torch.randn(12, 10)
    check_outputs(fast, model, single, with_zeros(single))
    assert fused_steps(packed(fast)) == ["multiply", "add", "add_residual", "prelu"]


# ------------------------------------------------------------- cases that were library bugs, now fixed

def test_in_place_op_on_the_conv_input_after_the_conv():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(8, 8, 1)  # real: nothing folds, the conv reads the stem's output
            self.conv = BinaryConv2d(8, 8, 3, padding=1, bconfig=CONFIGS["rsign+xnor"])
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.stem(x)
            y = self.conv(h)
            return y + self.relu(h)  # the residual overwrites h, after the conv has read it

    model = randomize(Net(), 17)
    x = example((8, 6, 6, 2), 18)
    fast = to_inference(model, x)
    assert fused_steps(packed(fast)) == []  # the residual comes after the conv: not fused
    check_outputs(fast, model, x)


def test_python_int_scalar_rounds_like_torch():
    k = 2 ** 62 + 2 ** 38 + 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(8, 8, 3, padding=1, bconfig=CONFIGS["rsign+xnor"])

        def forward(self, x):
            return self.conv(x) * k

    model = randomize(Net(), 19)
    x = example((8, 6, 6, 2), 20)
    fast = to_inference(model, x)
    assert fused_steps(packed(fast)) == ["multiply"]
    assert torch.equal(packed(fast).fused_params[0], torch.ones(8) * k)  # the factor torch multiplies by
    check_outputs(fast, model, x)


def test_unbatched_example_with_per_channel_activation():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(8, 8, 3, padding=1, bconfig=SIGN_XNOR)
            self.act = RPReLU(8)

        def forward(self, x):
            return self.act(self.conv(x) + x)

    model = randomize(Net(), 21)
    x = example((8, 8, 6, 1), 22, unbatched=True)  # (C, H, W) with H == C: RPReLU's axis 1 is H
    model(x)  # the fake model runs
    fast = to_inference(model, x.unsqueeze(0))
    check_outputs(fast, model, x.unsqueeze(0))
    with pytest.raises(ValueError, match=r"call the model with a batch"):
        fast(x)  # the fused RPReLU works on the channels; the fake model's on H


def test_folded_op_with_a_second_user_keeps_the_scaled_output():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = BinaryConv2d(16, 16, 3, padding=1, bconfig=CONFIGS["rsign+xnor"])
            self.lb = LearnableBias(16)
            self.conv2 = BinaryConv2d(16, 16, 3, padding=1, bconfig=CONFIGS["rsign+xnor"])

        def forward(self, x):
            z = self.lb(self.conv1(x))
            return self.conv2(z) + z

    model = randomize(Net(), 23)
    x = example((16, 7, 7, 2), 24)
    fast = to_inference(model, x)
    check_outputs(fast, model, x)



# ------------------------------------------------------------------------ concatenated branches (ReActNet-A)

class CatBlock(nn.Module):
    """ReActNet-A's pointwise part: ``act(cat([conv_a(x) + x, conv_b(x) + x]))``, or one branch alone."""

    def __init__(self, channels, act, branches, cat_dim=1, extra_user=False):
        super().__init__()
        self.branches, self.cat_dim, self.extra_user = branches, cat_dim, extra_user
        self.conv_a = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv_b = nn.Conv2d(channels, channels, 1, bias=False)
        self.act = make_act(act, channels * (branches if cat_dim == 1 else 1))

    def forward(self, x):
        parts = [self.conv_a(x) + x] + ([self.conv_b(x) + x] if self.branches == 2 else [])
        joined = torch.cat(parts, dim=self.cat_dim)
        out = self.act(joined)
        return out + joined.mean() if self.extra_user else out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("branches", [1, 2])
def test_activation_after_a_concatenation_fuses_into_each_branch(branches, act, path, monkeypatch):
    model, x, fast = converted(("cat", branches, act), lambda: binarized(CatBlock(12, act, branches), seed=50),
                               example((12, 6, 7, 2), seed=51))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x), 3 * torch.randn(x.shape))
    expected = ["add_residual"] + ACT_STEPS[act]
    assert fused_steps(packed(fast, "conv_a")) == expected
    if branches == 2:
        # each branch took its own slice of the activation's channels
        assert fused_steps(packed(fast, "conv_b")) == expected
        if act != "prelu-1":
            assert not torch.equal(packed(fast, "conv_a").fused_params[1:], packed(fast, "conv_b").fused_params[1:])
        # and the concatenation went: conv_b writes its channels into the tensor conv_a allocated for both
        assert call_nodes(fast) == ["conv_a", "conv_b"]
        assert packed(fast, "conv_b").out_channel_offset == 12 and packed(fast, "conv_a").out_channels_total == 24
    else:  # a concatenation of one tensor is a copy: gone
        assert call_nodes(fast) == ["conv_a"]


@pytest.mark.parametrize("case", ["cat-used-twice", "cat-on-another-axis"])
def test_concatenation_not_fused(case):
    block = CatBlock(12, "rprelu", 2, cat_dim=2 if case == "cat-on-another-axis" else 1,
                     extra_user=case == "cat-used-twice")
    model = binarized(block, seed=52)
    x = example((12, 6, 7, 2), seed=53)
    fast = to_inference(model, x)
    check_outputs(fast, model, x, with_zeros(x))
    assert fused_steps(packed(fast, "conv_a")) == fused_steps(packed(fast, "conv_b")) == ["add_residual"]
    assert "act" in call_nodes(fast)


# ------------------------------------------------------------------ 8. BatchNorm after the convolution

class BNBlock(nn.Module):
    """ReActNet-18's block: ``act(bn(conv(x)) + x)``; with ``bn_after_add``: ``act(bn(conv(x) + x))``."""

    def __init__(self, channels, bn_after_add=False):
        super().__init__()
        self.bn_after_add = bn_after_add
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = RPReLU(channels)

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y + x) if self.bn_after_add else self.bn(y) + x)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_batchnorm_after_the_conv_fuses_exactly(config, path, monkeypatch):
    model, x, fast = converted(("bn", config), lambda: binarized(BNBlock(40), config, seed=60),
                               example((40, 9, 8, 2), seed=61))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x), 5 * torch.randn(x.shape), torch.randn(3, *x.shape[1:]))
    steps = fused_steps(packed(fast))
    assert steps[-4:] == ["add_residual"] + ACT_STEPS["rprelu"]
    # PyTorch's batch norm, as this machine computes it: one multiply-add or a multiply and an add
    assert steps[:-4] in (["multiply_add"], ["multiply", "add"]), steps
    assert call_nodes(fast) == ["conv"]


@pytest.mark.parametrize("path", PATHS)
def test_batchnorm_after_the_residual_is_not_fused(path, monkeypatch):
    """Its input is no longer one of the layer's outputs, which can all be checked: it stays a module."""
    model, x, fast = converted("bn-after-add", lambda: binarized(BNBlock(24, bn_after_add=True), seed=62),
                               example((24, 6, 7, 2), seed=63))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x))
    assert fused_steps(packed(fast))[-1] == "add_residual"
    assert "bn" in call_nodes(fast) and "act" in call_nodes(fast)


def test_batchnorm_whose_rounding_no_candidate_matches_stays(monkeypatch):
    from bnn.inference import batchnorm

    def wrong(bn):  # a formula off by one unit in the last place of beta
        for alpha, beta, fused in list(original(bn)):
            yield alpha, torch.nextafter(beta, torch.full_like(beta, float("inf"))), fused

    original = batchnorm._candidates
    monkeypatch.setattr(batchnorm, "_candidates", wrong)
    model = binarized(BNBlock(16), seed=64)
    x = example((16, 5, 6, 2), seed=65)
    fast = to_inference(model, x)
    check_outputs(fast, model, x)
    assert "bn" in call_nodes(fast) and fused_steps(packed(fast))[:1] != ["multiply_add"]


# ------------------------------------------------------------- 9. bits handed from one packed conv to the next

class TwoBinaryConvs(nn.Module):
    """conv2 takes conv1's output; ``in_place``: an in-place change of that output comes between them."""

    def __init__(self, channels, in_place=None):
        super().__init__()
        self.in_place = in_place
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv1(x)
        if self.in_place == "method":
            y.mul_(-1.0)
        elif self.in_place == "module":
            self.relu(y)
        return self.conv2(y) + 0.0 * y.mean()


@pytest.mark.parametrize("path", PATHS)
def test_bits_handed_over_between_packed_convs(path, monkeypatch):
    config = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)
    model, x, fast = converted("hand-over", lambda: binarized(TwoBinaryConvs(16), config, seed=70),
                               example((16, 8, 9, 2), seed=71))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, with_zeros(x), -x)
    assert packed(fast, "conv1").next_groups == 1 and packed(fast, "conv1").next_stride == 2
    [consumer] = [n for n in fast.graph_module.graph.nodes if n.target == "conv2"]
    assert consumer.kwargs["packed"].target is operator.getitem and consumer.kwargs["packed"].args[1] == 1


class OneConvTwoConsumers(nn.Module):
    """conv1's output read by two binary 1x1 convolutions, concatenated (ReActNet-A's channel-doubling block)."""

    def __init__(self, channels, second_stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2a = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2b = nn.Conv2d(channels, channels, 1, stride=second_stride, bias=False)

    def forward(self, x):
        y = self.conv1(x)
        return torch.cat([self.conv2a(y).flatten(1), self.conv2b(y).flatten(1)], 1)


def packed_from(fast, name):
    """The node that ``packed=`` gives the call of ``name``, or None."""
    [call] = [n for n in fast.graph_module.graph.nodes if n.target == name]
    return call.kwargs.get("packed")


# the bits go to a second consumer only when it would pack the same words: same thresholds, groups and stride
@pytest.mark.parametrize("case", ["same", "other stride", "other thresholds"])
@pytest.mark.parametrize("path", PATHS)
def test_bits_shared_by_consumers_that_pack_alike(case, path, monkeypatch):
    config = "rsign+xnor" if case == "other thresholds" else SIGN_XNOR
    model, x, fast = converted(("two consumers", case),
                               lambda: binarized(OneConvTwoConsumers(16, 2 if case == "other stride" else 1), config,
                                                 seed=73),
                               example((16, 8, 10, 2), seed=74))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, -x)
    first, second = packed_from(fast, "conv2a"), packed_from(fast, "conv2b")
    assert first is not None and first.target is operator.getitem and first.args[1] == 1
    assert (second is first) == (case == "same")


class CatIntoConv(nn.Module):
    """ReActNet-A's channel-doubling block and the next one's convolution: ``conv_next(cat([conv_a(y) + y,
    conv_b(y) + y]))``, the concatenation also read by something else (the next shortcut); ``swapped``: the
    concatenation lists conv_b first, which the graph computes second; ``k``: conv_a's and conv_b's kernel."""

    def __init__(self, channels, stride, swapped, k=1):
        super().__init__()
        self.swapped = swapped
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv_a = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.conv_b = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.conv_next = nn.Conv2d(2 * channels, 16, 3, stride=stride, padding=1, bias=False)

    def forward(self, x):
        y = self.conv0(x)
        a = self.conv_a(y) + y
        b = self.conv_b(y) + y
        joined = torch.cat([b, a] if self.swapped else [a, b], 1)
        return self.conv_next(joined) + joined.mean()


# channels of each branch: 8 (two branches share a word, a byte each), 32 (half words in, 64-bit words out on
# AVX-512), 64 (a word each); 12: not in whole bytes, so conv_next packs the concatenation itself. 1x1 branches
# on rows of 10 run flat over the batch, 3x3 ones on rows of 16 in rows.
@pytest.mark.parametrize("channels, stride, swapped, k, width", [
    (8, 1, False, 1, 10), (8, 2, True, 1, 10), (32, 1, True, 1, 10), (64, 2, False, 1, 10), (12, 1, False, 1, 10),
    (32, 1, False, 3, 16), (64, 2, True, 3, 16)])
@pytest.mark.parametrize("path", PATHS)
def test_bits_handed_over_through_a_concatenation(channels, stride, swapped, k, width, path, monkeypatch):
    model, x, fast = converted(("cat into conv", channels, stride, swapped, k, width),
                               lambda: binarized(CatIntoConv(channels, stride, swapped, k), SIGN_XNOR, seed=80),
                               example((channels, 7, width, 2), seed=81))
    use_path(path, monkeypatch)
    check_outputs(fast, model, x, -x, with_zeros(x))
    nodes = {n.target: n for n in fast.graph_module.graph.nodes if n.op == "call_module"}
    # the concatenation went: conv_a and conv_b write their channels of one tensor, the second one given the first
    # one's output
    assert "cat" not in call_nodes(fast)
    first, second = ("conv_a", "conv_b")
    assert nodes[second].kwargs["out"].args[0] is nodes[first] if channels % 8 == 0 else \
        nodes[second].kwargs["out"] is nodes[first]
    assert (packed(fast, "conv_a").out_channel_offset, packed(fast, "conv_b").out_channel_offset) == \
        ((channels, 0) if swapped else (0, channels))
    assert f"writes channels 0..{channels - 1} of a concatenation of {2 * channels}" in \
        repr(packed(fast, "conv_b" if swapped else "conv_a"))
    bits = packed_from(fast, "conv_next")
    if channels % 8:
        assert bits is None and packed(fast, "conv_a").next_groups == 0
        return
    # conv_a writes channels 0.. (conv_b's first when swapped), into the tensor conv_b then writes its channels of
    assert bits is not None and bits.args == (nodes["conv_b"], 1)
    assert nodes["conv_b"].kwargs["packed_out"].args == (nodes["conv_a"], 1)
    assert (packed(fast, "conv_a").next_channel_offset, packed(fast, "conv_b").next_channel_offset) == \
        ((channels, 0) if swapped else (0, channels))
    assert packed(fast, "conv_a").next_channels == packed(fast, "conv_b").next_channels == 2 * channels


def test_hand_over_through_a_concatenation_survives_the_file(tmp_path, monkeypatch):
    model, x, fast = converted(("cat into conv", 8, 2, True, 1, 10),
                               lambda: binarized(CatIntoConv(8, 2, True), SIGN_XNOR, seed=80),
                               example((8, 7, 10, 2), seed=81))
    fast.save(tmp_path / "cat.bnn")
    loaded = load_inference(tmp_path / "cat.bnn")
    assert packed(loaded, "conv_a").next_channel_offset == packed(loaded, "conv_a").out_channel_offset == 8
    assert packed_from(loaded, "conv_next") is not None and "cat" not in call_nodes(loaded)
    for path in PATHS:
        if runs_here(path):
            use_path(path, monkeypatch)
            check_outputs(loaded, model, x, -x)


@pytest.mark.parametrize("in_place", ["method", "module"])
def test_a_tensor_used_after_an_in_place_change_is_refused(in_place):
    """The bits (and the thresholds) would be those of the tensor before the change: a clear error instead."""
    config = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)
    model = binarized(TwoBinaryConvs(16, in_place), config, seed=72)
    with pytest.raises(ConversionError, match="in place.*conv1.*conv2|in place.*conv2"):
        to_inference(model, example((16, 8, 9, 2), seed=73))
