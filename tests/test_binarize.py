"""prepare_binary_model / convert: which layers get swapped, in place, keeping Parameters, state_dict keys
and learned binarizer state; selectors and their errors."""
import copy
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import bnn
from bnn import BConfig, convert, prepare_binary_model
from bnn.layers import BinarizedLayer, BinaryConv2d, BinaryLinear
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, MagnitudeAwareWeightBinarizer, RSign,
                     ScaledWSWeightBinarizer, XNORWeightBinarizer)

BC = BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer)
BC_STATEFUL = BConfig(activation_pre_process=RSign, activation_post_process=BasicScaleBinarizer,
                      weight_pre_process=ScaledWSWeightBinarizer)
# three distinguishable configs for precedence tests
BC_A = BConfig(activation_pre_process=BasicInputBinarizer)
BC_B = BConfig(weight_pre_process=XNORWeightBinarizer)
BC_C = BConfig(weight_pre_process=MagnitudeAwareWeightBinarizer)

ROLES = ("activation_pre_process", "weight_pre_process", "activation_post_process")


_R18 = []


def resnet18():
    """A fresh float resnet18 (a copy of one built once: building re-initialises 11M weights)."""
    if not _R18:
        _R18.append(torchvision.models.resnet18())
    return copy.deepcopy(_R18[0])


def float_layer_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def binary_names(model):
    return {n for n, m in model.named_modules() if isinstance(m, BinarizedLayer)}


def config_of(model, name):
    m = model.get_submodule(name)
    return m.bconfig if isinstance(m, BinarizedLayer) else None


def sgn(t):
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def xnor_w(w):
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True) * sgn(w)


@pytest.fixture(scope="module")
def r18_names():
    return float_layer_names(resnet18())


# -- swapping ------------------------------------------------------------------------------------------
def test_resnet18_every_conv_and_linear_is_swapped_in_place(r18_names):
    model = resnet18()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict().keys())
    types = {n: type(model.get_submodule(n)) for n in r18_names}
    assert len(r18_names) == 21  # 20 convs (3 of them downsample) + fc

    out = prepare_binary_model(model, BC)
    assert out is model
    for name in r18_names:
        layer = model.get_submodule(name)
        expected = BinaryConv2d if types[name] is nn.Conv2d else BinaryLinear
        assert type(layer) is expected, name
        assert layer.bnn_name == name
        assert layer.bconfig is BC
    assert binary_names(model) == set(r18_names)
    # BatchNorm etc. untouched
    assert type(model.bn1) is nn.BatchNorm2d and type(model.layer1[0].bn1) is nn.BatchNorm2d
    # the very same Parameter / buffer objects
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for k, p in params.items():
        assert after[k] is p, k
    for k, b in dict(model.named_buffers()).items():
        assert buffers[k] is b, k
    # binarizers without state add no keys: the state_dict keys are exactly the float ones, in order
    assert list(model.state_dict().keys()) == keys


def test_stateful_binarizers_only_add_binarizer_keys(r18_names):
    model = resnet18()
    keys = set(model.state_dict())
    prepare_binary_model(model, BC_STATEFUL)
    new = set(model.state_dict())
    assert keys <= new
    extra = new - keys
    assert extra
    for k in extra:
        layer, role, _ = k.rsplit(".", 2)
        assert layer in r18_names and role in ROLES, k
    assert "conv1.activation_pre_process.bias" in extra
    assert model.conv1.activation_pre_process.bias.shape == (3,)  # RSign: input channels
    assert model.conv1.weight_pre_process.gain.shape == (64,)     # gain: output channels
    assert model.fc.activation_post_process.alpha.shape == (1000,)


def test_small_net_output_matches_hand_reference():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.Flatten(), nn.Linear(6 * 3 * 3, 5))
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    float_out = net(x)
    prepare_binary_model(net, BC, ignore_layers_name=["_first_"])
    assert type(net[0]) is nn.Conv2d and type(net[3]) is BinaryConv2d and type(net[5]) is BinaryLinear
    with torch.no_grad():
        h = F.relu(net[1](net[0](x)))
        h = F.conv2d(sgn(h), xnor_w(net[3].weight), None, stride=2)
        h = F.linear(sgn(h.flatten(1)), xnor_w(net[5].weight), net[5].bias)
        out = net(x)
    torch.testing.assert_close(out, h, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, float_out, atol=1e-2)


class MyConv(nn.Conv2d):
    """A user subclass, with its own forward."""

    def forward(self, x):
        return super().forward(x) * 2


