"""InferenceModel.op_census against counts made by hand on a small net, and against bnn.count_ops on resnet18.

The hand-counted net, input (2, 3, H, H):
    stem: real 3x3 conv 3 -> 8, pad 1, no bias
    conv1: binary 3x3 8 -> 16, pad 1, sign + XNOR weights (scale mean|W_o|: a general multiply), no bias
    conv2: binary 3x3 16 -> 16, pad 1, RSign + scaled-WS weights with power-of-two scale (a shift), bias
    pool: average over the whole H x H map
    fc: real linear 16 -> 10, bias
"""

import pytest
import torch
import torch.nn as nn

import bnn
from bnn.inference.modules import is_power_of_two
from bnn.layers import BinaryConv2d, BinaryLinear
from bnn.ops import (BasicInputBinarizer, RSign, ScaledWSWeightBinarizer, XNORWeightBinarizer)

from inference_helpers import BACKENDS, kernels, randomize_learned

KEYS = ("binary_macs", "float_macs", "multiplications", "additions", "shifts", "comparisons")
SIGN_XNOR = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)
RSIGN_POW2 = bnn.BConfig(activation_pre_process=RSign,
                         weight_pre_process=ScaledWSWeightBinarizer.with_args(power_of_two=True))


class CensusNet(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv1 = BinaryConv2d(8, 16, 3, padding=1, bias=False, bconfig=SIGN_XNOR)
        self.conv2 = BinaryConv2d(16, 16, 3, padding=1, bias=True, bconfig=RSIGN_POW2)
        self.pool = pool
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv2(self.conv1(self.stem(x)))
        if self.pool == "method":
            y = y.mean((2, 3))
        elif self.pool == "function":
            y = torch.mean(y, dim=(2, 3))
        else:
            y = self.pool(y)
        return self.fc(torch.flatten(y, 1))


def build(pool, seed=0):
    torch.manual_seed(seed)
    model = randomize_learned(CensusNet(pool), seed).eval()
    with torch.no_grad():
        model.conv2.bias.uniform_(-1, 1)
    # preconditions of the hand count: conv1's scale is a general multiply, conv2's a power of two (not all 1)
    _, k1 = model.conv1.weight_pre_process.split(model.conv1.weight)
    _, k2 = model.conv2.weight_pre_process.split(model.conv2.weight)
    assert not is_power_of_two(k1) and is_power_of_two(k2) and not bool((k2 == 1).all())
    return model


def hand_count(h):
    n, pos = 2, h * h
    stem = n * pos * (3 * 9) * 8                 # float MACs, multiplications not counted (stem)
    conv1 = n * pos * (8 * 9) * 16               # binary MACs
    conv2 = n * pos * (16 * 9) * 16
    fc = n * 16 * 10
    area = h * h
    pool_out = n * 16
    area_is_pow2 = area & (area - 1) == 0
    return {
        "binary_macs": conv1 + conv2,
        "float_macs": stem + fc,
        # conv1's scale folds into conv2's thresholds (a sign follows it directly): no multiply left there;
        # the pool's 1 / area unless it is a shift
        "multiplications": 0 if area_is_pow2 else pool_out,
        # conv2's bias; pooling: area - 1 additions per output; the classifier's bias
        "additions": n * 16 * pos + pool_out * (area - 1) + n * 10,
        # conv2's power-of-two scale; the pool's 1 / area when it is a power of two
        "shifts": n * 16 * pos + (pool_out if area_is_pow2 else 0),
        # one compare per element entering a binary layer
        "comparisons": n * 8 * pos + n * 16 * pos,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,pool", [(4, nn.AdaptiveAvgPool2d(1)), (4, nn.AvgPool2d(4)), (3, nn.AdaptiveAvgPool2d(1)),
                                    (4, "method"), (4, "function"), (3, "method")],
                         ids=["adaptive-4x4", "avgpool-4x4", "adaptive-3x3", "x.mean-4x4", "torch.mean-4x4",
                              "x.mean-3x3"])
def test_hand_counted_net(h, pool, backend):
    model = build(pool)
    x = torch.randn(2, 3, h, h)
    fast = bnn.to_inference(model, x)
    with kernels(backend):
        census = fast.op_census(x)
    expected = hand_count(h)
    assert {k: census[k] for k in KEYS} == expected
    if h == 4:  # the numbers themselves, once
        assert expected == {"binary_macs": 110592, "float_macs": 7232, "multiplications": 0, "additions": 1012,
                            "shifts": 544, "comparisons": 768}
    assert census["binary_macs"] == bnn.count_ops(model, x).bops


def test_per_layer_rows():
    model = build(nn.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 4, 4)
    census = bnn.to_inference(model, x).op_census(x, per_layer=True)
    rows = {r["name"]: r for r in census["layers"]}
    assert {"stem", "conv1", "conv2", "pool", "fc"} <= set(rows)
    assert census["stem_and_classifier"] == ["stem", "fc"]
    assert rows["stem"]["float_macs"] == 6912 and rows["stem"]["multiplications"] == 6912
    assert rows["conv1"]["binary_macs"] == 36864 and rows["conv1"]["comparisons"] == 256
    # conv1's scale folded into conv2's thresholds: neither a multiply nor a shift left in conv1
    assert rows["conv1"].get("multiplications", 0) == 0 and rows["conv1"].get("shifts", 0) == 0
    assert rows["conv2"]["binary_macs"] == 73728 and rows["conv2"]["shifts"] == 512
    assert rows["conv2"]["additions"] == 512 and rows["conv2"].get("multiplications", 0) == 0
    assert rows["pool"]["additions"] == 32 * 15 and rows["pool"]["shifts"] == 32
    assert rows["fc"]["float_macs"] == 320 and rows["fc"]["additions"] == 20
    # the rows add up to the totals; the stem's and the classifier's multiplications are left out of them
    for key in KEYS:
        total = sum(r.get(key, 0) for r in census["layers"])
        if key == "multiplications":
            total -= rows["stem"].get(key, 0) + rows["fc"].get(key, 0)
        assert total == census[key], key
    # without per_layer: no rows
    assert "layers" not in bnn.to_inference(model, x).op_census(x)


