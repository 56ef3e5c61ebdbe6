"""count_ops / summary against MACs computed by hand."""
import pytest
import torch
import torch.nn as nn
import torchvision

import bnn
from bnn.ops import BasicInputBinarizer, RSign, XNORWeightBinarizer

BINARY = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)
ACTIVATIONS_ONLY = bnn.BConfig(activation_pre_process=RSign)


def conv_macs_by_hand(n, c_in, c_out, k, h_out, w_out, groups=1):
    return n * h_out * w_out * c_out * (c_in // groups) * k * k


@pytest.mark.parametrize("stride,padding,groups,dilation", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 1, 4, 1),
                                                             (1, 2, 2, 2), (3, 1, 1, 1)])
def test_conv_macs_match_hand_count(stride, padding, groups, dilation):
    conv = nn.Conv2d(8, 12, 3, stride=stride, padding=padding, groups=groups, dilation=dilation, bias=False)
    x = torch.randn(2, 8, 17, 13)
    h_out = (17 + 2 * padding - dilation * 2 - 1) // stride + 1
    w_out = (13 + 2 * padding - dilation * 2 - 1) // stride + 1
    report = bnn.count_ops(nn.Sequential(conv), x)
    assert report.flops == conv_macs_by_hand(2, 8, 12, 3, h_out, w_out, groups)
    assert report.bops == 0


def test_binary_conv_counts_as_bops_and_linear_as_flops():
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 5 * 5, 7))
    bnn.prepare_binary_model(net, BINARY, ignore_layers_name=["_last_"])
    report = bnn.count_ops(net, torch.randn(3, 4, 5, 5))
    assert report.bops == conv_macs_by_hand(3, 4, 6, 3, 5, 5)
    assert report.flops == 3 * 150 * 7
    assert report.ops == report.flops + report.bops / 64
    # bias of the binary conv and of the linear: one addition per output element
    assert report.elementwise["bias"] == 3 * 6 * 5 * 5 + 3 * 7


def test_transposed_conv_macs():
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, bias=False)
    report = bnn.count_ops(nn.Sequential(deconv), torch.randn(1, 4, 5, 5))
    # every input pixel of every input channel is multiplied by a 3x3 kernel for each output channel
    assert report.flops == 5 * 5 * 4 * 6 * 9


def test_linear_on_sequences_counts_every_position():
    report = bnn.count_ops(nn.Sequential(nn.Linear(5, 3, bias=False)), torch.randn(2, 7, 5))
    assert report.flops == 2 * 7 * 5 * 3


def test_binarized_resnet18_bops_equal_macs_of_its_binary_convs():
    float_model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 224, 224)
    float_rows = {r.name: r.macs for r in bnn.count_ops(float_model, x).rows}
    model = bnn.prepare_binary_model(torchvision.models.resnet18(), BINARY, ignore_layers_name=["_first_", "_last_"])
    binary_names = [n for n, m in model.named_modules() if isinstance(m, bnn.layers.BinarizedLayer)]
    report = bnn.count_ops(model, x)
    assert report.bops == sum(float_rows[n] for n in binary_names)
    assert report.flops == float_rows["conv1"] + float_rows["fc"]
    # the well-known figure: 1.81 GMACs for float resnet18 at 224x224
    assert sum(float_rows.values()) == 1_814_073_344


def test_activation_only_binarization_gives_no_bops():
    model = bnn.prepare_binary_model(torchvision.models.resnet18(), ACTIVATIONS_ONLY,
                                     ignore_layers_name=["_first_", "_last_"])
    report = bnn.count_ops(model, torch.randn(1, 3, 64, 64))
    assert report.bops == 0
    assert report.one_sided_macs > 0
    layer = next(r for r in report.rows if r.name == "layer1.0.conv1")
    assert (layer.weight_bits, layer.activation_bits) == (32, 1)


def test_mode_and_parameters_untouched():
    model = bnn.prepare_binary_model(torchvision.models.resnet18(), BINARY, ignore_layers_name=["_first_", "_last_"])
    model.train()
    model.layer2.eval()  # a mixed state must come back as it was
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bnn.count_ops(model, torch.randn(2, 3, 64, 64))
    bnn.summary(model, torch.randn(2, 3, 64, 64))
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_wrong_input_shape_is_a_clear_error():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"\(1, 5, 32, 32\)"):
        bnn.count_ops(model, torch.randn(1, 5, 32, 32))
    with pytest.raises(ValueError, match="tensor"):
        bnn.count_ops(model, "not a tensor")


def test_untraceable_model_falls_back_to_hooks():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.conv(x)
            return self.conv(-x)

    with pytest.warns(UserWarning, match="hooks"):
        report = bnn.count_ops(DataDependent(), torch.randn(1, 3, 8, 8))
    assert report.method == "hooks"
    assert report.flops == conv_macs_by_hand(1, 3, 4, 3, 6, 6)


def test_summary_sizes_and_compression():
    net = nn.Sequential(nn.Conv2d(3, 64, 3, bias=False), nn.Conv2d(64, 64, 3, bias=False), nn.Flatten(),
                        nn.Linear(64 * 4 * 4, 10))
    bnn.prepare_binary_model(net, BINARY, ignore_layers_name=["_first_", "_last_"])
    s = bnn.summary(net, torch.randn(1, 3, 8, 8))
    params = sum(p.numel() for p in net.parameters())
    assert s.params == params
    assert s.float_bytes == 4 * params
    binary = 64 * 64 * 9
    assert s.binary_params == binary
    assert s.packed_bytes == pytest.approx(binary / 8 + (params - binary) * 4)
    assert s.compression == pytest.approx(4 * params / (binary / 8 + (params - binary) * 4))
    row = next(r for r in s.rows if r.name == "1")
    assert (row.weight_bits, row.activation_bits, row.binary_macs) == (1, 1, conv_macs_by_hand(1, 64, 64, 3, 4, 4))
    text = str(s)
    assert "compression" in text and "BinaryConv2d" in text


def test_residual_additions_are_counted():
    report = bnn.count_ops(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    # resnet18 adds its shortcut in place (out += identity): 8 blocks
    assert report.elementwise["add"] > 0