def test_user_subclass_of_conv2d_is_swapped():
    torch.manual_seed(0)
    net = nn.Sequential(MyConv(3, 4, 3, stride=2, padding=1, dilation=1, groups=1), nn.Linear(4, 2))
    weight = net[0].weight
    prepare_binary_model(net, BC)
    assert type(net[0]) is BinaryConv2d
    assert net[0].weight is weight
    assert (net[0].stride, net[0].padding, net[0].out_channels) == ((2, 2), (1, 1), 4)
    x = torch.randn(1, 3, 6, 6)
    expected = F.conv2d(sgn(x), xnor_w(weight.detach()), net[0].bias.detach(), stride=2, padding=1)
    torch.testing.assert_close(net[0](x), expected, rtol=1e-5, atol=1e-5)


def test_modules_mapping_restricts_what_is_swapped():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    prepare_binary_model(net, BC, modules_mapping={nn.Linear: BinaryLinear})
    assert type(net[0]) is nn.Conv2d and type(net[2]) is BinaryLinear


def test_root_single_linear_returns_a_new_binary_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    out = prepare_binary_model(lin, BC)
    assert type(out) is BinaryLinear and out is not lin
    assert type(lin) is nn.Linear
    assert out.weight is lin.weight and out.bias is lin.bias
    x = torch.randn(4, 6)
    expected = F.linear(sgn(x), xnor_w(lin.weight.detach()), lin.bias.detach())
    torch.testing.assert_close(out(x), expected, rtol=1e-5, atol=1e-5)


# -- checkpoints -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bconfig", [BC, BC_STATEFUL,
                                     BConfig(activation_pre_process=RSign, weight_pre_process=XNORWeightBinarizer)],
                         ids=["stateless", "rsign-scale-sws", "rsign-xnor"])
def test_float_checkpoint_loads_strictly_into_binarized_resnet18(bconfig):
    torch.manual_seed(0)
    checkpoint = torchvision.models.resnet18().state_dict()  # independent weights
    model = prepare_binary_model(resnet18(), bconfig)
    assert not torch.equal(model.conv1.weight, checkpoint["conv1.weight"])
    # give every binarizer parameter a non-default value: a float checkpoint must leave it alone
    before = {}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k not in checkpoint:
                v.uniform_(0.5, 1.5)
                before[k] = v.clone()
    result = model.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    state = model.state_dict()
    for k, v in checkpoint.items():
        assert torch.equal(state[k], v), k
    for k, v in before.items():
        assert torch.equal(state[k], v), k
    assert torch.equal(model.conv1.weight, checkpoint["conv1.weight"])


def test_float_checkpoint_with_a_missing_float_key_still_raises():
    checkpoint = resnet18().state_dict()
    del checkpoint["layer1.0.conv1.weight"]
    model = prepare_binary_model(resnet18(), BC_STATEFUL)
    with pytest.raises(RuntimeError, match=r"layer1\.0\.conv1\.weight"):
        model.load_state_dict(checkpoint, strict=True)


def _randomize_binarizers(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{r}." in name for r in ROLES):
                p.uniform_(-0.5, 1.5)


def test_binary_checkpoint_round_trips():
    torch.manual_seed(0)
    a = prepare_binary_model(resnet18(), BC_STATEFUL, ignore_layers_name=["_first_", "_last_"])
    _randomize_binarizers(a)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for name, buf in a.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    a.eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = a(x)

    b = prepare_binary_model(resnet18(), BC_STATEFUL, ignore_layers_name=["_first_", "_last_"])
    result = b.load_state_dict(a.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    b.eval()
    with torch.no_grad():
        assert torch.equal(b(x), expected)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


def test_binary_checkpoint_missing_one_binarizer_key_raises():
    a = prepare_binary_model(resnet18(), BC_STATEFUL)
    state = a.state_dict()
    del state["layer2.1.conv2.activation_post_process.alpha"]
    b = prepare_binary_model(resnet18(), BC_STATEFUL)
    with pytest.raises(RuntimeError, match=r"layer2\.1\.conv2\.activation_post_process\.alpha"):
        b.load_state_dict(state, strict=True)


def test_binary_checkpoint_missing_the_only_binarizer_key_of_a_layer_raises():
    config = BConfig(activation_pre_process=RSign, weight_pre_process=XNORWeightBinarizer)
    state = prepare_binary_model(resnet18(), config).state_dict()
    del state["layer1.0.conv1.activation_pre_process.bias"]
    # the state_dict metadata marks the layer as binary: the missing key is an error
    with pytest.raises(RuntimeError, match="layer1.0.conv1.activation_pre_process.bias"):
        prepare_binary_model(resnet18(), config).load_state_dict(state, strict=True)


def test_binary_checkpoint_with_an_unexpected_key_raises():
    state = prepare_binary_model(resnet18(), BC_STATEFUL).state_dict()
    model = prepare_binary_model(resnet18(), BC)  # no binarizer state
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.load_state_dict(state, strict=True)


# -- selection --------------------------------------------------------------------------------------------
def test_first_and_last_select_the_first_and_last_swappable_layers(r18_names):
    assert r18_names[0] == "conv1" and r18_names[-1] == "fc"
    m = prepare_binary_model(resnet18(), BC, ignore_layers_name=["_first_"])
    assert binary_names(m) == set(r18_names) - {"conv1"}
    assert type(m.conv1) is nn.Conv2d
    m = prepare_binary_model(resnet18(), BC, ignore_layers_name=["_last_"])
    assert binary_names(m) == set(r18_names) - {"fc"}
    assert type(m.fc) is nn.Linear
    m = prepare_binary_model(resnet18(), BC, custom_config_layers_name={"_first_": BC_A, "_last_": BC_B})
    assert config_of(m, "conv1") is BC_A and config_of(m, "fc") is BC_B
    assert config_of(m, "layer1.0.conv1") is BC


def test_first_last_follow_registration_order_in_a_small_net():
    net = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 3, 1), relu=nn.ReLU(), b=nn.Conv2d(3, 3, 1),
                                    head=nn.Sequential(nn.Flatten(), nn.Linear(3, 2))))
    prepare_binary_model(net, BC, ignore_layers_name=["_first_", "_last_"])
    assert binary_names(net) == {"b"}