@pytest.mark.parametrize("bconfig,expected", [
    # activations binary, weights real: each MAC adds or subtracts a real weight
    (bnn.BConfig(activation_pre_process=RSign), dict(float_macs=36864, additions=36864, multiplications=0,
                                                      comparisons=256, binary_macs=0)),
    # weights +-1 times a per-channel scale, activations real: each MAC adds or subtracts an activation;
    # the scale is one multiply per output
    (bnn.BConfig(weight_pre_process=XNORWeightBinarizer), dict(float_macs=36864, additions=36864,
                                                               multiplications=512, comparisons=0, binary_macs=0)),
    # nothing binarized: real MACs
    (bnn.BConfig(activation_pre_process=bnn.Identity, weight_pre_process=bnn.Identity),
     dict(float_macs=36864, additions=0, multiplications=36864, comparisons=0, binary_macs=0)),
], ids=["activations-only", "weights-only", "neither"])
def test_one_sided_layer(bconfig, expected):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), BinaryConv2d(8, 16, 3, padding=1, bias=False, bconfig=bconfig)).eval()
    randomize_learned(model)
    x = torch.randn(2, 8, 4, 4)
    census = bnn.to_inference(model, x).op_census(x, per_layer=True)
    row = {r["name"]: r for r in census["layers"]}["1"]
    assert {k: row.get(k, 0) for k in expected} == expected
    assert census["float_macs"] == bnn.count_ops(model, x).flops


def test_binary_linear_counts():
    model = nn.Sequential(nn.Linear(5, 70), BinaryLinear(70, 33, bconfig=SIGN_XNOR), nn.Linear(33, 4)).eval()
    x = torch.randn(3, 5)
    census = bnn.to_inference(model, x).op_census(x)
    assert census["binary_macs"] == 3 * 70 * 33 == bnn.count_ops(model, x).bops
    assert census["comparisons"] == 3 * 70
    assert census["float_macs"] == 3 * 5 * 70 + 3 * 33 * 4
    # the binary layer's XNOR scale and bias; the stem and classifier biases are additions too
    assert census["multiplications"] == 3 * 33
    assert census["additions"] == 3 * 33 + 3 * 70 + 3 * 4


def test_resnet18_reactnet_binary_macs_match_count_ops(resnet18_recipe):
    model = resnet18_recipe("reactnet")
    x = torch.randn(2, 3, 32, 32)
    fast = bnn.to_inference(model, x)
    census = fast.op_census(x, per_layer=True)
    report = bnn.count_ops(model, x)
    assert census["binary_macs"] == report.bops > 0
    assert census["float_macs"] == report.flops
    assert census["stem_and_classifier"] == ["conv1", "fc"]
    # every binary 3x3 conv: one compare per input element, no float MACs
    packed = [r for r in census["layers"] if r["kind"] == "PackedBinaryConv2d"]
    assert len(packed) == 16
    assert all(r.get("float_macs", 0) == 0 and r["comparisons"] > 0 for r in packed)


def test_tensor_methods_are_counted_like_functions():
    """x.relu(), x.add(y), x.mul(0.25) (a shift), x.mul(0.3) (a multiplication), x.mean(...) (pooling), each
    on a (2, 8, 4, 4) map: 256 elements."""
    class Methods(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1, bias=False)
            self.conv = BinaryConv2d(8, 8, 1, bias=False, bconfig=SIGN_XNOR)
            self.fc = nn.Linear(8, 2, bias=False)

        def forward(self, x):
            s = self.stem(x).relu()
            y = self.conv(s).add(s).mul(0.25).mul(0.3)
            return self.fc(y.mean((2, 3)))

    class Functions(Methods):
        def forward(self, x):
            s = torch.relu(self.stem(x))
            y = torch.mul(torch.mul(torch.add(self.conv(s), s), 0.25), 0.3)
            return self.fc(torch.mean(y, (2, 3)))

    x = torch.randn(2, 3, 4, 4)
    results = []
    for cls in (Methods, Functions):
        torch.manual_seed(0)
        model = cls().eval()
        census = bnn.to_inference(model, x).op_census(x)
        results.append({k: census[k] for k in KEYS})
    conv_scale = 256  # XNOR scale of the binary conv
    assert results[0] == results[1] == {
        "binary_macs": 2 * 16 * 8 * 8, "float_macs": 2 * 16 * 3 * 8 + 2 * 8 * 2,
        "multiplications": conv_scale + 256,   # x.mul(0.3)
        "additions": 256 + 16 * 15,           # add; pooling 16 -> 1 on 16 (batch x channel) outputs
        "shifts": 256 + 16,                   # x.mul(0.25); the pool's 1/16
        "comparisons": 256 + 256,             # relu; the binary conv's input compares
    }