def test_regex_selection(r18_names):
    m = prepare_binary_model(resnet18(), BC, ignore_layers_name=["$downsample$"])
    assert binary_names(m) == {n for n in r18_names if "downsample" not in n}
    assert len(set(r18_names) - binary_names(m)) == 3
    m = prepare_binary_model(resnet18(), BC, custom_config_layers_name={r"$^layer4\.\d\.conv2$": BC_A})
    assert {n for n in r18_names if config_of(m, n) is BC_A} == {"layer4.0.conv2", "layer4.1.conv2"}


def test_exact_name_selection(r18_names):
    m = prepare_binary_model(resnet18(), BC, ignore_layers_name=["layer1.0.conv1", "layer3.0.downsample.0"])
    assert binary_names(m) == set(r18_names) - {"layer1.0.conv1", "layer3.0.downsample.0"}


def test_container_name_selects_every_layer_inside(r18_names):
    m = prepare_binary_model(resnet18(), BC, custom_config_layers_name={"layer1": BC_A, "layer3.0": None})
    inside1 = {n for n in r18_names if n.startswith("layer1.")}
    assert len(inside1) == 4
    assert {n for n in r18_names if config_of(m, n) is BC_A} == inside1
    inside30 = {n for n in r18_names if n.startswith("layer3.0.")}
    assert len(inside30) == 3
    assert binary_names(m) == set(r18_names) - inside30
    # a name prefix that is not a container boundary selects nothing ('layer1' is not inside 'layer')
    with pytest.raises(ValueError, match="'layer'"):
        prepare_binary_model(resnet18(), BC, ignore_layers_name=["layer"])


@pytest.mark.parametrize("reverse", [False, True])
def test_precedence_exact_over_container_over_regex_over_global(r18_names, reverse):
    custom = [("$conv$", BC_A), ("layer1", BC_B), ("layer1.0.conv1", BC_C), ("$downsample$", None)]
    if reverse:
        custom = custom[::-1]
    m = prepare_binary_model(resnet18(), BC, custom_config_layers_name=dict(custom))
    for n in r18_names:
        if n == "layer1.0.conv1":
            expected = BC_C                      # exact name
        elif n.startswith("layer1."):
            expected = BC_B                      # container beats regex
        elif "downsample" in n:
            expected = None                      # regex -> None keeps real
        elif "conv" in n:
            expected = BC_A                      # regex beats global
        else:
            expected = BC                        # global (fc)
        assert config_of(m, n) is expected, (n, reverse)


def test_none_keeps_a_layer_real_and_ignore_beats_custom():
    m = prepare_binary_model(resnet18(), BC, custom_config_layers_name={"conv1": BC_A, "fc": None,
                                                                         "layer1.0.conv2": BC_B},
                             ignore_layers_name=["conv1", "$layer1$"])
    assert type(m.conv1) is nn.Conv2d and type(m.fc) is nn.Linear
    assert type(m.layer1[0].conv2) is nn.Conv2d  # ignored by regex, despite its exact-name config
    assert config_of(m, "layer2.0.conv1") is BC


def test_name_that_matches_nothing_raises_and_suggests():
    model = resnet18()  # every call below raises before touching it
    with pytest.raises(ValueError) as info:
        prepare_binary_model(model, BC, ignore_layers_name=["layer1.0.cnv1"])
    assert "'layer1.0.cnv1'" in str(info.value) and "'layer1.0.conv1'" in str(info.value)
    with pytest.raises(ValueError, match="'layer1.0.cnv1'.*'layer1.0.conv1'"):
        prepare_binary_model(model, BC, custom_config_layers_name={"layer1.0.cnv1": BC_A})
    with pytest.raises(ValueError, match="'layer9'"):
        prepare_binary_model(model, BC, ignore_layers_name=["layer9"])
    with pytest.raises(ValueError, match=r"'\$nothing_here\$'"):
        prepare_binary_model(model, BC, ignore_layers_name=["$nothing_here$"])
    # a module that exists but holds no swappable layer
    with pytest.raises(ValueError, match="'relu'"):
        prepare_binary_model(model, BC, ignore_layers_name=["relu"])
    assert not binary_names(model)


def test_failed_selection_leaves_the_model_untouched():
    model = resnet18()
    with pytest.raises(ValueError):
        prepare_binary_model(model, BC, ignore_layers_name=["conv1", "nope"])
    assert not binary_names(model)


def test_invalid_regex_raises():
    model = resnet18()  # every call below raises before touching it
    with pytest.raises(ValueError, match="regular expression"):
        prepare_binary_model(model, BC, ignore_layers_name=["$layer[1$"])
    with pytest.raises(ValueError, match="regular expression"):
        prepare_binary_model(model, BC, custom_config_layers_name={"$(conv$": BC_A})
    assert not binary_names(model)


def test_wrong_argument_types_raise_clear_errors():
    model = resnet18()  # every call below raises before touching it
    # the upstream README's `custom_config_layers_name=['conv1' : BConfig()]` as a list
    with pytest.raises(ValueError, match="custom_config_layers_name must be a dict"):
        prepare_binary_model(model, BC, custom_config_layers_name=[("conv1", BConfig())])
    with pytest.raises(ValueError, match=r"ignore_layers_name.*\['conv1'\]"):
        prepare_binary_model(model, BC, ignore_layers_name="conv1")
    with pytest.raises(ValueError, match="BConfig"):
        prepare_binary_model(model, {"activation_pre_process": BasicInputBinarizer})
    with pytest.raises(ValueError, match="BConfig"):
        prepare_binary_model(model, (BasicInputBinarizer, None, None))
    with pytest.raises(ValueError, match=r"custom_config_layers_name\['conv1'\].*BConfig"):
        prepare_binary_model(model, BC, custom_config_layers_name={"conv1": BasicInputBinarizer})
    assert not binary_names(model)


# -- re-preparing -------------------------------------------------------------------------------------------
def test_re_preparing_keeps_learned_state_and_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    step1 = BConfig(activation_pre_process=RSign.with_args(estimator="ste"),
                    activation_post_process=BasicScaleBinarizer)
    prepare_binary_model(net, step1)
    weight, bias = net[1].weight, net[1].bias
    with torch.no_grad():
        net[1].activation_pre_process.bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))
        net[1].activation_post_process.alpha.copy_(torch.tensor([1.5, 0.5, 2.0, 3.0]))
    first_layer = net[1]

    step2 = BConfig(activation_pre_process=RSign.with_args(estimator="ste"),
                    weight_pre_process=XNORWeightBinarizer)  # post-process changes class: fresh Identity
    assert prepare_binary_model(net, step2) is net
    layer = net[1]
    assert layer is not first_layer and layer.bconfig is step2
    assert layer.weight is weight and layer.bias is bias
    assert torch.equal(layer.activation_pre_process.bias.detach(), torch.tensor([0.1, -0.2, 0.3, -0.4]))
    assert layer.activation_pre_process.bias is not first_layer.activation_pre_process.bias  # own binarizer
    assert type(layer.activation_post_process) is bnn.Identity
    assert "1.activation_post_process.alpha" not in net.state_dict()
    x = torch.randn(2, 4, 5, 5)
    shift = torch.tensor([0.1, -0.2, 0.3, -0.4]).view(1, 4, 1, 1)
    expected = F.conv2d(sgn(x + shift), xnor_w(weight.detach()), bias.detach(), padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_re_preparing_resnet18_keeps_rsign_bias():
    model = prepare_binary_model(resnet18(), BConfig(activation_pre_process=RSign),
                                 ignore_layers_name=["_first_", "_last_"])
    with torch.no_grad():
        model.layer3[1].conv2.activation_pre_process.bias.fill_(0.75)
    w = model.layer3[1].conv2.weight
    prepare_binary_model(model, BConfig(activation_pre_process=RSign, weight_pre_process=XNORWeightBinarizer),
                         ignore_layers_name=["_first_", "_last_"])
    conv = model.layer3[1].conv2
    assert type(conv.weight_pre_process) is XNORWeightBinarizer
    assert conv.weight is w
    assert torch.equal(conv.activation_pre_process.bias.detach(), torch.full((256,), 0.75))
    assert torch.equal(model.layer3[1].conv1.activation_pre_process.bias.detach(), torch.zeros(256))


# -- convert -------------------------------------------------------------------------------------------------
def test_convert_swaps_layers_with_a_bconfig():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    net[1].bconfig = BC
    assert convert(net) is net
    assert [type(m) for m in net] == [nn.Linear, BinaryLinear, nn.Linear]
    assert net[1].bconfig is BC and net[1].bnn_name == "1"


def test_convert_propagates_a_container_bconfig_and_none_keeps_real():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    net = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 3, 1), body=inner,
                                    head=nn.Sequential(nn.Flatten(), nn.Linear(4, 2))))
    net.body.bconfig = BC
    net.body[2].bconfig = BC_C        # own config wins over the container's
    net.head.bconfig = BC
    net.head[1].bconfig = None        # stays real
    weight = net.body[0].weight
    convert(net)
    assert type(net.stem) is nn.Conv2d
    assert type(net.body[0]) is BinaryConv2d and net.body[0].bconfig is BC and net.body[0].weight is weight
    assert type(net.body[2]) is BinaryConv2d and net.body[2].bconfig is BC_C
    assert type(net.head[1]) is nn.Linear
    x = torch.randn(1, 3, 5, 5)
    expected = F.conv2d(sgn(net.stem(x)), xnor_w(weight.detach()), net.body[0].bias.detach())
    torch.testing.assert_close(net.body[0](net.stem(x)), expected, rtol=1e-5, atol=1e-5)


def test_convert_root_bconfig_applies_to_all():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    net.bconfig = BC
    convert(net)
    assert type(net[0]) is BinaryConv2d and type(net[2]) is BinaryLinear


def test_convert_rejects_a_non_bconfig():
    net = nn.Sequential(nn.Linear(4, 4))
    net[0].bconfig = {"activation_pre_process": BasicInputBinarizer}
    with pytest.raises(ValueError, match="BConfig"):
        convert(net)


# -- attention ------------------------------------------------------------------------------------------------
def test_multihead_attention_projection_stays_real_with_one_warning():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    with pytest.warns(UserWarning, match="MultiheadAttention") as record:
        out = prepare_binary_model(layer, BC)
    ours = [w for w in record if "MultiheadAttention" in str(w.message)]
    assert len(ours) == 1
    assert "self_attn.out_proj" in str(ours[0].message)
    assert out is layer
    assert not isinstance(layer.self_attn.out_proj, BinarizedLayer)
    assert type(layer.linear1) is BinaryLinear and type(layer.linear2) is BinaryLinear
    assert binary_names(layer) == {"linear1", "linear2"}


def test_no_warning_without_attention():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_binary_model(nn.Sequential(nn.Linear(4, 4)), BC)


@pytest.mark.parametrize("with_encoder", [False, True])
def test_transformer_fused_inference_path_does_not_bypass_binary_layers(with_encoder):
    """In eval mode without grad, nn.TransformerEncoderLayer (and nn.TransformerEncoder through nested
    tensors) has a fused kernel that reads linear1/linear2's weights directly; the binarized model must
    still compute with its binary layers there."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True) if with_encoder else layer
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        prepare_binary_model(model, BC)
    model.eval()
    x = torch.randn(2, 5, 8)
    kwargs = {"src_key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2])} if with_encoder else {}
    with_grad = model(x, **kwargs)   # the plain path, through the binary layers' forward
    with torch.no_grad():
        no_grad = model(x, **kwargs)
    if no_grad.is_nested:
        no_grad = no_grad.to_padded_tensor(0.0, x.shape)
    valid = slice(None) if not with_encoder else (0, slice(None))
    torch.testing.assert_close(no_grad[valid], with_grad.detach()[valid], rtol=1e-5, atol=1e-5)
    # and the binary feed-forward really differs from the float one
    ff_in = torch.randn(3, 8)
    lin1 = (model.layers[0] if with_encoder else model).linear1
    assert not torch.allclose(lin1(ff_in), F.linear(ff_in, lin1.weight, lin1.bias), atol=1e-3)
